"""A failing render is remembered by its input ids (issue item 6): not rendered again on the next
pass, in this process or the next one, until an input changes or a resync retries it. A real
``kustomize`` on the PATH (a script that counts its builds and fails) and real processes."""

from __future__ import annotations

import json
import os
import pathlib
import stat

import pytest

from gitopsd import reconcile
from gitopsd.adapters import renderkustomize
from gitopsd.wiring import compose as wiring
from tests.reliability import harness


def _failing_kustomize(folder: pathlib.Path, log: pathlib.Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    script = folder / "kustomize"
    script.write_text(f'#!/bin/sh\nif [ "$1" = build ]; then echo build >> {log}; echo "Error: boom in $2" >&2; exit 1; fi\n'
                      'echo v5.0.0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def _repo(dest: pathlib.Path) -> pathlib.Path:
    repo = harness.write_pack_repo(dest, packs=2)
    pack = repo / "packs" / "spins"
    (pack / "base").mkdir(parents=True)
    (pack / "packbuild.yaml").write_text("name: spins\nversion: 1.0.0\nbasePackName: spins\ncategory: kustomize\n"
                                        "kustomizeSource: {path: base}\ntargetClusters: [lab]\n")
    (pack / "base" / "kustomization.yaml").write_text("resources: []\n")
    return repo


def _builds(log: pathlib.Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_failed_render_is_not_repeated_until_an_input_changes(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    log = tmp_path / "builds.log"
    env = _failing_kustomize(tmp_path / "bin", log)
    repo = _repo(tmp_path / "repo")
    state = tmp_path / "state"
    seen = []
    for step in ("first", "unrelated-change", "input-change"):
        if step == "unrelated-change":
            (repo / "packs" / "app-00" / "manifests" / "extra.yaml").write_text(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\n")
        elif step == "input-change":
            (repo / "packs" / "spins" / "base" / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
        run = zygotes.run("reconcile", str(repo), "--state-dir", str(state), "-o", "json", cwd=tmp_path, env=env)
        errors = json.loads(run.stdout)["errors"]
        seen.append((step, run.returncode, _builds(log), [(e["pack"], e["reason"]) for e in errors]))
        message = errors[0]["message"]
        assert message.startswith("packs/spins/packbuild.yaml: field 'kustomizeSource.path': kustomize build of "
                                  "packs/spins/base failed: boom in"), message
    assert seen == [
        ("first", 1, 1, [("spins", "RenderFailed")]),
        ("unrelated-change", 1, 1, [("spins", "RenderFailed")]),  # remembered: no build
        ("input-change", 1, 2, [("spins", "RenderFailed")]),
    ]


def test_a_resync_renders_remembered_failures_again(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                    request: pytest.FixtureRequest) -> None:
    log = tmp_path / "builds.log"
    for key, value in _failing_kustomize(tmp_path / "bin", log).items():
        monkeypatch.setenv(key, value)
    renderkustomize._kustomize_command.cache_clear()  # this process may have found another kustomize before
    request.addfinalizer(renderkustomize._kustomize_command.cache_clear)
    repo = _repo(tmp_path / "repo")
    local = wiring.open_local(tmp_path / "state")
    try:
        env = wiring.local_env(repo, local, dry_run=False)
        counts = []
        for retry in (False, False, True, False):
            env.retry_failed = retry
            state = reconcile.run(env)
            counts.append((retry, _builds(log), [e.reason for e in state.plan.errors]))  # type: ignore[union-attr]
    finally:
        local.close()
    assert counts == [(False, 1, ["RenderFailed"]), (False, 1, ["RenderFailed"]), (True, 2, ["RenderFailed"]),
                      (False, 2, ["RenderFailed"])]
