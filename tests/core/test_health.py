"""Health of an object as delivery waits on it (kstatus rules), as whole verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from gitopsd.core import health
from gitopsd.core.health import Health, Status


def obj(kind: str, *, generation: int = 1, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
        **meta: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "x", "generation": generation, **meta}, "spec": spec or {},
            "status": status or {}}


CASES = {
    "deployment-available": (obj("Deployment", spec={"replicas": 2}, status={
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}),
        Health(Status.CURRENT)),
    "deployment-status-of-an-older-generation": (obj("Deployment", generation=2, spec={"replicas": 2}, status={
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2}),
        Health(Status.IN_PROGRESS, "status is for generation 1, the object is at 2")),
    "deployment-rolling": (obj("Deployment", spec={"replicas": 3}, status={
        "observedGeneration": 1, "replicas": 4, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3}),
        Health(Status.IN_PROGRESS, "1 old replicas pending termination")),
    "deployment-not-available": (obj("Deployment", spec={"replicas": 2}, status={
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        Health(Status.IN_PROGRESS, "1 of 2 replicas available")),
    "deployment-deadline-exceeded": (obj("Deployment", status={"observedGeneration": 1, "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "took too long"}]}),
        Health(Status.FAILED, "progress deadline exceeded: took too long")),
    "statefulset-ready": (obj("StatefulSet", spec={"replicas": 2}, status={
        "observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2, "currentRevision": "r1", "updateRevision": "r1"}),
        Health(Status.CURRENT)),
    "statefulset-updating": (obj("StatefulSet", spec={"replicas": 2}, status={
        "observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2, "currentRevision": "r1", "updateRevision": "r2"}),
        Health(Status.IN_PROGRESS, "rolling update in progress")),
    "daemonset-rolling": (obj("DaemonSet", status={"observedGeneration": 1, "desiredNumberScheduled": 3,
                                                   "updatedNumberScheduled": 3, "numberAvailable": 2, "numberReady": 3}),
                          Health(Status.IN_PROGRESS, "2 of 3 pods available")),
    "job-complete": (obj("Job", status={"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}),
                     Health(Status.CURRENT)),
    "job-failed": (obj("Job", status={"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}),
                   Health(Status.FAILED, "job failed: BackoffLimitExceeded")),
    "job-running": (obj("Job", status={"active": 1}), Health(Status.IN_PROGRESS, "0 succeeded, 1 active")),
    "pvc-bound": (obj("PersistentVolumeClaim", status={"phase": "Bound"}), Health(Status.CURRENT)),
    "pvc-pending": (obj("PersistentVolumeClaim", status={"phase": "Pending"}), Health(Status.IN_PROGRESS, "phase Pending, not Bound")),
    "crd-established": (obj("CustomResourceDefinition", status={"conditions": [{"type": "Established", "status": "True"}]}),
                        Health(Status.CURRENT)),
    "crd-names-refused": (obj("CustomResourceDefinition", status={"conditions": [
        {"type": "NamesAccepted", "status": "False", "message": "taken"}]}), Health(Status.FAILED, "names not accepted: taken")),
    "custom-ready": (obj("Certificate", status={"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}),
                     Health(Status.CURRENT)),
    "custom-not-ready": (obj("Certificate", status={"conditions": [{"type": "Ready", "status": "False", "message": "issuing"}]}),
                         Health(Status.IN_PROGRESS, "Ready=False: issuing")),
    "custom-stalled": (obj("Kustomization", status={"conditions": [{"type": "Stalled", "status": "True", "message": "bad"}]}),
                       Health(Status.FAILED, "Stalled: bad")),
    "custom-old-generation": (obj("Certificate", generation=3, status={"observedGeneration": 2, "conditions": [
        {"type": "Ready", "status": "True"}]}), Health(Status.IN_PROGRESS, "status is for generation 2, the object is at 3")),
    "no-rule-is-healthy-once-applied": (obj("ConfigMap"), Health(Status.CURRENT)),
    "being-deleted": (obj("ConfigMap", deletionTimestamp="2026-01-01T00:00:00Z"), Health(Status.IN_PROGRESS, "being deleted")),
    "namespace-terminating": (obj("Namespace", status={"phase": "Terminating"}), Health(Status.IN_PROGRESS, "phase Terminating")),
}


@pytest.mark.parametrize(("live", "expected"), CASES.values(), ids=CASES.keys())
def test_health_follows_the_kstatus_rules(live: dict[str, Any], expected: Health) -> None:
    assert health.of(live) == expected
