"""Delivery into real target clusters (kube-apiserver, controllers, kwok nodes, a volume
provisioner), as a user runs it: ``gitopsd reconcile REPO --kubeconfig-dir DIR`` in a subprocess;
what the clusters hold is read back with the real ``kubectl``, what gitopsd sent is counted by the
proxies in front of them."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket

import pytest

from tests.delivery.conftest import Reconcile, Repo, Targets, deliveries
from tests.realkube import faults

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = pathlib.Path(__file__).resolve().parents[2]


def namespace(ns: str) -> str:
    return f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"


def configmap(ns: str, name: str, value: str = "1") -> str:
    return f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata: {{value: '{value}'}}\n"


def deployment(ns: str, name: str, *, replicas: int = 2, schedulable: bool = True) -> str:
    never = "      nodeSelector: {gitopsd.dev/no-such-node: 'true'}\n" if not schedulable else ""
    return (f"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n"
            f"  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n{never}"
            "      containers: [{name: main, image: 'registry.k8s.io/pause:3.9'}]\n")


# -- examples-repo ---------------------------------------------------------------------------------


def test_examples_repo_is_delivered_to_both_targets_and_a_second_pass_writes_nothing(
        targets: Targets, reconcile: Reconcile, tmp_path: pathlib.Path) -> None:
    repo = tmp_path / "examples"
    shutil.copytree(ROOT / "examples-repo", repo)
    for cluster in ("prod-eu", "prod-us"):  # the two prod clusters are t1 and t2 (the folder names them)
        (targets.kubeconfigs / f"{cluster}.kubeconfig").write_text(
            (targets.kubeconfigs / ("a.kubeconfig" if cluster == "prod-eu" else "b.kubeconfig")).read_text())

    first = reconcile(repo)

    shipped = deliveries(first)
    assert sorted(shipped) == [f"{p}-{c}" for p in ("cert-manager-lite", "network-policies", "observability", "platform-base",
                                                    "web-frontend") for c in ("prod-eu", "prod-us")]
    assert {d["result"] for d in shipped.values()} == {"Delivered"}, {n: d["message"] for n, d in shipped.items()}
    assert first["recordsOnly"] == ["dev", "staging"]
    stages = [s["name"] for s in shipped["observability-prod-eu"]["stages"]]
    assert stages == ["namespaces", "rbac", "storage", "stateful", "stateless"]  # in stage order, each healthy
    assert all(s["healthy"] for s in shipped["observability-prod-eu"]["stages"])
    for cluster in ("a", "b"):
        web = targets.get(cluster, "deployment", "web", "-n", "web")
        assert web is not None and web["status"]["availableReplicas"] == web["spec"]["replicas"]  # the real controllers
        tsdb = targets.get(cluster, "statefulset", "tsdb", "-n", "observability")
        assert tsdb is not None and tsdb["status"]["readyReplicas"] == 2  # its volumes were provisioned and bound
        crd = targets.get(cluster, "crd", "scrapetargets.observability.example.com")
        assert crd is not None and any(c["type"] == "Established" for c in crd["status"]["conditions"])
        job = targets.get(cluster, "job", "cert-manager-lite-startupapicheck", "-n", "cert-manager")
        assert job is not None and job["status"].get("succeeded") == 1  # a post-install hook, run after the workloads
    targets.reset()

    second = reconcile(repo)

    assert {d["result"] for d in deliveries(second).values()} == {"Delivered"}
    assert {d["action"] for d in deliveries(second).values()} == {"drift"}  # a one-shot reconcile checks drift
    assert targets.writes() == {"a": 0, "b": 0}  # read and dry-run only: nothing written to either cluster


# -- stages, health, prune -------------------------------------------------------------------------


def test_a_stage_that_never_becomes_healthy_stops_the_later_stages_and_nothing_is_pruned(
        targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    ns = repo.ns
    repo.pack("app", "1.0.0", namespace(ns) + configmap(ns, "settings") + configmap(ns, "legacy") + deployment(ns, "web"),
              clusters="[a]")
    reconcile(repo.root)
    assert targets.get("a", "configmap", "legacy", "-n", ns) is not None

    # 2.0.0 drops the legacy ConfigMap, and its Deployment can never be scheduled (no node has the
    # label it selects): the stateless stage times out
    repo.pack("app", "2.0.0", namespace(ns) + configmap(ns, "settings", "2") + deployment(ns, "web", schedulable=False),
              clusters="[a]", extra="delivery: {timeout: 4s}\n")
    result = reconcile(repo.root, check=1)

    [shipped] = result["deliveries"]
    assert (shipped["result"], shipped["stage"], shipped["reason"]) == ("TimedOut", "stateless", "HealthCheckTimeout")
    assert shipped["message"].startswith(f"stage stateless: timed out after 4s waiting for Deployment/{ns}/web")
    assert [(s["name"], s["healthy"]) for s in shipped["stages"]] == [("namespaces", True), ("stateless", False)]
    assert {c["type"]: c["status"] for c in shipped["conditions"]} == {
        "Ready": "False", "Reconciling": "False", "Stalled": "True", "Drifted": "False"}
    assert targets.get("a", "configmap", "legacy", "-n", ns) is not None  # not pruned: 2.0.0 never became healthy
    assert {e["name"] for e in shipped["inventory"]} >= {"legacy", "settings", "web"}  # all it may have left there

    repo.pack("app", "2.0.1", namespace(ns) + configmap(ns, "settings", "2") + deployment(ns, "web"), clusters="[a]")
    healed = reconcile(repo.root)

    [shipped] = healed["deliveries"]
    assert shipped["result"] == "Delivered" and f"pruned ConfigMap/{ns}/legacy" in shipped["message"]
    assert targets.get("a", "configmap", "legacy", "-n", ns) is None
    assert sorted(e["name"] for e in shipped["inventory"]) == [ns, "settings", "web"]


def test_a_custom_resource_and_its_crd_arrive_in_one_version(targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    group = f"{repo.ns}.example.com"
    crd = (f"---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: widgets.{group}}}\n"
           f"spec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: widgets, singular: widget, kind: Widget}}\n"
           "  versions:\n  - name: v1\n    served: true\n    storage: true\n"
           "    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {size: {type: integer}}}}}}\n")
    widget = f"---\napiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w, namespace: {repo.ns}}}\nspec: {{size: 3}}\n"
    repo.pack("widgets", "1.0.0", crd + namespace(repo.ns) + widget, clusters="[b]")

    result = reconcile(repo.root)

    [shipped] = result["deliveries"]
    assert shipped["result"] == "Delivered", shipped["message"]
    assert [s["name"] for s in shipped["stages"]] == ["namespaces", "stateless"]
    found = targets.get("b", f"widgets.{group}", "w", "-n", repo.ns)
    assert found is not None and found["spec"] == {"size": 3}
    assert found["metadata"]["labels"]["gitopsd.dev/instance"] == "widgets-b"


def test_uninstall_deletes_the_inventory_and_keeps_objects_marked_to_keep(
        targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    ns = repo.ns
    kept = (f"---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: precious\n  namespace: {ns}\n"
            "  annotations: {gitopsd.dev/prune: disabled}\ndata: {value: '1'}\n")
    repo.pack("gone", "1.0.0", namespace(ns) + configmap(ns, "one") + kept + deployment(ns, "web", replicas=1), clusters="[a]")
    reconcile(repo.root)
    assert targets.get("a", "deployment", "web", "-n", ns) is not None

    repo.remove("gone")
    result = reconcile(repo.root)

    assert [c["name"] for c in result["changes"] if c["action"] == "uninstall"] == ["gone-a"]
    [shipped] = result["deliveries"]
    assert (shipped["action"], shipped["result"]) == ("uninstall", "Pruned")
    assert targets.get("a", "deployment", "web", "-n", ns) is None
    assert targets.get("a", "configmap", "one", "-n", ns) is None
    # the Namespace (in the inventory) is deleted too, and everything left in it with it, except that
    # deleting a namespace is asynchronous: the kept ConfigMap was not deleted by gitopsd
    assert shipped["message"].startswith("deleted 3 objects")


# -- drift -----------------------------------------------------------------------------------------


def test_an_object_deleted_or_edited_by_hand_is_corrected(targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    ns = repo.ns
    repo.pack("cfg", "1.0.0", namespace(ns) + configmap(ns, "one") + configmap(ns, "two"), clusters="[a]")
    reconcile(repo.root)
    targets.kubectl("a", "delete", "configmap", "one", "-n", ns)
    targets.kubectl("a", "patch", "configmap", "two", "-n", ns, "--type=merge", "-p", '{"data": {"value": "edited"}}')
    targets.reset()

    result = reconcile(repo.root)

    [shipped] = result["deliveries"]
    assert shipped["action"] == "drift" and sorted(shipped["drift"]["drifted"]) == [f"ConfigMap/{ns}/one", f"ConfigMap/{ns}/two"]
    assert shipped["drift"]["corrected"] == 2
    assert targets.get("a", "configmap", "one", "-n", ns)["data"] == {"value": "1"}  # type: ignore[index]
    assert targets.get("a", "configmap", "two", "-n", ns)["data"] == {"value": "1"}  # type: ignore[index]
    assert targets.writes()["a"] == 2


def test_drift_in_warn_mode_is_reported_and_left(targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    ns = repo.ns
    repo.pack("cfg", "1.0.0", namespace(ns) + configmap(ns, "one"), clusters="[a]", extra="delivery: {drift: warn}\n")
    reconcile(repo.root)
    targets.kubectl("a", "patch", "configmap", "one", "-n", ns, "--type=merge", "-p", '{"data": {"value": "edited"}}')
    targets.reset()

    result = reconcile(repo.root)

    [shipped] = result["deliveries"]
    assert shipped["drift"] == {"mode": "warn", "drifted": [f"ConfigMap/{ns}/one"], "corrected": 0}
    assert {c["type"]: c["status"] for c in shipped["conditions"]}["Drifted"] == "True"
    assert targets.get("a", "configmap", "one", "-n", ns)["data"] == {"value": "edited"}  # type: ignore[index]
    assert targets.writes()["a"] == 0


def test_fields_another_manager_owns_are_not_drift(targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    ns = repo.ns
    repo.pack("cfg", "1.0.0", namespace(ns) + configmap(ns, "one"), clusters="[a]")
    reconcile(repo.root)
    targets.kubectl("a", "label", "configmap", "one", "-n", ns, "team=payments")  # a field gitopsd does not manage
    targets.reset()

    result = reconcile(repo.root)

    assert result["deliveries"][0]["drift"]["drifted"] == []
    assert targets.writes()["a"] == 0


# -- one bad cluster --------------------------------------------------------------------------------


def test_an_unreachable_cluster_does_not_stop_the_other(targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = json.loads(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "x",
                                  "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                                  "users": [{"name": "x", "user": {}}],
                                  "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    (targets.kubeconfigs / "b.kubeconfig").write_text(json.dumps(dead))
    repo.pack("cfg", "1.0.0", namespace(repo.ns) + configmap(repo.ns, "one"))

    result = reconcile(repo.root, check=1)

    shipped = deliveries(result)
    assert shipped["cfg-a"]["result"] == "Delivered"
    assert shipped["cfg-b"]["result"] == "Unreachable" and "cannot reach the API server" in shipped["cfg-b"]["message"]
    assert shipped["cfg-b"]["reason"] == "ClusterUnreachable"
    assert targets.get("a", "configmap", "one", "-n", repo.ns) is not None


def test_a_busy_api_server_is_waited_out_not_taken_for_unreachable(targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    targets.proxies["a"].faults.add(faults.TooManyRequests(retry_after=1), verb="apply", times=2)
    targets.proxies["a"].faults.add(faults.InternalError(), verb="get", times=1)
    repo.pack("cfg", "1.0.0", namespace(repo.ns) + configmap(repo.ns, "one") + configmap(repo.ns, "two"), clusters="[a]")

    result = reconcile(repo.root)

    [shipped] = result["deliveries"]
    assert shipped["result"] == "Delivered" and "reason" not in shipped
    refused = sorted(r.code for r in targets.proxies["a"].requests() if r.fault)
    assert refused == [429, 429, 500]  # each answered again after Retry-After or a short backoff
    assert targets.get("a", "configmap", "two", "-n", repo.ns) is not None
