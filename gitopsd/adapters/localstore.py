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

import dataclasses
import functools
import json
import pathlib
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

from gitopsd import errors
from gitopsd.core import codec
from gitopsd.model import change, delivery, instance, pack

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
"""

CLUSTER_PACK = pack.CLUSTER_PACK_KIND
PACK_INSTANCE = instance.PACK_INSTANCE_KIND
MAX_EVENTS = 10_000
ROW_BATCH = 10_000  # object rows an apply keeps back before handing them to SQLite in one statement
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
        except sqlite3.Error as err:
            raise store_error(path, err) from None
        self._cache: tuple[int, str, instance.Observed] | None = None
        # What this pass wrote, to carry the observed state over it: a decoded PackInstance when the
        # plan's own value is what was stored, else the stored object (None: deleted).
        self._staged: list[tuple[str, str, instance.PackInstance | dict[str, object] | None]] = []
        # During ``apply``: object rows and Events not yet handed to SQLite (written in batches, in
        # the same transaction), and the last Event of each object among them.
        self._rows: dict[tuple[str, str, str], tuple[str, str, str, str, int, int, str]] | None = None
        self._events: list[tuple[int, str, str, str, str, str, str, str, str]] = []  # id first
        self._next_event = 0  # the id the next Event of this apply gets
        # (kind, namespace) -> name -> (reason, message) of its last Event in this apply, one tuple per pair
        self._last_event: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
        self._pairs: dict[tuple[str, str], tuple[str, str]] = {}
        # During ``apply``: the stored rows of the objects the next ROW_BATCH changes write, read in
        # batches (None: not stored); an entry goes when the pass writes or deletes that object.
        self._known: dict[tuple[str, str, str], tuple[str, int, int, str] | None] = {}
        self.writes = 0

    def close(self) -> None:
        self._db.close()

    # --- reads -----------------------------------------------------------------------------
    @_guarded
    def resource_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='rv'").fetchone()
        return int(row[0]) if row else 0

    @_guarded
    def observe(self, namespace: str) -> instance.Observed:
        rv = self.resource_version()
        if self._cache is not None and self._cache[0] == rv and self._cache[1] == namespace:
            return self._cache[2]
        packs: dict[str, instance.ObservedPack] = {}
        instances: dict[str, instance.PackInstance] = {}
        rows = self._db.execute(
            "SELECT kind, body, uid, resource_version FROM objects WHERE namespace=?", (namespace,)
        ).fetchall()
        for kind, body, uid, object_rv in rows:
            obj = json.loads(body)
            obj["metadata"]["uid"] = uid
            obj["metadata"]["resourceVersion"] = str(object_rv)
            if kind == CLUSTER_PACK:
                p = codec.observed_pack_from_object(obj)
                packs[p.name] = p
            elif kind == PACK_INSTANCE:
                i = codec.pack_instance_from_object(obj)
                instances[i.name] = i
        observed = instance.Observed(packs=packs, instances=instances)
        self._cache = (rv, namespace, observed)
        return observed

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
    def deliveries(self, namespace: str) -> dict[str, delivery.Delivery]:
        rows = self._db.execute("SELECT name, body FROM deliveries WHERE namespace=?", (namespace,))
        return {name: delivery.Delivery.from_json(json.loads(body)) for name, body in rows}

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
        try:
            db.execute("BEGIN IMMEDIATE")
            rv = before = self.resource_version()
            self._next_event = self._last_event_id() + 1
            for index, c in enumerate(changes):
                if index % ROW_BATCH == 0:
                    self._read_ahead(namespace, changes[index:index + ROW_BATCH])
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
            db.execute("COMMIT")
        except errors.GitopsdError:
            db.execute("ROLLBACK")
            self._cache = None
            raise
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._cache = None
            raise store_error(self.path, err) from err
        finally:
            self._rows, self._events, self._last_event, self._pairs, self._known = None, [], {}, {}, {}
        self.writes += written
        self._advance_cache(namespace, before, rv)
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
        """Read the stored rows of the objects ``changes`` may write, 500 names a query, instead of
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
            for start in range(0, len(names), 500):
                batch = names[start:start + 500]
                for name in batch:
                    self._known[(kind, namespace, name)] = None
                marks = ",".join("?" * len(batch))
                for name, uid, rv, generation, body in self._db.execute(
                        "SELECT name, uid, resource_version, generation, body FROM objects "
                        f"WHERE kind=? AND namespace=? AND name IN ({marks})", (kind, namespace, *batch)):
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

    def _advance_cache(self, namespace: str, before: int, after: int) -> None:
        """Carry the observed state over the pass's own writes instead of re-reading every row: valid
        only when the cache was current when the transaction began (nobody else wrote in between)."""
        cached = self._cache
        if cached is None or cached[0] != before or cached[1] != namespace:
            self._cache = None
            return
        packs, instances = dict(cached[2].packs), dict(cached[2].instances)
        for kind, name, obj in self._staged:
            if kind == CLUSTER_PACK:
                if obj is None:
                    packs.pop(name, None)
                else:
                    assert isinstance(obj, dict)
                    packs[name] = codec.observed_pack_from_object(obj)
            elif obj is None:
                instances.pop(name, None)
            elif isinstance(obj, instance.PackInstance):
                instances[name] = obj
            elif obj is not None:
                instances[name] = codec.pack_instance_from_object(obj)
        self._cache = (after, namespace, instance.Observed(packs=packs, instances=instances))

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
                self._staged.append((CLUSTER_PACK, c.name, None))
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
                self._staged.append((PACK_INSTANCE, c.name, None))
                self._event(now, PACK_INSTANCE, namespace, c.name, "Normal", "Uninstalled", c.reason, revision)
                return rv, 1
            generation = 1
            uid = None
            if stored is not None:
                uid, generation = stored[0], stored[2]
                if json.loads(stored[3]).get("spec") != c.pack_instance.spec():
                    generation += 1
            rv += 1
            uid = self._put(PACK_INSTANCE, namespace, c.name, codec.pack_instance_object(c.pack_instance), rv, generation, uid,
                            stage=False)
            # the plan's value is what was stored (the codec round-trips it): no second decode, no copy
            self._staged.append((PACK_INSTANCE, c.name, dataclasses.replace(c.pack_instance, uid=uid, resource_version=str(rv))))
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

    def _put(self, kind: str, namespace: str, name: str, obj: dict[str, object], rv: int, generation: int, uid: str | None = None,
             *, stage: bool = True) -> str:
        meta = dict(obj["metadata"])  # type: ignore[call-overload]  # object JSON: metadata is a dict
        for key in ("uid", "resourceVersion", "generation"):
            meta.pop(key, None)
        body = _encode({**obj, "metadata": meta})
        uid = uid or str(uuid.uuid4())
        row = (kind, namespace, name, uid, rv, generation, body)
        if self._rows is not None:
            self._rows[(kind, namespace, name)] = row
            self._known.pop((kind, namespace, name), None)
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO objects(kind, namespace, name, uid, resource_version, generation, body) "
                "VALUES (?,?,?,?,?,?,?)", row)
        if stage:
            self._staged.append((kind, name, {**obj, "metadata": {**meta, "uid": uid, "resourceVersion": str(rv)}}))
        return uid

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
            pair = self._pairs.setdefault((reason, message), (reason, message))
            self._last_event.setdefault((kind, namespace), {})[name] = pair
            return
        self._db.execute(
            "INSERT INTO events(time, kind, namespace, name, type, reason, message, revision) VALUES (?,?,?,?,?,?,?,?)",
            (now, kind, namespace, name, type_, reason, message, revision),
        )

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
