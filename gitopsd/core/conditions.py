"""Conditions: the one place that decides what gitopsd says about the state of what it manages.

Everything here is a pure function of values; the callers only carry the result and the adapters
only serialise it. Four families, each a section below:

- **domain conditions** of the plan's changes (``applied``, ``uninstalled``, the blocked ones:
  ``ImmutabilityViolation``, ``PackCollisionDetected``, ``SignatureInvalid``, ``UninstallPending``,
  a ClusterPack that could not be published...): ``gitopsd.core.plan`` puts them on its changes;
- **kstatus** (``Ready`` / ``Reconciling`` / ``Stalled``) around the domain conditions, with
  ``observedGeneration`` and ``lastTransitionTime``: what a PackInstance or a ClusterPack says in
  ``status.conditions`` once a cluster adapter has written (or blocked) it;
- **delivery**: ``Ready`` / ``Reconciling`` / ``Stalled`` / ``Drifted`` of a delivery record
  (``model.delivery.Delivery``), from how it ended. A new fact about a delivery (the health of its
  stages, a rollout's progress) becomes a condition by adding it to :func:`of_delivery`;
- **a pass**: whether a whole pass is Ready (``gitopsd.core.summarize`` carries it).

The words are the enums of ``gitopsd.model.conditions``; the ``Condition`` values made here hold
plain strings, so they serialise to JSON and YAML as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from gitopsd.model import delivery
from gitopsd.model.conditions import KSTATUS, ConditionStatus, ConditionType, Reason
from gitopsd.model.instance import Condition, Direction

JSON = dict[str, Any]

TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE


def condition(type_: ConditionType, status: ConditionStatus, reason: str, message: str) -> Condition:
    """A condition of plain strings (``reason`` may be a ``Reason``, a ``Direction`` or an error's reason)."""
    return Condition(type_.value, status.value, str(reason), message)


# -- domain conditions: what the plan says of a change ------------------------------------------


def applied(direction: Direction, cluster_pack: str, revision: str) -> Condition:
    """A PackInstance written to run ``cluster_pack``: Ready, for the reason of its direction."""
    return condition(ConditionType.READY, TRUE, direction, f"{cluster_pack} applied at {revision}")


def uninstalled(revision: str) -> Condition:
    return condition(ConditionType.READY, FALSE, Reason.UNINSTALLED, f"removed from Git at {revision}")


def pack_created(source_build_ref: str, commit: str) -> Condition:
    """A created ClusterPack, from its spec alone: a status rewritten after a lost write reads the
    same as the first one."""
    return condition(ConditionType.READY, TRUE, Reason.CREATED, created_message(source_build_ref, commit))


def created_message(source_build_ref: str, commit: str) -> str:
    return f"created from {source_build_ref} at {commit}"


def immutability_violation(message: str) -> Condition:
    """A ClusterPack that exists with other content than its PackBuild gives now."""
    return condition(ConditionType.IMMUTABILITY_VIOLATION, TRUE, Reason.IMMUTABILITY_VIOLATION, message)


def pack_changed_in_place(cluster_pack: str) -> Condition:
    """A PackInstance of a ClusterPack that violates immutability: it stays as it is."""
    return condition(ConditionType.READY, FALSE, Reason.IMMUTABILITY_VIOLATION,
                     f"ClusterPack {cluster_pack} changed without a version bump; the instance stays as it is")


def signature_invalid(message: str) -> Condition:
    return condition(ConditionType.SIGNATURE_INVALID, TRUE, Reason.SIGNATURE_INVALID, message)


def pack_collision(message: str) -> Condition:
    return condition(ConditionType.PACK_COLLISION_DETECTED, TRUE, Reason.PACK_COLLISION_DETECTED, message)


def not_ready(reason: str, message: str) -> Condition:
    """A write held back for ``reason`` (an artifact that could not be published or verified...)."""
    return condition(ConditionType.READY, FALSE, reason, message)


def uninstall_pending(message: str) -> Condition:
    return condition(ConditionType.READY, FALSE, Reason.UNINSTALL_PENDING, message)


# Blocked reasons that a later pass may clear by itself (retried), as opposed to needing a human.
CLEARS_BY_ITSELF = frozenset({Reason.ARTIFACT_PUBLISH_FAILED.value})


def clears_by_itself(reason: str) -> bool:
    """Is a change blocked for ``reason`` retried by the next pass (Reconciling), rather than stalled
    until Git changes (Stalled)?"""
    return reason in CLEARS_BY_ITSELF


# -- kstatus: Ready / Reconciling / Stalled around the domain conditions ---------------------------


def kstatus(domain: Sequence[Condition], *, transient: bool = False) -> tuple[Condition, ...]:
    """Ready, Reconciling, Stalled, then the other domain conditions.

    ``domain`` is what the plan says: a successful write gives ``Ready=True``; a blocked change
    gives its condition (``PackCollisionDetected``, ``SignatureInvalid``, ``Ready=False``...), which
    makes Ready False and Stalled True (Reconciling True instead when ``transient``).
    """
    given = {c.type: c for c in domain}
    ready = given.get(ConditionType.READY)
    problem = next((c for c in domain if c.type != ConditionType.READY), None) or (
        ready if ready and ready.status != TRUE else None)
    if ready is None:
        assert problem is not None
        ready = condition(ConditionType.READY, FALSE, problem.reason, problem.message)
    if problem is None:
        reconciling = condition(ConditionType.RECONCILING, FALSE, Reason.SUCCEEDED, "up to date")
        stalled = condition(ConditionType.STALLED, FALSE, Reason.SUCCEEDED, "up to date")
    elif transient:
        reconciling = condition(ConditionType.RECONCILING, TRUE, problem.reason, problem.message)
        stalled = condition(ConditionType.STALLED, FALSE, problem.reason, "retried on the next pass")
    else:
        reconciling = condition(ConditionType.RECONCILING, FALSE, problem.reason, "waits for a change in Git")
        stalled = condition(ConditionType.STALLED, TRUE, problem.reason, problem.message)
    return (ready, reconciling, stalled, *(c for c in domain if c.type not in KSTATUS))


def stamped(conditions: Sequence[Condition], *, generation: int, now: str,
            previous: Sequence[Mapping[str, Any]] = ()) -> list[JSON]:
    """``conditions`` as ``status.conditions``: each with ``observedGeneration`` and a
    ``lastTransitionTime`` kept from ``previous`` while its status stays the same."""
    before = {str(c.get("type")): c for c in previous}
    out = []
    for c in conditions:
        old = before.get(c.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == c.status and old.get("lastTransitionTime") else now
        out.append({**c.to_json(), "observedGeneration": generation, "lastTransitionTime": since})
    return out


def status_written(domain: Sequence[Condition], *, generation: int, now: str,
                   previous: Sequence[Mapping[str, Any]] = ()) -> list[JSON]:
    """``status.conditions`` of an object written as the plan says (``domain``: its conditions)."""
    return stamped(kstatus(domain), generation=generation, now=now, previous=previous)


def status_blocked(blocked: Condition, *, reason: str, generation: int, now: str,
                   previous: Sequence[Mapping[str, Any]] = ()) -> list[JSON]:
    """``status.conditions`` of an object whose change is blocked for ``reason`` with ``blocked``;
    ``generation``: that of its last completed write (a block completes no spec write)."""
    return stamped(kstatus((blocked,), transient=clears_by_itself(reason)), generation=generation, now=now,
                   previous=previous)


def status_created_pack(source_build_ref: str, commit: str, *, generation: int, now: str) -> list[JSON]:
    """``status.conditions`` of a created ClusterPack."""
    return status_written((pack_created(source_build_ref, commit),), generation=generation, now=now)


def observed_generation(status: Mapping[str, Any]) -> int | None:
    """The generation a serialised status was written for (the newest ``observedGeneration`` of its
    conditions), None when it says none."""
    values = [c.get("observedGeneration") for c in status.get("conditions") or () if isinstance(c, Mapping)]
    numbers = [v for v in values if isinstance(v, int)]
    return max(numbers) if numbers else None


def same_but_times(a: Sequence[Mapping[str, Any]] | None, b: Sequence[Mapping[str, Any]] | None) -> bool:
    """Do two serialised condition lists say the same, apart from when each last changed?"""
    return _without_times(a) == _without_times(b)


def _without_times(items: Sequence[Mapping[str, Any]] | None) -> list[JSON]:
    return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in items or ()]


# -- delivery -------------------------------------------------------------------------------------

STALLED_DELIVERIES = frozenset({delivery.Result.FAILED, delivery.Result.TIMED_OUT, delivery.Result.REFUSED})
RETRIED_DELIVERIES = frozenset({delivery.Result.UNREACHABLE})


def of_delivery(record: delivery.Delivery) -> tuple[Condition, ...]:
    """Ready / Reconciling / Stalled / Drifted of a delivery, from how it ended: Ready when it was
    delivered, Stalled when it failed, timed out or was refused (it needs a change or time),
    Reconciling when its cluster could not be reached (the next pass retries), Drifted when drift
    was found and only reported."""
    reason = record.reason or str(record.result)
    message = record.message
    stalled = record.result in STALLED_DELIVERIES
    reconciling = record.result in RETRIED_DELIVERIES
    drifted = bool(record.drifted) and record.drift_mode is delivery.DriftMode.WARN
    return (
        condition(ConditionType.READY, TRUE if record.ready else FALSE, reason, message),
        condition(ConditionType.RECONCILING, TRUE if reconciling else FALSE, reason, message if reconciling else ""),
        condition(ConditionType.STALLED, TRUE if stalled else FALSE, reason, message if stalled else ""),
        condition(ConditionType.DRIFTED, TRUE if drifted else FALSE,
                  Reason.DRIFT_DETECTED if record.drifted else Reason.NO_DRIFT, ", ".join(record.drifted[:20])),
    )


def decide_delivery(record: delivery.Delivery) -> delivery.Delivery:
    """``record`` with the conditions :func:`of_delivery` gives it: every delivery record is made
    (or changed) through this before it is kept."""
    return dataclasses.replace(record, conditions=of_delivery(record))


# -- a pass -----------------------------------------------------------------------------------------


def pass_ready(*, failed: int, blocked: bool, status_error: str | None) -> bool:
    """A pass is Ready when no pack failed, nothing is blocked and the status record (when written)
    reached Git."""
    return not failed and not blocked and status_error is None
