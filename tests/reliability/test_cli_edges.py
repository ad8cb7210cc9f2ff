"""Smaller holes (issue item 10): a submodule under packs/, pruning in the same pass, a closed
output pipe. Real git, real processes."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import pytest

from tests.reliability import harness


def _git(repo: pathlib.Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args], check=True, capture_output=True, text=True).stdout


def test_a_submodule_directly_under_packs_fails_only_that_pack(zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    repo = harness.write_pack_repo(tmp_path / "repo", packs=2)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},packs/vendored")
    _git(repo, "commit", "-qm", "config with a submodule")
    run = zygotes.run("reconcile", str(repo), "--state-dir", str(tmp_path / "state"), "-o", "json", cwd=tmp_path)
    result = json.loads(run.stdout)
    assert (run.returncode, [(e["pack"], e["reason"], e["message"]) for e in result["errors"]]) == (1, [
        ("vendored", "Submodule", "packs/vendored is a Git submodule; gitopsd reads only files of the config repo: "
                                  "commit the pack's files into the repo instead")])
    assert sorted(o["spec"]["basePackName"] for o in harness.store_objects(tmp_path / "state", harness.CLUSTER_PACK)) == [
        "app-00", "app-01"]


def _bump(repo: pathlib.Path, version: str) -> None:
    for build in sorted(repo.glob("packs/*/packbuild.yaml")):
        build.write_text(re.sub(r"version: \S+", f"version: {version}", build.read_text(), count=1))
    for manifest in sorted(repo.glob("packs/*/manifests/app.yaml")):
        manifest.write_text(re.sub(r"value-[^-]+-", f"value-{version}-", manifest.read_text()))


def test_old_versions_are_pruned_in_the_pass_that_makes_them_old(zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    repo = harness.write_pack_repo(tmp_path / "repo", packs=1)
    (repo / "gitopsd.yaml").write_text("namespace: seam-system\nregistry: registry.example.com/packs\n"
                                       "policies: {keepVersions: 2}\n")
    state = str(tmp_path / "state")
    seen = []
    for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        _bump(repo, version)
        first = zygotes.run("reconcile", str(repo), "--state-dir", state, cwd=tmp_path)
        diff = zygotes.run("diff", str(repo), "--state-dir", state, cwd=tmp_path)
        kept = sorted(o["spec"]["version"] for o in harness.store_objects(tmp_path / "state", harness.CLUSTER_PACK))
        seen.append((version, first.returncode, diff.returncode, kept))
    assert seen == [
        ("1.0.0", 0, 0, ["1.0.0"]),
        ("1.1.0", 0, 0, ["1.0.0", "1.1.0"]),
        ("1.2.0", 0, 0, ["1.1.0", "1.2.0"]),
        ("1.3.0", 0, 0, ["1.2.0", "1.3.0"]),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("argv", [("get", "instances", "-o", "yaml"), ("get", "packs", "-o", "json")],
                         ids=["instances-yaml", "packs-json"])  # both over a pipe's 64 KiB buffer
def test_output_into_a_pipe_closed_early_ends_quietly(zygotes: harness.ZygotePool, tmp_path: pathlib.Path,
                                                      argv: tuple[str, ...]) -> None:
    repo = harness.write_pack_repo(tmp_path / "repo", packs=40)
    state = tmp_path / "state"
    assert zygotes.run("reconcile", str(repo), "--state-dir", str(state), cwd=tmp_path).returncode == 0
    command = f"{harness.PYTHON} -m gitopsd {' '.join(argv)} --state-dir {state} 2>{tmp_path}/err | head -c 10"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, cwd=harness.ROOT, check=False)
    assert (out.returncode, len(out.stdout), (tmp_path / "err").read_text()) == (141, 10, "")
