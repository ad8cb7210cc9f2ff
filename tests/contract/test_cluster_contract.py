"""The Cluster contract of the Kubernetes adapter: what gitopsd relies on from the API server.

Runs against a real kube-apiserver (see ``conftest.py``). Only the Kubernetes API and the adapter's
own request counters are used to check.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from gitopsd import errors
from gitopsd.adapters import kube
from gitopsd.model import change, delivery, instance, pack
from tests import recordfields
from tests.contract import harness
from tests.contract.conftest import Target

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REV = "main@sha1:" + "3" * 40
NOW = "2026-01-01T00:00:00Z"
V1 = "v1alpha1"


def cluster_pack(namespace: str, *, base: str = "demo", version: str = "1.0.0", checksum: str = "sha256:" + "a" * 64) -> pack.ClusterPack:
    return pack.ClusterPack(
        name=f"{base}-v{version}", namespace=namespace, version=version, base_pack_name=base, target_clusters=("dev",),
        registry_url=f"registry.example.com/packs/{base}:{version}", manifest_digest="sha256:" + "1" * 64, checksum=checksum,
        rbac_digest=None, cluster_scoped_digest=None, workload_digest="sha256:" + "2" * 64,
        source_build_ref=f"packs/{base}/packbuild.yaml", execution_order=(pack.Stage.STATELESS,),
        provenance=pack.Provenance(commit=REV, path=f"packs/{base}/packbuild.yaml", tree="4" * 40, commit_time=NOW,
                                   compiler="gitopsd/0.1.0", renderers=(("raw", "gitopsd"),)),
        signature="c2lnbmF0dXJl",
    )


def create_pack(cp: pack.ClusterPack) -> change.Change:
    return change.Change(kind=change.ObjectKind.CLUSTER_PACK, name=cp.name, action=change.Action.CREATE, reason="new pack version",
                         base_pack_name=cp.base_pack_name, version=cp.version, cluster_pack=cp)


def put_instance(cp: pack.ClusterPack, cluster: str, observed: instance.PackInstance | None = None) -> change.Change:
    """CREATE (nothing observed) or SUPERSEDE (an Upgrade of ``observed``), as the plan makes them."""
    direction = instance.Direction.INITIAL if observed is None else instance.Direction.UPGRADE
    record = instance.InstallRecord(
        state=instance.InstallState.INSTALLED if observed is None else instance.InstallState.UPGRADED,
        pack_id=cp.base_pack_name, pack_version=cp.version, cluster_pack=cp.name, priority=0, license=None,
        registry_version_hash="sha256:5", installed_at=NOW, installed_by="contract",
        artifact=f"{cp.registry_url}@{cp.manifest_digest}", revision=REV,
        upgrade_from_version=None if observed is None else observed.version, direction=direction,
    )
    desired = instance.PackInstance(
        name=f"{cp.base_pack_name}-{cluster}", namespace=cp.namespace, base_pack_name=cp.base_pack_name, cluster=cluster,
        cluster_pack=cp.name, version=cp.version, manifest_digest=cp.manifest_digest, checksum=cp.checksum, priority=0,
        source_build_ref=cp.source_build_ref, revision=REV, state=instance.InstallState.INSTALLED,
        history=(observed.history if observed else ()) + (record,),
        conditions=(instance.Condition("Ready", "True", str(direction), f"{cp.name} applied at {REV}"),),
        uid=observed.uid if observed else None, resource_version=observed.resource_version if observed else None,
    )
    return change.Change(kind=change.ObjectKind.PACK_INSTANCE, name=desired.name,
                         action=change.Action.CREATE if observed is None else change.Action.SUPERSEDE,
                         reason="initial install" if observed is None else f"upgrade {observed.version} -> {cp.version}",
                         base_pack_name=cp.base_pack_name, version=cp.version, cluster=cluster,
                         from_version=None if observed is None else observed.version, direction=direction, pack_instance=desired)


def remove(kind: change.ObjectKind, name: str, observed: instance.PackInstance | None = None) -> change.Change:
    return change.Change(kind=kind, name=name, action=change.Action.UNINSTALL, reason="removed from Git",
                         base_pack_name="demo", version="1.0.0", pack_instance=observed)


def blocked(name: str, message: str) -> change.Change:
    return change.Change(kind=change.ObjectKind.PACK_INSTANCE, name=name, action=change.Action.BLOCKED,
                         reason="PackCollisionDetected", base_pack_name="demo", version="1.0.0", cluster="dev",
                         condition=instance.Condition("PackCollisionDetected", "True", "PackCollisionDetected", message))


def read(target: Target, plural: str, name: str) -> dict[str, Any] | None:
    try:
        response = target.custom().get_namespaced_custom_object(harness.GROUP, V1, target.namespace, plural, name, _preload_content=False)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    return json.loads(response.data)  # type: ignore[no-any-return]


def events_about(target: Target, name: str) -> list[dict[str, Any]]:
    response = client.CoreV1Api(target.api).list_namespaced_event(
        target.namespace, field_selector=f"involvedObject.name={name}", _preload_content=False)
    return sorted(json.loads(response.data)["items"], key=lambda e: e["metadata"]["creationTimestamp"])


def writes(adapter: kube.KubeCluster) -> int:
    return sum(n for key, n in adapter.requests.counts.items() if key.split()[0] not in ("get", "list", "watch"))


def install(target: Target, adapter: kube.KubeCluster, cp: pack.ClusterPack, cluster: str = "dev") -> instance.PackInstance:
    adapter.observe(target.namespace)
    adapter.apply(target.namespace, [create_pack(cp), put_instance(cp, cluster)], REV, NOW)
    return adapter.observe(target.namespace).instances[f"{cp.base_pack_name}-{cluster}"]


# -- ClusterPacks ---------------------------------------------------------------------------------


def test_a_created_cluster_pack_is_observed_with_its_signature_and_status(target: Target) -> None:
    cp = cluster_pack(target.namespace)
    with target.cluster() as adapter:
        assert adapter.observe(target.namespace).packs == {}
        assert adapter.apply(target.namespace, [create_pack(cp)], REV, NOW) == 1
        found = adapter.observe(target.namespace).packs[cp.name]
    assert (found.checksum, found.manifest_digest, found.signature) == (cp.checksum, cp.manifest_digest, cp.signature)
    assert found.spec_json == pack.canonical_json(cp.spec())  # what the signature covers survives the round trip
    stored = read(target, harness.PACKS, cp.name)
    assert stored is not None and stored["status"]["signed"] is True and stored["status"]["packSignature"] == cp.signature
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gitopsd"


def test_a_cluster_pack_created_meanwhile_with_other_content_is_an_immutability_violation(target: Target) -> None:
    with target.cluster() as late, target.cluster() as early:
        late.observe(target.namespace)
        early.observe(target.namespace)
        early.apply(target.namespace, [create_pack(cluster_pack(target.namespace))], REV, NOW)
        with pytest.raises(errors.ImmutabilityViolation) as raised:
            late.apply(target.namespace, [create_pack(cluster_pack(target.namespace, checksum="sha256:" + "b" * 64))], REV, NOW)
    assert "bump 'version'" in str(raised.value)
    stored = read(target, harness.PACKS, "demo-v1.0.0")
    assert stored is not None and stored["spec"]["checksum"] == "sha256:" + "a" * 64  # never overwritten


def test_a_cluster_pack_created_meanwhile_with_the_same_content_is_adopted(target: Target) -> None:
    cp = cluster_pack(target.namespace)
    with target.cluster() as late, target.cluster() as early:
        late.observe(target.namespace)
        early.observe(target.namespace)
        early.apply(target.namespace, [create_pack(cp)], REV, NOW)
        assert late.apply(target.namespace, [create_pack(cp)], REV, NOW) == 1
    listed = target.custom().list_namespaced_custom_object(harness.GROUP, V1, target.namespace, harness.PACKS, _preload_content=False)
    assert [o["metadata"]["name"] for o in json.loads(listed.data)["items"]] == [cp.name]


def test_a_status_another_writer_completes_after_this_cache_saw_the_pack_is_left_to_it(target: Target) -> None:
    """A cache that saw another writer's ClusterPack between its create and its status write does not
    take it for a lost status write once that status has landed (it used to fail the pass: Conflict)."""
    cp = cluster_pack(target.namespace)
    body = cp.to_object()
    status = body.pop("status")
    body["metadata"]["namespace"] = target.namespace
    custom = target.custom()
    custom.create_namespaced_custom_object(harness.GROUP, V1, target.namespace, harness.PACKS, body, _preload_content=False)
    with target.cluster(watch=False) as late:
        assert cp.name in late.observe(target.namespace).packs  # seen with no status yet
        finished = {**status, "conditions": [{"type": "Ready", "status": "True", "reason": "Created", "message": "by the other writer",
                                              "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}
        # no status subresource (deploy/10-crds.yaml): the other writer sets the status on the object
        custom.patch_namespaced_custom_object(harness.GROUP, V1, target.namespace, harness.PACKS, cp.name,
                                              {"status": finished}, _preload_content=False)
        assert late.apply(target.namespace, [create_pack(cp)], REV, NOW) == 1  # adopted, status written once
    stored = read(target, harness.PACKS, cp.name)
    assert stored is not None and stored["status"]["conditions"][0]["reason"] == "Created"
    assert stored["status"]["packSignature"] == status["packSignature"]


def test_pruning_deletes_the_cluster_pack(target: Target) -> None:
    cp = cluster_pack(target.namespace)
    with target.cluster() as adapter:
        adapter.observe(target.namespace)
        adapter.apply(target.namespace, [create_pack(cp)], REV, NOW)
        adapter.observe(target.namespace)
        assert adapter.apply(target.namespace, [remove(change.ObjectKind.CLUSTER_PACK, cp.name)], REV, NOW) == 1
        assert adapter.observe(target.namespace).packs == {}
    assert read(target, harness.PACKS, cp.name) is None
    assert sorted(e["reason"] for e in events_about(target, cp.name)) == ["Created", "Pruned"]


# -- PackInstances --------------------------------------------------------------------------------


def test_supersede_keeps_the_object_and_moves_its_resource_version(target: Target) -> None:
    old, new = cluster_pack(target.namespace), cluster_pack(target.namespace, version="1.1.0", checksum="sha256:" + "c" * 64)
    with target.cluster() as adapter:
        first = install(target, adapter, old)
        adapter.apply(target.namespace, [create_pack(new), put_instance(new, "dev", first)], REV, NOW)
        second = adapter.observe(target.namespace).instances["demo-dev"]
    assert second.uid == first.uid and second.resource_version != first.resource_version
    assert (second.version, second.cluster_pack) == ("1.1.0", "demo-v1.1.0")
    assert [(r.pack_version, r.direction) for r in second.history] == [("1.0.0", instance.Direction.INITIAL), ("1.1.0", instance.Direction.UPGRADE)]
    stored = read(target, harness.INSTANCES, "demo-dev")
    assert stored is not None
    assert {c["observedGeneration"] for c in stored["status"]["conditions"]} == {stored["metadata"]["generation"]}
    # one Event per pack and reason, about the ClusterPack the instances run (its creation named in it)
    installed, = events_about(target, "demo-v1.0.0")
    upgraded, = events_about(target, "demo-v1.1.0")
    assert (installed["reason"], upgraded["reason"]) == ("Installed", "Upgrade")
    assert installed["message"].startswith("ClusterPack demo-v1.0.0 created; 1 PackInstance Installed (demo-dev): ")


def test_uninstall_deletes_the_instance(target: Target) -> None:
    with target.cluster() as adapter:
        observed = install(target, adapter, cluster_pack(target.namespace))
        assert adapter.apply(target.namespace, [remove(change.ObjectKind.PACK_INSTANCE, "demo-dev", observed)], REV, NOW) == 1
        assert adapter.observe(target.namespace).instances == {}
    assert read(target, harness.INSTANCES, "demo-dev") is None
    assert "Uninstalled" in [e["reason"] for e in events_about(target, "demo-v1.0.0")]  # about its ClusterPack


def test_a_write_based_on_a_stale_read_is_refused_not_overwriting(target: Target) -> None:
    old, new = cluster_pack(target.namespace), cluster_pack(target.namespace, version="1.1.0", checksum="sha256:" + "c" * 64)
    with target.cluster() as adapter:
        observed = install(target, adapter, old)
        target.custom().patch_namespaced_custom_object(harness.GROUP, V1, target.namespace, harness.INSTANCES, "demo-dev",
                                                       {"spec": {"priority": 7}}, field_manager="someone-else")
        with pytest.raises(errors.TransientError) as raised:
            adapter.apply(target.namespace, [create_pack(new), put_instance(new, "dev", observed)], REV, NOW)
    assert raised.value.reason == "Conflict"
    stored = read(target, harness.INSTANCES, "demo-dev")
    assert stored is not None and stored["spec"]["priority"] == 7 and stored["spec"]["clusterPackRef"]["version"] == "1.0.0"


def test_a_blocked_condition_is_written_only_when_it_changes(target: Target) -> None:
    with target.cluster() as adapter:
        install(target, adapter, cluster_pack(target.namespace))
        assert adapter.apply(target.namespace, [blocked("demo-dev", "collides with other-v1.0.0")], REV, NOW) == 1
        before = writes(adapter)
        assert adapter.apply(target.namespace, [blocked("demo-dev", "collides with other-v1.0.0")], REV, NOW) == 0
        assert writes(adapter) == before  # no status write, no repeated event
        assert adapter.apply(target.namespace, [blocked("demo-dev", "collides with third-v2.0.0")], REV, NOW) == 1
    stored = read(target, harness.INSTANCES, "demo-dev")
    assert stored is not None
    conditions = {c["type"]: c for c in stored["status"]["conditions"]}
    assert conditions["PackCollisionDetected"]["message"] == "collides with third-v2.0.0"
    assert (conditions["Ready"]["status"], conditions["Stalled"]["status"]) == ("False", "True")
    assert len(stored["status"]["history"]) == 1
    # the second block continues the series of the first (one Event, count 2), the repeat sent nothing
    warnings = [(e["reason"], e["count"], e["series"]["count"]) for e in events_about(target, "demo-v1.0.0") if e["type"] == "Warning"]
    assert warnings == [("PackCollisionDetected", 2, 2)]


def test_a_spec_written_without_its_status_is_observed_as_not_installed(target: Target) -> None:
    cp = cluster_pack(target.namespace)
    body = {"apiVersion": pack.API_VERSION, "kind": "PackInstance",
            "metadata": {"name": "demo-dev", "namespace": target.namespace, "labels": {"app.kubernetes.io/managed-by": "gitopsd"}},
            "spec": put_instance(cp, "dev").pack_instance.spec()}  # type: ignore[union-attr]
    target.custom().create_namespaced_custom_object(harness.GROUP, V1, target.namespace, harness.INSTANCES, body, _preload_content=False)
    with target.cluster() as adapter:
        half = adapter.observe(target.namespace).instances["demo-dev"]
        assert half.state is instance.InstallState.UNINSTALLED  # the plan installs it again
        adapter.apply(target.namespace, [create_pack(cp), put_instance(cp, "dev", None)], REV, NOW)
        done = adapter.observe(target.namespace).instances["demo-dev"]
    assert done.state is instance.InstallState.INSTALLED and done.uid == half.uid and len(done.history) == 1


# -- reads ----------------------------------------------------------------------------------------


def test_observing_again_sends_no_request(target: Target) -> None:
    with target.cluster() as adapter:
        install(target, adapter, cluster_pack(target.namespace))
        before = sum(adapter.requests.counts.values())
        for _ in range(3):
            observed = adapter.observe(target.namespace)
        assert sum(adapter.requests.counts.values()) == before
    assert set(observed.instances) == {"demo-dev"} and set(observed.packs) == {"demo-v1.0.0"}


def test_changes_by_others_reach_the_cache(target: Target) -> None:
    with target.cluster() as adapter:
        install(target, adapter, cluster_pack(target.namespace))
        target.custom().delete_namespaced_custom_object(harness.GROUP, V1, target.namespace, harness.INSTANCES, "demo-dev",
                                                        _preload_content=False)
        harness.wait_until(lambda: "demo-dev" not in adapter.observe(target.namespace).instances, timeout=30)
        assert adapter.requests.counts[f"list {harness.INSTANCES}"] == 1


def test_objects_not_managed_by_gitopsd_are_ignored(target: Target) -> None:
    cp = cluster_pack(target.namespace)
    foreign = cp.to_object()
    foreign.pop("status")
    foreign["metadata"] = {"name": "foreign-v1.0.0", "namespace": target.namespace}
    target.custom().create_namespaced_custom_object(harness.GROUP, V1, target.namespace, harness.PACKS, foreign, _preload_content=False)
    with target.cluster() as adapter:
        assert adapter.observe(target.namespace).packs == {}


def test_a_deletion_based_on_a_stale_read_is_refused(target: Target) -> None:
    with target.cluster() as adapter:
        observed = install(target, adapter, cluster_pack(target.namespace))
        target.custom().patch_namespaced_custom_object(harness.GROUP, V1, target.namespace, harness.INSTANCES, "demo-dev",
                                                       {"metadata": {"labels": {"team": "platform"}}}, field_manager="someone-else")
        with pytest.raises(errors.TransientError) as raised:
            adapter.apply(target.namespace, [remove(change.ObjectKind.PACK_INSTANCE, "demo-dev", observed)], REV, NOW)
    assert raised.value.reason == "Conflict"
    assert read(target, harness.INSTANCES, "demo-dev") is not None


# -- one request an object ------------------------------------------------------------------------


def test_an_instance_and_its_pack_are_written_with_one_request_each(target: Target) -> None:
    with target.cluster() as adapter:
        install(target, adapter, cluster_pack(target.namespace))
        sent = {key: n for key, n in adapter.requests.counts.items() if key.split()[0] not in ("get", "list", "watch")}
    assert sent == {f"create {harness.PACKS}": 1, f"apply {harness.INSTANCES}": 1, "create events": 1}
    stored = read(target, harness.INSTANCES, "demo-dev")
    assert stored is not None and stored["metadata"]["generation"] == 1
    assert {c["observedGeneration"] for c in stored["status"]["conditions"]} == {1}


def test_a_delivery_record_keeps_the_status_current_and_the_instance_complete(target: Target) -> None:
    """``status.delivery`` (manager gitopsd-delivery) moves ``metadata.generation``: the conditions'
    ``observedGeneration`` moves with it, so readers (and the next plan) still see a complete write."""
    record = delivery.Delivery(cluster="dev", result=delivery.Result.DELIVERED, digest="sha256:" + "1" * 64,
                               version="1.0.0", message="delivered", at=NOW)
    with target.cluster() as adapter:
        first = install(target, adapter, cluster_pack(target.namespace))
        adapter.record_delivery(target.namespace, "demo-dev", record, NOW)
        again = adapter.observe(target.namespace).instances["demo-dev"]
    stored = read(target, harness.INSTANCES, "demo-dev")
    assert stored is not None and stored["spec"]["clusterPackRef"]["name"] == "demo-v1.0.0"
    assert stored["status"]["delivery"]["result"] == "Delivered"
    assert {c["observedGeneration"] for c in stored["status"]["conditions"]} == {stored["metadata"]["generation"]} == {2}
    assert (again.state, again.checksum, again.history) == (first.state, first.checksum, first.history)
    managers = {m["manager"] for m in stored["metadata"]["managedFields"]}
    assert managers == {"gitopsd", "gitopsd-delivery"}


def test_the_fields_read_of_delivery_records_agree_with_the_whole_records(target: Target) -> None:
    with target.cluster() as adapter:
        for i, cluster in enumerate(("dev", "prod", "edge")):
            install(target, adapter, cluster_pack(target.namespace), cluster)
            adapter.record_delivery(target.namespace, f"demo-{cluster}", recordfields.records(cluster)[i], NOW)
        adapter.flush_events(NOW)
        adapter.observe(target.namespace)
        recordfields.assert_fields_agree(adapter, target.namespace, {"dev", "prod", "edge"})
