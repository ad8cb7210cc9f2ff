"""``KubeCluster``: ``ports.Cluster`` on the Kubernetes API, made of the parts beside it.

``observe`` reads from the watch cache (``cache``), ``apply`` executes the plan's changes with the
cluster writes (``writes``) in convergent order, one request an object, and the writes and failures
of a pass are recorded as one Event per pack and reason (``events``); the requests themselves go through ``connection.Requests``.

Atomicity: Kubernetes has no transactions, so the writes are ordered for convergence: ClusterPacks
are created before the PackInstances that point to them, BLOCKED status next, and deletions last
(instances, then pruned ClusterPacks). A ClusterPack whose status write was lost is completed by the
next ``apply``. One failed object does not stop the others (instances of a ClusterPack that could
not be created are skipped); an unreachable or refusing API server, or a replica that lost its
leadership, stops the pass at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import structlog
from kubernetes import client

from gitopsd import errors
from gitopsd.adapters.kube.cache import Informer
from gitopsd.adapters.kube.connection import CLUSTER_PACKS, JSON, PACK_INSTANCES, Kind, Requests
from gitopsd.adapters.kube.events import Events
from gitopsd.adapters.kube.objects import base_of, present_instance
from gitopsd.adapters.kube.writes import Basis, Writer, write_order
from gitopsd.core import codec
from gitopsd.model import change, delivery, instance

log = structlog.get_logger()

# Errors after which no other write of the pass can succeed: the pass stops at once.
STOPS_THE_PASS = (errors.ConfigError, errors.ClusterUnavailable, errors.NotLeader)


class KubeCluster:
    """``ports.Cluster`` on the Kubernetes API. Close it to stop its watches."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        watch: bool = True,
        owns: Callable[[str], bool] | None = None,
        may_write: Callable[[], bool] | None = None,
        identity: str = "gitopsd",
        request_timeout: float = 30.0,
        watch_timeout: int = 300,
        conflict_retries: int = 5,
        backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.api = api
        self.watch = watch
        self.owns = owns or (lambda _: True)
        self.identity = identity
        self.requests = Requests(api, may_write=may_write or (lambda: True), timeout=request_timeout)
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        self.writes = 0
        self._informers: dict[tuple[str, str], Informer] = {}
        self._lock = threading.Lock()
        self._observed: dict[str, tuple[tuple[int, int], instance.Observed]] = {}
        self._basis: dict[str, dict[tuple[str, str], JSON]] = {}
        self.events = Events(self.requests, identity=identity, cached=self._cached)
        self.writer = Writer(self.requests, informer=self.informer, events=self.events, owns=self.owns,
                             conflict_retries=conflict_retries, backoff=backoff)

    @property
    def conflict_retries(self) -> int:
        return self.writer.conflict_retries

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            informers, self._informers = list(self._informers.values()), {}
        for informer in informers:
            informer.stop()
        self.requests.close()

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def informer(self, kind: Kind, namespace: str) -> Informer:
        """The cache of one kind in one namespace, listed (and watched) on first use."""
        key = (kind.plural, namespace)
        with self._lock:
            found = self._informers.get(key)
        if found is not None:
            return found
        created = Informer(self.requests, kind, namespace, watch_timeout=self.watch_timeout, backoff=self.backoff)
        created.relist()
        with self._lock:
            found = self._informers.setdefault(key, created)
        if found is created and self.watch:
            created.start()
        return found

    def _cached(self, kind: Kind, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The object as the cache holds it, without listing a kind that is not cached yet."""
        with self._lock:
            informer = self._informers.get((kind.plural, namespace))
        return informer.get(name) if informer is not None else None

    # -- observe ----------------------------------------------------------------------------

    def observe(self, namespace: str, *, since: object = None) -> instance.Observed:
        packs = self.informer(CLUSTER_PACKS, namespace)
        instances = self.informer(PACK_INSTANCES, namespace)
        for informer in (packs, instances):
            if (not self.watch and not informer.unread) or informer.stale or not informer.synced:
                informer.relist()
            informer.unread = False
        key = (packs.version, instances.version)
        token = (id(self), namespace, key)
        changed = None
        if isinstance(since, tuple) and len(since) == 3 and since[:2] == token[:2]:
            # the change feed: the bases the watch (or a relist, or our own writes) changed since
            changed = frozenset(packs.changed_since(since[2][0]) | instances.changed_since(since[2][1]))
        cached = self._observed.get(namespace)
        if cached is not None and cached[0] == key:
            return cached[1].with_feed(changed, token)
        observed = None
        if cached is not None and namespace in self._basis:
            moved = packs.changed_since(cached[0][0]) | instances.changed_since(cached[0][1])
            if len(moved) <= max(REREAD_BASES, len(cached[1].parts) // 8):
                observed = self._reread(namespace, cached[1], moved, packs, instances)
        if observed is None:
            observed = self._read_all(namespace, packs, instances)
        self._observed[namespace] = (key, observed)
        return observed.with_feed(changed, token)

    def _read_all(self, namespace: str, packs: Informer, instances: Informer) -> instance.Observed:
        """Every object of the cache, read into parts by base."""
        basis: dict[tuple[str, str], JSON] = {}
        found: dict[str, tuple[list[JSON], list[JSON]]] = {}
        for obj in packs.snapshot():
            base = base_of(obj)
            if self.owns(base):
                found.setdefault(base, ([], []))[0].append(obj)
        for obj in instances.snapshot():
            base = base_of(obj)
            if self.owns(base):
                found.setdefault(base, ([], []))[1].append(obj)
        parts = {base: _part(pack_objects, instance_objects, basis) for base, (pack_objects, instance_objects) in found.items()}
        self._basis[namespace] = basis
        return instance.Observed.of_parts(parts)

    def _reread(self, namespace: str, last: instance.Observed, moved: set[str], packs: Informer,
                instances: Informer) -> instance.Observed:
        """``last`` with the parts of the ``moved`` bases read again from the cache: the other parts
        stay the same objects (what the steps of a pass tell an unchanged base by)."""
        basis = self._basis[namespace]
        parts = dict(last.parts)
        for base in moved:
            old = parts.pop(base, None)
            if old is not None:
                for name in old.packs:
                    basis.pop((CLUSTER_PACKS.plural, name), None)
                for name in old.instances:
                    basis.pop((PACK_INSTANCES.plural, name), None)
        owned = [base for base in moved if self.owns(base)]
        pack_objects, instance_objects = packs.of_bases(owned), instances.of_bases(owned)
        for base in owned:
            if base in pack_objects or base in instance_objects:
                parts[base] = _part(pack_objects.get(base, []), instance_objects.get(base, []), basis)
        return instance.Observed.of_parts(parts)

    # -- delivery records -------------------------------------------------------------------

    def deliveries(self, namespace: str, names: Collection[str] | None = None) -> dict[str, delivery.Delivery]:
        """``status.delivery`` of the PackInstances in the cache (no request once it is listed)."""
        return {name: delivery.Delivery.from_json(raw) for name, raw in self._records(namespace, names)}

    def _records(self, namespace: str, names: Collection[str] | None) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """(name, ``status.delivery`` as stored) of the PackInstances in the cache that have one."""
        informer = self.informer(PACK_INSTANCES, namespace)
        found = informer.snapshot() if names is None else [o for o in map(informer.get, names) if o is not None]
        for obj in found:
            raw = (obj.get("status") or {}).get("delivery")
            if raw and self.owns(base_of(obj)):
                yield obj["metadata"]["name"], raw

    def delivery_states(self, namespace: str, names: Collection[str] | None = None) -> dict[str, tuple[str, str]]:
        return {name: (str(raw.get("digest", "")), str(raw.get("result", delivery.Result.FAILED)))
                for name, raw in self._records(namespace, names)}

    def delivery_holdings(self, namespace: str, keys: Mapping[str, Collection[tuple[str, str, str, str]]]
                          ) -> dict[str, dict[str, set[tuple[str, str, str, str]]]]:
        out: dict[str, dict[str, set[tuple[str, str, str, str]]]] = {}
        for name, raw in self._records(namespace, None):
            wanted = keys.get(str(raw.get("cluster", "")))
            if wanted:
                held = {key for e in raw.get("inventory") or () if (key := delivery.Entry.key_of(e)) in wanted}
                if held:
                    out.setdefault(str(raw["cluster"]), {})[name] = held
        return out

    def record_delivery(self, namespace: str, name: str, record: delivery.Delivery, now: str) -> None:
        """Keep ``record`` on the PackInstance; its Event waits for ``flush_events`` (``ports.GroupsEvents``)."""
        self.writer.record_delivery(namespace, name, record, now)

    def flush_events(self, now: str) -> None:
        """Send the Events of the delivery records kept since the last flush: one per ClusterPack and result."""
        if not self.events.pending:
            return  # (asking may_write would take the Lease of a one-shot command that wrote nothing)
        if self.requests.may_write():
            self.events.flush(now)
        else:
            self.events.discard()  # not the leader any more: its Events are not ours to send

    # -- apply ------------------------------------------------------------------------------

    def apply(self, namespace: str, changes: Sequence[change.Change], revision: str, now: str) -> int:
        """Execute the plan's writes in convergent order; returns the objects written."""
        self.informer(CLUSTER_PACKS, namespace)
        self.informer(PACK_INSTANCES, namespace)
        basis = self._basis.get(namespace, {})
        written = 0
        failed_packs: set[str] = set()
        first_error: errors.GitopsdError | None = None
        try:
            written += self.writer.complete_packs(namespace, now)
            for c in sorted(changes, key=write_order):
                target = c.pack_instance.cluster_pack if c.pack_instance is not None else None
                if c.action in (change.Action.CREATE, change.Action.SUPERSEDE) and target in failed_packs:
                    continue  # its ClusterPack could not be created: the next pass retries both
                try:
                    written += self._apply_one(namespace, c, basis, revision, now)
                except errors.GitopsdError as err:
                    if isinstance(err, STOPS_THE_PASS):
                        raise
                    log.warning("write failed", kind=str(c.kind), name=c.name, reason=err.reason, error=str(err))
                    kind = CLUSTER_PACKS if c.kind is change.ObjectKind.CLUSTER_PACK else PACK_INSTANCES
                    self.events.add(namespace, kind, c.name, "Warning", err.reason, str(err))
                    first_error = first_error or err
                    if c.kind is change.ObjectKind.CLUSTER_PACK:
                        failed_packs.add(c.name)
        finally:
            self.writes += written
            if not self.requests.may_write():
                self.events.discard()  # not the leader any more: its Events are not ours to send
            else:
                self.events.flush(now)  # one Event per pack and reason of the pass
        if first_error is not None:
            raise first_error
        return written

    def _apply_one(self, namespace: str, c: change.Change, basis: Basis, revision: str, now: str) -> int:
        note = f"{c.reason} (revision {revision})"
        if c.kind is change.ObjectKind.CLUSTER_PACK:
            if c.action is change.Action.CREATE:
                assert c.cluster_pack is not None
                self.writer.create_pack(namespace, c.cluster_pack, note, now)
                return 1
            if c.action is change.Action.UNINSTALL:
                return self.writer.delete(namespace, CLUSTER_PACKS, c.name, basis, "Pruned", note, now)
            if c.action is change.Action.BLOCKED and c.condition is not None:
                # a ClusterPack's status is not ours to flag: it is immutable, and the plan stops
                # talking about it once the version is bumped
                self.events.add(namespace, CLUSTER_PACKS, c.name, "Warning", c.reason, c.condition.message)
            return 0
        if c.action in (change.Action.CREATE, change.Action.SUPERSEDE):
            assert c.pack_instance is not None
            reason = "Installed" if c.action is change.Action.CREATE else str(c.direction or "Superseded")
            return int(self.writer.write_instance(namespace, c.pack_instance, basis, reason, note, now))
        if c.action is change.Action.UNINSTALL:
            return self.writer.delete(namespace, PACK_INSTANCES, c.name, basis, "Uninstalled", note, now)
        if c.action is change.Action.BLOCKED and c.condition is not None:
            return self.writer.block_instance(namespace, c, now)
        return 0


REREAD_BASES = 64  # bases moved since the last observe that are read again alone (or an eighth of them, when more)


def _part(pack_objects: list[JSON], instance_objects: list[JSON], basis: dict[tuple[str, str], JSON]) -> instance.Part:
    """One base's part, from its objects in the cache (kept in ``basis`` for the writes)."""
    found_packs: dict[str, instance.ObservedPack] = {}
    found_instances: dict[str, instance.PackInstance] = {}
    for obj in pack_objects:
        p = codec.observed_pack_from_object(obj)
        found_packs[p.name] = p
        basis[(CLUSTER_PACKS.plural, p.name)] = obj
    for obj in instance_objects:
        pi = present_instance(obj)
        found_instances[pi.name] = pi
        basis[(PACK_INSTANCES.plural, pi.name)] = obj
    return instance.Part.whole(found_packs, found_instances)
