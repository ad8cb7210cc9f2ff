"""The compile step with several renderer child processes at once (``compiling.compile_packs``):
the same CompiledPacks, errors, cache use and progress lines as one after another, with real
``kubectl kustomize`` and the Helm SDK on a real Git work tree; and the children really overlap,
never more than ``render_workers`` of them."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import pytest

from gitopsd import compiling, errors, passstate, reconcile
from gitopsd.adapters import fakes, render, renderkustomize, schemafiles, system
from gitopsd.cli import flags
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import settings as wiring_settings
from tests import gitutil

CLUSTERS = {
    "clusters/a.yaml": "name: a\nlabels: {env: prod}\n",
    "clusters/b.yaml": "name: b\nlabels: {env: dev}\n",
}
CHART = {
    "Chart.yaml": "apiVersion: v2\nname: demo\nversion: 1.2.3\n",
    "values.yaml": "replicas: 1\n",
    "templates/deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: {{ .Release.Name }}}\n"
                             "spec: {replicas: {{ .Values.replicas }}}\n",
}


def kustomize_pack(name: str, *, kustomization: str | None = None) -> dict[str, str]:
    return {
        f"packs/{name}/packbuild.yaml": gitutil.packbuild(name, category="kustomize", source="kustomizeSource: {path: k}",
                                                          targets="[a, b]", namespace="apps"),
        f"packs/{name}/k/kustomization.yaml": kustomization
        or f"namePrefix: {name}-\nresources: [cm.yaml, ../../../bases/common]\n",
        f"packs/{name}/k/cm.yaml": f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: own}}\ndata: {{pack: {name}}}\n",
    }


def raw_pack(name: str) -> dict[str, str]:
    return gitutil.raw_pack(name, path="m", targets="[a]", namespace="apps", data="{v: '1'}")


def write_repo(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    gitutil.write_files(root, files)
    gitutil.git("init", "-q", "-b", "main", cwd=root)
    gitutil.git("add", "-A", cwd=root)
    gitutil.git("commit", "-qm", "packs", cwd=root)
    return root


def mixed_repo(root: pathlib.Path) -> pathlib.Path:
    """Kustomize packs sharing a base, raw packs, a helm pack, a pack kustomize itself fails, a pack
    refused before kustomize runs, and two packs with the same cache key (the second is a hit)."""
    files = dict(CLUSTERS)
    files["bases/common/kustomization.yaml"] = "resources: [cm.yaml]\n"
    files["bases/common/cm.yaml"] = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: common}\ndata: {a: '1'}\n"
    for i in range(6):
        files.update(kustomize_pack(f"k{i}"))
    for i in range(4):
        files.update(raw_pack(f"r{i}"))
    files.update(kustomize_pack("kbad", kustomization="resources: [cm.yaml]\npatches: [{path: nope.yaml}]\n"))
    files.update(kustomize_pack("kspec", kustomization="resources: [missing]\n"))
    files.update({f"packs/helm/chart/{k}": v for k, v in CHART.items()})
    files["packs/helm/packbuild.yaml"] = ("name: helm\nversion: 1.0.0\nbasePackName: helm\ncategory: helm\n"
                                          "targetClusters: [a]\nhelmSource: {chart: chart, values: {replicas: 2}}\n")
    files["shared/app/kustomization.yaml"] = "resources: [cm.yaml]\n"
    files["shared/app/cm.yaml"] = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\n"
    twin = "name: twin\nversion: 1.0.0\nbasePackName: twin\ncategory: kustomize\nkustomizeSource: {path: ../../shared/app}\ntargetClusters: [a]\n"
    files["packs/twin1/packbuild.yaml"] = twin
    files["packs/twin2/packbuild.yaml"] = twin
    return write_repo(root, files)


class Pass:
    """The steps up to compile, on a Git work tree, with in-memory backends; keeps the progress lines."""

    def __init__(self, repo: pathlib.Path, exports: pathlib.Path, *, workers: int) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []
        self.cache = fakes.MemoryCache()
        self.env = reconcile.Env(
            source=system.LocalSource(repo, exports), cluster=fakes.MemoryCluster(), registry=fakes.MemoryRegistry(),
            cache=self.cache, clock=fakes.FixedClock(), renderers=render.renderers(), schemas=schemafiles.schemas(),
            progress=lambda event, facts: self.lines.append((event, facts)), render_workers=workers,
        )

    def compile(self) -> reconcile.PassState:
        state = reconcile.PassState()
        for step in (reconcile.fetch, reconcile.load_specs, compiling.compile_packs):
            step(self.env, state)
        return state


def outcome(state: reconcile.PassState) -> tuple[object, ...]:
    return (
        [(r.build.path, r.cached, r.clusters, r.compiled) for r in state.compiled],
        state.pack_errors,
        sorted(state.protected_paths),
        sorted(state.protected_bases),
    )


@pytest.mark.slow
def test_overlapped_renders_give_the_same_packs_errors_cache_use_and_progress(tmp_path: pathlib.Path) -> None:
    repo = mixed_repo(tmp_path / "repo")
    one = Pass(repo, tmp_path / "exports-1", workers=1)
    four = Pass(repo, tmp_path / "exports-4", workers=4)
    cold_one, cold_four = one.compile(), four.compile()
    assert outcome(cold_four) == outcome(cold_one)
    assert four.lines == one.lines
    assert four.cache.entries == one.cache.entries
    # what both produced is the real thing, not the same failure twice
    assert [(r.build.path, r.cached) for r in cold_one.compiled] == [
        ("packs/helm/packbuild.yaml", False), *((f"packs/k{i}/packbuild.yaml", False) for i in range(6)),
        *((f"packs/r{i}/packbuild.yaml", False) for i in range(4)),
        ("packs/twin1/packbuild.yaml", False), ("packs/twin2/packbuild.yaml", True),
    ]
    assert [(e.path, e.reason) for e in cold_one.pack_errors] == [
        ("packs/kbad/packbuild.yaml", "RenderFailed"), ("packs/kspec/packbuild.yaml", "SourceNotFound"),
    ]
    assert "kustomize build of packs/kbad/k failed" in cold_one.pack_errors[0].message
    assert [event for event, _ in one.lines].count("failed") == 2 and len(one.lines) == 15
    artifacts = [r.compiled.artifact for r in cold_four.compiled if not r.cached]
    assert all(a is not None for a in artifacts) and len(artifacts) == 12
    # a warm pass: every good pack from the cache, the bad ones fail again the same way
    one.lines.clear()
    four.lines.clear()
    warm_one, warm_four = one.compile(), four.compile()
    assert outcome(warm_four) == outcome(warm_one)
    assert four.lines == one.lines
    assert all(r.cached for r in warm_four.compiled) and len(warm_four.pack_errors) == 2


PROBE = """#!{python}
# A 'kustomize' that counts how many of its kind run at once, waits (up to 4 s) until the expected
# number ran together once, then renders with the real kubectl kustomize.
import fcntl, json, os, pathlib, subprocess, sys, time
state = pathlib.Path(os.environ["PROBE_DIR"])
def update(delta):
    with open(state / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counts = state / "counts.json"
        data = json.loads(counts.read_text()) if counts.exists() else {{"now": 0, "max": 0, "runs": 0}}
        data["now"] += delta
        data["max"] = max(data["max"], data["now"])
        data["runs"] += delta > 0
        counts.write_text(json.dumps(data))
        return data
if sys.argv[1:] == ["version"]:
    print("probe")
    sys.exit(0)
update(1)
try:
    deadline = time.monotonic() + 4
    while update(0)["max"] < int(os.environ["PROBE_TARGET"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    done = subprocess.run(["kubectl", "kustomize", sys.argv[2]], capture_output=True)
finally:
    update(-1)
sys.stdout.buffer.write(done.stdout)
sys.stderr.buffer.write(done.stderr)
sys.exit(done.returncode)
"""


@pytest.fixture
def probe(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    """A counting ``kustomize`` first on the PATH; yields a function reading its counts."""
    bin_dir, counts = tmp_path / "bin", tmp_path / "probe"
    bin_dir.mkdir()
    counts.mkdir()
    script = bin_dir / "kustomize"
    script.write_text(PROBE.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PROBE_DIR", str(counts))
    renderkustomize._kustomize_command.cache_clear()
    yield lambda: json.loads((counts / "counts.json").read_text()) if (counts / "counts.json").exists() else {"runs": 0}
    renderkustomize._kustomize_command.cache_clear()


@pytest.mark.parametrize("workers", [1, 2, 4], ids=["one-worker", "two-workers", "four-workers"])
def test_kustomize_children_overlap_up_to_the_worker_count_and_a_cache_hit_starts_none(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, probe, workers: int) -> None:
    files = dict(CLUSTERS)
    files["bases/common/kustomization.yaml"] = "resources: [cm.yaml]\n"
    files["bases/common/cm.yaml"] = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: common}\n"
    for i in range(7):
        files.update(kustomize_pack(f"k{i}"))
    for i in range(3):
        files.update(raw_pack(f"r{i}"))
    repo = write_repo(tmp_path / "repo", files)
    monkeypatch.setenv("PROBE_TARGET", str(workers))
    run = Pass(repo, tmp_path / "exports", workers=workers)
    state = run.compile()
    assert state.pack_errors == [] and len(state.compiled) == 10
    counts = probe()
    assert (counts["max"], counts["runs"], counts["now"]) == (workers, 7, 0)
    again = run.compile()
    assert all(r.cached for r in again.compiled) and probe()["runs"] == 7


def test_compile_one_keeps_its_signature_and_renders_in_place(tmp_path: pathlib.Path) -> None:
    """``publish`` and bench/worker.py recompile one pack with ``use_cache=False``."""
    repo = mixed_repo(tmp_path / "repo")
    run = Pass(repo, tmp_path / "exports", workers=4)
    state = run.compile()
    first = next(r for r in state.compiled if r.build.base_pack_name == "k0")
    again = reconcile.compile_one(run.env, state, first.build, use_cache=False)
    assert not again.cached and again.compiled == first.compiled
    bad = next(b for b in state.builds if b.base_pack_name == "kbad")
    with pytest.raises(errors.RenderError, match="kustomize build of packs/kbad/k failed"):
        reconcile.compile_one(run.env, state, bad, use_cache=False)


@pytest.mark.parametrize(
    ("flag", "variable", "expected"),
    [
        (None, None, passstate.default_render_workers()),
        (None, "3", 3),
        (2, "3", 2),
        (None, "1", 1),
        (None, "0", "GITOPSD_RENDER_WORKERS='0'"),
        (None, "many", "GITOPSD_RENDER_WORKERS='many'"),
    ],
    ids=["default-one-per-cpu", "from-environment", "flag-wins", "sequential", "zero-refused", "word-refused"],
)
def test_render_workers_come_from_the_flag_then_the_environment_then_the_cpus(
        flag: int | None, variable: str | None, expected: int | str) -> None:
    environ = {} if variable is None else {wiring.RENDER_WORKERS_ENV: variable}
    settings = wiring_settings.Settings.from_environ(environ, render_workers=flag)
    if isinstance(expected, int):
        assert wiring.resolve_render_workers(settings) == expected
    else:
        with pytest.raises(errors.ConfigError, match=expected):
            wiring.resolve_render_workers(settings)


@pytest.mark.parametrize(("argv", "expected"), [([], None), (["--render-workers", "3"], 3)], ids=["absent", "given"])
def test_render_workers_flag(argv: list[str], expected: int | None) -> None:
    parser = argparse.ArgumentParser()
    flags.render(parser)
    assert wiring_settings.Settings.from_args(parser.parse_args(argv), environ={}).render_workers == expected


def test_render_workers_flag_refuses_zero(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    flags.render(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--render-workers", "0"])
    assert "give a whole number of at least 1" in capsys.readouterr().err
