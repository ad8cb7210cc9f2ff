"""Plan: the ChangeSet for every situation the reconcile pass meets, asserted as whole values."""

from __future__ import annotations

import dataclasses

import pytest

from gitopsd.core import codec, plan
from gitopsd.core import compile as compile_core
from gitopsd.model import change, instance, spec
from gitopsd.model.change import Action, ObjectKind
from gitopsd.model.instance import Direction

NOW = "2026-02-01T00:00:00Z"
POLICY = plan.Policy(namespace="seam-system", now=NOW, installed_by="alice <a@example.com>", registry_hash="sha256:schemas")


def desired(base: str, version: str, *, clusters: tuple[str, ...] = ("c1",), priority: int = 0,
            objects: tuple[str, ...] = ("cm-a",), path: str | None = None, extra: str = "",
            namespace: str = "seam-system") -> plan.Desired:
    build = spec.PackBuild(
        path=path or f"packs/{base}/packbuild.yaml",
        name=base,
        version=version,
        base_pack_name=base,
        targets=tuple(spec.ClusterTarget(name=c) for c in clusters),
        category=spec.Category.RAW,
        source=spec.RawSource(f"packs/{base}/m"),
        namespace="apps",
        priority=priority,
    )
    docs = "".join(
        f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: '{version}{extra}'}}\n" for name in objects
    )
    compiled = compile_core.compile_pack(
        build, (("m.yaml", docs.encode()),), renderers=(), chart=None,
        inputs=compile_core.Inputs(namespace, "reg/packs", clusters, "main@sha1:1", NOW, "t", "gitopsd/test"),
    )
    signed = dataclasses.replace(compiled, cluster_pack=compiled.cluster_pack.with_signature("sig"))
    return plan.Desired(build, signed, clusters)


def observed_from(*plans_applied: change.Plan) -> instance.Observed:
    """What a cluster holds after applying the given plans in order (through the codec, like a store)."""
    packs: dict[str, instance.ObservedPack] = {}
    instances: dict[str, instance.PackInstance] = {}
    for p in plans_applied:
        for c in p.changes:
            if c.kind is ObjectKind.CLUSTER_PACK and c.action is Action.CREATE:
                assert c.cluster_pack is not None
                packs[c.name] = codec.observed_pack_from_object(c.cluster_pack.to_object())
            elif c.kind is ObjectKind.CLUSTER_PACK and c.action is Action.UNINSTALL:
                packs.pop(c.name)
            elif c.kind is ObjectKind.PACK_INSTANCE and c.action is Action.UNINSTALL:
                instances.pop(c.name)  # uninstall deletes the instance
            elif c.pack_instance is not None and c.writes:
                instances[c.name] = codec.pack_instance_from_object(codec.pack_instance_object(c.pack_instance))
    return instance.Observed(packs=packs, instances=instances)


def build_plan(*ds: plan.Desired, observed: instance.Observed | None = None, **kw: object) -> change.Plan:
    verdicts = kw.pop("verdicts", None) or {d.cluster_pack.name: plan.Verdict.OK for d in ds}
    return plan.build(plan.Inputs(
        revision="main@sha1:2", desired=ds, observed=observed or instance.Observed({}, {}),
        verdicts=verdicts, policy=kw.pop("policy", POLICY), **kw,  # type: ignore[arg-type]
    ))


def actions(p: change.Plan) -> list[tuple[str, str, str, str | None]]:
    return [(str(c.kind), c.name, str(c.action), str(c.direction) if c.direction else None) for c in p.changes]


def test_first_pass_creates_cluster_pack_and_one_instance_per_cluster() -> None:
    p = build_plan(desired("web", "1.0.0", clusters=("c1", "c2")))
    assert actions(p) == [
        ("ClusterPack", "web-v1.0.0", "create", None),
        ("PackInstance", "web-c1", "create", "Initial"),
        ("PackInstance", "web-c2", "create", "Initial"),
    ]
    record = p.changes[1].pack_instance.history[-1]  # type: ignore[union-attr]
    assert record == instance.InstallRecord(
        state=instance.InstallState.INSTALLED, pack_id="web", pack_version="1.0.0", cluster_pack="web-v1.0.0",
        priority=0, license=None, registry_version_hash="sha256:schemas", installed_at=NOW,
        installed_by="alice <a@example.com>", artifact=f"reg/packs/web:1.0.0@{p.changes[0].cluster_pack.manifest_digest}",  # type: ignore[union-attr]
        revision="main@sha1:2", upgrade_from_version=None, direction=Direction.INITIAL,
    )


def test_second_pass_with_same_inputs_is_unchanged() -> None:
    d = desired("web", "1.0.0")
    first = build_plan(d)
    again = build_plan(d, observed=observed_from(first))
    assert actions(again) == [("ClusterPack", "web-v1.0.0", "unchanged", None), ("PackInstance", "web-c1", "unchanged", None)]
    assert not again.has_changes


@pytest.mark.parametrize(
    ("before", "after", "direction"),
    [("1.0.0", "1.1.0", Direction.UPGRADE), ("1.1.0", "1.0.0", Direction.ROLLBACK), ("1.0.0-rc.1", "1.0.0", Direction.UPGRADE)],
    ids=["upgrade", "rollback", "prerelease-to-release"],
)
def test_newer_version_supersedes_instance_in_place(before: str, after: str, direction: Direction) -> None:
    first = build_plan(desired("web", before))
    second = build_plan(desired("web", after), observed=observed_from(first))
    assert actions(second)[1:] == [("PackInstance", "web-c1", "supersede", str(direction))]
    c = second.changes[1]
    assert c.from_version == before and c.version == after
    pi = c.pack_instance
    assert pi is not None and pi.uid == observed_from(first).instances["web-c1"].uid
    assert [(r.state, r.pack_version, r.upgrade_from_version) for r in pi.history] == [
        (instance.InstallState.INSTALLED, before, None),
        (instance.InstallState.UPGRADED, after, before),
    ]


def test_same_version_with_changed_instance_spec_is_a_redeploy() -> None:
    first = build_plan(desired("web", "1.0.0", priority=0))
    second = build_plan(desired("web", "1.0.0", priority=5), observed=observed_from(first))
    assert actions(second)[1] == ("PackInstance", "web-c1", "supersede", "Redeploy")


def test_pack_removed_from_git_uninstalls_instances_and_keeps_cluster_pack() -> None:
    first = build_plan(desired("web", "1.0.0", clusters=("c1", "c2")))
    gone = build_plan(observed=observed_from(first))
    assert actions(gone) == [("PackInstance", "web-c1", "uninstall", None), ("PackInstance", "web-c2", "uninstall", None)]
    assert gone.changes[0].pack_instance.history[-1].state is instance.InstallState.UNINSTALLED  # type: ignore[union-attr]


def test_cluster_dropped_from_targets_uninstalls_only_that_instance() -> None:
    first = build_plan(desired("web", "1.0.0", clusters=("c1", "c2")))
    p = build_plan(desired("web", "1.0.0", clusters=("c1",)), observed=observed_from(first))
    assert [a for a in actions(p) if a[2] != "unchanged"] == [("PackInstance", "web-c2", "uninstall", None)]


def test_reinstall_after_uninstall_creates_again_with_a_new_history() -> None:
    first = build_plan(desired("web", "1.0.0"))
    gone = build_plan(observed=observed_from(first))
    assert actions(gone) == [("PackInstance", "web-c1", "uninstall", None)]
    states = [r.state for r in gone.changes[0].pack_instance.history]  # type: ignore[union-attr]
    assert states == [instance.InstallState.INSTALLED, instance.InstallState.UNINSTALLED]  # what the status record keeps
    back = build_plan(desired("web", "1.0.0"), observed=observed_from(first, gone))
    assert actions(back) == [("ClusterPack", "web-v1.0.0", "unchanged", None), ("PackInstance", "web-c1", "create", "Initial")]
    states = [r.state for r in back.changes[1].pack_instance.history]  # type: ignore[union-attr]
    assert states == [instance.InstallState.INSTALLED]


def test_same_name_with_other_content_is_an_immutability_violation() -> None:
    first = build_plan(desired("web", "1.0.0"))
    p = build_plan(desired("web", "1.0.0", extra="-edited"), observed=observed_from(first))
    assert actions(p) == [("ClusterPack", "web-v1.0.0", "blocked", None), ("PackInstance", "web-c1", "blocked", None)]
    assert p.changes[0].reason == "ImmutabilityViolation"
    assert "bump 'version'" in p.changes[0].condition.message  # type: ignore[union-attr]
    assert not p.has_changes


def test_two_packbuilds_with_one_base_name_higher_priority_wins() -> None:
    low = desired("web", "1.0.0", priority=1, path="packs/web-a/packbuild.yaml")
    high = desired("web", "2.0.0", priority=9, path="packs/web-b/packbuild.yaml")
    p = build_plan(low, high)
    inst = [(c.name, str(c.action), c.version) for c in p.changes if c.kind is ObjectKind.PACK_INSTANCE]
    assert inst == [("web-c1", "create", "2.0.0"), ("web-c1", "blocked", "1.0.0")]
    blocked = p.changes[-1]
    assert blocked.reason == "PackCollisionDetected"
    assert "web-v1.0.0" in blocked.condition.message and "web-v2.0.0" in blocked.condition.message  # type: ignore[union-attr]


def test_object_overlap_tie_goes_to_the_pack_installed_first() -> None:
    old = desired("zeta", "1.0.0", objects=("shared",))
    first = build_plan(old)
    newcomer = desired("alpha", "1.0.0", objects=("shared",))
    p = build_plan(old, newcomer, observed=observed_from(first))
    by_name = {c.name: c for c in p.changes if c.kind is ObjectKind.PACK_INSTANCE}
    assert by_name["zeta-c1"].action is Action.UNCHANGED
    assert by_name["alpha-c1"].action is Action.BLOCKED
    assert "ConfigMap/apps/shared" in by_name["alpha-c1"].condition.message  # type: ignore[union-attr]


def test_object_overlap_is_deterministic_regardless_of_input_order() -> None:
    a = desired("alpha", "1.0.0", objects=("shared",))
    b = desired("beta", "1.0.0", objects=("shared",))
    assert actions(build_plan(a, b)) == actions(build_plan(b, a))


def test_object_overlap_on_different_clusters_is_no_collision() -> None:
    p = build_plan(desired("a", "1.0.0", objects=("x",), clusters=("c1",)), desired("b", "1.0.0", objects=("x",), clusters=("c2",)))
    assert not any(c.action is Action.BLOCKED for c in p.changes)


@pytest.mark.parametrize("verdict", [plan.Verdict.MISSING, plan.Verdict.INVALID], ids=["missing", "invalid"])
def test_unverified_signature_blocks_delivery(verdict: plan.Verdict) -> None:
    d = desired("web", "1.0.0")
    p = build_plan(d, verdicts={d.cluster_pack.name: verdict})
    assert actions(p)[1] == ("PackInstance", "web-c1", "blocked", None)
    assert p.changes[1].reason == "SignatureInvalid"


def test_failed_pack_keeps_its_instances() -> None:
    first = build_plan(desired("web", "1.0.0"))
    p = build_plan(observed=observed_from(first), protected_paths=frozenset({"packs/web/packbuild.yaml"}))
    assert p.changes == ()


def test_old_cluster_packs_beyond_keep_versions_are_pruned() -> None:
    applied = []
    observed = instance.Observed({}, {})
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        step = build_plan(desired("web", v), observed=observed)
        applied.append(step)
        observed = observed_from(*applied)
    policy = dataclasses.replace(POLICY, keep_versions=2)
    p = build_plan(desired("web", "1.3.0"), observed=observed, policy=policy)
    pruned = sorted(c.name for c in p.changes if c.action is Action.UNINSTALL)
    assert pruned == ["web-v1.0.0", "web-v1.1.0"]


def shape(p: change.Plan) -> dict[str, list[tuple[str, str, int]]]:
    """Per base, the items its part keeps: (action, kind of item, how many changes)."""
    return {base: [(str(item.template.action), "run", len(item.clusters)) if isinstance(item, change.Run)
                   else (str(item.action), "change", 1) for item in part.sequence.items]
            for base, part in (p.parts or {}).items()}


def test_instances_of_a_pack_that_change_alike_are_kept_as_one_run() -> None:
    clusters = tuple(f"c{i:02d}" for i in range(40))
    web, db = desired("web", "1.0.0", clusters=clusters), desired("db", "1.0.0", clusters=clusters, objects=("cm-b",))
    first = build_plan(web, db)
    assert shape(first) == {base: [("create", "change", 1), ("create", "run", 40)] for base in ("db", "web")}
    assert [c.name for c in first.changes][:3] == ["db-v1.0.0", "db-c00", "db-c01"]
    again = build_plan(web, db, observed=observed_from(first))
    assert shape(again) == {base: [("unchanged", "change", 1), ("unchanged", "run", 40)] for base in ("db", "web")}
    assert again.changes[-1] == change.Change(ObjectKind.PACK_INSTANCE, "web-c39", Action.UNCHANGED, "runs 1.0.0", "web",
                                              "1.0.0", "c39")


def test_an_instance_that_changes_splits_the_run_of_its_pack() -> None:
    first = build_plan(desired("web", "1.0.0", clusters=("c1", "c3")))
    p = build_plan(desired("web", "1.0.0", clusters=("c1", "c2", "c3")), observed=observed_from(first))
    assert shape(p) == {"web": [("unchanged", "change", 1), ("unchanged", "run", 1), ("create", "run", 1),
                                ("unchanged", "run", 1)]}
    assert actions(p) == [
        ("ClusterPack", "web-v1.0.0", "unchanged", None),
        ("PackInstance", "web-c1", "unchanged", None),
        ("PackInstance", "web-c2", "create", "Initial"),
        ("PackInstance", "web-c3", "unchanged", None),
    ]


def test_cluster_packs_read_back_share_their_target_clusters_tuple() -> None:
    first, second = desired("web", "1.0.0", clusters=("a", "b")), desired("db", "1.0.0", clusters=("a", "b"))
    packs = [codec.cluster_pack_from_json({"name": d.cluster_pack.name, "namespace": "seam-system",
                                           "spec": d.cluster_pack.spec()}) for d in (first, second)]
    assert packs[0].target_clusters == ("a", "b") and packs[0].target_clusters is packs[1].target_clusters
