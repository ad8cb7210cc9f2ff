"""gitopsd.core.conditions: the one place that decides Ready / Reconciling / Stalled, the domain
conditions of the plan, the conditions of a delivery and whether a pass is Ready. Table tests."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from gitopsd.core import conditions
from gitopsd.core import delivery as delivery_core
from gitopsd.delivery import engine
from gitopsd.model import delivery
from gitopsd.model.conditions import ConditionType, Reason
from gitopsd.model.delivery import DriftMode, Result
from gitopsd.model.instance import Condition, Direction

Row = tuple[str, str, str, str]  # type, status, reason, message


def rows(items: tuple[Condition, ...] | list[Condition]) -> list[Row]:
    return [(c.type, c.status, c.reason, c.message) for c in items]


# -- domain conditions ------------------------------------------------------------------------------

DOMAIN = {
    "applied": (conditions.applied(Direction.UPGRADE, "web-v2.0.0", "main@sha1:1"),
                ("Ready", "True", "Upgrade", "web-v2.0.0 applied at main@sha1:1")),
    "uninstalled": (conditions.uninstalled("main@sha1:1"), ("Ready", "False", "Uninstalled", "removed from Git at main@sha1:1")),
    "pack-created": (conditions.pack_created("packs/web/packbuild.yaml", "abc"),
                     ("Ready", "True", "Created", "created from packs/web/packbuild.yaml at abc")),
    "immutability-violation": (conditions.immutability_violation("m"),
                               ("ImmutabilityViolation", "True", "ImmutabilityViolation", "m")),
    "instance-of-changed-pack": (conditions.pack_changed_in_place("web-v1.0.0"), (
        "Ready", "False", "ImmutabilityViolation",
        "ClusterPack web-v1.0.0 changed without a version bump; the instance stays as it is")),
    "signature-invalid": (conditions.signature_invalid("m"), ("SignatureInvalid", "True", "SignatureInvalid", "m")),
    "collision": (conditions.pack_collision("m"), ("PackCollisionDetected", "True", "PackCollisionDetected", "m")),
    "not-published": (conditions.not_ready("ArtifactPublishFailed", "m"), ("Ready", "False", "ArtifactPublishFailed", "m")),
    "uninstall-pending": (conditions.uninstall_pending("m"), ("Ready", "False", "UninstallPending", "m")),
}


@pytest.mark.parametrize(("made", "expected"), DOMAIN.values(), ids=DOMAIN.keys())
def test_domain_conditions(made: Condition, expected: Row) -> None:
    assert rows([made]) == [expected]
    # plain strings, not enum members: they serialise as they are
    assert all(type(v) is str for v in expected) and all(type(v) is str for v in rows([made])[0])
    assert yaml.safe_load(yaml.safe_dump(made.to_json())) == made.to_json()


# -- kstatus ----------------------------------------------------------------------------------------

UP_TO_DATE = [("Reconciling", "False", "Succeeded", "up to date"), ("Stalled", "False", "Succeeded", "up to date")]
KSTATUS = {
    "written": ((conditions.applied(Direction.INITIAL, "web-v1.0.0", "r"),), False, [
        ("Ready", "True", "Initial", "web-v1.0.0 applied at r"), *UP_TO_DATE]),
    "created-pack": ((conditions.pack_created("p", "c"),), False, [("Ready", "True", "Created", "created from p at c"), *UP_TO_DATE]),
    "collision-stalls": ((conditions.pack_collision("lost"),), False, [
        ("Ready", "False", "PackCollisionDetected", "lost"),
        ("Reconciling", "False", "PackCollisionDetected", "waits for a change in Git"),
        ("Stalled", "True", "PackCollisionDetected", "lost"),
        ("PackCollisionDetected", "True", "PackCollisionDetected", "lost")]),
    "not-ready-stalls": ((conditions.not_ready("ArtifactMismatch", "bad"),), False, [
        ("Ready", "False", "ArtifactMismatch", "bad"),
        ("Reconciling", "False", "ArtifactMismatch", "waits for a change in Git"),
        ("Stalled", "True", "ArtifactMismatch", "bad")]),
    "transient-reconciles": ((conditions.not_ready("ArtifactPublishFailed", "push failed"),), True, [
        ("Ready", "False", "ArtifactPublishFailed", "push failed"),
        ("Reconciling", "True", "ArtifactPublishFailed", "push failed"),
        ("Stalled", "False", "ArtifactPublishFailed", "retried on the next pass")]),
    "ready-given-with-a-problem": ((conditions.applied(Direction.INITIAL, "p", "r"), conditions.signature_invalid("unsigned")),
                                   False, [
        ("Ready", "True", "Initial", "p applied at r"),
        ("Reconciling", "False", "SignatureInvalid", "waits for a change in Git"),
        ("Stalled", "True", "SignatureInvalid", "unsigned"),
        ("SignatureInvalid", "True", "SignatureInvalid", "unsigned")]),
}


@pytest.mark.parametrize(("domain", "transient", "expected"), KSTATUS.values(), ids=KSTATUS.keys())
def test_kstatus_around_the_domain_conditions(domain: tuple[Condition, ...], transient: bool, expected: list[Row]) -> None:
    assert rows(conditions.kstatus(domain, transient=transient)) == expected


BLOCKED = {
    # reason of the blocked change -> (Reconciling, Stalled)
    "ArtifactPublishFailed": ("True", "False"),  # a later pass retries by itself
    "ArtifactMismatch": ("False", "True"),
    "ArtifactUnverified": ("False", "True"),
    "UninstallPending": ("False", "True"),
}


@pytest.mark.parametrize(("reason", "expected"), BLOCKED.items(), ids=BLOCKED.keys())
def test_a_blocked_change_reconciles_only_when_it_clears_by_itself(reason: str, expected: tuple[str, str]) -> None:
    written = conditions.status_blocked(conditions.not_ready(reason, "m"), reason=reason, generation=3, now="t")
    by_type = {c["type"]: c for c in written}
    assert (by_type["Reconciling"]["status"], by_type["Stalled"]["status"]) == expected
    assert conditions.clears_by_itself(reason) == (expected[0] == "True")
    assert {c["observedGeneration"] for c in written} == {3}


def test_stamped_keeps_the_transition_time_while_the_status_stays() -> None:
    previous = [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"},
                {"type": "Reconciling", "status": "True", "lastTransitionTime": "t0"},
                {"type": "Stalled", "status": "False"}]  # no time recorded: now
    written = conditions.status_written((conditions.applied(Direction.REDEPLOY, "p", "r"),), generation=7, now="t1",
                                        previous=previous)
    assert [(c["type"], c["lastTransitionTime"], c["observedGeneration"]) for c in written] == [
        ("Ready", "t0", 7), ("Reconciling", "t1", 7), ("Stalled", "t1", 7)]
    assert json.loads(json.dumps(written)) == written


OBSERVED_GENERATION = {
    "none": ({}, None),
    "empty": ({"conditions": []}, None),
    "newest": ({"conditions": [{"observedGeneration": 2}, {"observedGeneration": 5}, {"type": "Ready"}]}, 5),
    "not-a-number": ({"conditions": [{"observedGeneration": "5"}, "junk"]}, None),
}


@pytest.mark.parametrize(("status", "expected"), OBSERVED_GENERATION.values(), ids=OBSERVED_GENERATION.keys())
def test_observed_generation(status: dict[str, object], expected: int | None) -> None:
    assert conditions.observed_generation(status) == expected


def test_same_but_times() -> None:
    a = [{"type": "Ready", "status": "False", "lastTransitionTime": "t0"}]
    assert conditions.same_but_times(a, [{"type": "Ready", "status": "False", "lastTransitionTime": "t1"}])
    assert not conditions.same_but_times(a, [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"}])
    assert conditions.same_but_times(None, [])


# -- delivery ---------------------------------------------------------------------------------------

DELIVERY = {
    # result, reason, drifted, drift mode -> Ready, Reconciling, Stalled, Drifted (status, reason)
    "delivered": (Result.DELIVERED, "", (), DriftMode.CORRECT, ("True", "False", "False", "False", "NoDrift")),
    "failed": (Result.FAILED, "HealthCheckFailed", (), DriftMode.CORRECT, ("False", "False", "True", "False", "NoDrift")),
    "timed-out": (Result.TIMED_OUT, "HealthCheckTimeout", (), DriftMode.CORRECT, ("False", "False", "True", "False", "NoDrift")),
    "refused": (Result.REFUSED, "SignatureInvalid", (), DriftMode.CORRECT, ("False", "False", "True", "False", "NoDrift")),
    "unreachable": (Result.UNREACHABLE, "ClusterUnreachable", (), DriftMode.CORRECT,
                    ("False", "True", "False", "False", "NoDrift")),
    "pruned": (Result.PRUNED, "", (), DriftMode.CORRECT, ("False", "False", "False", "False", "NoDrift")),
    "drift-corrected": (Result.DELIVERED, "", ("ConfigMap/a/b",), DriftMode.CORRECT,
                        ("True", "False", "False", "False", "DriftDetected")),
    "drift-reported": (Result.DELIVERED, "", ("ConfigMap/a/b",), DriftMode.WARN, ("True", "False", "False", "True", "DriftDetected")),
}


@pytest.mark.parametrize(("result", "reason", "drifted", "mode", "expected"), DELIVERY.values(), ids=DELIVERY.keys())
def test_conditions_of_a_delivery(result: Result, reason: str, drifted: tuple[str, ...], mode: DriftMode,
                                  expected: tuple[str, str, str, str, str]) -> None:
    record = delivery.Delivery(cluster="a", result=result, digest="sha256:1", version="1.0.0", message="what happened",
                               drifted=drifted, drift_mode=mode, reason=reason)
    made = conditions.of_delivery(record)
    assert [c.type for c in made] == ["Ready", "Reconciling", "Stalled", "Drifted"]
    assert (*(c.status for c in made), made[3].reason) == expected
    word = reason or str(result)
    assert [c.reason for c in made[:3]] == [word] * 3
    # Ready always says what happened; Reconciling and Stalled only when they are True
    assert [c.message for c in made[:3]] == ["what happened"] + [
        "what happened" if c.status == "True" else "" for c in made[1:3]]
    assert made[3].message == ", ".join(drifted)


def test_a_delivery_record_carries_its_conditions_through_json() -> None:
    record = conditions.decide_delivery(delivery.Delivery(cluster="a", result=Result.FAILED, digest="sha256:1",
                                                          version="1.0.0", message="stage rbac: refused", reason="ApiRefused"))
    raw = record.to_json()
    assert raw["conditions"] == [
        {"type": "Ready", "status": "False", "reason": "ApiRefused", "message": "stage rbac: refused"},
        {"type": "Reconciling", "status": "False", "reason": "ApiRefused", "message": ""},
        {"type": "Stalled", "status": "True", "reason": "ApiRefused", "message": "stage rbac: refused"},
        {"type": "Drifted", "status": "False", "reason": "NoDrift", "message": ""},
    ]
    assert delivery.Delivery.from_json(json.loads(json.dumps(raw))) == record
    assert delivery_core.same_record(delivery.Delivery.from_json(raw), record)


def test_the_engine_decides_the_conditions_of_every_record_it_makes() -> None:
    job = delivery_core.Job(instance="e-a", cluster="a", base_pack_name="e", version="1.0.0",
                            spec_json='{"registryRef": {"digest": "sha256:1"}}', signature=None, previous=None)
    refused = engine.Engine(None, None).deliver(job, None)  # type: ignore[arg-type]  # refused before any target is used
    assert refused.result is Result.REFUSED and refused.conditions == conditions.of_delivery(refused)
    delivered = conditions.decide_delivery(delivery.Delivery(cluster="a", result=Result.DELIVERED, digest="sha256:1",
                                                             version="1.0.0", message="delivered"))
    checked = engine.Engine(None, None).check_drift(dataclasses.replace(job, previous=delivered), None)  # type: ignore[arg-type]
    assert checked.message.startswith("drift check: ") and checked.conditions == conditions.of_delivery(checked)
    assert checked.conditions[0].message == checked.message


# -- a pass -----------------------------------------------------------------------------------------

PASS = {
    "clean": (0, False, None, True),
    "a-pack-failed": (1, False, None, False),
    "something-blocked": (0, True, None, False),
    "status-not-pushed": (0, False, "push rejected", False),
}


@pytest.mark.parametrize(("failed", "blocked", "status_error", "expected"), PASS.values(), ids=PASS.keys())
def test_whether_a_pass_is_ready(failed: int, blocked: bool, status_error: str | None, expected: bool) -> None:
    assert conditions.pass_ready(failed=failed, blocked=blocked, status_error=status_error) is expected


def test_the_enums_name_every_condition_and_reason_used() -> None:
    assert {str(t) for t in ConditionType} >= {c.type for c, _ in DOMAIN.values()} | {"Reconciling", "Stalled", "Drifted"}
    assert {"Created", "Succeeded", "Uninstalled", "DriftDetected", "NoDrift"} <= {str(r) for r in Reason}
