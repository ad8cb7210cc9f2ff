"""The scope of a custom kind whose CRD is in another pack, or in gitopsd.yaml's ``crds``: packs on
disk, compiled by a whole pass on the embedded backends (folder source, SQLite compile cache)."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from gitopsd import compiling, reconcile
from gitopsd.core import codec
from gitopsd.model import change, pack
from gitopsd.wiring import compose as wiring
from tests import gitutil

CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: guards.policy.example.io}}
spec:
  group: policy.example.io
  scope: {scope}
  names: {{kind: Guard, plural: guards, singular: guard, listKind: GuardList}}
  versions: [{{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object}}}}}}]
"""
GUARD = "apiVersion: policy.example.io/v1\nkind: Guard\nmetadata: {name: baseline}\nspec: {level: strict}\n"


def write_pack(repo: pathlib.Path, name: str, files: dict[str, str], *, namespace: str = "apps",
               targets: str = "[a]", priority: int = 50) -> None:
    gitutil.write_files(repo, gitutil.raw_pack(name, path="m", targets=targets, namespace=namespace, priority=priority,
                                               manifests=files))


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "repo"
    (root / "clusters").mkdir(parents=True)
    (root / "clusters" / "a.yaml").write_text("name: a\nlabels: {env: prod}\n")
    return root


def run(repo: pathlib.Path, state_dir: pathlib.Path, *, workers: int = 1, shard: str | None = None) -> reconcile.PassState:
    """One pass in a new process's state: nothing kept in memory from an earlier pass."""
    local = wiring.open_local(state_dir)
    try:
        env = wiring.local_env(repo, local, dry_run=False, render_workers=workers)
        if shard is not None:
            env.pack_filter = lambda base: base != shard
        return reconcile.run(env)
    finally:
        local.close()


def objects(result: reconcile.CompileResult) -> dict[str, list[str]]:
    """Layer -> objects as Kind/namespace/name ('-' for none), read from the artifact."""
    art = result.compiled.artifact
    assert art is not None
    out = {}
    for blob in art.layers:
        docs = [json.loads(d) for d in blob.data.decode().split("---\n") if d.strip()]
        out[blob.media_type.split(".")[-2]] = [
            f"{d['kind']}/{d['metadata'].get('namespace', '-')}/{d['metadata']['name']}" for d in docs]
    return out


def compiled(state: reconcile.PassState, base: str) -> reconcile.CompileResult:
    return next(r for r in state.compiled if r.build.base_pack_name == base)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-render-at-a-time", "overlapped-renders"])
def test_a_kind_made_cluster_scoped_by_a_crd_in_another_pack_gets_no_namespace(
        repo: pathlib.Path, tmp_path: pathlib.Path, workers: int) -> None:
    # "guards" sorts before "policy-crds": it is compiled before the CRD is seen, then once more
    write_pack(repo, "guards", {"guard.yaml": GUARD})
    write_pack(repo, "policy-crds", {"crd.yaml": CRD.format(scope="Cluster")})
    state = run(repo, tmp_path / "state", workers=workers)
    assert state.pack_errors == [] and state.summary is not None and state.summary.ready
    guards = compiled(state, "guards")
    assert objects(guards) == {"cluster-scoped": ["Guard/-/baseline"], "rbac": [], "workload": []}
    assert (guards.compiled.subjects, guards.compiled.warnings) == (("Guard/baseline",), ())
    assert guards.compiled.foreign_scopes == (("policy.example.io/Guard", "Cluster"),)
    assert state.crd_scopes == (("policy.example.io/Guard", "Cluster"),)


def test_without_the_crd_the_kind_is_namespaced_and_the_output_says_so(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    write_pack(repo, "guards", {"guard.yaml": GUARD})
    state = run(repo, tmp_path / "state")
    guards = compiled(state, "guards")
    assert objects(guards) == {"rbac": [], "workload": ["Guard/apps/baseline"]}
    assert guards.compiled.warnings == (
        "Guard (policy.example.io/v1): no CRD for it in this pack, another pack or gitopsd.yaml's crds, so its scope is "
        "unknown; taken as namespaced and given namespace apps; add its CRD to a pack or its scope to crds in "
        "gitopsd.yaml, or set metadata.namespace",)


def test_two_packs_owning_one_cluster_scoped_object_collide(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # in two namespaces the two Guards would be two objects; cluster-scoped they are one
    write_pack(repo, "guards-a", {"guard.yaml": GUARD}, namespace="team-a", priority=60)
    write_pack(repo, "guards-b", {"guard.yaml": GUARD}, namespace="team-b")
    write_pack(repo, "policy-crds", {"crd.yaml": CRD.format(scope="Cluster")})
    state = run(repo, tmp_path / "state")
    assert state.plan is not None
    blocked = [c for c in state.plan.changes if c.action is change.Action.BLOCKED]
    assert [(c.name, c.reason) for c in blocked] == [("guards-b-a", "PackCollisionDetected")]
    assert blocked[0].condition is not None and blocked[0].condition.message == (
        "guards-b-v1.0.0 (packs/guards-b/packbuild.yaml, priority 50) collides with guards-a-v1.0.0 "
        "(packs/guards-a/packbuild.yaml, priority 60) on cluster a: both own Guard/baseline; "
        "guards-a-v1.0.0 wins (higher priority). Raise 'priority' or remove the overlap.")


def test_gitopsd_yaml_crds_decide_a_kind_whose_crd_no_pack_has(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    (repo / "gitopsd.yaml").write_text("crds:\n  - {group: policy.example.io, kind: Guard, scope: Cluster}\n")
    write_pack(repo, "guards", {"guard.yaml": GUARD})
    state = run(repo, tmp_path / "state")
    guards = compiled(state, "guards")
    assert objects(guards) == {"cluster-scoped": ["Guard/-/baseline"], "rbac": [], "workload": []}
    assert guards.compiled.warnings == ()


def test_a_changed_crd_scope_compiles_the_packs_that_use_the_kind_again(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    write_pack(repo, "guards", {"guard.yaml": GUARD})
    write_pack(repo, "policy-crds", {"crd.yaml": CRD.format(scope="Cluster")})
    write_pack(repo, "plain", {"cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"})
    state_dir = tmp_path / "state"
    first = run(repo, state_dir)
    assert compiled(first, "guards").compiled.subjects == ("Guard/baseline",)
    again = run(repo, state_dir)
    assert {r.build.base_pack_name: r.cached for r in again.compiled} == {"guards": True, "plain": True, "policy-crds": True}

    (repo / "packs/policy-crds/m/crd.yaml").write_text(CRD.format(scope="Namespaced"))
    (repo / "packs/policy-crds/packbuild.yaml").write_text(
        (repo / "packs/policy-crds/packbuild.yaml").read_text().replace("1.0.0", "1.1.0"))
    changed = run(repo, state_dir)  # a new process: its cache holds guards as compiled with Cluster
    assert {r.build.base_pack_name: r.cached for r in changed.compiled} == {"guards": False, "plain": True, "policy-crds": False}
    guards = compiled(changed, "guards")
    assert guards.compiled.subjects == ("Guard/apps/baseline",)
    assert guards.compiled.foreign_scopes == (("policy.example.io/Guard", "Namespaced"),)
    assert guards.compiled.cluster_pack.checksum != compiled(first, "guards").compiled.cluster_pack.checksum
    assert changed.plan is not None
    assert [(c.name, c.reason) for c in changed.plan.changes if c.action is change.Action.BLOCKED] == [
        ("guards-v1.0.0", "ImmutabilityViolation"), ("guards-a", "ImmutabilityViolation")]  # same version, other objects

    settled = run(repo, state_dir)
    assert {r.build.base_pack_name: r.cached for r in settled.compiled} == {"guards": True, "plain": True, "policy-crds": True}
    assert compiled(settled, "guards").compiled.subjects == ("Guard/apps/baseline",)


def test_a_long_running_process_sees_a_changed_crd_scope(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    write_pack(repo, "guards", {"guard.yaml": GUARD})
    write_pack(repo, "policy-crds", {"crd.yaml": CRD.format(scope="Cluster")})
    local = wiring.open_local(tmp_path / "state")
    try:
        env = wiring.local_env(repo, local, dry_run=True, render_workers=1)
        first = reconcile.run(env)
        assert (compiled(first, "guards").compiled.subjects, env.memo.crd_scopes) == (
            ("Guard/baseline",), (("policy.example.io/Guard", "Cluster"),))
        (repo / "packs/policy-crds/m/crd.yaml").write_text(CRD.format(scope="Namespaced"))
        state = reconcile.run(env)  # the scopes it starts from, the last pass's, are now wrong
        assert [(r.build.base_pack_name, r.cached) for r in state.compiled] == [("guards", False), ("policy-crds", False)]
        assert compiled(state, "guards").compiled.subjects == ("Guard/apps/baseline",)
        assert env.memo.crd_scopes == (("policy.example.io/Guard", "Namespaced"),)
    finally:
        local.close()


def test_a_long_running_process_settles_the_scopes_again_only_when_a_crd_may_have_changed(
        repo: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pack(repo, "guards", {"guard.yaml": GUARD})
    write_pack(repo, "policy-crds", {"crd.yaml": CRD.format(scope="Cluster")})
    web = "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web}}\ndata: {{v: '{v}'}}\n"
    write_pack(repo, "web", {"cm.yaml": web.format(v=1)})
    settled: list[int] = []
    settle = compiling._settle_scopes
    monkeypatch.setattr(compiling, "_settle_scopes", lambda env, state: (settled.append(len(state.compiled)), settle(env, state))[1])
    local = wiring.open_local(tmp_path / "state")
    try:
        env = wiring.local_env(repo, local, dry_run=True, render_workers=1)
        reconcile.run(env)
        assert settled == [3]
        (repo / "packs/web/m/cm.yaml").write_text(web.format(v=2))  # no CRD in it, none changed: the scopes hold
        state = reconcile.run(env)
        assert settled == [3] and [r.build.base_pack_name for r in state.compiled if not r.cached] == ["web"]
        assert compiled(state, "guards").compiled.subjects == ("Guard/baseline",)
        shutil.rmtree(repo / "packs/policy-crds")  # the pack with the CRD went: every pack's CRDs are read again
        state = reconcile.run(env)
        assert settled == [3, 2]
        assert compiled(state, "guards").compiled.subjects == ("Guard/apps/baseline",)
    finally:
        local.close()


def test_a_shard_reads_the_crds_of_packs_it_does_not_own(repo: pathlib.Path, tmp_path: pathlib.Path) -> None:
    write_pack(repo, "guards", {"guard.yaml": GUARD})
    write_pack(repo, "policy-crds", {"crd.yaml": CRD.format(scope="Cluster")})
    state = run(repo, tmp_path / "state", shard="policy-crds")
    assert [r.build.base_pack_name for r in state.compiled] == ["guards"]
    assert objects(compiled(state, "guards")) == {"cluster-scoped": ["Guard/-/baseline"], "rbac": [], "workload": []}


def test_a_cached_entry_from_before_scopes_were_kept_is_a_miss() -> None:
    text = json.loads(codec.compiled_to_text(pack.CompiledPack(
        cluster_pack=_any_cluster_pack(), identities=(), subjects=(), secret_subjects=(), artifact=None, object_count=0)))
    del text["crds"], text["foreignScopes"]
    with pytest.raises(KeyError):
        codec.compiled_from_text(json.dumps(text))


def _any_cluster_pack() -> pack.ClusterPack:
    return pack.ClusterPack(
        name="x-v1.0.0", namespace="seam-system", version="1.0.0", base_pack_name="x", target_clusters=(),
        registry_url="r/x:1.0.0", manifest_digest="sha256:" + "0" * 64, checksum="sha256:" + "1" * 64,
        rbac_digest=None, cluster_scoped_digest=None, workload_digest=None, source_build_ref="packs/x/packbuild.yaml",
        execution_order=(), provenance=pack.Provenance(commit="c", path="p", tree="t", commit_time="", compiler="",
                                                         renderers=()), chart=None)
