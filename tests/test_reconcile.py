"""The pass with in-memory adapters: step order, mode gating, and failure isolation."""

from __future__ import annotations

import dataclasses
import pathlib
import sqlite3

import pytest

from gitopsd import errors, reconcile
from gitopsd.adapters import compilecache, fakes, keys, render, schemafiles
from gitopsd.core import parse
from gitopsd.model import change
from tests import gitutil

CLUSTERS = {
    "clusters/a.yaml": b"name: a\nlabels: {env: prod}\n",
    "clusters/b.yaml": b"name: b\nlabels: {env: dev}\n",
}


def packbuild(name: str, version: str = "1.0.0", targets: str = "[a, b]") -> dict[str, bytes]:
    files = gitutil.raw_pack(name, version, path="m", targets=targets, namespace="apps", data=f"{{v: '{version}'}}")
    return {path: text.encode() for path, text in files.items()}


class Harness:
    def __init__(self, tmp: pathlib.Path, files: dict[str, bytes]) -> None:
        self.cluster = fakes.MemoryCluster()
        self.registry = fakes.MemoryRegistry()
        self.cache = fakes.MemoryCache()
        self.key = keys.generate(tmp / "key").private_path
        self.tmp = tmp
        self.files = files

    def run(self, *, dry_run: bool = False) -> reconcile.PassState:
        signer = keys.load_private_key(self.key)

        class Verifier:
            def verify(self, data: bytes, signature: str) -> bool:
                return signer.public_key().verify(data, signature)

        env = reconcile.Env(
            source=fakes.StaticSource(fakes.MemoryTree(self.files, scratch=self.tmp / "scratch")),
            cluster=self.cluster,
            registry=self.registry,
            cache=self.cache,
            clock=fakes.FixedClock(),
            renderers=render.renderers(),
            schemas=schemafiles.schemas(),
            signer=signer,
            verifier=Verifier(),
            dry_run=dry_run,
        )
        return reconcile.run(env)


def test_steps_run_in_the_documented_order() -> None:
    assert [name for name, _ in reconcile.STEPS] == [
        "fetch", "load", "compile", "observe", "scope", "adopt", "sign", "signatures", "artifacts", "plan", "publish", "unpack", "apply", "settle", "deliver",
        "status",
        "summarize",
    ]


def test_dry_run_shares_the_pass_but_writes_nothing(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one")})
    state = h.run(dry_run=True)
    assert state.plan is not None and state.plan.count(change.Action.CREATE) == 3
    assert h.registry.pushes == [] and h.cluster.objects == {}
    state = h.run()
    assert h.registry.pushes == ["one:1.0.0"] and len(h.cluster.objects) == 3
    assert state.summary is not None and state.summary.ready


def test_a_failed_push_blocks_only_its_pack(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one"), **packbuild("two")})
    h.registry.fail.add("two")
    state = h.run()
    assert state.plan is not None
    blocked = {c.name for c in state.plan.changes if c.action is change.Action.BLOCKED}
    assert blocked == {"two-v1.0.0", "two-a", "two-b"}
    assert {k[2] for k in h.cluster.objects} == {"one-v1.0.0", "one-a", "one-b"}
    h.registry.fail.clear()
    h.run()
    assert {k[2] for k in h.cluster.objects} >= {"two-v1.0.0", "two-a", "two-b"}


def test_apply_failure_leaves_the_cluster_untouched(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one")})
    h.cluster.fail_next_apply = errors.TransientError("API 503", reason="ClusterUnavailable")
    with pytest.raises(errors.TransientError):
        h.run()
    assert h.cluster.objects == {}
    h.run()
    assert len(h.cluster.objects) == 3


def test_unchanged_pack_is_served_from_the_compile_cache(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one"), **packbuild("two")})
    first = h.run()
    h.files.update(packbuild("two", "1.1.0"))
    second = h.run()
    cached = {r.build.base_pack_name: r.cached for r in second.compiled}
    assert {r.build.base_pack_name: r.cached for r in first.compiled} == {"one": False, "two": False}
    assert cached == {"one": True, "two": False}


def test_a_signature_by_an_untrusted_key_blocks_delivery(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one")})
    h.run()
    obj = h.cluster.objects[("InfrastructureClusterPack", "seam-system", "one-v1.0.0")]
    obj["spec"]["targetClusters"] = ["a"]  # type: ignore[index]  # tamper with the stored spec
    h.cluster.objects = {k: v for k, v in h.cluster.objects.items() if k[0] != "PackInstance"}
    state = h.run()
    assert state.plan is not None
    assert {(c.name, c.reason) for c in state.plan.changes if c.action is change.Action.BLOCKED} == {
        ("one-a", "SignatureInvalid"), ("one-b", "SignatureInvalid"),
    }


def test_memos_of_a_long_running_process_never_hide_a_change(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one")})
    signer = keys.load_private_key(h.key)

    class Verifier:
        def verify(self, data: bytes, signature: str) -> bool:
            return signer.public_key().verify(data, signature)

    tree = fakes.MemoryTree(h.files, scratch=tmp_path / "scratch")
    env = reconcile.Env(
        source=fakes.StaticSource(tree), cluster=h.cluster, registry=h.registry, cache=h.cache,
        clock=fakes.FixedClock(), renderers=render.renderers(), schemas=schemafiles.schemas(),
        signer=signer, verifier=Verifier(),
    )
    assert reconcile.run(env).writes == 3
    quiet = reconcile.run(env)
    assert quiet.writes == 0 and quiet.plan is not None and not quiet.plan.has_changes
    tree.files.update(packbuild("one", "1.1.0"))  # a new PackBuild blob: parsed and planned again
    moved = reconcile.run(env)
    assert moved.plan is not None and moved.plan.count(change.Action.SUPERSEDE) == 2
    key = ("InfrastructureClusterPack", "seam-system", "one-v1.1.0")
    h.cluster.objects[key]["spec"]["targetClusters"] = ["a"]  # type: ignore[index]  # tamper in the cluster
    for name in ("one-a", "one-b"):
        h.cluster.objects.pop(("PackInstance", "seam-system", name))
    tampered = reconcile.run(env)
    assert tampered.plan is not None
    assert {c.reason for c in tampered.plan.changes if c.action is change.Action.BLOCKED} == {"SignatureInvalid"}


def test_the_clusters_allow_list_of_gitopsd_yaml_limits_delivery(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one", targets="[{matchExpressions: [{key: env, operator: Exists}]}]"),
                           "gitopsd.yaml": b"clusters: [a]\n"})
    state = h.run()
    assert state.plan is not None
    assert sorted(c.cluster for c in state.plan.changes if c.cluster) == ["a"]


def test_memos_and_the_compile_cache_keep_only_what_the_last_pass_used(tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one"), **packbuild("two")})
    signer = keys.load_private_key(h.key)
    cache = compilecache.SqliteCompileCache(tmp_path / "cache.db")
    tree = fakes.MemoryTree(h.files, scratch=tmp_path / "scratch")
    env = reconcile.Env(
        source=fakes.StaticSource(tree), cluster=h.cluster, registry=h.registry, cache=cache,
        clock=fakes.FixedClock(), renderers=render.renderers(), schemas=schemafiles.schemas(), signer=signer,
    )
    for patch in range(12):  # a daemon's life: one pack bumped again and again
        tree.files.update(packbuild("one", f"1.0.{patch}"))
        state = reconcile.run(env)
        assert state.writes and not state.pack_errors
        reconcile.run(env)  # and a quiet pass after each
    assert sorted(path for path, _ in env.memo.specs) == ["packs/one/packbuild.yaml", "packs/two/packbuild.yaml"]
    assert sorted(name for name, _, _ in env.memo.verdicts) == ["one-v1.0.11", "two-v1.0.0"]
    assert len(cache._memory) == 2  # memory holds this pass's entries only ...
    assert env.memo.status_text == {}  # (no status writer: no records kept)
    cache.close()
    rows = sqlite3.connect(tmp_path / "cache.db").execute("SELECT COUNT(*) FROM compiled").fetchone()[0]
    assert rows == 13  # ... the disk keeps every version compiled: two/1.0.0 and one/1.0.0 .. 1.0.11


RANDOM_CHART = {
    "packs/rnd/packbuild.yaml": b"name: rnd\nversion: 1.0.0\nbasePackName: rnd\ncategory: helm\ntargetClusters: [a]\n"
                                b"helmSource: {chart: chart, namespace: apps}\n",
    "packs/rnd/chart/Chart.yaml": b"apiVersion: v2\nname: rnd\nversion: 0.1.0\n",
    "packs/rnd/chart/templates/secret.yaml": b"apiVersion: v1\nkind: Secret\nmetadata: {name: pw}\n"
                                             b"stringData: {password: {{ randAlphaNum 16 }}}\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("first", ["dry-run", "reconcile"], ids=["dry-run-first", "reconcile-first"])
def test_a_chart_with_random_values_keeps_its_published_version_on_cold_recompiles(tmp_path: pathlib.Path, first: str) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **RANDOM_CHART})
    if first == "dry-run":
        h.run(dry_run=True)
    published = h.run()
    assert published.summary is not None and published.summary.ready
    name = published.compiled[0].compiled.cluster_pack.name
    checksum = published.compiled[0].compiled.cluster_pack.checksum
    for cold in (False, True):
        if cold:
            h.cache = fakes.MemoryCache()  # a new state dir, a restarted pod
        state = h.run()
        assert state.plan is not None and state.summary is not None
        cp = state.compiled[0].compiled.cluster_pack
        assert (cp.name, cp.checksum, state.plan.count(change.Action.BLOCKED), state.summary.ready) == (name, checksum, 0, True)
        assert state.compiled[0].compiled.warnings == (
            "chart rnd renders differently each time (random values such as randAlphaNum or genCA); the published "
            "rnd-v1.0.0 is kept; set the generated values (passwords, keys, certificates) in helmSource.values of "
            "packs/rnd/packbuild.yaml to make the render reproducible",)


def test_a_new_process_takes_unchanged_packbuilds_from_the_cache_without_parsing_them(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one"), **packbuild("two")})
    tree = fakes.MemoryTree(h.files, scratch=tmp_path / "scratch")

    def new_process() -> tuple[reconcile.Env, compilecache.SqliteCompileCache]:
        """A fresh Env and Memo over the same cache.db, as a new CLI process has."""
        cache = compilecache.SqliteCompileCache(tmp_path / "cache.db")
        return reconcile.Env(
            source=fakes.StaticSource(tree), cluster=h.cluster, registry=h.registry, cache=cache,
            clock=fakes.FixedClock(), renderers=render.renderers(), schemas=schemafiles.schemas(),
            signer=keys.load_private_key(h.key),
        ), cache

    first, cache = new_process()
    parsed_first = reconcile.run(first).builds
    cache.close()

    read: list[str] = []
    original = parse.parse_packbuild

    def counting(raw: object, schemas: parse.Schemas, *, file: str, checked: bool = False) -> object:
        if not checked:
            read.append(file)
        return original(raw, schemas, file=file, checked=checked)

    monkeypatch.setattr(parse, "parse_packbuild", counting)
    tree.files.update(packbuild("two", "2.0.0"))  # one PackBuild changed since
    second, cache = new_process()
    state = reconcile.run(second)
    assert read == ["packs/two/packbuild.yaml"]  # only the changed file is read and checked again
    assert [b for b in state.builds if b.base_pack_name == "one"] == [b for b in parsed_first if b.base_pack_name == "one"]
    assert not state.pack_errors
    cache.close()

    # a damaged entry is only a cache miss: the file is parsed again, with the same result
    db = sqlite3.connect(tmp_path / "cache.db")
    with db:
        db.execute("UPDATE specs SET value = '{\"name\": 1'")
    db.close()
    read.clear()
    third, cache = new_process()
    state = reconcile.run(third)
    assert sorted(read) == ["packs/one/packbuild.yaml", "packs/two/packbuild.yaml"]
    assert not state.pack_errors and len(state.builds) == 2
    cache.close()


class Checked:
    """A schema validator that records the documents it checked."""

    def __init__(self, inner: parse.Validator, seen: list[object]) -> None:
        self.inner, self.seen = inner, seen

    def iter_errors(self, instance: object) -> object:
        self.seen.append(instance)
        return self.inner.iter_errors(instance)


def test_a_new_process_takes_unchanged_gitopsd_yaml_and_cluster_files_from_the_cache_without_checking_them(
        tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {"gitopsd.yaml": b"namespace: apps-system\n", **CLUSTERS, **packbuild("one")})
    tree = fakes.MemoryTree(h.files, scratch=tmp_path / "scratch")
    checked: list[object] = []
    real = schemafiles.schemas()
    schemas = dataclasses.replace(real, config=Checked(real.config, checked), cluster=Checked(real.cluster, checked))

    def new_process() -> reconcile.PassState:
        """A pass of a fresh Env and Memo over the same cache.db, as a new CLI process has."""
        cache = compilecache.SqliteCompileCache(tmp_path / "cache.db")
        try:
            return reconcile.run(reconcile.Env(
                source=fakes.StaticSource(tree), cluster=h.cluster, registry=h.registry, cache=cache,
                clock=fakes.FixedClock(), renderers=render.renderers(), schemas=schemas,
                signer=keys.load_private_key(h.key)))
        finally:
            cache.close()

    first = new_process()
    assert len(checked) == 3 and first.config.namespace == "apps-system"
    checked.clear()
    tree.files["clusters/b.yaml"] = b"name: b\nlabels: {env: staging}\n"  # one cluster file changed since
    second = new_process()
    assert checked == [{"name": "b", "labels": {"env": "staging"}}]  # only the changed file is checked again
    assert second.config == first.config and second.clusters["a"] == first.clusters["a"]
    assert second.clusters["b"].labels == (("env", "staging"),)

    # a file that no longer passes its schema is checked, and refused, whatever the cache holds
    tree.files["clusters/b.yaml"] = b"name: b\nlabel: {env: dev}\n"
    with pytest.raises(errors.SpecError, match="label"):
        new_process()

    # a damaged entry is only a cache miss: the file is read and checked again, with the same result
    tree.files["clusters/b.yaml"] = CLUSTERS["clusters/b.yaml"]
    new_process()
    db = sqlite3.connect(tmp_path / "cache.db")
    with db:
        db.execute("UPDATE specs SET value = '{\"name\": 1'")
    db.close()
    checked.clear()
    third = new_process()
    assert len(checked) == 3 and third.config == first.config and third.clusters == first.clusters


def test_a_new_process_trusts_a_passed_signature_check_only_for_the_same_spec_signature_and_keys(
        tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one"), **packbuild("two")})
    tree = fakes.MemoryTree(h.files, scratch=tmp_path / "scratch")
    signer = keys.load_private_key(h.key)
    checked: list[bytes] = []

    class Verifier:
        def __init__(self, key_set: str) -> None:
            self.names = key_set

        def verify(self, data: bytes, signature: str) -> bool:
            checked.append(data)
            return signer.public_key().verify(data, signature)

        def key_set(self) -> str:
            return self.names

    def new_process(key_set: str = "k1") -> reconcile.PassState:
        """A fresh Env and Memo over the same cache.db, as a new CLI process has."""
        cache = compilecache.SqliteCompileCache(tmp_path / "cache.db")
        env = reconcile.Env(
            source=fakes.StaticSource(tree), cluster=h.cluster, registry=h.registry, cache=cache,
            clock=fakes.FixedClock(), renderers=render.renderers(), schemas=schemafiles.schemas(),
            signer=signer, verifier=Verifier(key_set),
        )
        try:
            return reconcile.run(env)
        finally:
            cache.close()

    new_process()  # creates and signs both packs
    checked.clear()
    new_process()  # stored now: each checked once, and remembered
    assert len(checked) == 2
    checked.clear()
    quiet = new_process()
    assert checked == [] and quiet.verdicts == {"one-v1.0.0": "ok", "two-v1.0.0": "ok"}
    new_process(key_set="k2")  # another trusted key set: checked again
    assert len(checked) == 2
    checked.clear()
    obj = h.cluster.objects[("InfrastructureClusterPack", "seam-system", "one-v1.0.0")]
    obj["spec"]["targetClusters"] = ["a"]  # type: ignore[index]  # tamper with the stored spec
    h.cluster.objects = {k: v for k, v in h.cluster.objects.items() if k[0] != "PackInstance"}
    tampered = new_process()
    assert len(checked) == 1 and tampered.verdicts["one-v1.0.0"] == "invalid"
    assert tampered.plan is not None
    assert {(c.name, c.reason) for c in tampered.plan.changes if c.action is change.Action.BLOCKED} == {
        ("one-a", "SignatureInvalid"), ("one-b", "SignatureInvalid"),
    }


def test_a_new_process_takes_renderer_input_folders_from_the_cache_while_their_tree_ids_hold(
        tmp_path: pathlib.Path) -> None:
    h = Harness(tmp_path, {**CLUSTERS, **packbuild("one"), **packbuild("two")})
    tree = fakes.MemoryTree(h.files, scratch=tmp_path / "scratch")
    walked: list[str] = []

    class Counting:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def inputs(self, tree: object, build: object) -> list[str]:
            walked.append(build.path)  # type: ignore[attr-defined]
            return self.inner.inputs(tree, build)  # type: ignore[attr-defined,no-any-return]

        def render(self, tree: object, build: object) -> object:
            return self.inner.render(tree, build)  # type: ignore[attr-defined]

    def new_process() -> reconcile.PassState:
        cache = compilecache.SqliteCompileCache(tmp_path / "cache.db")
        renderers = {category: Counting(r) for category, r in render.renderers().items()}
        env = reconcile.Env(
            source=fakes.StaticSource(tree), cluster=h.cluster, registry=h.registry, cache=cache,
            clock=fakes.FixedClock(), renderers=renderers, schemas=schemafiles.schemas(),  # type: ignore[arg-type]
            signer=keys.load_private_key(h.key),
        )
        try:
            return reconcile.run(env)
        finally:
            cache.close()

    first = new_process()
    assert sorted(walked) == ["packs/one/packbuild.yaml", "packs/two/packbuild.yaml"]
    walked.clear()
    tree.files.update(packbuild("two", "2.0.0"))  # its manifests folder changes: walked again
    second = new_process()
    assert walked == ["packs/two/packbuild.yaml"]
    assert [r.cached for r in second.compiled if r.build.base_pack_name == "one"] == [True]
    assert [r.compiled.cluster_pack.manifest_digest for r in second.compiled if r.build.base_pack_name == "one"] == [
        r.compiled.cluster_pack.manifest_digest for r in first.compiled if r.build.base_pack_name == "one"]
