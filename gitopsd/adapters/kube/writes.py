"""Cluster writes: each write the plan asks for, with field manager ``gitopsd``, one request an object.

The CRDs have no status subresource (``gitopsd.deploygen``), so one server-side apply sets an
object's metadata, spec and status together: a reader never sees a spec without its status, and an
interrupted pass leaves each object either as it was or fully written.

- ClusterPack CREATE: ``create`` with its status (``signed``, ``packSignature``, conditions; never
  an overwrite: an existing object with other content is an ``errors.ImmutabilityViolation``; one
  with the same checksum is adopted). UNINSTALL (pruned): ``delete``.
- PackInstance CREATE / SUPERSEDE: server-side apply of metadata, spec and status (``force`` for our
  own fields; the resourceVersion the plan saw as a precondition when the object existed). SUPERSEDE
  keeps the object (same uid). A write whose result the watch cache already holds is not sent.
  UNINSTALL: ``delete`` with a resourceVersion precondition (history lives in the Git status).
- BLOCKED with a condition: on a PackInstance, a status write of the conditions, only when they
  differ from the cached ones (a ClusterPack only gets a Warning Event: see ``KubeCluster.apply``).
- ``status.delivery`` of a PackInstance: server-side apply by field manager ``gitopsd-delivery``;
  its Event is one per ClusterPack and result of the delivery batch (``KubeCluster.flush_events``).

``observedGeneration``: without a status subresource ``metadata.generation`` moves on every spec or
status change, so each write stamps the generation its own write makes: 1 for a create, the
generation it was based on (its resourceVersion precondition) + 1 for an update. A status-only write
(blocked, delivery) carries a condition's ``observedGeneration`` forward when it was current, so a
status that described the spec still does (``kubectl wait --for=condition=Ready`` keeps working).
When an answer shows that the API server dropped the status (CRDs from an older release, with the
subresource) the status goes through ``/status`` as before, for the rest of the process.

A 409 Conflict is answered with a fresh read: when the object still has the content the plan was
made from (the conflict came from someone touching nothing we read), the write is retried with the
new resourceVersion, a bounded number of times; otherwise the write fails with ``errors.Conflict``
and the next pass plans from the new state (no lost update).

The conditions written are those ``gitopsd.core.conditions`` decides; this module serialises them.
Every write's answer goes into the watch cache, and every write is counted in the pass's Events.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import structlog
from kubernetes.client.exceptions import ApiException

from gitopsd import errors
from gitopsd.adapters.kube.cache import Informer
from gitopsd.adapters.kube.connection import (
    API_VERSION,
    APPLY_PATCH,
    CLUSTER_PACKS,
    DELIVERY_FIELD_MANAGER,
    FIELD_MANAGER,
    JSON,
    MERGE_PATCH,
    PACK_INSTANCES,
    Kind,
    Requests,
    custom_path,
    names_the_object,
    rv_of,
    translate,
)
from gitopsd.adapters.kube.events import Events
from gitopsd.adapters.kube.objects import base_of
from gitopsd.core import codec, conditions
from gitopsd.model import change, delivery, instance, pack

log = structlog.get_logger()

Basis = Mapping[tuple[str, str], JSON]  # (plural, name) -> the object as the plan saw it
MANAGED = {"fieldManager": FIELD_MANAGER}
FORCED = {"fieldManager": FIELD_MANAGER, "force": "true"}  # server-side apply taking our own fields back


def write_order(c: change.Change) -> int:
    """ClusterPacks before the instances that point to them; blocked status; deletions last."""
    if c.kind is change.ObjectKind.CLUSTER_PACK and c.action is change.Action.CREATE:
        return 0
    if c.kind is change.ObjectKind.PACK_INSTANCE and c.action in (change.Action.CREATE, change.Action.SUPERSEDE):
        return 1
    if c.action is change.Action.BLOCKED:
        return 2
    if c.kind is change.ObjectKind.PACK_INSTANCE:
        return 3
    return 4


def _content(obj: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What a write is based on: spec, status, labels, annotations, deletion (not bookkeeping)."""
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    return (obj.get("spec"), obj.get("status"), meta.get("labels"), meta.get("annotations"), meta.get("deletionTimestamp"))


StatusFor = Callable[[int, int], JSON]  # (generation before the write, after it) -> the status to write


def generation_of(obj: Mapping[str, Any] | None) -> int:
    """``metadata.generation`` of an object; 0 when there is none (the write creates it)."""
    try:
        return int(((obj or {}).get("metadata") or {}).get("generation") or 0)
    except (TypeError, ValueError):
        return 0


def carried(observed: Any, before: int, after: int) -> Any:
    """The ``observedGeneration`` of a condition after a status-only write from ``before`` to ``after``:
    a status that described the current spec still does; an older one stays older."""
    return after if observed == before else observed


def restamped(conditions_: Any, before: int, after: int) -> list[JSON]:
    return [{**c, "observedGeneration": carried(c.get("observedGeneration"), before, after)}
            if isinstance(c, Mapping) and "observedGeneration" in c else c for c in conditions_ or ()]


def _status_landed(answer: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Does the answer to a write hold the status it sent? (No: the CRD has a status subresource.)"""
    return (answer.get("status") or {}).get("conditions") == status.get("conditions")


def _holds(cached: Mapping[str, Any], meta: Mapping[str, Any], spec: Any, status: Mapping[str, Any]) -> bool:
    """Would writing ``meta``/``spec``/``status`` over ``cached`` change nothing but condition times?"""
    have = cached.get("metadata") or {}
    labels = have.get("labels") or {}
    if cached.get("spec") != spec or any(labels.get(k) != v for k, v in (meta.get("labels") or {}).items()):
        return False
    current = cached.get("status") or {}
    if any(current.get(k) != v for k, v in status.items() if k != "conditions"):
        return False
    return conditions.same_but_times(status.get("conditions"), current.get("conditions"))


class Writer:
    """The writes of one ``KubeCluster``: ``informer(kind, namespace)`` is its watch cache."""

    def __init__(self, requests: Requests, *, informer: Callable[[Kind, str], Informer], events: Events,
                 owns: Callable[[str], bool], conflict_retries: int, backoff: tuple[float, float]) -> None:
        self.requests = requests
        self.informer = informer
        self.events = events
        self.owns = owns
        self.conflict_retries = max(1, conflict_retries)
        self.backoff = backoff
        self.status_subresource: set[str] = set()  # kinds whose CRD (an older one) has /status

    # -- ClusterPacks -------------------------------------------------------------------------

    def create_pack(self, namespace: str, cp: pack.ClusterPack, note: str, now: str) -> None:
        body: JSON = cp.to_object()
        body["metadata"] = {**body["metadata"], "namespace": namespace}
        status = cast(JSON, body.pop("status"))

        def status_for(_before: int, after: int) -> JSON:
            return {**status, "conditions": conditions.status_created_pack(
                cp.source_build_ref, cp.provenance.commit, generation=max(after, 1), now=now)}

        if CLUSTER_PACKS.plural not in self.status_subresource:
            body["status"] = status_for(0, 1)
        informer = self.informer(CLUSTER_PACKS, namespace)
        obj: JSON | None = None
        created = False
        for attempt in self.attempts(f"create ClusterPack {namespace}/{cp.name}"):
            try:
                obj = self.requests.call("create", CLUSTER_PACKS.plural, "POST", custom_path(namespace, CLUSTER_PACKS.plural),
                                         body, query=MANAGED)
                created = True
                break
            except ApiException as err:
                if err.status != 409:
                    raise translate(err, action="create", kind=CLUSTER_PACKS, namespace=namespace, name=cp.name) from err
                fresh = self.get(CLUSTER_PACKS, namespace, cp.name)
                if fresh is None:
                    attempt.retry(err)
                    continue
                spec = fresh.get("spec") or {}
                if spec.get("checksum") == cp.checksum and (spec.get("registryRef") or {}).get("digest") == cp.manifest_digest:
                    obj = fresh  # our own create whose answer was lost: same content, adopt it
                    break
                raise errors.ImmutabilityViolation(
                    f"ClusterPack {namespace}/{cp.name} appeared in the cluster during the pass with checksum "
                    f"{spec.get('checksum')} instead of {cp.checksum}; published versions are immutable: bump 'version' "
                    f"in {cp.source_build_ref}",
                ) from err
        assert obj is not None
        informer.upsert(obj)
        if created and "status" in body and not _status_landed(obj, body["status"]):
            self._learn_subresource(CLUSTER_PACKS)
        if not (obj.get("status") or {}).get("conditions"):
            obj = self.write_status(namespace, CLUSTER_PACKS, obj, status_for)
        self.events.add(namespace, CLUSTER_PACKS, cp.name, "Normal", "Created", note, obj=obj)

    def complete_packs(self, namespace: str, now: str) -> int:
        """Write the status of ClusterPacks created without one (by an older release or another writer)."""
        done = 0
        for obj in self.informer(CLUSTER_PACKS, namespace).snapshot():
            meta = obj["metadata"]
            if (obj.get("status") or {}).get("conditions") or not self.owns(base_of(obj)):
                continue
            signature = (meta.get("annotations") or {}).get(pack.SIGNATURE_ANNOTATION)
            status: JSON = {"signed": signature is not None}
            if signature is not None:
                status["packSignature"] = signature
            spec = obj.get("spec") or {}

            def status_for(_before: int, after: int, status: JSON = status, spec: JSON = spec) -> JSON:
                # a ClusterPack's spec never changes after its create: its status describes any generation
                return {**status, "conditions": conditions.status_created_pack(
                    str(spec.get("sourceBuildRef", "")), str((spec.get("provenance") or {}).get("commit", "")),
                    generation=after, now=now)}

            try:
                self.write_status(namespace, CLUSTER_PACKS, obj, status_for)
            except errors.Conflict:
                # Another writer (a replica, or the CLI) was between its create and its status write
                # when this cache saw the object; once that status is there, there is nothing to complete.
                current = self.informer(CLUSTER_PACKS, namespace).get(meta["name"])
                if not ((current or {}).get("status") or {}).get("conditions"):
                    raise
                continue
            done += 1
        return done

    # -- PackInstances ------------------------------------------------------------------------

    def write_instance(self, namespace: str, pi: instance.PackInstance, basis: Basis, reason: str, note: str,
                       now: str) -> bool:
        """Apply ``pi``; False when the watch cache shows it is already so (nothing sent)."""
        body: JSON = codec.pack_instance_object(pi)
        status = cast(JSON, body.pop("status"))
        meta: JSON = {**body["metadata"], "namespace": namespace}
        expected = basis.get((PACK_INSTANCES.plural, pi.name))
        previous = ((expected or {}).get("status") or {}).get("conditions") or ()

        def status_for(_before: int, after: int) -> JSON:
            return {**status, "conditions": conditions.status_written(pi.conditions, generation=after, now=now,
                                                                       previous=previous)}

        informer = self.informer(PACK_INSTANCES, namespace)
        cached = informer.get(pi.name)
        if cached is not None and expected is not None and rv_of(cached) == rv_of(expected):
            generation = generation_of(cached)
            if _holds(cached, meta, body["spec"], status_for(generation, generation)):
                return False  # a write that cannot change anything
        rv = pi.resource_version if expected is not None else None
        before = generation_of(expected) if rv else 0
        obj: JSON | None = None
        sent: JSON = {}
        for attempt in self.attempts(f"apply PackInstance {namespace}/{pi.name}"):
            sent = {**body, "metadata": {**meta, "resourceVersion": rv} if rv else meta}
            if PACK_INSTANCES.plural not in self.status_subresource:
                sent["status"] = status_for(before, before + 1)
            try:
                obj = self.requests.call("apply", PACK_INSTANCES.plural, "PATCH",
                                         custom_path(namespace, PACK_INSTANCES.plural, pi.name), sent,
                                         query=FORCED, content_type=APPLY_PATCH)
                break
            except ApiException as err:
                if err.status != 409:
                    raise translate(err, action="apply", kind=PACK_INSTANCES, namespace=namespace, name=pi.name) from err
                fresh = self.fresh_basis(namespace, PACK_INSTANCES, pi.name, expected, err)
                rv, before = (fresh["metadata"].get("resourceVersion"), generation_of(fresh)) if fresh else (None, 0)
                attempt.retry(err)
        assert obj is not None
        informer.upsert(obj)
        if "status" not in sent or not _status_landed(obj, sent["status"]):
            if "status" in sent:
                self._learn_subresource(PACK_INSTANCES)
            obj = self.write_status(namespace, PACK_INSTANCES, obj, status_for)
        elif generation_of(obj) != before + 1:
            # not the generation the status names (the object was created meanwhile by someone else):
            # stamp the right one
            obj = self.write_status(namespace, PACK_INSTANCES, obj, status_for)
        self.events.add(namespace, CLUSTER_PACKS, pi.cluster_pack, "Normal", reason, note,
                        member=(PACK_INSTANCES, pi.name))
        return True

    def block_instance(self, namespace: str, c: change.Change, now: str) -> int:
        assert c.condition is not None
        existing = self.informer(PACK_INSTANCES, namespace).get(c.name)
        if existing is None:
            self.events.add(namespace, PACK_INSTANCES, c.name, "Warning", c.reason, c.condition.message)
            return 0
        status = dict(existing.get("status") or {})
        generation = generation_of(existing) or 1
        # keep the generation of the last completed write: a block does not complete a spec write
        observed = conditions.observed_generation(status) or generation
        wanted = conditions.status_blocked(c.condition, reason=c.reason, generation=observed, now=now,
                                           previous=status.get("conditions") or ())
        if conditions.same_but_times(wanted, status.get("conditions")):
            return 0

        blocked = c.condition

        def status_for(before: int, after: int) -> JSON:
            return {"conditions": conditions.status_blocked(
                blocked, reason=c.reason, generation=carried(observed, before, after), now=now,
                previous=status.get("conditions") or ())}

        obj = self.write_status(namespace, PACK_INSTANCES, existing, status_for)
        target = str(((obj.get("spec") or {}).get("clusterPackRef") or {}).get("name") or "")
        if target:
            self.events.add(namespace, CLUSTER_PACKS, target, "Warning", c.reason, c.condition.message,
                            member=(PACK_INSTANCES, c.name))
        else:
            self.events.add(namespace, PACK_INSTANCES, c.name, "Warning", c.reason, c.condition.message, obj=obj)
        return 1

    def record_delivery(self, namespace: str, name: str, record: delivery.Delivery, now: str) -> None:
        """Server-side apply of ``status.delivery`` by field manager ``gitopsd-delivery``: the plan's
        own writes (manager ``gitopsd``) leave it in place, and it leaves their fields as they are.
        Without a status subresource the write moves ``metadata.generation``, so it also carries the
        conditions' ``observedGeneration`` forward (their content unchanged; ``carried``)."""
        informer = self.informer(PACK_INSTANCES, namespace)
        what = "write the delivery status of"
        current: Mapping[str, Any] | None = informer.get(name)
        written: JSON | None = None
        try:
            for attempt in self.attempts(f"apply PackInstance {namespace}/{name} status.delivery"):
                legacy = PACK_INSTANCES.plural in self.status_subresource
                status: JSON = {"delivery": record.to_json()}
                meta: JSON = {"name": name, "namespace": namespace}
                if current is not None and not legacy:
                    before = generation_of(current)
                    meta["resourceVersion"] = current["metadata"].get("resourceVersion")
                    kept = (current.get("status") or {}).get("conditions")
                    if kept:
                        status["conditions"] = restamped(kept, before, before + 1)
                body = {"apiVersion": API_VERSION, "kind": PACK_INSTANCES.kind, "metadata": meta, "status": status}
                try:
                    written = self.requests.call(
                        "apply", f"{PACK_INSTANCES.plural}/status" if legacy else PACK_INSTANCES.plural, "PATCH",
                        custom_path(namespace, PACK_INSTANCES.plural, name, "status" if legacy else ""), body,
                        query={"fieldManager": DELIVERY_FIELD_MANAGER, "force": "true"}, content_type=APPLY_PATCH,
                    )
                    break
                except ApiException as err:
                    if err.status != 409:
                        raise
                    current = self.get(PACK_INSTANCES, namespace, name)
                    if current is None:
                        return  # uninstalled meanwhile: its delivery record went with it
                    attempt.retry(err)
        except ApiException as err:
            if err.status == 404:
                return  # uninstalled meanwhile: its delivery record went with it
            raise translate(err, action=what, kind=PACK_INSTANCES, namespace=namespace, name=name) from err
        except errors.GitopsdError:
            raise
        except Exception as err:
            raise translate(err, action=what, kind=PACK_INSTANCES, namespace=namespace, name=name) from err
        assert written is not None
        informer.upsert(written)
        type_ = "Normal" if record.result in (delivery.Result.DELIVERED, delivery.Result.PRUNED) else "Warning"
        # one Event per ClusterPack and result of the batch (``KubeCluster.flush_events`` sends them)
        target = str(((written.get("spec") or {}).get("clusterPackRef") or {}).get("name") or "")
        if target:
            self.events.add(namespace, CLUSTER_PACKS, target, type_, str(record.result), record.message,
                            member=(PACK_INSTANCES, name))
        else:
            self.events.add(namespace, PACK_INSTANCES, name, type_, str(record.result), record.message, obj=written)

    # -- shared writes --------------------------------------------------------------------------

    def _learn_subresource(self, kind: Kind) -> None:
        if kind.plural not in self.status_subresource:
            self.status_subresource.add(kind.plural)
            log.warning("status subresource in use: status written separately", kind=kind.kind,
                        fix="kubectl apply -f deploy/10-crds.yaml (one request per object)")

    def write_status(self, namespace: str, kind: Kind, obj: JSON, status_for: StatusFor) -> JSON:
        """Write status fields based on ``obj`` (its resourceVersion as a precondition): a merge
        patch of the object (not an apply: an apply by ``gitopsd`` without the spec would remove the
        spec it applied before), or a server-side apply on ``/status`` where the CRD has it."""
        name = obj["metadata"]["name"]
        expected, current, rv, before = obj, obj, obj["metadata"].get("resourceVersion"), generation_of(obj)
        written: JSON | None = None
        for attempt in self.attempts(f"write {kind.kind} {namespace}/{name} status"):
            legacy = kind.plural in self.status_subresource
            after = before if legacy else before + 1
            try:
                if legacy:  # an apply of the whole status: what it leaves out, it removes
                    kept = {k: v for k, v in (current.get("status") or {}).items() if k != "delivery"}
                    body = {"apiVersion": API_VERSION, "kind": kind.kind,
                            "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
                            "status": {**kept, **status_for(before, after)}}
                    written = self.requests.call("apply", f"{kind.plural}/status", "PATCH",
                                                 custom_path(namespace, kind.plural, name, "status"), body,
                                                 query=FORCED, content_type=APPLY_PATCH)
                else:
                    patch = {"metadata": {"resourceVersion": rv}, "status": status_for(before, after)}
                    written = self.requests.call("patch", kind.plural, "PATCH", custom_path(namespace, kind.plural, name),
                                                 patch, query=MANAGED, content_type=MERGE_PATCH)
                break
            except ApiException as err:
                if err.status != 409:
                    raise translate(err, action="write the status of", kind=kind, namespace=namespace, name=name) from err
                fresh = self.fresh_basis(namespace, kind, name, expected, err)
                if fresh is None:
                    raise errors.Conflict(f"{kind.kind} {namespace}/{name} disappeared during the pass; the next pass "
                                          "reads it again") from err
                current, rv, before = fresh, fresh["metadata"].get("resourceVersion"), generation_of(fresh)
                attempt.retry(err)
        assert written is not None
        self.informer(kind, namespace).upsert(written)
        return written

    def delete(self, namespace: str, kind: Kind, name: str, basis: Basis, reason: str, note: str, now: str) -> int:
        expected = basis.get((kind.plural, name))
        rv = (expected or {}).get("metadata", {}).get("resourceVersion")
        gone: JSON = {}
        for attempt in self.attempts(f"delete {kind.kind} {namespace}/{name}"):
            options = {"preconditions": {"resourceVersion": rv}} if rv else None
            try:
                gone = self.requests.call("delete", kind.plural, "DELETE", custom_path(namespace, kind.plural, name), options)
                break
            except ApiException as err:
                if err.status == 404:
                    self.informer(kind, namespace).remove(name, rv_of(expected))
                    return 0  # already gone
                if err.status != 409:
                    raise translate(err, action="delete", kind=kind, namespace=namespace, name=name) from err
                fresh = self.fresh_basis(namespace, kind, name, expected, err)
                rv = None if fresh is None else fresh["metadata"].get("resourceVersion")
                attempt.retry(err)
        deleted_rv = rv_of(gone) if gone.get("kind") == kind.kind else rv_of(expected)
        self.informer(kind, namespace).remove(name, deleted_rv)
        target = str((((expected or {}).get("spec") or {}).get("clusterPackRef") or {}).get("name") or "")
        if kind is PACK_INSTANCES and target:
            self.events.add(namespace, CLUSTER_PACKS, target, "Normal", reason, note, member=(kind, name))
        else:
            self.events.add(namespace, kind, name, "Normal", reason, note, obj=expected)
        return 1

    def fresh_basis(self, namespace: str, kind: Kind, name: str, expected: JSON | None, err: ApiException) -> JSON | None:
        """After a 409: the object now, when it still has the content the write was based on;
        otherwise the write would lose someone's update, so give up."""
        fresh = self.get(kind, namespace, name)
        if fresh is not None:
            self.informer(kind, namespace).upsert(fresh)
        if _content(fresh) != _content(expected):
            raise errors.Conflict(
                f"{kind.kind} {namespace}/{name} changed since it was read; not overwriting that change: the next pass "
                "plans from the new state",
            ) from err
        return fresh

    def get(self, kind: Kind, namespace: str, name: str) -> JSON | None:
        """The object as the API server has it now; None when it does not exist."""
        try:
            return self.requests.call("get", kind.plural, "GET", custom_path(namespace, kind.plural, name))
        except ApiException as err:
            if names_the_object(err):
                return None
            raise translate(err, action="read", kind=kind, namespace=namespace, name=name) from err
        except Exception as err:
            raise translate(err, action="read", kind=kind, namespace=namespace, name=name) from err

    def attempts(self, what: str) -> Iterator[Attempt]:
        """Bounded retries after conflicts: ``for attempt in ...: try ... break / attempt.retry(err)``."""
        for number in range(self.conflict_retries):
            attempt = Attempt(number, self.conflict_retries, what)
            yield attempt
            if not attempt.again:
                return
            time.sleep(min(self.backoff[1], self.backoff[0] * 2**number) * random.uniform(0.5, 1.0))
        raise errors.Conflict(f"{what}: still conflicting after {self.conflict_retries} tries; the next pass retries")


class Attempt:
    """One try of a write; ``retry(err)`` asks for another (bounded by ``Writer.attempts``)."""

    def __init__(self, number: int, limit: int, what: str) -> None:
        self.number, self.limit, self.what = number, limit, what
        self.again = False

    def retry(self, err: Exception) -> None:
        self.again = True
        log.info("conflict, retrying", what=self.what, attempt=self.number + 1, of=self.limit,
                 error=getattr(err, "reason", str(err)))
