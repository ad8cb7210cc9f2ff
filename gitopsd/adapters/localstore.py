"""The embedded management cluster: a SQLite file that stores ClusterPacks and PackInstances.

It behaves like the Kubernetes backend where gitopsd depends on it: objects keyed by kind,
namespace and name, a global integer resourceVersion bumped on every write, uid and generation,
and Events for every change. Every pass's writes happen in ONE transaction: a failure leaves the
store exactly as it was (nothing half-applied). Uninstall deletes a PackInstance, as on Kubernetes
(one meaning for every ``ports.Cluster``): its history, ending with the ``uninstalled`` record, is
in the Event of the deletion and in the pass's signed status record in Git; a re-install starts
a new history with an Initial install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import re
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from gitopsd import errors
from gitopsd.core import codec
from gitopsd.model import change, delivery, instance, pack

# The objects of a delivery record's inventory, one row each: the columns after (namespace, instance)
# of ``delivery_objects``. Its triggers keep it equal to ``deliveries`` (whoever writes it, even by hand),
# so that ``delivery_holdings`` finds the records holding an object by an index, not by reading them all.
_OBJECT_COLUMNS = ("coalesce(json_extract({body}, '$.cluster'), ''), json_extract(e.value, '$.apiVersion'), "
                   "json_extract(e.value, '$.kind'), coalesce(json_extract(e.value, '$.namespace'), ''), "
                   "json_extract(e.value, '$.name')")

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    uid TEXT NOT NULL, resource_version INTEGER NOT NULL, generation INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL,
    name TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL, revision TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_object ON events(kind, namespace, name, id);
CREATE TABLE IF NOT EXISTS deliveries (
    namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS feed (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS feed_insert AFTER INSERT ON objects BEGIN
    INSERT INTO feed(kind, namespace, name) VALUES (NEW.kind, NEW.namespace, NEW.name);
END;
CREATE TRIGGER IF NOT EXISTS feed_update AFTER UPDATE ON objects BEGIN
    INSERT INTO feed(kind, namespace, name) VALUES (OLD.kind, OLD.namespace, OLD.name);
    INSERT INTO feed(kind, namespace, name) VALUES (NEW.kind, NEW.namespace, NEW.name);
END;
CREATE TRIGGER IF NOT EXISTS feed_delete AFTER DELETE ON objects BEGIN
    INSERT INTO feed(kind, namespace, name) VALUES (OLD.kind, OLD.namespace, OLD.name);
END;
CREATE TABLE IF NOT EXISTS delivery_objects (
    namespace TEXT NOT NULL, instance TEXT NOT NULL, cluster TEXT NOT NULL, api_version TEXT NOT NULL,
    kind TEXT NOT NULL, object_namespace TEXT NOT NULL, name TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_objects_by_name ON delivery_objects(namespace, name);
CREATE INDEX IF NOT EXISTS delivery_objects_by_instance ON delivery_objects(namespace, instance);
CREATE TRIGGER IF NOT EXISTS delivery_objects_insert AFTER INSERT ON deliveries BEGIN
    DELETE FROM delivery_objects WHERE namespace = NEW.namespace AND instance = NEW.name;
    INSERT INTO delivery_objects SELECT NEW.namespace, NEW.name, """ + _OBJECT_COLUMNS.format(body="NEW.body") + """
        FROM json_each(NEW.body, '$.inventory') e;
END;
CREATE TRIGGER IF NOT EXISTS delivery_objects_update AFTER UPDATE ON deliveries BEGIN
    DELETE FROM delivery_objects WHERE namespace = OLD.namespace AND instance = OLD.name;
    INSERT INTO delivery_objects SELECT NEW.namespace, NEW.name, """ + _OBJECT_COLUMNS.format(body="NEW.body") + """
        FROM json_each(NEW.body, '$.inventory') e;
END;
CREATE TRIGGER IF NOT EXISTS delivery_objects_delete AFTER DELETE ON deliveries BEGIN
    DELETE FROM delivery_objects WHERE namespace = OLD.namespace AND instance = OLD.name;
END;
"""
# The change feed: every write to ``objects`` (by this process, another one, or by hand with the
# sqlite3 shell) adds a row naming the object, in the same transaction. ``observe`` reads the rows
# after the last one it read and decodes only those objects; the feed keeps its last FEED_KEEP rows.
FEED_KEEP = 200_000
CATCH_UP_LIMIT = 50_000  # more changed objects than this: reading everything again is cheaper

CLUSTER_PACK = pack.CLUSTER_PACK_KIND
PACK_INSTANCE = instance.PACK_INSTANCE_KIND
MAX_EVENTS = 10_000
ROW_BATCH = 10_000  # object rows an apply keeps back before handing them to SQLite in one statement
NAMES_BATCH = 500  # names one ``name IN (...)`` query asks for (``LocalStore._named``)
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # json.dumps's, made once: a row body
T = TypeVar("T")


def store_error(path: pathlib.Path, err: sqlite3.Error) -> errors.GitopsdError:
    """One line for a store that cannot be used: what is wrong with which file, and what to do."""
    text = str(err)
    code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL:
        return errors.TransientError(f"local store {path}: the disk is full; free space on it and run again",
                                     reason=errors.TransientReason.STORE_FAILED)
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
        return errors.TransientError(f"local store {path}: cannot be written ({text}); a pass that writes needs a "
                                     "writable state dir", reason=errors.TransientReason.STORE_FAILED)
    return errors.ConfigError(
        f"local store {path} is damaged ({text}); move it away (ClusterPacks and PackInstances are then made again "
        "from Git on the next reconcile, with new install history) or restore it from a backup",
        reason=errors.UsageReason.STORE_CORRUPT)


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """A read of the store: a SQLite failure (a damaged page, a vanished file) becomes one line."""

    @functools.wraps(method)
    def call(self: LocalStore, *args: object, **kwargs: object) -> T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as err:
            raise store_error(self.path, err) from None

    return call


class LocalStore:
    def __init__(self, path: pathlib.Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        try:
            if read_only:
                # A read-only state dir (a read-only mount): nothing may be created, not even the WAL
                # index, so the file is opened immutable; the commands that do this only read.
                self._db = sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None)
                self._db.execute("SELECT count(*) FROM objects").fetchone()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
                self._index_deliveries()
        except sqlite3.Error as err:
            raise store_error(path, err) from None
        self._cache: _Cache | None = None
        self._token = uuid.uuid4().hex  # the change feed tokens of this object only
        self._clusters: dict[tuple[str, ...], tuple[tuple[str, ...], dict[str, int]]] = {}  # shared by bases
        # this transaction's writes (kind, name, base, what is stored now), to carry the cache over them
        self._staged: list[tuple[str, str, str, instance.ObservedPack | instance.Head | None]] = []
        # the PackInstances of the base last read whole (its Heads, namespace, instances by name)
        self._whole: tuple[instance.Heads, str, dict[str, instance.PackInstance]] | None = None
        # During ``apply``: object rows and Events not yet handed to SQLite (written in batches, in
        # the same transaction), and the last Event of each object among them.
        self._rows: dict[tuple[str, str, str], tuple[str, str, str, str, int, int, str]] | None = None
        self._events: list[tuple[int, str, str, str, str, str, str, str, str]] = []  # id first
        self._next_event = 0  # the id the next Event of this apply gets
        # (kind, namespace) -> name -> (reason, message) of its last Event in this apply, one tuple per pair
        self._last_event: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        # (kind, name) of the objects this apply may record a warning for (its blocked changes): the
        # only ones whose last Event it looks up (one entry per written object would be a million)
        self._warned: set[tuple[str, str]] = set()
        # During ``apply``: the stored rows of the objects the next ROW_BATCH changes write, read in
        # batches (None: not stored); an entry goes when the pass writes or deletes that object.
        self._known: dict[tuple[str, str, str], tuple[str, int, int, str] | None] = {}
        # the PackInstance body last stored, as segments around its name and cluster (``_put_instance``)
        self._shape: tuple[tuple[object, ...], tuple[str, ...] | None, instance.Head] | None = None
        self.writes = 0

    def close(self) -> None:
        self._db.close()

    def _named(self, query: str, params: tuple[object, ...], names: Iterable[str] | None) -> Iterator[Any]:
        """The rows of ``query`` (a SELECT ending in its WHERE conditions) whose ``name`` is one of
        ``names``, NAMES_BATCH names a query; every row of it when ``names`` is None."""
        if names is None:
            yield from self._db.execute(query, params)
            return
        wanted = sorted(names)
        for start in range(0, len(wanted), NAMES_BATCH):
            chunk = wanted[start:start + NAMES_BATCH]
            yield from self._db.execute(f"{query} AND name IN ({','.join('?' * len(chunk))})", (*params, *chunk))

    def _index_deliveries(self) -> None:
        """Fill ``delivery_objects`` once for a store made before it (its triggers keep it up to date after)."""
        if self._db.execute("SELECT 1 FROM meta WHERE key='delivery_objects'").fetchone() is not None:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._db.execute("SELECT 1 FROM meta WHERE key='delivery_objects'").fetchone() is None:
                self._db.execute("DELETE FROM delivery_objects")
                columns = _OBJECT_COLUMNS.format(body="d.body")
                self._db.execute(f"INSERT INTO delivery_objects SELECT d.namespace, d.name, {columns} "
                                 "FROM deliveries d, json_each(d.body, '$.inventory') e WHERE json_valid(d.body)")
                self._db.execute("INSERT INTO meta(key, value) VALUES ('delivery_objects', '1')")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # --- reads -----------------------------------------------------------------------------
    @_guarded
    def resource_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        return int(row[0]) if row else 0

    @_guarded
    def observe(self, namespace: str, *, since: object = None) -> instance.Observed:
        """The namespace's ClusterPacks and PackInstances, kept between calls and brought up to date
        from the change feed (only the objects written since are read again).

        A PackInstance is held as its ``instance.Head`` in a few bytes per instance
        (``instance.Heads``); the whole object is read from the store when asked for (the plan asks
        only for the instances it changes)."""
        head = self._feed_head()
        cache = self._cache
        if (cache is None or cache.namespace != namespace or head < cache.head
                or (head > cache.head and not self._catch_up(cache, head))):
            cache = self._cache = self._load(namespace, head)
        changed = None
        if isinstance(since, tuple) and len(since) == 2 and since[0] == self._token and since[1] >= cache.loaded:
            changed = frozenset(base for base, at in cache.touched.items() if at > since[1])
        return cache.observed.with_feed(changed, (self._token, cache.head))

    def _feed_head(self) -> int:
        """The id of the change feed's last row (0: empty or no feed, in a store made before it)."""
        try:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='feed'").fetchone()
        except sqlite3.OperationalError:  # no table has had a row yet
            return 0
        return int(row[0]) if row else 0

    def _load(self, namespace: str, head: int) -> _Cache:
        packs: dict[str, dict[str, instance.ObservedPack]] = defaultdict(dict)
        for row in self._db.execute("SELECT kind, body, uid, resource_version FROM objects WHERE namespace=? AND kind=?",
                                    (namespace, CLUSTER_PACK)):
            found = _decode(*row)
            assert isinstance(found, instance.ObservedPack)
            packs[found.base_pack_name][found.name] = found
        heads: dict[str, dict[str, instance.Head]] = defaultdict(dict)
        shared: dict[instance.Head, instance.Head] = {}
        for name, fields in self._db.execute(f"SELECT name, {HEAD_FIELDS} FROM objects WHERE namespace=? AND kind=?",
                                             (namespace, PACK_INSTANCE)):
            base, one = _head(fields)
            heads[base][name] = shared.setdefault(one, one)
        if not self.read_only and head > 2 * FEED_KEEP:
            with contextlib.suppress(sqlite3.Error):  # busy: another process writes; trim next time
                self._db.execute("DELETE FROM feed WHERE id <= ?", (head - FEED_KEEP,))
        cache = _Cache(namespace, head, head, {}, {}, instance.Observed.of_parts({}))
        self._rebuild(cache, {base: (packs.get(base, {}), heads.get(base, {})) for base in packs.keys() | heads.keys()})
        return cache

    def _rebuild(self, cache: _Cache,
                 touched: dict[str, tuple[dict[str, instance.ObservedPack], dict[str, instance.Head]]]) -> None:
        """``cache`` with the parts of ``touched`` bases replaced (new objects: earlier Observed stay as they were)."""
        parts = dict(cache.parts)
        for base, (packs, heads) in touched.items():
            if packs or heads:
                compact = instance.compact(base, heads, self._clusters)
                parts[base] = instance.Part(packs, _Stored(self, cache.namespace, compact), compact)
            else:
                parts.pop(base, None)
        cache.parts, cache.observed = parts, instance.Observed.of_parts(parts)

    def _editable(self, cache: _Cache, base: str,
                  copied: dict[str, tuple[dict[str, instance.ObservedPack], dict[str, instance.Head]]]
                  ) -> tuple[dict[str, instance.ObservedPack], dict[str, instance.Head]]:
        mine = copied.get(base)
        if mine is None:
            part = cache.parts.get(base, instance.EMPTY)
            mine = copied[base] = (dict(part.packs), dict(part.heads))
        return mine

    def _catch_up(self, cache: _Cache, head: int) -> bool:
        """Carry ``cache`` over the feed's rows after ``cache.head``; False when the feed no longer
        holds them all (trimmed) or they are too many: then everything is read again."""
        first = self._db.execute("SELECT min(id) FROM feed").fetchone()[0]
        if first is None or first > cache.head + 1:
            return False
        names: dict[str, set[str]] = {CLUSTER_PACK: set(), PACK_INSTANCE: set()}
        rows = self._db.execute("SELECT kind, name FROM feed WHERE id > ? AND id <= ? AND namespace=?",
                                (cache.head, head, cache.namespace))
        for kind, name in rows:
            if kind in names:
                names[kind].add(name)
        if sum(len(n) for n in names.values()) > CATCH_UP_LIMIT:
            return False
        copied: dict[str, tuple[dict[str, instance.ObservedPack], dict[str, instance.Head]]] = {}
        view = cache.observed
        for name in sorted(names[CLUSTER_PACK]):  # where it was: it may be gone, or belong to another base now
            old = view.packs.get(name)
            if old is not None:
                self._editable(cache, old.base_pack_name, copied)[0].pop(name, None)
                cache.touched[old.base_pack_name] = head
        for name in sorted(names[PACK_INSTANCE]):
            base = _owner(cache, name)
            if base is not None:
                self._editable(cache, base, copied)[1].pop(name, None)
                cache.touched[base] = head
        for kind, select in ((CLUSTER_PACK, "kind, body, uid, resource_version"), (PACK_INSTANCE, f"name, {HEAD_FIELDS}")):
            for row in self._named(f"SELECT {select} FROM objects WHERE kind=? AND namespace=?", (kind, cache.namespace),
                                   names[kind]):
                if kind == CLUSTER_PACK:
                    found = _decode(*row)
                    assert isinstance(found, instance.ObservedPack)
                    self._editable(cache, found.base_pack_name, copied)[0][found.name] = found
                    cache.touched[found.base_pack_name] = head
                else:
                    base, found_head = _head(row[1])
                    self._editable(cache, base, copied)[1][row[0]] = found_head
                    cache.touched[base] = head
        cache.head = head
        self._rebuild(cache, copied)
        return True

    def _carry(self, namespace: str, before: int, after: int,
               staged: list[tuple[str, str, str, instance.ObservedPack | instance.Head | None]]) -> None:
        """Carry the cache over this process's own writes (``staged``: kind, name, base, what is
        stored now; None: deleted) without reading them back: valid only when the cache was current
        when the transaction began, so that the feed's rows in between are exactly these writes."""
        cache = self._cache
        if cache is None or cache.namespace != namespace or cache.head != before:
            return  # the next observe reads the feed
        copied: dict[str, tuple[dict[str, instance.ObservedPack], dict[str, instance.Head]]] = {}
        for kind, name, base, now in staged:
            if kind == CLUSTER_PACK:
                old = cache.observed.packs.get(name)
                if old is not None:
                    self._editable(cache, old.base_pack_name, copied)[0].pop(name, None)
                    cache.touched[old.base_pack_name] = after
                if isinstance(now, instance.ObservedPack):
                    self._editable(cache, base, copied)[0][name] = now
            else:
                owner = _owner(cache, name)
                if owner is not None:
                    self._editable(cache, owner, copied)[1].pop(name, None)
                    cache.touched[owner] = after
                if isinstance(now, instance.Head):
                    self._editable(cache, base, copied)[1][name] = now
            cache.touched[base] = after
        cache.head = after
        self._rebuild(cache, copied)

    def instance_objects(self, namespace: str, names: Sequence[str]) -> dict[str, instance.PackInstance]:
        """The PackInstances of ``names`` as stored now, read whole."""
        out = {}
        for row in self._named("SELECT kind, body, uid, resource_version FROM objects WHERE kind=? AND namespace=?",
                               (PACK_INSTANCE, namespace), names):
            found = _decode(*row)
            assert isinstance(found, instance.PackInstance)
            out[found.name] = found
        return out

    @_guarded
    def signed_packs(self) -> int:
        """How many ClusterPacks the store holds (each one signed when it was applied)."""
        return int(self._db.execute("SELECT count(*) FROM objects WHERE kind=?", (CLUSTER_PACK,)).fetchone()[0])

    @_guarded
    def list_objects(self, kind: str, namespace: str | None = None) -> list[dict[str, object]]:
        query = "SELECT body, uid, resource_version, generation FROM objects WHERE kind=?"
        args: tuple[str, ...] = (kind,)
        if namespace is not None:
            query += " AND namespace=?"
            args = (kind, namespace)
        out = []
        for body, uid, rv, generation in self._db.execute(query + " ORDER BY namespace, name", args):
            obj = json.loads(body)
            obj["metadata"].update({"uid": uid, "resourceVersion": str(rv), "generation": generation})
            out.append(self._with_delivery(kind, obj))
        return out

    @_guarded
    def get_object(self, kind: str, namespace: str, name: str) -> dict[str, object] | None:
        row = self._db.execute(
            "SELECT body, uid, resource_version, generation FROM objects WHERE kind=? AND namespace=? AND name=?",
            (kind, namespace, name),
        ).fetchone()
        if row is None:
            return None
        obj = json.loads(row[0])
        obj["metadata"].update({"uid": row[1], "resourceVersion": str(row[2]), "generation": row[3]})
        return self._with_delivery(kind, obj)

    def _with_delivery(self, kind: str, obj: dict[str, object]) -> dict[str, object]:
        """A PackInstance as Kubernetes would show it: its delivery record in ``status.delivery``."""
        if kind != PACK_INSTANCE:
            return obj
        meta = obj["metadata"]
        try:
            row = self._db.execute("SELECT body FROM deliveries WHERE namespace=? AND name=?",
                                   # the ignore below: object JSON: metadata is a dict
                                   (meta["namespace"], meta["name"])).fetchone()  # type: ignore[index]
        except sqlite3.OperationalError:  # a store made before delivery, opened read-only: none yet
            row = None
        if row is not None:
            # the ignore below: object JSON: status is a dict
            obj["status"] = {**(obj.get("status") or {}), "delivery": json.loads(row[0])}  # type: ignore[dict-item]
        return obj

    # --- delivery records ----------------------------------------------------------------------
    @_guarded
    def deliveries(self, namespace: str, names: Collection[str] | None = None) -> dict[str, delivery.Delivery]:
        rows = self._named("SELECT name, body FROM deliveries WHERE namespace=?", (namespace,), names)
        return {name: delivery.Delivery.from_json(json.loads(body)) for name, body in rows}

    @_guarded
    def delivery_states(self, namespace: str, names: Collection[str] | None = None) -> dict[str, tuple[str, str]]:
        """(digest, result) of the records, read by SQLite's JSON functions (no record made whole)."""
        rows = self._named("SELECT name, json_extract(body, '$.digest'), json_extract(body, '$.result') "
                           "FROM deliveries WHERE namespace=?", (namespace,), names)
        # (as ``Delivery.from_json`` reads a field that is not there)
        return {name: (digest or "", result or str(delivery.Result.FAILED)) for name, digest, result in rows}

    @_guarded
    def delivery_holdings(self, namespace: str, keys: Mapping[str, Collection[tuple[str, str, str, str]]]
                          ) -> dict[str, dict[str, set[tuple[str, str, str, str]]]]:
        """Found by object name in ``delivery_objects`` (an index), not by reading every record."""
        out: dict[str, dict[str, set[tuple[str, str, str, str]]]] = {}
        rows = self._named("SELECT instance, cluster, api_version, kind, object_namespace, name FROM delivery_objects "
                           "WHERE namespace=?", (namespace,), {key[3] for wanted in keys.values() for key in wanted})
        for name, cluster, api_version, kind, ns, obj in rows:
            key = (str(api_version).rpartition("/")[0], str(kind), ns or "", str(obj))
            if key in keys.get(cluster, ()):
                out.setdefault(cluster, {}).setdefault(name, set()).add(key)
        return out

    @_guarded
    def others_wrote(self) -> object:
        """Changes when another connection committed to the store (SQLite's ``data_version``)."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def record_delivery(self, namespace: str, name: str, record: delivery.Delivery, now: str) -> None:
        """Keep ``record`` as the PackInstance's delivery (with an Event); nothing when it is gone."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("SELECT 1 FROM objects WHERE kind=? AND namespace=? AND name=?",
                                (PACK_INSTANCE, namespace, name)).fetchone() is None:
                self._db.execute("DELETE FROM deliveries WHERE namespace=? AND name=?", (namespace, name))
            else:
                self._db.execute("INSERT OR REPLACE INTO deliveries(namespace, name, body) VALUES (?,?,?)",
                                 (namespace, name, json.dumps(record.to_json(), sort_keys=True)))
                type_ = "Normal" if record.result in (delivery.Result.DELIVERED, delivery.Result.PRUNED) else "Warning"
                self._event(now, PACK_INSTANCE, namespace, name, type_, str(record.result), record.message, "")
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise errors.TransientError(f"local store {self.path}: {err}", reason="StoreError") from err

    @_guarded
    def events(self, limit: int = 100) -> list[dict[str, str]]:
        rows = self._db.execute(
            "SELECT time, kind, namespace, name, type, reason, message, revision FROM events ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("time", "kind", "namespace", "name", "type", "reason", "message", "revision")
        return [dict(zip(keys, row, strict=True)) for row in reversed(rows)]

    # --- writes ----------------------------------------------------------------------------
    def apply(self, namespace: str, changes: Sequence[change.Change], revision: str, now: str) -> int:
        """Execute the plan's writes in one transaction; returns the number of objects written.
        Rows and Events are handed to SQLite in batches within it (``_write_rows``, ``_write_events``)."""
        db = self._db
        written = 0
        self._staged = []
        self._rows, self._events, self._last_event, self._pairs = {}, [], {}, {}
        blocked = changes.where(_warns) if isinstance(changes, change.Changes) else [c for c in changes if _warns(c)]
        self._warned = {(CLUSTER_PACK if c.kind is change.ObjectKind.CLUSTER_PACK else PACK_INSTANCE, c.name)
                        for c in blocked}
        try:
            db.execute("BEGIN IMMEDIATE")
            before = self._feed_head()
            rv = self.resource_version()
            self._next_event = self._last_event_id() + 1
            for start in range(0, len(changes), ROW_BATCH):
                # a plan keeps runs of changes alike (``change.Changes``): each batch is made once, here
                batch = changes[start:start + ROW_BATCH]
                self._read_ahead(namespace, batch)
                for c in batch:
                    rv, wrote = self._apply_one(namespace, c, rv, revision, now)
                    written += wrote
                    if len(self._rows) >= ROW_BATCH:
                        self._write_rows()
                    if len(self._events) >= 2 * MAX_EVENTS:
                        self._write_events(prune=bool(written), final=False)
            self._write_rows()
            self._write_events(prune=bool(written), final=True)
            if written:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('rv', ?)", (str(rv),))
                db.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (MAX_EVENTS,)
                )
            after = self._feed_head()
            db.execute("COMMIT")
        except errors.GitopsdError:
            db.execute("ROLLBACK")
            raise
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise store_error(self.path, err) from err
        finally:
            self._rows, self._events, self._last_event, self._pairs, self._known = None, [], {}, {}, {}
            self._shape, self._warned = None, set()
        self.writes += written
        staged, self._staged = self._staged, []
        self._carry(namespace, before, after, staged)
        return written

    def _write_rows(self) -> None:
        """Hand the object rows ``_put`` kept back to SQLite, in one statement."""
        if self._rows:
            self._db.executemany(
                "INSERT OR REPLACE INTO objects(kind, namespace, name, uid, resource_version, generation, body) "
                "VALUES (?,?,?,?,?,?,?)", list(self._rows.values()))
            self._rows.clear()

    def _last_event_id(self) -> int:
        """The id AUTOINCREMENT gave last (an Event insert gets the next one)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        return max(int(row[0]) if row else 0,
                   int(self._db.execute("SELECT coalesce(MAX(id), 0) FROM events").fetchone()[0]))

    def _write_events(self, *, prune: bool, final: bool) -> None:
        """Insert the Events ``_event`` kept back, with the ids one insert each would have given
        them. Once the pass has written an object it prunes Events to the last ``MAX_EVENTS`` at
        its end (``prune``): older ones kept back are dropped instead of inserted and deleted."""
        if prune:
            del self._events[:max(0, len(self._events) - MAX_EVENTS)]
            if not final:
                return
        if self._events:
            self._db.executemany(
                "INSERT INTO events(id, time, kind, namespace, name, type, reason, message, revision) "
                "VALUES (?,?,?,?,?,?,?,?,?)", self._events)
        self._events = []

    def _read_ahead(self, namespace: str, changes: Sequence[change.Change]) -> None:
        """Read the stored rows of the objects ``changes`` may write, NAMES_BATCH names a query, instead of
        one query each in ``_stored``."""
        self._known = {}
        wanted: dict[str, list[str]] = {}
        for c in changes:
            if c.kind is change.ObjectKind.CLUSTER_PACK and c.action is change.Action.CREATE:
                wanted.setdefault(CLUSTER_PACK, []).append(c.name)
            elif c.kind is change.ObjectKind.PACK_INSTANCE and c.action in (
                    change.Action.CREATE, change.Action.SUPERSEDE, change.Action.UNINSTALL):
                wanted.setdefault(PACK_INSTANCE, []).append(c.name)
        for kind, names in wanted.items():
            for name in names:
                self._known[(kind, namespace, name)] = None
            for name, uid, rv, generation, body in self._named(
                    "SELECT name, uid, resource_version, generation, body FROM objects WHERE kind=? AND namespace=?",
                    (kind, namespace), names):
                self._known[(kind, namespace, name)] = (str(uid), int(rv), int(generation), str(body))

    def _stored(self, kind: str, namespace: str, name: str) -> tuple[str, int, int, str] | None:
        """(uid, resourceVersion, generation, body) of a stored object, counting this pass's rows."""
        if self._rows is not None:
            key = (kind, namespace, name)
            kept = self._rows.get(key)
            if kept is not None:
                return kept[3], kept[4], kept[5], kept[6]
            if key in self._known:
                return self._known[key]
        row = self._db.execute(
            "SELECT uid, resource_version, generation, body FROM objects WHERE kind=? AND namespace=? AND name=?",
            (kind, namespace, name)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]), str(row[3]))

    def _delete(self, kind: str, namespace: str, name: str) -> None:
        if self._rows is not None:
            self._rows.pop((kind, namespace, name), None)
            self._known.pop((kind, namespace, name), None)
        self._db.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))

    def _apply_one(self, namespace: str, c: change.Change, rv: int, revision: str, now: str) -> tuple[int, int]:
        if c.kind is change.ObjectKind.CLUSTER_PACK:
            if c.action is change.Action.CREATE:
                assert c.cluster_pack is not None
                stored = self._stored(CLUSTER_PACK, namespace, c.name)
                if stored is not None:  # written by another pass since this one read the store
                    spec = json.loads(stored[3]).get("spec")
                    spec = spec if isinstance(spec, dict) else {}
                    ref = spec.get("registryRef")
                    digest = ref.get("digest") if isinstance(ref, dict) else None
                    cp = c.cluster_pack
                    if spec.get("checksum") == cp.checksum and digest == cp.manifest_digest:
                        return rv, 1  # the same content: adopt it, as the cluster adapter does
                    raise errors.ImmutabilityViolation(
                        f"ClusterPack {c.name} appeared in the store during the pass with checksum {spec.get('checksum')} "
                        f"instead of {cp.checksum}; published versions are immutable: bump 'version' in "
                        f"{cp.source_build_ref}"
                    )
                rv += 1
                self._put(CLUSTER_PACK, namespace, c.name, c.cluster_pack.to_object(), rv, generation=1)
                self._event(now, CLUSTER_PACK, namespace, c.name, "Normal", "Created", c.reason, revision)
                return rv, 1
            if c.action is change.Action.UNINSTALL:
                rv += 1
                self._delete(CLUSTER_PACK, namespace, c.name)
                self._staged.append((CLUSTER_PACK, c.name, c.base_pack_name, None))
                self._event(now, CLUSTER_PACK, namespace, c.name, "Normal", "Pruned", c.reason, revision)
                return rv, 1
            if c.action is change.Action.BLOCKED and c.condition is not None:
                self._event(now, CLUSTER_PACK, namespace, c.name, "Warning", c.reason, c.condition.message, revision)
            return rv, 0
        # PackInstance
        if c.action in (change.Action.CREATE, change.Action.SUPERSEDE, change.Action.UNINSTALL):
            assert c.pack_instance is not None
            stored = self._stored(PACK_INSTANCE, namespace, c.name)
            if (c.pack_instance.resource_version is not None and stored is not None
                    and str(stored[1]) != c.pack_instance.resource_version):
                raise errors.TransientError(
                    f"PackInstance {c.name} changed during the pass (resourceVersion); the next pass retries",
                    reason="Conflict",
                )
            if c.action is change.Action.UNINSTALL:
                if stored is None:
                    return rv, 0
                rv += 1
                self._delete(PACK_INSTANCE, namespace, c.name)
                self._db.execute("DELETE FROM deliveries WHERE namespace=? AND name=?", (namespace, c.name))
                self._staged.append((PACK_INSTANCE, c.name, c.base_pack_name, None))
                self._event(now, PACK_INSTANCE, namespace, c.name, "Normal", "Uninstalled", c.reason, revision)
                return rv, 1
            generation = 1
            uid = None
            if stored is not None:
                uid, generation = stored[0], stored[2]
                if json.loads(stored[3]).get("spec") != c.pack_instance.spec():
                    generation += 1
            rv += 1
            self._put_instance(namespace, c.name, c.pack_instance, rv, generation, uid)
            kind = "Normal"
            reason = "Installed" if c.action is change.Action.CREATE else str(c.direction or "Superseded")
            self._event(now, PACK_INSTANCE, namespace, c.name, kind, reason, c.reason, revision)
            return rv, 1
        if c.action is change.Action.BLOCKED and c.condition is not None:
            self._write_rows()  # get_object reads SQLite
            existing = self.get_object(PACK_INSTANCE, namespace, c.name)
            self._event(now, PACK_INSTANCE, namespace, c.name, "Warning", c.reason, c.condition.message, revision)
            if existing is not None:
                status = dict(existing.get("status") or {})  # type: ignore[call-overload]  # object JSON: status is a dict
                conditions = [c.condition.to_json()]
                if status.get("conditions") != conditions:
                    status["conditions"] = conditions
                    existing["status"] = status
                    rv += 1
                    meta = existing["metadata"]
                    # the ignore below: object JSON: metadata is a dict
                    self._put(PACK_INSTANCE, namespace, c.name, existing, rv, int(meta["generation"]), meta["uid"])  # type: ignore[index]
                    return rv, 1
        return rv, 0

    def _put(self, kind: str, namespace: str, name: str, obj: dict[str, object], rv: int, generation: int,
             uid: str | None = None) -> str:
        meta = dict(obj["metadata"])  # type: ignore[call-overload]  # object JSON: metadata is a dict
        for key in ("uid", "resourceVersion", "generation"):
            meta.pop(key, None)
        body = _encode({**obj, "metadata": meta})
        uid = self._row(kind, namespace, name, body, rv, generation, uid)
        spec = obj.get("spec")
        base = str(spec.get("basePackName", "")) if isinstance(spec, dict) else ""
        if kind == CLUSTER_PACK:
            self._staged.append((kind, name, base, codec.observed_pack_from_object(
                {**obj, "metadata": {**meta, "uid": uid, "resourceVersion": str(rv)}})))
        elif kind == PACK_INSTANCE:
            self._staged.append((kind, name, base, _head_of(obj)[1]))
        return uid

    def _row(self, kind: str, namespace: str, name: str, body: str, rv: int, generation: int, uid: str | None) -> str:
        uid = uid or _uid()
        row = (kind, namespace, name, uid, rv, generation, body)
        if self._rows is not None:  # in apply: written in batches (``_write_rows``)
            self._rows[(kind, namespace, name)] = row
            self._known.pop((kind, namespace, name), None)
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO objects(kind, namespace, name, uid, resource_version, generation, body) "
                "VALUES (?,?,?,?,?,?,?)", row)
        return uid

    def _put_instance(self, namespace: str, name: str, pi: instance.PackInstance, rv: int, generation: int,
                      uid: str | None) -> None:
        """Store PackInstance ``pi``. The instances of one pack that a pass writes alike (a plan's
        ``change.Run``: they differ only in name and cluster) come one after another: their body is
        the last one's with the name and cluster put in (checked once against a whole encoding)."""
        key = (pi.namespace, pi.base_pack_name, pi.cluster_pack, pi.version, pi.manifest_digest, pi.checksum,
               pi.priority, pi.source_build_ref, pi.revision, pi.state, pi.history, pi.conditions)
        shape = self._shape
        if shape is None or shape[0] != key:
            shape = self._shape = (key, _shape_of(pi), _head_of(codec.pack_instance_object(pi))[1])
        segments, head = shape[1], shape[2]
        if segments is None:
            self._put(PACK_INSTANCE, namespace, name, codec.pack_instance_object(pi), rv, generation, uid)
            return
        text_name, text_cluster = _encode(name)[1:-1], _encode(pi.cluster)[1:-1]
        body = "".join(text_name if s is _NAME else text_cluster if s is _CLUSTER else s for s in segments)
        self._row(PACK_INSTANCE, namespace, name, body, rv, generation, uid)
        self._staged.append((PACK_INSTANCE, name, pi.base_pack_name, head))

    def _event(self, now: str, kind: str, namespace: str, name: str, type_: str, reason: str, message: str,
               revision: str) -> None:
        if type_ == "Warning":
            last = self._last_event.get((kind, namespace), {}).get(name) if self._rows is not None else None
            if last is None:
                last = self._db.execute(
                    "SELECT reason, message FROM events WHERE kind=? AND namespace=? AND name=? ORDER BY id DESC LIMIT 1",
                    (kind, namespace, name),
                ).fetchone()
            if last == (reason, message):
                return  # the same warning again: like Kubernetes, do not repeat it
        if self._rows is not None:  # in apply: inserted in batches (``_write_events``)
            self._events.append((self._next_event, now, kind, namespace, name, type_, reason, message, revision))
            self._next_event += 1
            if (kind, name) in self._warned:  # only a warning later in this apply looks it up
                pair = self._pairs.setdefault((reason, message), (reason, message))
                self._last_event.setdefault((kind, namespace), {})[name] = pair
            return
        self._db.execute(
            "INSERT INTO events(time, kind, namespace, name, type, reason, message, revision) VALUES (?,?,?,?,?,?,?,?)",
            (now, kind, namespace, name, type_, reason, message, revision),
        )

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@dataclasses.dataclass
class _Cache:
    """One namespace as the store last read it, by base, and where the change feed was then."""

    namespace: str
    head: int  # the feed's last row read
    loaded: int  # the feed's last row when everything was read: a token before it cannot be answered
    parts: dict[str, instance.Part]
    touched: dict[str, int]  # base -> the feed row that last changed it (since ``loaded``)
    observed: instance.Observed


def _warns(c: change.Change) -> bool:
    """The apply records a Warning Event for ``c`` (a blocked change with its condition)."""
    return c.action is change.Action.BLOCKED and c.condition is not None


# Stand-ins for a PackInstance's name and cluster in the body kept by ``_put_instance``.
_NAME = "\x00gitopsd:name\x00"
_CLUSTER = "\x00gitopsd:cluster\x00"
_TEXT = {_encode(_NAME)[1:-1]: _NAME, _encode(_CLUSTER)[1:-1]: _CLUSTER}
_STANDINS = re.compile("|".join(re.escape(text) for text in _TEXT))


def _shape_of(pi: instance.PackInstance) -> tuple[str, ...] | None:
    """The stored body of ``pi`` split around its name and cluster (each a stand-in string among the
    segments); None when that does not give back its body exactly (then each one is encoded whole)."""
    blank = dataclasses.replace(pi, name=_NAME, cluster=_CLUSTER)
    text = _encode(codec.pack_instance_object(blank))
    segments: list[str] = []
    at = 0
    for found in _STANDINS.finditer(text):
        segments.extend((text[at:found.start()], _TEXT[found.group()]))
        at = found.end()
    segments.append(text[at:])
    text_name, text_cluster = _encode(pi.name)[1:-1], _encode(pi.cluster)[1:-1]
    body = "".join(text_name if s is _NAME else text_cluster if s is _CLUSTER else s for s in segments)
    return tuple(segments) if body == _encode(codec.pack_instance_object(pi)) else None


def _uid() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives it."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _decode(kind: str, body: str, uid: str, object_rv: int) -> instance.ObservedPack | instance.PackInstance | None:
    obj = json.loads(body)
    obj["metadata"]["uid"] = uid
    obj["metadata"]["resourceVersion"] = str(object_rv)
    if kind == CLUSTER_PACK:
        return codec.observed_pack_from_object(obj)
    if kind == PACK_INSTANCE:
        return codec.pack_instance_from_object(obj)
    return None


# What ``instance.Head`` reads of a stored PackInstance, extracted by SQLite without decoding the
# whole body in Python (a full read of a million instances).
HEAD_FIELDS = ("json_extract(body, '$.spec.basePackName', '$.spec.clusterPackRef.name', '$.spec.clusterPackRef.digest', "
               "'$.spec.clusterPackRef.checksum', '$.spec.priority', '$.spec.sourceBuildRef', '$.status.state', "
               "'$.status.history[0].installedAt')")


def _head(fields: str) -> tuple[str, instance.Head]:
    return _made(*json.loads(fields))


def _made(base: str | None, cluster_pack: str | None, digest: str | None, checksum: str | None, priority: object,
          path: str | None, state: str | None, installed_at: str | None) -> tuple[str, instance.Head]:
    return base or "", instance.Head(
        (cluster_pack or "", digest or "", checksum or "", int(priority or 0), path or ""),  # type: ignore[call-overload]
        instance.InstallState(state or "installed"), installed_at or "")


def _head_of(obj: dict[str, Any]) -> tuple[str, instance.Head]:
    """The base and Head of a PackInstance object about to be stored."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ref, history = spec.get("clusterPackRef") or {}, status.get("history") or [{}]
    return _made(spec.get("basePackName"), ref.get("name"), ref.get("digest"), ref.get("checksum"), spec.get("priority"),
                 spec.get("sourceBuildRef"), status.get("state"), history[0].get("installedAt"))


def _owner(cache: _Cache, name: str) -> str | None:
    """The base whose part holds PackInstance ``name`` (found through the dashes of its name)."""
    parts = cache.parts
    cut = name.rfind("-")
    while cut > 0:
        part = parts.get(name[:cut])
        if part is not None and name in part.heads:
            return name[:cut]
        cut = name.rfind("-", 0, cut)
    return None


class _Stored(Mapping[str, instance.PackInstance]):
    """The PackInstances of one base, read whole from the store when asked for. The instances of
    the base last asked for are read in one query and kept until the next base (callers go base by
    base)."""

    __slots__ = ("_heads", "_namespace", "_store")

    def __init__(self, store: LocalStore, namespace: str, heads: instance.Heads) -> None:
        self._store, self._namespace, self._heads = store, namespace, heads

    def __getitem__(self, name: str) -> instance.PackInstance:
        if name not in self._heads:
            raise KeyError(name)
        store = self._store
        whole = store._whole
        if whole is None or whole[0] is not self._heads or whole[1] != self._namespace:
            whole = store._whole = (self._heads, self._namespace, store.instance_objects(self._namespace, list(self._heads)))
        return whole[2][name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._heads)

    def __len__(self) -> int:
        return len(self._heads)
