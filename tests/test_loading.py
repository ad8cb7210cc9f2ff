"""The load and compile steps of a daemon's passes read again only what changed (by tree ids), and
give exactly what a new process gives, step after step of seeded random commits: version bumps,
edits without a bump, packs added, removed and broken, a pack reading a folder outside its own,
clusters relabelled or added, another namespace, a CRD appearing in another pack."""

from __future__ import annotations

import collections
import pathlib
import random

import pytest

from gitopsd import compiling, memo, ports, reconcile
from gitopsd.adapters import fakes, gittree, render, schemafiles
from tests import gitutil

NAMESPACE_LINE = "namespace: seam-system\n"


def packbuild(name: str, version: str, *, source: str = "m", targets: str = "[{matchLabels: {env: prod}}]") -> bytes:
    return (f"name: {name}\nversion: {version}\nbasePackName: {name}\ncategory: raw\nrawSource: {{path: {source}}}\n"
            f"targetClusters: {targets}\nnamespace: apps\n").encode()


def configmap(name: str, value: str) -> bytes:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{v: '{value}'}}\n".encode()


def widget_crd(scope: str) -> bytes:
    return ("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\n"
            f"spec: {{group: example.com, scope: {scope}, names: {{kind: Widget, plural: widgets}}, versions: []}}\n").encode()


def first_files() -> dict[str, bytes]:
    files = {"gitopsd.yaml": NAMESPACE_LINE.encode()}
    for name, env in (("a", "prod"), ("b", "prod"), ("c", "dev")):
        files[f"clusters/{name}.yaml"] = f"name: {name}\nlabels: {{env: {env}}}\n".encode()
    for i in range(4):
        files[f"packs/p{i}/packbuild.yaml"] = packbuild(f"p{i}", "1.0.0")
        files[f"packs/p{i}/m/cm.yaml"] = configmap(f"p{i}", "0")
    files["packs/shared-user/packbuild.yaml"] = packbuild("shared-user", "1.0.0", source="../../shared", targets="[a, c]")
    files["shared/cm.yaml"] = configmap("shared", "0")
    files["packs/widget/packbuild.yaml"] = packbuild("widget", "1.0.0")
    files["packs/widget/m/w.yaml"] = b"apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"
    return files


def commit(files: dict[str, bytes], rng: random.Random, step: int) -> str:
    packs = sorted({p.split("/")[1] for p in files if p.startswith("packs/")})
    name = rng.choice(packs)
    op = rng.choice(["bump", "edit", "add", "remove", "break", "fix", "shared", "relabel", "cluster", "namespace", "crd"])
    if op == "bump" and not files[f"packs/{name}/packbuild.yaml"].startswith(b"name: ["):
        files[f"packs/{name}/packbuild.yaml"] = files[f"packs/{name}/packbuild.yaml"].replace(
            b"version: 1.", f"version: {step + 2}.".encode(), 1)
    elif op == "edit" and f"packs/{name}/m/cm.yaml" in files:
        files[f"packs/{name}/m/cm.yaml"] = configmap(name, str(step))
    elif op == "add":
        files[f"packs/n{step}/packbuild.yaml"] = packbuild(f"n{step}", "1.0.0")
        files[f"packs/n{step}/m/cm.yaml"] = configmap(f"n{step}", "0")
    elif op == "remove" and len(packs) > 1:
        for path in [p for p in files if p.startswith(f"packs/{name}/")]:
            del files[path]
    elif op == "break":
        files[f"packs/{name}/packbuild.yaml"] = b"name: [broken\n"
    elif op == "fix" and files[f"packs/{name}/packbuild.yaml"].startswith(b"name: ["):
        files[f"packs/{name}/packbuild.yaml"] = packbuild(name, "1.0.0", source="m")
        files.setdefault(f"packs/{name}/m/cm.yaml", configmap(name, "0"))
    elif op == "shared":
        files["shared/cm.yaml"] = configmap("shared", str(step))  # read by shared-user, outside its folder
    elif op == "relabel":
        files["clusters/c.yaml"] = f"name: c\nlabels: {{env: {rng.choice(['prod', 'dev'])}}}\n".encode()
    elif op == "cluster":
        files[f"clusters/x{step}.yaml"] = f"name: x{step}\nlabels: {{env: prod}}\n".encode()
    elif op == "namespace":
        files["gitopsd.yaml"] = f"namespace: ns{rng.randrange(2)}\n".encode()
    elif op == "crd":  # a CRD in another pack settles the Widget's scope, or changes it
        files["packs/crd/packbuild.yaml"] = packbuild("crd", f"1.0.{step}")
        files["packs/crd/m/crd.yaml"] = widget_crd(rng.choice(["Cluster", "Namespaced"]))
    return f"{op} {name}"


class CountingTree:
    """A ``MemoryTree`` that counts what a pass reads of it."""

    def __init__(self, files: dict[str, bytes], revision: str) -> None:
        self.inner = fakes.MemoryTree(files, revision=revision)
        self.snapshot = self.inner.snapshot
        self.reads: collections.Counter[str] = collections.Counter()
        self.listed: collections.Counter[str] = collections.Counter()

    def kind(self, path: str) -> ports.EntryKind | None:
        return self.inner.kind(path)

    def listdir(self, path: str) -> list[tuple[str, ports.EntryKind]]:
        self.listed[path] += 1
        return self.inner.listdir(path)

    def read(self, path: str) -> bytes:
        self.reads[path] += 1
        return self.inner.read(path)

    def readlink(self, path: str) -> str:
        return self.inner.readlink(path)

    def tree_id(self, path: str) -> str:
        return self.inner.tree_id(path)

    def materialize(self, path: str) -> pathlib.Path:
        return self.inner.materialize(path)


def git_tree(repo: pathlib.Path, files: dict[str, bytes], links: dict[str, str]) -> ports.Tree:
    """``files`` (and symlinks ``links``) committed to a Git work tree, read at HEAD."""
    for path in [p for p in repo.rglob("*") if p.is_file() or p.is_symlink()]:
        if ".git" not in path.relative_to(repo).parts:
            path.unlink()
    gitutil.write_files(repo, files)
    for name, target in links.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).symlink_to(target)
    gitutil.git("add", "-A", cwd=repo)
    gitutil.git("commit", "-qm", "step", "--allow-empty", cwd=repo)
    tree = gittree.open_worktree(repo, repo.parent / "exports")
    assert tree is not None
    return tree


def load_and_compile(files: dict[str, bytes], kept: memo.Memo, cache: fakes.MemoryCache,
                     revision: str, tree: ports.Tree | None = None) -> tuple[reconcile.PassState, CountingTree]:
    counting = CountingTree(files, revision)
    if tree is None:
        tree = counting
    env = reconcile.Env(source=fakes.StaticSource(tree), cluster=fakes.MemoryCluster(), registry=fakes.MemoryRegistry(),
                        cache=cache, clock=fakes.FixedClock(), renderers=render.renderers(), schemas=schemafiles.schemas(),
                        memo=kept, render_workers=1)
    state = reconcile.PassState()
    for step in (reconcile.fetch, reconcile.load_specs, compiling.compile_packs):
        step(env, state)
    return state, counting


def outcome(state: reconcile.PassState) -> tuple[object, ...]:
    """What the two steps give the rest of the pass (a pack just compiled holds its artifact's bytes too)."""
    return (state.config, state.clusters, state.builds, state.unowned, state.pack_errors, state.protected_paths,
            [(r.build, r.compiled.without_artifact(), r.clusters) for r in state.compiled], state.crd_scopes)


def test_a_pass_over_unchanged_packs_reads_no_packbuild_and_one_change_reads_that_pack_only() -> None:
    files, kept, cache = first_files(), memo.Memo(), fakes.MemoryCache()
    first, tree = load_and_compile(files, kept, cache, "main@sha1:" + "1" * 40)
    assert tree.reads["packs/p1/packbuild.yaml"] == 1 and len(first.compiled) == 6
    again, tree = load_and_compile(files, kept, cache, "main@sha1:" + "2" * 40)
    assert (dict(tree.reads), dict(tree.listed)) == ({}, {})
    assert outcome(again) == outcome(load_and_compile(files, memo.Memo(), cache, "main@sha1:" + "2" * 40)[0])
    files["packs/p2/m/cm.yaml"] = configmap("p2", "changed")
    files["packs/p2/packbuild.yaml"] = packbuild("p2", "1.0.1")
    changed, tree = load_and_compile(files, kept, cache, "main@sha1:" + "3" * 40)
    assert dict(tree.reads) == {"packs/p2/packbuild.yaml": 1, "packs/p2/m/cm.yaml": 1}
    assert [r.build.base_pack_name for r in changed.compiled if not r.cached] == ["p2"]


@pytest.mark.parametrize("seed", range(16))
def test_load_and_compile_kept_between_passes_equal_a_new_processs(seed: int) -> None:
    rng = random.Random(seed)
    files, kept, cache = first_files(), memo.Memo(), fakes.MemoryCache()
    for step in range(12):
        revision = f"main@sha1:{step:040x}"
        daemon_pass, _ = load_and_compile(files, kept, cache, revision)
        new_process, _ = load_and_compile(files, memo.Memo(), cache, revision)
        assert outcome(daemon_pass) == outcome(new_process), f"seed {seed} step {step}"
        for _ in range(rng.randint(0, 2)):
            commit(files, rng, step)


@pytest.mark.parametrize("seed", range(6))
def test_in_a_git_repo_load_and_compile_kept_between_passes_equal_a_new_processs(tmp_path: pathlib.Path, seed: int) -> None:
    """The same, on Git trees: the changed pack folders come from a comparison of two tree ids; a
    symlinked pack folder comes and goes too."""
    rng = random.Random(seed)
    repo = tmp_path / "repo"
    repo.mkdir()
    gitutil.git("init", "-q", repo)
    files, links, kept, cache = first_files(), {}, memo.Memo(), fakes.MemoryCache()
    for step in range(10):
        tree = git_tree(repo, files, links)
        daemon_pass, _ = load_and_compile(files, kept, cache, "", tree)
        new_process, _ = load_and_compile(files, memo.Memo(), cache, "", tree)
        assert outcome(daemon_pass) == outcome(new_process), f"seed {seed} step {step}"
        for _ in range(rng.randint(0, 2)):
            if rng.random() < 0.15:
                links.clear() if links else links.update({"packs/lnk": "p0"})
            else:
                commit(files, rng, step)
