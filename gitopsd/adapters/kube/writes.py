"""Cluster writes: each write the plan asks for, with field manager ``gitopsd``.

- ClusterPack CREATE: ``create`` (never an overwrite: an existing object with other content is an
  ``errors.ImmutabilityViolation``; one with the same checksum is adopted), then its status
  (``signed``, ``packSignature``, conditions) through ``/status``. UNINSTALL (pruned): ``delete``.
- PackInstance CREATE / SUPERSEDE: server-side apply of metadata and spec (``force`` for our own
  fields; the resourceVersion the plan saw as a precondition when the object existed), then
  server-side apply of the whole status on ``/status``. SUPERSEDE keeps the object (same uid).
  UNINSTALL: ``delete`` with a resourceVersion precondition (history lives in the Git status).
- BLOCKED with a condition: on a PackInstance, a status write of the conditions, only when they
  differ from the cached ones (a ClusterPack only gets a Warning Event: see ``KubeCluster.apply``).
- ``status.delivery`` of a PackInstance: server-side apply by field manager ``gitopsd-delivery``.
- A 409 Conflict is answered with a fresh read: when the object still has the content the plan
  was made from (the conflict came from someone touching nothing we read), the write is retried
  with the new resourceVersion, a bounded number of times; otherwise the write fails with
  ``errors.Conflict`` and the next pass plans from the new state (no lost update).

The conditions written are those ``gitopsd.core.conditions`` decides; this module serialises them.
Every write's answer goes into the watch cache, and every write records an Event.
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
    GROUP,
    JSON,
    PACK_INSTANCES,
    VERSION,
    Kind,
    Requests,
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

    # -- ClusterPacks -------------------------------------------------------------------------

    def create_pack(self, namespace: str, cp: pack.ClusterPack, note: str, now: str) -> None:
        body: JSON = cp.to_object()
        status = cast(JSON, body.pop("status"))
        body["metadata"] = {**body["metadata"], "namespace": namespace}
        informer = self.informer(CLUSTER_PACKS, namespace)
        obj: JSON | None = None
        for attempt in self.attempts(f"create ClusterPack {namespace}/{cp.name}"):
            try:
                obj = self.requests.send("create", CLUSTER_PACKS.plural, self.requests.custom.create_namespaced_custom_object,
                                         GROUP, VERSION, namespace, CLUSTER_PACKS.plural, body, field_manager=FIELD_MANAGER)
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
        status["conditions"] = conditions.status_created_pack(
            cp.source_build_ref, cp.provenance.commit, generation=int(obj["metadata"].get("generation") or 1), now=now)
        obj = self.write_status(namespace, CLUSTER_PACKS, obj, status)
        self.events.record(namespace, CLUSTER_PACKS, cp.name, "Normal", "Created", f"ClusterPack {cp.name} created: {note}",
                           now, obj)

    def complete_packs(self, namespace: str, now: str) -> int:
        """Write the status of ClusterPacks whose status write was lost after their create."""
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
            status["conditions"] = conditions.status_created_pack(
                str(spec.get("sourceBuildRef", "")), str((spec.get("provenance") or {}).get("commit", "")),
                generation=int(meta.get("generation") or 1), now=now,
            )
            try:
                self.write_status(namespace, CLUSTER_PACKS, obj, status)
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
                       now: str) -> None:
        body: JSON = codec.pack_instance_object(pi)
        status = cast(JSON, body.pop("status"))
        meta: JSON = {**body["metadata"], "namespace": namespace}
        obj: JSON | None = None
        expected = basis.get((PACK_INSTANCES.plural, pi.name))
        rv = pi.resource_version if expected is not None else None
        informer = self.informer(PACK_INSTANCES, namespace)
        for attempt in self.attempts(f"apply PackInstance {namespace}/{pi.name}"):
            body["metadata"] = {**meta, "resourceVersion": rv} if rv else meta
            try:
                obj = self.requests.send(
                    "apply", PACK_INSTANCES.plural, self.requests.custom.patch_namespaced_custom_object,
                    GROUP, VERSION, namespace, PACK_INSTANCES.plural, pi.name, body,
                    field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH,
                )
                break
            except ApiException as err:
                if err.status != 409:
                    raise translate(err, action="apply", kind=PACK_INSTANCES, namespace=namespace, name=pi.name) from err
                rv = self.fresh_basis(namespace, PACK_INSTANCES, pi.name, expected, err)
                attempt.retry(err)
        assert obj is not None
        informer.upsert(obj)
        previous = (expected or {}).get("status") or {}
        status["conditions"] = conditions.status_written(pi.conditions, generation=int(obj["metadata"].get("generation") or 1),
                                                         now=now, previous=previous.get("conditions") or ())
        obj = self.write_status(namespace, PACK_INSTANCES, obj, status)
        self.events.record(namespace, PACK_INSTANCES, pi.name, "Normal", reason, f"{pi.cluster_pack}: {note}", now, obj)

    def block_instance(self, namespace: str, c: change.Change, now: str) -> int:
        assert c.condition is not None
        existing = self.informer(PACK_INSTANCES, namespace).get(c.name)
        if existing is None:
            self.events.record(namespace, PACK_INSTANCES, c.name, "Warning", c.reason, c.condition.message, now)
            return 0
        status = dict(existing.get("status") or {})
        generation = int(existing["metadata"].get("generation") or 1)
        # keep the generation of the last completed write: a block does not complete a spec write
        observed = conditions.observed_generation(status) or generation
        wanted = conditions.status_blocked(c.condition, reason=c.reason, generation=observed, now=now,
                                           previous=status.get("conditions") or ())
        if conditions.same_but_times(wanted, status.get("conditions")):
            return 0
        status["conditions"] = wanted
        obj = self.write_status(namespace, PACK_INSTANCES, existing, status)
        self.events.record(namespace, PACK_INSTANCES, c.name, "Warning", c.reason, c.condition.message, now, obj)
        return 1

    def record_delivery(self, namespace: str, name: str, record: delivery.Delivery, now: str) -> None:
        """Server-side apply of ``status.delivery`` alone, by field manager ``gitopsd-delivery``:
        the plan's own status writes (manager ``gitopsd``) leave it in place, and it leaves theirs."""
        body = {"apiVersion": API_VERSION, "kind": PACK_INSTANCES.kind, "metadata": {"name": name, "namespace": namespace},
                "status": {"delivery": record.to_json()}}
        try:
            written = self.requests.send(
                "apply", f"{PACK_INSTANCES.plural}/status", self.requests.custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, PACK_INSTANCES.plural, name, body,
                field_manager=DELIVERY_FIELD_MANAGER, force=True, _content_type=APPLY_PATCH,
            )
        except ApiException as err:
            if err.status == 404:
                return  # uninstalled meanwhile: its delivery record went with it
            raise translate(err, action="write the delivery status of", kind=PACK_INSTANCES, namespace=namespace,
                            name=name) from err
        except Exception as err:
            raise translate(err, action="write the delivery status of", kind=PACK_INSTANCES, namespace=namespace,
                            name=name) from err
        self.informer(PACK_INSTANCES, namespace).upsert(written)
        type_ = "Normal" if record.result in (delivery.Result.DELIVERED, delivery.Result.PRUNED) else "Warning"
        self.events.record(namespace, PACK_INSTANCES, name, type_, str(record.result), record.message, now, written)

    # -- shared writes --------------------------------------------------------------------------

    def write_status(self, namespace: str, kind: Kind, obj: JSON, status: JSON) -> JSON:
        """Server-side apply of the whole status on ``/status``, based on ``obj``."""
        name = obj["metadata"]["name"]
        expected, rv = obj, obj["metadata"].get("resourceVersion")
        written: JSON | None = None
        for attempt in self.attempts(f"apply {kind.kind} {namespace}/{name} status"):
            body = {"apiVersion": API_VERSION, "kind": kind.kind,
                    "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv}, "status": status}
            try:
                written = self.requests.send(
                    "apply", f"{kind.plural}/status", self.requests.custom.patch_namespaced_custom_object_status,
                    GROUP, VERSION, namespace, kind.plural, name, body,
                    field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH,
                )
                break
            except ApiException as err:
                if err.status != 409:
                    raise translate(err, action="write the status of", kind=kind, namespace=namespace, name=name) from err
                rv = self.fresh_basis(namespace, kind, name, expected, err)
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
                gone = self.requests.send("delete", kind.plural, self.requests.custom.delete_namespaced_custom_object,
                                          GROUP, VERSION, namespace, kind.plural, name, body=options)
                break
            except ApiException as err:
                if err.status == 404:
                    self.informer(kind, namespace).remove(name, rv_of(expected))
                    return 0  # already gone
                if err.status != 409:
                    raise translate(err, action="delete", kind=kind, namespace=namespace, name=name) from err
                rv = self.fresh_basis(namespace, kind, name, expected, err)
                attempt.retry(err)
        deleted_rv = rv_of(gone) if gone.get("kind") == kind.kind else rv_of(expected)
        self.informer(kind, namespace).remove(name, deleted_rv)
        self.events.record(namespace, kind, name, "Normal", reason, f"{kind.kind} {name} deleted: {note}", now, expected)
        return 1

    def fresh_basis(self, namespace: str, kind: Kind, name: str, expected: JSON | None, err: ApiException) -> str | None:
        """After a 409: the current resourceVersion when the object still has the content the
        write was based on; otherwise the write would lose someone's update, so give up."""
        fresh = self.get(kind, namespace, name)
        if fresh is not None:
            self.informer(kind, namespace).upsert(fresh)
        if _content(fresh) != _content(expected):
            raise errors.Conflict(
                f"{kind.kind} {namespace}/{name} changed since it was read; not overwriting that change: the next pass "
                "plans from the new state",
            ) from err
        return None if fresh is None else fresh["metadata"].get("resourceVersion")

    def get(self, kind: Kind, namespace: str, name: str) -> JSON | None:
        """The object as the API server has it now; None when it does not exist."""
        try:
            return self.requests.send("get", kind.plural, self.requests.custom.get_namespaced_custom_object,
                                      GROUP, VERSION, namespace, kind.plural, name)
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
