"""The names of conditions: their types, statuses and the reasons gitopsd gives them.

Conditions are kstatus-style (``Ready``, ``Reconciling``, ``Stalled``) plus the domain conditions a
blocked change carries and the ``Drifted`` condition of a delivery. ``gitopsd.core.conditions`` is
the one place that decides which of them an object has; these enums are the words it uses, here in
``model`` because the records that carry conditions (``instance.Condition``, ``delivery.Delivery``)
and every layer that reads them back name them too.

A ``model.instance.Condition`` holds plain strings (it is read back from JSON, where a reason may be
any word, e.g. an error's reason): the members of these enums are strings and compare equal to them.
"""

from __future__ import annotations

import enum

from gitopsd import errors


class ConditionType(enum.StrEnum):
    # kstatus: every object gitopsd writes has these three
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    # domain conditions of a blocked change, named after the error's reason
    IMMUTABILITY_VIOLATION = errors.StalledReason.IMMUTABILITY_VIOLATION.value
    PACK_COLLISION_DETECTED = errors.StalledReason.PACK_COLLISION_DETECTED.value
    SIGNATURE_INVALID = errors.StalledReason.SIGNATURE_INVALID.value
    # delivery
    DRIFTED = "Drifted"


KSTATUS = (ConditionType.READY, ConditionType.RECONCILING, ConditionType.STALLED)


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(enum.StrEnum):
    """The reasons gitopsd itself gives a condition. A condition may also carry the reason of an
    error (``ClusterUnreachable``, ``ArtifactMismatch``...) or a ``Direction`` (``Initial``,
    ``Upgrade``...): the reason of the write that made an instance Ready."""

    # done
    CREATED = "Created"  # a ClusterPack was created
    SUCCEEDED = "Succeeded"  # nothing left to do: Reconciling and Stalled are False
    UNINSTALLED = "Uninstalled"  # a PackInstance removed from Git
    # blocked: the reasons of the errors that block a change, named once in ``gitopsd.errors``
    IMMUTABILITY_VIOLATION = errors.StalledReason.IMMUTABILITY_VIOLATION.value
    PACK_COLLISION_DETECTED = errors.StalledReason.PACK_COLLISION_DETECTED.value
    SIGNATURE_INVALID = errors.StalledReason.SIGNATURE_INVALID.value
    UNINSTALL_PENDING = errors.StalledReason.UNINSTALL_PENDING.value  # its objects are still on its cluster
    # the artifact push failed: a later pass retries by itself
    ARTIFACT_PUBLISH_FAILED = errors.TransientReason.ARTIFACT_PUBLISH_FAILED.value
    # delivery
    DRIFT_DETECTED = "DriftDetected"
    NO_DRIFT = "NoDrift"
