"""One slow render never holds the other packs' apply (issue 13 item 6): a render still running
``render_wait`` after it started is left running, the other packs are applied at once, the slow
pack keeps what it runs (``RenderPending``), and a later pass applies it when the render ends:
in the daemon (a pass runs when the render ends) and in a one-shot ``gitopsd reconcile`` (which
applies the others first, then waits and runs one more pass). A real ``kustomize`` child process
on the PATH whose build runs until the test releases it, and the real embedded store."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from gitopsd import daemon, reconcile
from gitopsd.adapters import renderkustomize
from gitopsd.wiring import compose as wiring
from tests.reliability import harness

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WAIT = 60.0  # seconds a step may take on a busy machine before the test gives up on it


def _slow_kustomize(folder: pathlib.Path, log: pathlib.Path) -> dict[str, str]:
    """A kustomize whose build runs until the test creates ``release`` next to ``log`` (at most 100 s,
    under the renderer's own 120 s timeout): the test decides when the slow render ends, so what it
    checks is the order of events, not how fast the machine is."""
    folder.mkdir(parents=True)
    script = folder / "kustomize"
    release = log.with_name("release")
    script.write_text(f'#!/bin/sh\nif [ "$1" = build ]; then echo build >> {log}; i=0\n'
                      f'while [ ! -e {release} ] && [ $i -lt 1000 ]; do sleep 0.1; i=$((i+1)); done\n'
                      "printf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata:\\n  name: slow\\ndata: {a: b}\\n'; exit 0; fi\n"
                      "echo v5.0.0\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def _repo(dest: pathlib.Path) -> pathlib.Path:
    repo = harness.write_pack_repo(dest, packs=1)  # app-00, raw
    pack = repo / "packs" / "slow"
    (pack / "base").mkdir(parents=True)
    (pack / "packbuild.yaml").write_text("name: slow\nversion: 1.0.0\nbasePackName: slow\ncategory: kustomize\n"
                                        "kustomizeSource: {path: base}\ntargetClusters: [lab]\n")
    (pack / "base" / "kustomization.yaml").write_text("resources: []\n")
    return repo


def _bases(state_dir: pathlib.Path) -> set[str]:
    """basePackNames with a PackInstance in the store (none while the first pass creates it)."""
    try:
        return {str(obj["spec"]["basePackName"])  # type: ignore[index]
                for obj in harness.store_objects(state_dir, harness.PACK_INSTANCE)}
    except sqlite3.OperationalError:
        return set()


def _until(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def test_the_daemon_applies_the_other_packs_while_a_render_runs_and_the_slow_pack_when_it_ends(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    log = tmp_path / "builds.log"
    for key, value in _slow_kustomize(tmp_path / "bin", log).items():
        monkeypatch.setenv(key, value)
    renderkustomize._kustomize_command.cache_clear()  # this process may have found another kustomize before
    request.addfinalizer(renderkustomize._kustomize_command.cache_clear)
    repo, state_dir = _repo(tmp_path / "repo"), tmp_path / "state"
    states: list[reconcile.PassState] = []

    @contextlib.contextmanager
    def open_env() -> Iterator[reconcile.Env]:
        local = wiring.open_local(state_dir)
        try:
            env = wiring.local_env(repo, local, dry_run=False)
            env.render_wait = 1.0
            yield env
        finally:
            local.close()

    def run_pass(env: reconcile.Env) -> reconcile.PassState:
        states.append(reconcile.run(env))
        return states[-1]

    loop = daemon.Daemon(open_env, daemon.Options(interval=3600.0, resync_interval=0.0), run_pass=run_pass)
    loop.start()
    try:
        # the slow render runs until released below: the raw pack must be applied before that
        assert _until(lambda: "app-00" in _bases(state_dir), WAIT), "the raw pack waited for the slow render"
        assert _bases(state_dir) == {"app-00"}
        assert [(e.pack, e.reason) for e in states[0].plan.errors] == [("slow", "RenderPending")]  # type: ignore[union-attr]
        log.with_name("release").touch()
        assert _until(lambda: "slow" in _bases(state_dir), WAIT), "no pass took the render when it ended"
    finally:
        log.with_name("release").touch()
        loop.stop()
        loop.join(30)
    assert len(states) == 2 and states[1].plan is not None and states[1].plan.errors == ()
    assert log.read_text().splitlines() == ["build"]  # the second pass took the first render's result


def test_a_one_shot_reconcile_applies_the_others_first_then_waits_for_the_slow_render(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "builds.log"
    env = {**os.environ, **_slow_kustomize(tmp_path / "bin", log)}
    repo, state_dir = _repo(tmp_path / "repo"), tmp_path / "state"
    proc = subprocess.Popen([harness.PYTHON, "-m", "gitopsd", "reconcile", str(repo), "--state-dir", str(state_dir),
                             "--render-wait", "1s", "-o", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        # the slow render runs until released: the raw pack must be applied while it runs
        applied = _until(lambda: "app-00" in _bases(state_dir), WAIT)
        still_running = proc.poll() is None
        log.with_name("release").touch()
        out, err = proc.communicate(timeout=WAIT)
    finally:
        log.with_name("release").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert applied and still_running, f"the raw pack was not applied while the slow render ran\n{err[-3000:]}"
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["errors"] == []
    assert _bases(state_dir) == {"app-00", "slow"}
    assert log.read_text().splitlines() == ["build"]
