"""One behavioural contract for every ``ports.Cluster``: the SQLite store, the in-memory twin and
Kubernetes (a real kube-apiserver). Plans come from ``core.plan`` as in a pass; each test checks
what the twin then holds, through ``observe`` only, so the twins cannot quietly disagree.

What every twin promises:
- ``apply`` returns the number of objects written; a plan with nothing to write writes nothing;
- created objects are observed with their content, a uid and a resourceVersion;
- a supersede keeps the PackInstance's uid and moves its version and history;
- uninstall deletes the PackInstance (the ClusterPack stays until pruned); a re-install is Initial;
- a write planned from a stale read is refused (``TransientError``, reason Conflict), never an
  overwrite of the newer value;
- a pruned ClusterPack is gone.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import pytest

from gitopsd import errors, ports
from gitopsd.adapters import fakes, kube, localstore
from gitopsd.core import plan
from gitopsd.model import change, instance
from tests.core.test_plan import POLICY, build_plan, desired
from tests.realkube import clusters as realkube

pytestmark = pytest.mark.timeout(180)

TWINS = ["sqlite", "memory", pytest.param("kubernetes", marks=pytest.mark.slow)]  # a real control plane: slow


class Twin:
    def __init__(self, cluster: ports.Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.policy = plan.Policy(namespace=namespace, now=POLICY.now, installed_by=POLICY.installed_by,
                                  registry_hash=POLICY.registry_hash)

    def desired(self, base: str, version: str, **kw: object) -> plan.Desired:
        return desired(base, version, namespace=self.namespace, **kw)  # type: ignore[arg-type]

    def observe(self) -> instance.Observed:
        return self.cluster.observe(self.namespace)

    def plan(self, *ds: plan.Desired, observed: instance.Observed | None = None) -> change.Plan:
        return build_plan(*ds, observed=self.observe() if observed is None else observed, policy=self.policy)

    def apply(self, p: change.Plan) -> int:
        return self.cluster.apply(self.namespace, p.changes, p.revision, POLICY.now)

    def run(self, *ds: plan.Desired) -> int:
        return self.apply(self.plan(*ds))


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Twin]:
    if request.param == "sqlite":
        store = localstore.LocalStore(tmp_path / "store.db")
        yield Twin(store, "seam-system")
        store.close()
    elif request.param == "memory":
        yield Twin(fakes.MemoryCluster(), "seam-system")
    else:
        kubeconfig = request.getfixturevalue("mgmt_kubeconfig")
        with realkube.api(kubeconfig) as api:
            namespace = realkube.fresh_namespace(api, "twin")
            try:
                with kube.KubeCluster(api, backoff=(0.05, 1.0)) as cluster:
                    yield Twin(cluster, namespace)
            finally:
                realkube.delete_namespace(api, namespace)


def test_created_objects_are_observed_with_their_content_and_identity(twin: Twin) -> None:
    web = twin.desired("web", "1.0.0", clusters=("c1", "c2"))
    assert twin.run(web) == 3

    seen = twin.observe()
    assert set(seen.packs) == {"web-v1.0.0"}
    assert (seen.packs["web-v1.0.0"].checksum, seen.packs["web-v1.0.0"].manifest_digest) == (
        web.cluster_pack.checksum, web.cluster_pack.manifest_digest)
    assert set(seen.instances) == {"web-c1", "web-c2"}
    for name, pi in seen.instances.items():
        assert (pi.cluster_pack, pi.version, pi.state, pi.cluster) == ("web-v1.0.0", "1.0.0", instance.InstallState.INSTALLED,
                                                                       name.rpartition("-")[2])
        assert pi.uid and pi.resource_version
        assert [r.state for r in pi.history] == [instance.InstallState.INSTALLED]
    assert twin.observe() == seen


def test_a_plan_with_nothing_to_write_writes_nothing(twin: Twin) -> None:
    twin.run(twin.desired("web", "1.0.0"))
    again = twin.plan(twin.desired("web", "1.0.0"))
    assert not again.has_changes
    assert twin.apply(again) == 0


def test_a_supersede_keeps_the_uid_and_moves_version_and_history(twin: Twin) -> None:
    twin.run(twin.desired("web", "1.0.0"))
    before = twin.observe().instances["web-c1"]

    assert twin.run(twin.desired("web", "1.1.0")) == 2  # the new ClusterPack and the instance

    after = twin.observe().instances["web-c1"]
    assert after.uid == before.uid and after.resource_version != before.resource_version
    assert (after.version, after.cluster_pack) == ("1.1.0", "web-v1.1.0")
    assert [(r.state, r.direction, r.upgrade_from_version) for r in after.history] == [
        (instance.InstallState.INSTALLED, instance.Direction.INITIAL, None),
        (instance.InstallState.UPGRADED, instance.Direction.UPGRADE, "1.0.0"),
    ]


def test_uninstall_deletes_the_instance_and_keeps_the_cluster_pack(twin: Twin) -> None:
    twin.run(twin.desired("web", "1.0.0"))

    assert twin.run() == 1

    seen = twin.observe()
    assert seen.instances == {}
    assert set(seen.packs) == {"web-v1.0.0"}
    assert not twin.plan().has_changes  # nothing left to uninstall


def test_a_reinstall_after_uninstall_is_initial_with_a_new_identity(twin: Twin) -> None:
    twin.run(twin.desired("web", "1.0.0"))
    first_uid = twin.observe().instances["web-c1"].uid
    twin.run()

    back = twin.plan(twin.desired("web", "1.0.0"))
    assert [(c.name, c.action, c.direction) for c in back.changes if c.kind is change.ObjectKind.PACK_INSTANCE] == [
        ("web-c1", change.Action.CREATE, instance.Direction.INITIAL)]
    assert twin.apply(back) == 1
    again = twin.observe().instances["web-c1"]
    assert [r.state for r in again.history] == [instance.InstallState.INSTALLED]
    assert again.uid and again.uid != first_uid


def test_a_write_planned_from_a_stale_read_is_refused_and_the_newer_value_kept(twin: Twin) -> None:
    twin.run(twin.desired("web", "1.0.0"))
    stale = twin.observe()
    twin.run(twin.desired("web", "1.1.0"))  # another writer moves the instance first

    late = twin.plan(twin.desired("web", "1.2.0"), observed=stale)
    with pytest.raises(errors.TransientError) as refused:
        twin.apply(late)

    assert refused.value.reason == "Conflict"
    assert twin.observe().instances["web-c1"].version == "1.1.0"


def test_an_uninstall_planned_from_a_stale_read_is_refused(twin: Twin) -> None:
    twin.run(twin.desired("web", "1.0.0"))
    stale = twin.observe()
    twin.run(twin.desired("web", "1.1.0"))

    with pytest.raises(errors.TransientError) as refused:
        twin.apply(twin.plan(observed=stale))

    assert refused.value.reason == "Conflict"
    assert twin.observe().instances["web-c1"].version == "1.1.0"


def test_a_pruned_cluster_pack_is_gone(twin: Twin) -> None:
    twin.run(twin.desired("web", "1.0.0"))
    twin.run(twin.desired("web", "1.1.0"))
    assert set(twin.observe().packs) == {"web-v1.0.0", "web-v1.1.0"}

    twin.policy = dataclasses.replace(twin.policy, keep_versions=1)
    pruned = []
    for _ in range(3):  # keep_versions=1: the versions no instance runs any more go
        p = twin.plan(twin.desired("web", "1.2.0"))
        if not p.has_changes:
            break
        pruned += [c.name for c in p.changes if c.kind is change.ObjectKind.CLUSTER_PACK and c.action is change.Action.UNINSTALL]
        twin.apply(p)

    assert sorted(pruned) == ["web-v1.0.0", "web-v1.1.0"]
    assert set(twin.observe().packs) == {"web-v1.2.0"}
