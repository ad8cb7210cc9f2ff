"""Is an object on a cluster healthy yet? The rules of kstatus, as a pure function of the object.

``of(obj)`` reads the object as the API server returns it and says ``CURRENT`` (healthy: what was
applied is in effect), ``IN_PROGRESS`` (not yet, keep waiting) or ``FAILED`` (it will not get there
without a change), with a message naming what is missing. Delivery waits on it stage by stage
(``gitopsd.delivery.engine``). Kinds without a rule are healthy once applied, or as their own
kstatus conditions (Stalled / Ready / Reconciling) say. This reads the conditions of objects others
manage; the conditions gitopsd writes are decided in ``gitopsd.core.conditions``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from gitopsd.model.conditions import ConditionStatus, ConditionType


class Status(enum.StrEnum):
    CURRENT = "Current"
    IN_PROGRESS = "InProgress"
    FAILED = "Failed"


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    status: Status
    message: str = ""

    @property
    def healthy(self) -> bool:
        return self.status is Status.CURRENT


CURRENT = Health(Status.CURRENT)


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or () if isinstance(c, Mapping)}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def of(obj: Mapping[str, Any]) -> Health:
    kind = str(obj.get("kind", ""))
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return Health(Status.IN_PROGRESS, "being deleted")
    generation = _int(meta.get("generation"))
    observed = status.get("observedGeneration")
    if kind in _RULES:
        if observed is not None and generation and _int(observed) < generation:
            return Health(Status.IN_PROGRESS, f"status is for generation {observed}, the object is at {generation}")
        return _RULES[kind](obj, status)
    conditions = _conditions(status)
    if observed is not None and generation and _int(observed) < generation:
        return Health(Status.IN_PROGRESS, f"status is for generation {observed}, the object is at {generation}")
    stalled = conditions.get(ConditionType.STALLED)
    if stalled is not None and stalled.get("status") == ConditionStatus.TRUE:
        return Health(Status.FAILED, f"Stalled: {stalled.get('message') or stalled.get('reason') or ''}".rstrip(": "))
    ready = conditions.get(ConditionType.READY)
    if ready is not None:
        if ready.get("status") == ConditionStatus.TRUE:
            return CURRENT
        return Health(Status.IN_PROGRESS,
                      f"Ready={ready.get('status')}: {ready.get('message') or ready.get('reason') or ''}".rstrip(": "))
    reconciling = conditions.get(ConditionType.RECONCILING)
    if reconciling is not None and reconciling.get("status") == ConditionStatus.TRUE:
        return Health(Status.IN_PROGRESS, f"Reconciling: {reconciling.get('message') or ''}".rstrip(": "))
    return CURRENT


def _deployment(obj: Mapping[str, Any], status: Mapping[str, Any]) -> Health:
    spec = obj.get("spec") or {}
    wanted = _int(spec.get("replicas", 1))
    conditions = _conditions(status)
    progressing = conditions.get("Progressing")
    if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Health(Status.FAILED, f"progress deadline exceeded: {progressing.get('message', '')}".rstrip(": "))
    updated, ready, available = (_int(status.get(k)) for k in ("updatedReplicas", "readyReplicas", "availableReplicas"))
    total = _int(status.get("replicas"))
    if updated < wanted:
        return Health(Status.IN_PROGRESS, f"{updated} of {wanted} replicas updated")
    if total > updated:
        return Health(Status.IN_PROGRESS, f"{total - updated} old replicas pending termination")
    if available < wanted:
        return Health(Status.IN_PROGRESS, f"{available} of {wanted} replicas available")
    if ready < wanted:
        return Health(Status.IN_PROGRESS, f"{ready} of {wanted} replicas ready")
    return CURRENT


def _statefulset(obj: Mapping[str, Any], status: Mapping[str, Any]) -> Health:
    spec = obj.get("spec") or {}
    wanted = _int(spec.get("replicas", 1))
    ready = _int(status.get("readyReplicas"))
    if ready < wanted:
        return Health(Status.IN_PROGRESS, f"{ready} of {wanted} replicas ready")
    strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy == "RollingUpdate":
        if _int(status.get("updatedReplicas")) < wanted:
            return Health(Status.IN_PROGRESS, f"{_int(status.get('updatedReplicas'))} of {wanted} replicas updated")
        if status.get("currentRevision") != status.get("updateRevision"):
            return Health(Status.IN_PROGRESS, "rolling update in progress")
    return CURRENT


def _daemonset(obj: Mapping[str, Any], status: Mapping[str, Any]) -> Health:
    wanted = _int(status.get("desiredNumberScheduled"))
    for key, what in (("updatedNumberScheduled", "updated"), ("numberAvailable", "available"), ("numberReady", "ready")):
        have = _int(status.get(key))
        if have < wanted:
            return Health(Status.IN_PROGRESS, f"{have} of {wanted} pods {what}")
    return CURRENT


def _job(obj: Mapping[str, Any], status: Mapping[str, Any]) -> Health:
    conditions = _conditions(status)
    failed = conditions.get("Failed")
    if failed is not None and failed.get("status") == "True":
        return Health(Status.FAILED, f"job failed: {failed.get('message') or failed.get('reason') or ''}".rstrip(": "))
    complete = conditions.get("Complete")
    if complete is not None and complete.get("status") == "True":
        return CURRENT
    return Health(Status.IN_PROGRESS, f"{_int(status.get('succeeded'))} succeeded, {_int(status.get('active'))} active")


def _pvc(obj: Mapping[str, Any], status: Mapping[str, Any]) -> Health:
    phase = status.get("phase")
    return CURRENT if phase == "Bound" else Health(Status.IN_PROGRESS, f"phase {phase or 'unknown'}, not Bound")


def _crd(obj: Mapping[str, Any], status: Mapping[str, Any]) -> Health:
    conditions = _conditions(status)
    names = conditions.get("NamesAccepted")
    if names is not None and names.get("status") == "False":
        return Health(Status.FAILED, f"names not accepted: {names.get('message', '')}")
    established = conditions.get("Established")
    if established is not None and established.get("status") == "True":
        return CURRENT
    return Health(Status.IN_PROGRESS, "not Established yet")


def _pod(obj: Mapping[str, Any], status: Mapping[str, Any]) -> Health:
    phase = status.get("phase")
    if phase == "Succeeded":
        return CURRENT
    if phase == "Failed":
        return Health(Status.FAILED, f"pod failed: {status.get('message') or status.get('reason') or ''}".rstrip(": "))
    ready = _conditions(status).get("Ready")
    if ready is not None and ready.get("status") == "True":
        return CURRENT
    return Health(Status.IN_PROGRESS, f"phase {phase or 'Pending'}")


def _namespace(obj: Mapping[str, Any], status: Mapping[str, Any]) -> Health:
    phase = status.get("phase", "Active")
    return CURRENT if phase == "Active" else Health(Status.IN_PROGRESS, f"phase {phase}")


_RULES = {
    "Deployment": _deployment,
    "StatefulSet": _statefulset,
    "DaemonSet": _daemonset,
    "Job": _job,
    "PersistentVolumeClaim": _pvc,
    "CustomResourceDefinition": _crd,
    "Pod": _pod,
    "Namespace": _namespace,
}
