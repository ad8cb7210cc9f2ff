"""Delivery's pure rules: stages, inventory, what to prune and in which order, drift, which packs
go first on a cluster, and what a pass does for an instance."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gitopsd.core import delivery as core
from gitopsd.model import delivery, pack
from gitopsd.model.delivery import Entry, Result


def o(kind: str, name: str, ns: str = "", api: str = "v1", **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": api, "kind": kind, "metadata": meta}


def test_objects_go_to_stages_in_order_with_the_hooks_of_the_phase_by_weight_and_test_hooks_dropped() -> None:
    layers = {
        pack.Layer.RBAC: [(o("ServiceAccount", "sa", "app"), "sha256:r")],
        pack.Layer.CLUSTER_SCOPED: [(o("Namespace", "app"), "sha256:c"), (o("ClusterRole", "x", api="rbac.authorization.k8s.io/v1"), "sha256:c"),
                                    (o("PriorityClass", "p", api="scheduling.k8s.io/v1"), "sha256:c"),
                                    (o("CustomResourceDefinition", "w.example.com", api="apiextensions.k8s.io/v1"), "sha256:c")],
        pack.Layer.WORKLOAD: [
            (o("Deployment", "web", "app", "apps/v1"), "sha256:w"), (o("PersistentVolumeClaim", "data", "app"), "sha256:w"),
            (o("StatefulSet", "db", "app", "apps/v1"), "sha256:w"),
            (o("Job", "late", "app", "batch/v1", **{"helm.sh/hook": "post-install,post-upgrade"}), "sha256:w"),
            (o("Job", "second", "app", "batch/v1", **{"helm.sh/hook": "pre-install", "helm.sh/hook-weight": "5"}), "sha256:w"),
            (o("Job", "first", "app", "batch/v1", **{"helm.sh/hook": "pre-upgrade", "helm.sh/hook-weight": "-5"}), "sha256:w"),
            (o("Pod", "smoke", "app", **{"helm.sh/hook": "test"}), "sha256:w"),
        ],
    }

    planned = core.stages(layers, instance="app-prod")

    assert [(s.name, [it.entry.name for it in s.items]) for s in planned] == [
        ("namespaces", ["app", "w.example.com"]), ("rbac", ["sa"]), ("cluster", ["x", "p"]), ("pre-hooks", ["second"]),
        ("storage", ["data"]), ("stateful", ["db"]), ("stateless", ["web"]), ("post-hooks", ["late"]),
    ]
    upgrading = core.stages({pack.Layer.WORKLOAD: layers[pack.Layer.WORKLOAD]}, instance="app-prod", upgrade=True)
    assert [(s.name, [it.entry.name for it in s.items]) for s in upgrading] == [
        ("pre-hooks", ["first"]), ("storage", ["data"]), ("stateful", ["db"]), ("stateless", ["web"]), ("post-hooks", ["late"]),
    ]  # an upgrade runs the *-upgrade hooks only, by weight
    assert [e.name for e in core.inventory(planned)] == ["app", "w.example.com", "sa", "x", "p", "data", "db", "web"]
    web = planned[6].items[0]  # the stateless stage
    assert web.body["metadata"]["labels"] == {core.INSTANCE_LABEL: "app-prod"}
    assert web.entry == Entry("apps/v1", "Deployment", "app", "web", "sha256:w")


def test_prune_takes_what_the_new_inventory_lacks_workloads_first_and_never_what_another_instance_holds() -> None:
    old = [Entry("v1", "Namespace", "", "app"), Entry("apps/v1", "Deployment", "app", "web"),
           Entry("v1", "ConfigMap", "app", "legacy"), Entry("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "w.x"),
           Entry("rbac.authorization.k8s.io/v1", "Role", "app", "r"), Entry("v1", "ConfigMap", "app", "shared"),
           Entry("apps/v1", "StatefulSet", "app", "db")]
    new = [Entry("v1", "Namespace", "", "app"), Entry("apps/v1beta2", "Deployment", "app", "web")]  # same object, other version

    gone = core.to_prune(old, new, held_elsewhere=[("", "ConfigMap", "app", "shared")])

    assert [e.subject for e in gone] == ["ConfigMap/app/legacy", "StatefulSet/app/db", "Role/app/r", "CustomResourceDefinition/w.x"]
    assert [e.subject for e in core.to_prune(old, ())][-2:] == ["CustomResourceDefinition/w.x", "Namespace/app"]


def test_drift_ignores_what_the_server_sets_and_sees_a_changed_or_missing_object() -> None:
    applied = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}}
    live = {**applied, "metadata": {**applied["metadata"], "resourceVersion": "9", "uid": "u", "managedFields": [{}],
                                    "creationTimestamp": "t"}, "status": {"anything": 1}}
    assert not core.drifted(live, applied)
    assert core.drifted({**live, "data": {"k": "edited"}}, applied)
    assert core.drifted(None, applied)


def test_packs_of_one_cluster_go_after_what_provides_their_namespaces_kinds_and_dependencies() -> None:
    base = core.provides_and_needs([o("Namespace", "web"), o("Namespace", "obs")])
    crds = core.provides_and_needs([{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                                     "metadata": {"name": "w.ex.com"}, "spec": {"group": "ex.com", "names": {"kind": "Widget"}}}])
    app = core.provides_and_needs([o("ConfigMap", "c", "web"), o("Widget", "w", "web", "ex.com/v1")])
    assert base == (frozenset({("namespace", "web"), ("namespace", "obs")}), frozenset({("kind", "", "Namespace")}))
    assert app[1] == frozenset({("namespace", "web"), ("kind", "", "ConfigMap"), ("kind", "ex.com", "Widget")})
    names = ["app-a", "base-a", "crds-a", "zz-a", "late-a"]
    provides = {"base-a": base[0], "crds-a": crds[0], "app-a": app[0], "zz-a": frozenset(), "late-a": frozenset()}
    needs = {"base-a": base[1], "crds-a": crds[1], "app-a": app[1], "zz-a": frozenset(), "late-a": frozenset()}

    assert core.order(names, provides, needs, {"late-a": frozenset({"zz-a"})}) == ["base-a", "crds-a", "app-a", "zz-a", "late-a"]


def record(result: Result, digest: str = "sha256:1") -> delivery.Delivery:
    return delivery.Delivery(cluster="a", result=result, digest=digest, version="1.0.0", message="")


ACTIONS = {
    "never-delivered": (None, "sha256:1", False, core.Action.DELIVER),
    "another-version-wanted": (record(Result.DELIVERED), "sha256:2", False, core.Action.DELIVER),
    "unreachable-last-time": (record(Result.UNREACHABLE), "sha256:1", False, core.Action.DELIVER),
    "failed-waits-for-resync": (record(Result.TIMED_OUT), "sha256:1", False, None),
    "failed-retried-on-resync": (record(Result.FAILED), "sha256:1", True, core.Action.DELIVER),
    "delivered-nothing-to-do": (record(Result.DELIVERED), "sha256:1", False, None),
    "delivered-drift-checked-on-resync": (record(Result.DELIVERED), "sha256:1", True, core.Action.DRIFT),
}


@pytest.mark.parametrize(("previous", "digest", "resync", "expected"), ACTIONS.values(), ids=ACTIONS.keys())
def test_what_a_pass_does_for_an_instance(previous: delivery.Delivery | None, digest: str, resync: bool,
                                          expected: core.Action | None) -> None:
    assert core.action_for(previous, digest, resync=resync) == expected


@pytest.mark.parametrize(("manager", "by_hand"), [("kubectl-patch", True), ("kubectl-edit", True),
                                                  ("kubectl-client-side-apply", True), ("before-first-apply", True),
                                                  ("kube-controller-manager", False), ("helm", False), ("gitopsd", False)])
def test_a_hand_edit_is_told_from_a_controller_by_its_field_manager(manager: str, by_hand: bool) -> None:
    assert core.hand_edit(manager) is by_hand


def test_a_record_that_differs_only_in_when_it_was_made_is_the_same() -> None:
    a = record(Result.DELIVERED)
    assert core.same_record(a, dataclasses.replace(a, at="later"))
    assert not core.same_record(a, record(Result.FAILED))
    assert not core.same_record(None, a)


@pytest.mark.parametrize(("metadata", "kept"), [
    ({}, None),
    ({"labels": {"gitopsd.dev/instance": "web-a"}}, None),
    ({"labels": {"gitopsd.dev/instance": "web-b"}}, "now delivered by web-b"),
    ({"annotations": {"gitopsd.dev/prune": "disabled"}, "labels": {"gitopsd.dev/instance": "web-a"}},
     "gitopsd.dev/prune: disabled"),
    ({"annotations": {"gitopsd.dev/prune": "enabled"}}, None),
], ids=["unlabelled", "own", "another-instance", "prune-disabled", "other-annotation-value"])
def test_a_prune_keeps_objects_marked_to_keep_or_delivered_by_another_instance(
        metadata: dict[str, Any], kept: str | None) -> None:
    live = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", **metadata}}
    assert core.kept_from_prune(live, "web-a") == kept
