"""The Kubernetes Cluster adapter, leader election and sharding against a real kube-apiserver.

The unmodified ``kubernetes`` client, real reconcile passes of examples-repo, each test in a
namespace of its own; gitopsd talks through a proxy (``tests.realkube.proxy``) whose request log is
how the tests see what gitopsd sent, and which injects the faults.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import pathlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from gitopsd import errors, reconcile
from gitopsd.adapters import kube, lease
from gitopsd.cli import flags
from gitopsd.model import change, instance
from gitopsd.wiring import assemble
from gitopsd.wiring import kube as wiring_kube
from gitopsd.wiring import settings as wiring_settings
from tests import gitutil
from tests.contract import harness
from tests.contract.harness import INSTANCES, PACKS
from tests.realkube import faults
from tests.realkube.env import KubeEnv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EXAMPLE_PACKS = ["cert-manager-lite", "network-policies", "observability", "platform-base", "web-frontend"]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = harness.threads_left(before)
    assert not left, f"threads left running: {left}"


@pytest.fixture
def kubeconfig(kube_env: KubeEnv) -> pathlib.Path:
    return kube_env.kubeconfig


@pytest.fixture
def api(kubeconfig: pathlib.Path) -> Iterator[client.ApiClient]:
    with kube.connect(kubeconfig=str(kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def cluster(api: client.ApiClient) -> Iterator[kube.KubeCluster]:
    with kube.KubeCluster(api, backoff=(0.05, 0.5)) as adapter:
        yield adapter


@pytest.fixture
def repo(tmp_path: pathlib.Path, kube_env: KubeEnv) -> pathlib.Path:
    """examples-repo, its ClusterPacks and PackInstances in the test's own namespace."""
    dest = tmp_path / "repo"
    shutil.copytree(harness.EXAMPLES, dest)
    settings = dest / "gitopsd.yaml"
    settings.write_text(settings.read_text().replace("namespace: seam-system", f"namespace: {kube_env.namespace}", 1))
    return dest


@pytest.fixture
def passes(repo: pathlib.Path, tmp_path: pathlib.Path, cluster: kube.KubeCluster) -> Iterator[harness.Passes]:
    runner = harness.Passes(repo, tmp_path / "state", cluster)
    yield runner
    runner.close()


def objects(emu: KubeEnv, resource: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in emu.list_objects(resource)}


def counts(emu: KubeEnv) -> dict[str, int]:
    return dict(sorted(emu.request_counts().items()))


def bump(repo: pathlib.Path, pack_dir: str, old: str, new: str) -> None:
    path = repo / "packs" / pack_dir / "packbuild.yaml"
    text = path.read_text()
    assert f"version: {old}" in text
    path.write_text(text.replace(f"version: {old}", f"version: {new}", 1))


def assert_complete(obj: dict[str, Any]) -> None:
    """Spec and status written: the status observed the current generation and is Ready."""
    status = obj["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    assert {c["observedGeneration"] for c in status["conditions"]} == {obj["metadata"]["generation"]}


# -- reconcile examples-repo --------------------------------------------------------------------


def test_first_pass_creates_cluster_packs_and_instances_with_status_and_events(kube_env: KubeEnv, passes: harness.Passes) -> None:
    state = passes.run()

    assert state.summary is not None and state.summary.ready and state.writes == 20
    packs, instances = objects(kube_env, PACKS), objects(kube_env, INSTANCES)
    assert sorted(p.rsplit("-v", 1)[0] for p in packs) == EXAMPLE_PACKS
    assert len(instances) == 15
    for cp in packs.values():
        assert cp["status"]["signed"] is True and cp["status"]["packSignature"] == cp["metadata"]["annotations"]["ontai.dev/pack-signature"]
        assert cp["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gitopsd"
        assert_complete(cp)
    for pi in instances.values():
        assert pi["status"]["state"] == "installed" and len(pi["status"]["history"]) == 1
        assert [c["type"] for c in pi["status"]["conditions"]] == ["Ready", "Reconciling", "Stalled"]
        assert_complete(pi)
    # one Event per pack and reason: about its ClusterPack, naming its creation and the instances installed
    events = kube_env.list_objects("events")
    assert sorted(e["involvedObject"]["name"] for e in events) == sorted(packs)
    for e in events:
        named = [n for n, pi in instances.items() if pi["spec"]["clusterPackRef"]["name"] == e["involvedObject"]["name"]]
        assert (e["involvedObject"]["kind"], e["reason"], e["type"], e["count"]) == ("InfrastructureClusterPack", "Installed", "Normal", 1)
        assert e["message"].startswith(f"ClusterPack {e['involvedObject']['name']} created; {len(named)} PackInstance"), e["message"]
        assert all(n in e["message"] for n in named) and e["involvedObject"].get("uid")
    writes = kube_env.requests()
    assert {r.field_manager for r in writes if r.is_write} == {"gitopsd"}
    print(f"\nfirst pass of examples-repo: {kube_env.write_count()} writes; requests {counts(kube_env)}")


def test_a_pass_with_nothing_to_do_sends_no_request(kube_env: KubeEnv, passes: harness.Passes) -> None:
    passes.run()
    kube_env.reset_requests()

    state = passes.run()

    assert state.plan is not None and not state.plan.has_changes and state.writes == 0
    assert kube_env.requests() == []  # observe came from the watch-backed cache: no list, no get, no write
    print("\nno-op pass of examples-repo: 0 requests")


def test_list_and_watch_happen_once_per_kind_across_passes(kube_env: KubeEnv, passes: harness.Passes) -> None:
    for _ in range(3):
        passes.run()
    for resource in (PACKS, INSTANCES):
        assert kube_env.request_counts().get(f"list {resource}", 0) == 1
        assert kube_env.request_counts().get(f"watch {resource}", 0) <= 1


def test_version_bump_supersedes_the_instances_in_place(kube_env: KubeEnv, passes: harness.Passes, repo: pathlib.Path) -> None:
    passes.run()
    before = objects(kube_env, INSTANCES)
    bump(repo, "web-frontend", "v1.4.2", "v1.5.0")
    kube_env.reset_requests()

    state = passes.run()

    assert state.summary is not None and state.summary.ready and state.writes == 3
    after = objects(kube_env, INSTANCES)
    assert sorted(after) == sorted(before)
    for name in ("web-frontend-prod-eu", "web-frontend-prod-us"):
        old, new = before[name], after[name]
        assert new["metadata"]["uid"] == old["metadata"]["uid"]
        assert new["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]
        assert new["metadata"]["generation"] == old["metadata"]["generation"] + 1
        assert new["spec"]["clusterPackRef"]["name"] == "web-frontend-v1.5.0"
        status = new["status"]
        assert (status["state"], status["version"], status["upgradeFromVersion"], status["upgradeDirection"]) == ("installed", "1.5.0", "1.4.2", "Upgrade")
        assert [(h["state"], h["packVersion"]) for h in status["history"]] == [("installed", "1.4.2"), ("upgraded", "1.5.0")]
        assert_complete(new)
    for name in set(before) - {"web-frontend-prod-eu", "web-frontend-prod-us"}:
        assert after[name]["metadata"]["resourceVersion"] == before[name]["metadata"]["resourceVersion"]
    assert "web-frontend-v1.4.2" in objects(kube_env, PACKS)  # kept for a rollback
    written = sorted({(r.verb, r.resource, r.name) for r in kube_env.requests() if r.is_write and r.resource != "events"})
    assert written == [  # one request an object (spec and status together); a create names its object in the body
        ("apply", INSTANCES, "web-frontend-prod-eu"), ("apply", INSTANCES, "web-frontend-prod-us"),
        ("create", PACKS, ""),
    ]
    [event] = [e for e in kube_env.list_objects("events") if e["reason"] == "Upgrade"]
    assert event["involvedObject"]["name"] == "web-frontend-v1.5.0"
    assert event["message"].startswith("ClusterPack web-frontend-v1.5.0 created; 2 PackInstances Upgrade (web-frontend-prod-eu, web-frontend-prod-us)")
    print(f"\none-pack version bump: {kube_env.write_count()} writes; requests {counts(kube_env)}")


def test_observe_reads_again_only_the_bases_written_since_and_equals_a_full_read(
        kube_env: KubeEnv, passes: harness.Passes, repo: pathlib.Path, api: client.ApiClient,
        cluster: kube.KubeCluster) -> None:
    passes.run()
    before = cluster.observe(kube_env.namespace)
    bump(repo, "web-frontend", "v1.4.2", "v1.5.0")
    passes.run()

    after = cluster.observe(kube_env.namespace)

    assert sorted(after.parts) == sorted(before.parts)
    for base, part in after.parts.items():  # what the steps of the next pass tell an unchanged base by
        assert (part is before.parts[base]) == (base != "web-frontend"), base
    with kube.KubeCluster(api, watch=False) as fresh:
        full = fresh.observe(kube_env.namespace)
    assert after == full
    assert {b: (dict(p.packs), dict(p.instances), dict(p.heads)) for b, p in after.parts.items()} == \
        {b: (dict(p.packs), dict(p.instances), dict(p.heads)) for b, p in full.parts.items()}
    assert after.packs["web-frontend-v1.5.0"].version == "1.5.0"
    assert after.instances["web-frontend-prod-eu"].version == "1.5.0"


def test_uninstall_deletes_the_instances_and_keeps_the_cluster_pack(kube_env: KubeEnv, passes: harness.Passes, repo: pathlib.Path) -> None:
    passes.run()
    shutil.rmtree(repo / "packs" / "web-frontend")
    kube_env.reset_requests()

    state = passes.run()

    assert state.plan is not None and state.plan.count(change.Action.UNINSTALL) == 2
    assert not any(name.startswith("web-frontend") for name in objects(kube_env, INSTANCES))
    assert "web-frontend-v1.4.2" in objects(kube_env, PACKS)
    deletes = [(r.resource, r.name) for r in kube_env.requests(verb="delete")]
    assert sorted(deletes) == [(INSTANCES, "web-frontend-prod-eu"), (INSTANCES, "web-frontend-prod-us")]
    [uninstalled] = [e for e in kube_env.list_objects("events") if e["reason"] == "Uninstalled"]
    assert uninstalled["involvedObject"]["name"] == "web-frontend-v1.4.2"
    assert uninstalled["message"].startswith("2 PackInstances Uninstalled (web-frontend-prod-eu, web-frontend-prod-us)")
    assert passes.run().writes == 0


def test_a_collision_writes_the_blocked_condition_once(kube_env: KubeEnv, passes: harness.Passes, repo: pathlib.Path) -> None:
    passes.run()
    namespaces = (repo / "packs" / "platform-base" / "manifests" / "namespaces.yaml").read_text()
    gitutil.write_files(repo, gitutil.raw_pack("rogue", priority=500, manifests={"namespaces.yaml": namespaces}))

    state = passes.run()

    assert state.plan is not None
    [blocked] = [c for c in state.plan.changes if c.action is change.Action.BLOCKED]
    assert (blocked.name, blocked.reason) == ("platform-base-dev", "PackCollisionDetected")
    status = objects(kube_env, INSTANCES)["platform-base-dev"]["status"]
    by_type = {c["type"]: c for c in status["conditions"]}
    assert (by_type["Ready"]["status"], by_type["Stalled"]["status"], by_type["PackCollisionDetected"]["status"]) == ("False", "True", "True")
    assert status["state"] == "installed" and len(status["history"]) == 1  # blocked: the install record stays
    warnings = [e for e in kube_env.list_objects("events") if e["type"] == "Warning"]
    assert [(e["involvedObject"]["name"], e["reason"]) for e in warnings] == [("platform-base-v1.0.0", "PackCollisionDetected")]
    assert warnings[0]["message"].startswith("1 PackInstance PackCollisionDetected (platform-base-dev): ")
    kube_env.reset_requests()

    again = passes.run()

    assert again.writes == 0 and kube_env.write_count() == 0 and kube_env.requests() == []


# -- conflicts, failures, watch trouble ---------------------------------------------------------


def test_a_conflict_storm_converges_without_duplicates(kube_env: KubeEnv, passes: harness.Passes) -> None:
    kube_env.faults.add(faults.Conflict(), verb="write", probability=0.5, times=40)
    failures = []
    for _ in range(6):
        try:
            state = passes.run()
        except errors.TransientError as err:
            failures.append(err.reason)
            continue
        if state.summary is not None and state.summary.ready and not state.plan.has_changes:  # type: ignore[union-attr]
            break
    kube_env.faults.clear()
    final = passes.run()

    assert final.plan is not None and not final.plan.has_changes and final.writes == 0
    assert set(failures) <= {"Conflict"}
    conflicts = [r for r in kube_env.requests() if r.code == 409]
    assert conflicts, "the storm should have hit some writes"
    instances = objects(kube_env, INSTANCES)
    assert len(instances) == 15 and len(objects(kube_env, PACKS)) == 5
    for pi in instances.values():
        assert len(pi["status"]["history"]) == 1  # no duplicated install record
        assert_complete(pi)
    print(f"\nconflict storm: {len(conflicts)} injected 409s, {len(failures)} failed passes before convergence")


class Interfering:
    """A Cluster that lets another writer change an object between observe and apply."""

    def __init__(self, inner: kube.KubeCluster, meddle: Any) -> None:
        self.inner, self.meddle = inner, meddle

    def observe(self, namespace: str, *, since: object = None) -> instance.Observed:
        return self.inner.observe(namespace, since=since)

    def apply(self, namespace: str, changes: Any, revision: str, now: str) -> int:
        self.meddle()
        return self.inner.apply(namespace, changes, revision, now)


def test_a_change_made_during_the_pass_is_not_overwritten(kube_env: KubeEnv, passes: harness.Passes,
                                                          repo: pathlib.Path, api: client.ApiClient) -> None:
    passes.run()
    custom = client.CustomObjectsApi(api)

    def meddle() -> None:
        custom.patch_namespaced_custom_object(harness.GROUP, "v1alpha1", kube_env.namespace, INSTANCES, "web-frontend-prod-eu",
                                              {"metadata": {"annotations": {"audit.example.com/seen": "yes"}}},
                                              field_manager="auditor")

    bump(repo, "web-frontend", "v1.4.2", "v1.5.0")
    passes.cluster = Interfering(passes.cluster, meddle)  # type: ignore[assignment]
    with pytest.raises(errors.TransientError) as raised:
        passes.run()
    assert raised.value.reason == "Conflict" and "not overwriting" in str(raised.value)
    instances = objects(kube_env, INSTANCES)
    assert instances["web-frontend-prod-eu"]["metadata"]["annotations"] == {"audit.example.com/seen": "yes"}
    assert instances["web-frontend-prod-eu"]["status"]["version"] == "1.4.2"  # not written from the stale read
    assert instances["web-frontend-prod-us"]["status"]["version"] == "1.5.0"  # one conflict does not stop the others

    passes.cluster = passes.cluster.inner  # type: ignore[attr-defined]
    state = passes.run()

    assert state.writes == 1
    healed = objects(kube_env, INSTANCES)["web-frontend-prod-eu"]
    assert healed["metadata"]["annotations"] == {"audit.example.com/seen": "yes"}
    assert [h["packVersion"] for h in healed["status"]["history"]] == ["1.4.2", "1.5.0"]
    assert_complete(healed)


def test_server_errors_are_transient_and_the_next_pass_converges(kube_env: KubeEnv, passes: harness.Passes) -> None:
    kube_env.faults.add(faults.InternalError(), verb="apply", resource=INSTANCES, times=1)
    with pytest.raises(errors.TransientError) as raised:
        passes.run()
    assert raised.value.reason == "ClusterUnavailable"

    state = passes.run()

    assert state.summary is not None and state.summary.ready
    assert len(objects(kube_env, INSTANCES)) == 15
    assert passes.run().writes == 0


def test_a_failed_write_leaves_nothing_half_written_and_the_next_pass_redoes_it(kube_env: KubeEnv, passes: harness.Passes) -> None:
    """Spec and status go in one request: a refused write leaves no object without its status."""
    kube_env.faults.add(faults.Fail(422, "Invalid", "injected"), verb="apply", resource=INSTANCES,
                        name="network-policies-dev", times=1)
    kube_env.faults.add(faults.Fail(422, "Invalid", "injected"), verb="create", resource=PACKS, times=1)
    with pytest.raises(errors.StalledError):
        passes.run()
    assert "network-policies-dev" not in objects(kube_env, INSTANCES)
    assert len(objects(kube_env, PACKS)) == len(EXAMPLE_PACKS) - 1  # the first create was refused...
    assert all(pi["status"]["history"] for pi in objects(kube_env, INSTANCES).values())  # ...its instances skipped
    assert all("status" in o for o in [*objects(kube_env, PACKS).values(), *objects(kube_env, INSTANCES).values()])

    state = passes.run()

    assert state.summary is not None and state.summary.ready
    redone = objects(kube_env, INSTANCES)["network-policies-dev"]
    assert [(h["state"], h.get("upgradeDirection")) for h in redone["status"]["history"]] == [("installed", "Initial")]
    assert_complete(redone)
    for obj in objects(kube_env, PACKS).values():
        assert_complete(obj)
    assert passes.run().writes == 0


def test_an_unreachable_api_server_is_transient(tmp_path: pathlib.Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    with client.ApiClient(configuration) as api, kube.KubeCluster(api) as adapter, pytest.raises(errors.TransientError) as raised:
        adapter.observe("seam-system")
    assert raised.value.reason == "ClusterUnavailable" and "cannot reach the API server" in str(raised.value)


def test_a_refusal_names_the_rbac_needed(kube_env: KubeEnv, cluster: kube.KubeCluster) -> None:
    kube_env.faults.add(faults.Fail(403, "Forbidden", "packinstances is forbidden: User cannot list"), verb="list")
    with pytest.raises(errors.ConfigError) as raised:
        cluster.observe(kube_env.namespace)
    assert raised.value.reason == "ClusterUnauthorized"
    assert "list, watch" in str(raised.value) and "kubectl apply -f deploy/20-rbac.yaml" in str(raised.value)


def test_missing_crds_tell_how_to_install_them(clusters: Any) -> None:
    # a second real cluster, on which deploy/10-crds.yaml was never applied
    with kube.connect(kubeconfig=str(clusters.kubeconfig("t1"))) as api, kube.KubeCluster(api) as adapter, \
            pytest.raises(errors.ConfigError) as raised:
        adapter.observe("default")
    assert raised.value.reason == "CRDNotInstalled" and "kubectl apply -f deploy/10-crds.yaml" in str(raised.value)


def test_a_watch_gone_410_relists(kube_env: KubeEnv, api: client.ApiClient) -> None:
    with kube.KubeCluster(api, watch_timeout=1, backoff=(0.05, 0.5)) as adapter:
        assert adapter.observe(kube_env.namespace).instances == {}
        harness.wait_until(lambda: kube_env.request_counts().get(f"watch {INSTANCES}", 0) >= 1)
        kube_env.faults.add(faults.WatchGone(), verb="watch", resource=INSTANCES, times=1)
        kube_env.create_object(labelled_instance("late-dev"))

        harness.wait_until(lambda: kube_env.request_counts().get(f"list {INSTANCES}", 0) == 2, timeout=15)
        seen = harness.wait_until(lambda: adapter.observe(kube_env.namespace).instances.get("late-dev"))

    assert seen.cluster == "dev"
    assert kube_env.request_counts()[f"list {PACKS}"] == 1


def test_a_dropped_watch_resumes_from_its_last_resource_version(kube_env: KubeEnv, api: client.ApiClient) -> None:
    # The fault is in place before the first watch opens: added later, it could miss a watch already open.
    kube_env.faults.add(faults.DropWatch(after_events=1, abrupt=True), verb="watch", resource=INSTANCES, times=1)
    with kube.KubeCluster(api, watch_timeout=1, backoff=(0.05, 0.5)) as adapter:
        adapter.observe(kube_env.namespace)
        kube_env.create_object(labelled_instance("first-dev"))
        kube_env.create_object(labelled_instance("second-dev"))

        harness.wait_until(lambda: {"first-dev", "second-dev"} <= set(adapter.observe(kube_env.namespace).instances), timeout=15)

    dropped = [r for r in kube_env.requests(verb="watch", resource=INSTANCES) if r.fault == "DropWatch"]
    assert dropped and kube_env.request_counts()[f"list {INSTANCES}"] == 1  # resumed, not relisted


def test_objects_without_the_managed_by_label_are_not_observed(kube_env: KubeEnv, cluster: kube.KubeCluster) -> None:
    foreign = labelled_instance("foreign-dev")
    foreign["metadata"]["labels"] = {}
    kube_env.create_object(foreign)
    kube_env.create_object(labelled_instance("ours-dev"))
    assert set(cluster.observe(kube_env.namespace).instances) == {"ours-dev"}


def labelled_instance(name: str) -> dict[str, Any]:
    """A committed PackInstance as gitopsd writes it (spec and a status that saw generation 1)."""
    base, _, cluster_name = name.rpartition("-")
    record = {
        "state": "installed", "packId": base, "packVersion": "1.0.0", "clusterPack": f"{base}-v1.0.0", "priority": 0,
        "registryVersionHash": "sha256:0", "installedAt": "2026-01-01T00:00:00Z", "installedBy": "test",
        "artifact": f"oci-layout://packs/{base}:1.0.0@sha256:1", "revision": "dir@sha256:2", "upgradeFromVersion": None,
    }
    return {
        "apiVersion": "infrastructure.ontai.dev/v1alpha1", "kind": "PackInstance",
        "metadata": {"name": name, "namespace": "", "labels": {"app.kubernetes.io/managed-by": "gitopsd"}},
        "spec": {"basePackName": base, "cluster": cluster_name,
                 "clusterPackRef": {"name": f"{base}-v1.0.0", "version": "1.0.0", "digest": "sha256:1", "checksum": "sha256:3"}},
        "status": {"state": "installed", "version": "1.0.0", "history": [record],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Initial", "message": "", "observedGeneration": 1}]},
    }


# -- presentation and order (pure) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "generation", "state", "version", "checksum"),
    [
        ({}, 1, instance.InstallState.UNINSTALLED, "1.0.0", "sha256:3"),
        (None, 2, instance.InstallState.INSTALLED, "1.0.0", "sha256:3"),
        ("stale", 2, instance.InstallState.INSTALLED, "0.9.0", ""),
    ],
    ids=["spec-written-status-lost-on-create", "status-saw-this-generation", "status-saw-an-older-generation"],
)
def test_an_instance_is_presented_as_of_its_last_completed_write(status: Any, generation: int, state: instance.InstallState,
                                                                  version: str, checksum: str) -> None:
    obj = labelled_instance("pack-dev")
    obj["metadata"]["generation"] = generation
    if status == {}:
        obj["status"] = {}
    elif status is None:
        obj["status"]["conditions"][0]["observedGeneration"] = generation
    else:
        obj["status"]["version"] = "0.9.0"
        obj["status"]["history"][0]["packVersion"] = "0.9.0"
    presented = kube.present_instance(obj)
    assert (presented.state, presented.version, presented.checksum) == (state, version, checksum)


def test_writes_are_ordered_packs_first_and_deletions_last() -> None:
    def c(kind: change.ObjectKind, action: change.Action, name: str) -> change.Change:
        return change.Change(kind=kind, name=name, action=action, reason="", base_pack_name="p", version="1.0.0")

    pk, pi = change.ObjectKind.CLUSTER_PACK, change.ObjectKind.PACK_INSTANCE
    shuffled = [c(pk, change.Action.UNINSTALL, "prune"), c(pi, change.Action.UNINSTALL, "gone"), c(pi, change.Action.BLOCKED, "blocked"),
                c(pi, change.Action.SUPERSEDE, "moved"), c(pk, change.Action.CREATE, "new"), c(pi, change.Action.CREATE, "added")]
    assert [x.name for x in sorted(shuffled, key=kube.write_order)] == ["new", "moved", "added", "blocked", "gone", "prune"]


# -- leader election ----------------------------------------------------------------------------

FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.2}


class Sampler:
    """Samples who believes to lead, every few milliseconds, in a thread."""

    def __init__(self, electors: dict[str, lease.Elector]) -> None:
        self.electors = electors
        self.samples = 0
        self.overlaps: list[tuple[str, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            leading = tuple(name for name, e in self.electors.items() if e.is_leader())
            self.samples += 1
            if len(leading) > 1:
                self.overlaps.append(leading)
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


class Clock:
    """The electors' monotonic clock, moved by hand: lease expiry without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_two_electing_threads_never_lead_at_once_and_a_clean_stop_hands_over(api: client.ApiClient, kube_env: KubeEnv) -> None:
    a = lease.Elector(api, namespace=kube_env.namespace, identity="replica-a", **FAST)
    b = lease.Elector(api, namespace=kube_env.namespace, identity="replica-b", **FAST)
    electors = {"a": a, "b": b}
    with Sampler(electors) as sampler:
        a.start()
        b.start()
        first = harness.wait_until(lambda: next((n for n, e in electors.items() if e.is_leader()), None))
        leader, follower = electors[first], electors["b" if first == "a" else "a"]
        harness.wait_until(lambda: leader.transitions and follower.holder == leader.identity)
        assert not follower.is_leader()
        leader.stop()  # a clean stop releases the lease: the follower takes it at its next retry
        harness.wait_until(follower.is_leader, timeout=4 * FAST["lease_duration"])
        follower.stop()
    assert sampler.overlaps == [] and sampler.samples > 0


def test_a_crashed_leader_is_replaced_once_the_lease_runs_out_on_the_followers_clock(
        api: client.ApiClient, kube_env: KubeEnv) -> None:
    clock = Clock()
    a, b = (lease.Elector(api, namespace=kube_env.namespace, identity=f"replica-{n}", clock=clock, **FAST) for n in "ab")
    assert a.try_acquire_or_renew() and a.is_leader()
    assert not b.try_acquire_or_renew() and not b.is_leader() and b.holder == "replica-a"
    for _ in range(3):  # the leader renews within the lease: the follower waits
        clock.advance(FAST["renew_deadline"] - 0.1)
        assert a.try_acquire_or_renew() and a.is_leader()
        assert not b.try_acquire_or_renew()
    # replica-a crashes: no more renews. It stops counting itself leader after renew_deadline...
    clock.advance(FAST["renew_deadline"])
    assert not a.is_leader()
    # ...and the follower takes over only once the record has not changed for lease_duration on its clock
    clock.advance(FAST["lease_duration"] - FAST["renew_deadline"] - 0.1)
    assert not b.try_acquire_or_renew() and not b.is_leader()
    clock.advance(0.2)
    assert b.try_acquire_or_renew() and b.is_leader() and b.transitions == 1
    assert not a.try_acquire_or_renew() and not a.is_leader() and a.holder == "replica-b"
    spec = kube_env.get_object("leases", lease.LEASE_NAME, kube_env.namespace)["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("replica-b", 1)
    # a clean stop releases the lease: a successor takes it at once, without waiting for the lease to run out
    b.stop()
    successor = lease.Elector(api, namespace=kube_env.namespace, identity="replica-c", clock=clock, **FAST)
    assert successor.try_acquire_or_renew() and successor.is_leader()
    successor.stop()


def test_a_leader_renews_with_one_request_and_reads_again_when_someone_else_wrote_the_lease(
        api: client.ApiClient, kube_env: KubeEnv) -> None:
    clock = Clock()
    leader = lease.Elector(api, namespace=kube_env.namespace, identity="replica-a", clock=clock, **FAST)
    assert leader.try_acquire_or_renew() and leader.is_leader()
    kube_env.reset_requests()
    for _ in range(5):
        clock.advance(FAST["retry_period"])
        assert leader.try_acquire_or_renew() and leader.is_leader()
    rounds = [(r.verb, r.code) for r in kube_env.requests(resource="leases")]
    assert rounds == [("update", 200)] * 5  # no read before each renew
    # another writer changes the Lease behind the leader's back (a hand edit, or a successor after a partition)
    taken = kube_env.get_object("leases", lease.LEASE_NAME, kube_env.namespace)
    taken["spec"] = {**taken["spec"], "holderIdentity": "replica-b", "leaseTransitions": 1}
    kube_env.put_object("leases", lease.LEASE_NAME, kube_env.namespace, taken)
    kube_env.reset_requests()
    clock.advance(FAST["retry_period"])
    assert not leader.try_acquire_or_renew() and leader.holder == "replica-b" and not leader.is_leader()
    assert [(r.verb, r.code) for r in kube_env.requests(resource="leases")] == [("update", 409), ("get", 200)]
    leader.stop(release=False)


def test_a_leader_renews_every_half_renew_deadline_and_retries_every_retry_period_after_a_failure(
        api: client.ApiClient, kube_env: KubeEnv) -> None:
    clock = Clock()
    leader = lease.Elector(api, namespace=kube_env.namespace, identity="replica-a", clock=clock, **FAST)
    follower = lease.Elector(api, namespace=kube_env.namespace, identity="replica-b", clock=clock, **FAST)
    try:
        started = clock()
        assert leader.try_acquire_or_renew() and not follower.try_acquire_or_renew()
        assert leader.next_round_in(started, acquired=True) == FAST["renew_deadline"] / 2
        assert follower.next_round_in(started, acquired=False) == FAST["retry_period"]
        assert leader.next_round_in(started, acquired=False) == FAST["retry_period"]  # a failed renew: try again soon
        clock.advance(0.5)  # the round's own requests took time: the wait is what is left of the interval
        assert leader.next_round_in(started, acquired=True) == pytest.approx(FAST["renew_deadline"] / 2 - 0.5)
        # renewing at that pace keeps the lease: the follower never sees it unchanged for lease_duration
        for _ in range(4):
            clock.advance(FAST["renew_deadline"] / 2)
            assert leader.try_acquire_or_renew() and leader.is_leader()
            assert not follower.try_acquire_or_renew()
    finally:
        leader.stop(release=False)
        follower.stop(release=False)


def test_a_clean_stop_releases_the_lease_with_one_update_and_leaves_one_someone_else_took(
        api: client.ApiClient, kube_env: KubeEnv) -> None:
    clock = Clock()
    leader = lease.Elector(api, namespace=kube_env.namespace, identity="replica-a", clock=clock, **FAST)
    assert leader.try_acquire_or_renew()
    kube_env.reset_requests()
    leader.stop()
    assert [(r.verb, r.code) for r in kube_env.requests(resource="leases")] == [("update", 200)]  # no read first
    assert kube_env.get_object("leases", lease.LEASE_NAME, kube_env.namespace)["spec"]["holderIdentity"] == ""
    # the next holder's Lease is taken over behind its back: its stop reads it and leaves it alone
    successor = lease.Elector(api, namespace=kube_env.namespace, identity="replica-b", clock=clock, **FAST)
    assert successor.try_acquire_or_renew()
    taken = kube_env.get_object("leases", lease.LEASE_NAME, kube_env.namespace)
    taken["spec"] = {**taken["spec"], "holderIdentity": "replica-c"}
    kube_env.put_object("leases", lease.LEASE_NAME, kube_env.namespace, taken)
    kube_env.reset_requests()
    successor.stop()
    assert [(r.verb, r.code) for r in kube_env.requests(resource="leases")] == [("update", 409), ("get", 200)]
    assert kube_env.get_object("leases", lease.LEASE_NAME, kube_env.namespace)["spec"]["holderIdentity"] == "replica-c"


def test_only_one_of_many_contenders_wins(api: client.ApiClient, kube_env: KubeEnv) -> None:
    clock = Clock()
    electors = [lease.Elector(api, namespace=kube_env.namespace, identity=f"r{i}", clock=clock, **FAST) for i in range(5)]
    barrier = threading.Barrier(len(electors))

    def contend(elector: lease.Elector) -> bool:
        barrier.wait()
        return elector.try_acquire_or_renew()

    winners = []
    for _ in range(3):  # the first round races the create, the others the replace of a held Lease
        with concurrent.futures.ThreadPoolExecutor(len(electors)) as pool:
            won = list(pool.map(contend, electors))
        assert won.count(True) == 1, won
        winners.append(electors[won.index(True)].identity)
        assert [e.identity for e in electors if e.is_leader()] == winners[-1:]
        clock.advance(FAST["retry_period"])
    assert len(set(winners)) == 1  # the holder renews; the others wait for the lease to run out
    for e in electors:
        e.stop()


def test_a_deposed_leader_sends_no_write(kube_env: KubeEnv, api: client.ApiClient, passes: harness.Passes) -> None:
    clock = Clock()
    elector = lease.Elector(api, namespace=kube_env.namespace, identity="only", clock=clock, **FAST)
    try:
        assert elector.try_acquire_or_renew() and elector.is_leader()
        gated = kube.KubeCluster(api, may_write=elector.is_leader)
        passes.cluster = gated
        passes.run()
        assert len(objects(kube_env, INSTANCES)) == 15
        shutil.rmtree(passes.repo / "packs" / "web-frontend")
        clock.advance(FAST["renew_deadline"])  # no renew for renew_deadline, as a partitioned leader
        assert not elector.is_leader()
        kube_env.reset_requests()
        with pytest.raises(errors.TransientError) as raised:
            passes.run()
    finally:
        elector.stop(release=False)  # a partitioned leader cannot release either
        passes.cluster.close()  # type: ignore[attr-defined]
    assert raised.value.reason == "NotLeader"
    assert kube_env.write_count() == 0


# -- sharding -----------------------------------------------------------------------------------


def test_shards_partition_packs_by_a_stable_hash() -> None:
    names = [f"pack-{i}" for i in range(200)] + EXAMPLE_PACKS
    for count in (1, 2, 3, 5):
        owners = [[i for i in range(count) if lease.shard_filter(i, count)(n)] for n in names]
        assert all(len(o) == 1 for o in owners)
    # sha256 of the name, not Python's salted hash(): the same on every machine and run
    assert [lease.shard_of(n, 2) for n in EXAMPLE_PACKS] == [1, 0, 1, 0, 0]
    assert lease.lease_name((1, 3)) == "gitopsd-shard-1-of-3" and lease.lease_name(None) == "gitopsd-leader"
    with pytest.raises(errors.ConfigError):
        lease.parse_shard("2/2")


def test_two_shards_never_write_the_same_pack(kube_env: KubeEnv, repo: pathlib.Path, tmp_path: pathlib.Path,
                                              kubeconfig: pathlib.Path) -> None:
    runners = []
    for index in range(2):
        api = kube.connect(kubeconfig=str(kubeconfig), user_agent=f"gitopsd-test shard-{index}")
        owns = lease.shard_filter(index, 2)
        adapter = kube.KubeCluster(api, owns=owns)
        runners.append((api, adapter, harness.Passes(repo, tmp_path / f"state-{index}", adapter, pack_filter=owns)))
    try:
        for _ in range(2):
            for _, _, runner in runners:
                runner.run()
        written: list[set[str]] = []  # object names in the URLs of each shard's writes (a create's is in its body,
        for index in range(2):       # but its status write right after names it)
            agent = f"gitopsd-test shard-{index}"
            written.append({r.name for r in kube_env.requests() if r.is_write and r.resource != "events" and r.user_agent == agent and r.name})
        assert written[0] and written[1] and not written[0] & written[1]
        for index, names in enumerate(written):
            assert all(lease.shard_of(_base(n), 2) == index for n in names), (index, sorted(names))
        assert len(kube_env.requests(verb="create", resource=PACKS)) == 5  # each ClusterPack created once, by one shard
        assert len(objects(kube_env, INSTANCES)) == 15 and len(objects(kube_env, PACKS)) == 5
        # each shard observes only its own packs: neither uninstalled the other's instances
        assert kube_env.requests(verb="delete") == []
    finally:
        for api, adapter, runner in runners:
            runner.close()
            adapter.close()
            api.close()


def _base(name: str) -> str:
    """basePackName of a ClusterPack (``base-vX.Y.Z``) or PackInstance (``base-cluster``) of examples-repo."""
    return next(b for b in EXAMPLE_PACKS if name.startswith(b + "-"))


def test_dry_run_against_the_cluster_writes_nothing(kube_env: KubeEnv, passes: harness.Passes) -> None:
    state = passes.run(dry_run=True)
    assert state.plan is not None and state.plan.has_changes
    assert kube_env.write_count() == 0


def test_env_is_untouched_without_kubernetes_flags(tmp_path: pathlib.Path) -> None:
    parser = argparse.ArgumentParser()
    flags.kube(parser)

    def settings(*argv: str) -> wiring_settings.Settings:
        return wiring_settings.Settings.from_args(parser.parse_args(argv), environ={})

    assert wiring_kube.options(settings()) is None
    opts = wiring_kube.options(settings("--kubeconfig", "kc", "--shard", "1/3"))
    assert opts is not None and opts.shard == (1, 3) and opts.kubeconfig == "kc"
    with pytest.raises(SystemExit):
        parser.parse_args(["--shard", "3/3"])
    with pytest.raises(errors.ConfigError):
        wiring_kube.options(settings("--shard", "0/2"))
    with wiring_kube.connected(settings(), writes=True) as handle:
        assert handle is None


def test_one_shot_mode_lists_on_each_observe_and_starts_no_thread(kube_env: KubeEnv, api: client.ApiClient) -> None:
    before = set(harness.gitopsd_threads())  # an earlier test's threads may still be winding down
    with kube.KubeCluster(api, watch=False) as adapter:
        adapter.observe(kube_env.namespace)
        adapter.observe(kube_env.namespace)
        assert set(harness.gitopsd_threads()) <= before
    assert kube_env.request_counts() == {f"list {PACKS}": 2, f"list {INSTANCES}": 2}


@contextlib.contextmanager
def cluster_env(passes: harness.Passes, kubeconfig: pathlib.Path, namespace: str, *extra: str,
                dry_run: bool = False) -> Iterator[reconcile.Env]:
    """The Env the CLI builds with these Kubernetes flags, on the passes' repo and state dir."""
    parser = argparse.ArgumentParser()
    flags.kube(parser)
    settings = wiring_settings.Settings.from_args(
        parser.parse_args(["--kubeconfig", str(kubeconfig), "--lease-namespace", namespace, *extra]), environ={})
    with assemble.pass_env(settings, passes.local.state_dir, repo=str(passes.repo), dry_run=dry_run) as wired:
        yield wired.env


def test_use_wires_the_cluster_and_holds_the_lease_for_a_one_shot_write(kube_env: KubeEnv, kubeconfig: pathlib.Path,
                                                                        passes: harness.Passes) -> None:
    with cluster_env(passes, kubeconfig, kube_env.namespace, "--shard", "1/2") as env:
        assert isinstance(env.cluster, kube.KubeCluster) and env.pack_filter is not None
        state = reconcile.run(env)
        lease_obj = kube_env.get_object("leases", "gitopsd-shard-1-of-2", kube_env.namespace)
        assert lease_obj is not None and lease_obj["spec"]["holderIdentity"] == lease.default_identity()
    assert state.summary is not None and state.summary.ready
    built = {c.base_pack_name for c in state.plan.changes}  # type: ignore[union-attr]
    assert built == {"cert-manager-lite", "observability"}  # shard 1 of 2
    assert kube_env.get_object("leases", "gitopsd-shard-1-of-2", kube_env.namespace)["spec"]["holderIdentity"] == ""  # released


def test_a_one_shot_write_refuses_while_another_replica_leads(kube_env: KubeEnv, kubeconfig: pathlib.Path,
                                                              api: client.ApiClient, passes: harness.Passes) -> None:
    with lease.Elector(api, namespace=kube_env.namespace, identity="the-daemon", **FAST) as daemon:
        harness.wait_until(daemon.is_leader)
        with cluster_env(passes, kubeconfig, kube_env.namespace) as env, pytest.raises(errors.ConfigError) as raised:
            reconcile.run(env)  # the Lease is asked for at the first write, and refused
        assert raised.value.reason == "LeaseHeld" and "the-daemon" in str(raised.value)
        with cluster_env(passes, kubeconfig, kube_env.namespace, dry_run=True) as env:  # reading needs no lease
            assert reconcile.run(env).writes == 0
    assert [r for r in kube_env.requests() if r.is_write and r.resource != "leases"] == []


def test_a_one_shot_pass_with_nothing_to_change_sends_no_write_at_all(kube_env: KubeEnv, kubeconfig: pathlib.Path,
                                                                     passes: harness.Passes) -> None:
    with cluster_env(passes, kubeconfig, kube_env.namespace) as env:
        assert reconcile.run(env).writes > 0
    kube_env.reset_requests()
    with cluster_env(passes, kubeconfig, kube_env.namespace) as env:  # a new process: cold cache, leader election on
        assert reconcile.run(env).writes == 0
    assert kube_env.write_count() == 0  # not even the Lease: it is taken only before a first write
    assert sorted(r.verb for r in kube_env.requests()) == ["list", "list"]
