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


class ConditionType(enum.StrEnum):
    # kstatus: every object gitopsd writes has these three
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    # domain conditions of a blocked change
    IMMUTABILITY_VIOLATION = "ImmutabilityViolation"
    PACK_COLLISION_DETECTED = "PackCollisionDetected"
    SIGNATURE_INVALID = "SignatureInvalid"
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
    # blocked
    IMMUTABILITY_VIOLATION = "ImmutabilityViolation"
    PACK_COLLISION_DETECTED = "PackCollisionDetected"
    SIGNATURE_INVALID = "SignatureInvalid"
    UNINSTALL_PENDING = "UninstallPending"  # its objects are still on its cluster
    ARTIFACT_PUBLISH_FAILED = "ArtifactPublishFailed"  # the artifact push failed: a later pass retries by itself
    # delivery
    DRIFT_DETECTED = "DriftDetected"
    NO_DRIFT = "NoDrift"
