"""The daemon: when passes run (virtual time), what the endpoints say, signals and the local watch.

Loop logic runs in virtual time: ``run()`` in the test's own thread with an injected clock and
waiter, so a 20-minute schedule takes milliseconds and is exact. Passes are real passes over a
copy of examples-repo with the embedded store; ``run_pass`` is wrapped only to count them.
The endpoint, watch and signal tests use real threads, real HTTP and a real subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import http.client
import itertools
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gitopsd import daemon, errors, httpserver, metrics, ports, reconcile
from gitopsd.adapters import watch
from gitopsd.cli import run as cli_run
from gitopsd.wiring import settings as wiring_settings

STEADY = daemon.Options(interval=30, jitter=0, resync_interval=0)


def local_env(repo: pathlib.Path, state_dir: pathlib.Path) -> daemon.EnvFactory:
    return functools.partial(cli_run.open_local_env, repo, state_dir, signing_key=None, trusted_keys=None,
                             registry_url=None)


class VirtualTime:
    """Clock and waiter of a loop running in the test's thread.

    ``wait`` jumps the clock forward instead of sleeping; ``at(t, action)`` runs an action when the
    clock reaches ``t`` (a trigger wakes the loop like a real one would); past ``horizon`` the
    loop is stopped, which ends ``Daemon.run()``.
    """

    def __init__(self, horizon: float) -> None:
        self.now = 0.0
        self.horizon = horizon
        self.waits: list[float] = []
        self.actions: list[tuple[float, Callable[[], object]]] = []
        self.loop: daemon.Daemon | None = None

    def clock(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], object]) -> None:
        self.actions.append((when, action))
        self.actions.sort(key=lambda a: a[0])

    def wait(self, event: threading.Event, seconds: float) -> bool:
        assert self.loop is not None
        self.waits.append(seconds)
        if event.is_set():
            return True
        end = self.now + seconds
        while self.actions and self.actions[0][0] <= end:
            when, action = self.actions.pop(0)
            self.now = max(self.now, when)
            action()
            if event.is_set():
                return True
        self.now = end
        if self.now >= self.horizon:
            self.loop.stop()
        return False


class Counted:
    """``reconcile.run``, recording the virtual (or real) time each pass started."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.starts: list[float] = []
        self.states: list[reconcile.PassState] = []

    def __call__(self, env: reconcile.Env) -> reconcile.PassState:
        self.starts.append(self.clock())
        state = reconcile.run(env)
        self.states.append(state)
        return state


def virtual_daemon(open_env: daemon.EnvFactory, options: daemon.Options, horizon: float, *,
                   seed: int = 7) -> tuple[daemon.Daemon, VirtualTime, Counted]:
    vt = VirtualTime(horizon)
    counted = Counted(vt.clock)
    loop = daemon.Daemon(open_env, options, run_pass=counted, clock=vt.clock, wait=vt.wait,
                         rng=random.Random(seed), metrics=metrics.Metrics())
    vt.loop = loop
    return loop, vt, counted


def edit(repo: pathlib.Path) -> None:
    path = repo / "packs" / "platform-base" / "packbuild.yaml"
    path.write_text(path.read_text().replace("1.0.0", "1.0.1"))


# --- when passes run ------------------------------------------------------------------------------
def test_first_pass_runs_then_polls_without_change_skip_the_pass(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    loop, vt, counted = virtual_daemon(local_env(examples, state_dir), STEADY, horizon=300)
    loop.run()
    assert counted.starts == [0.0]
    assert loop.skipped == 9  # polls at 30, 60, ... 270; the horizon stops the loop at 300
    assert vt.waits == [30.0] * 10
    assert loop.readiness() == (False, "shutting down")
    assert counted.states[0].summary is not None and counted.states[0].summary.writes == 20


def test_a_new_revision_runs_a_pass_at_the_next_poll(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    loop, vt, counted = virtual_daemon(local_env(examples, state_dir), STEADY, horizon=200)
    vt.at(45, lambda: edit(examples))
    loop.run()
    assert counted.starts == [0.0, 60.0]
    assert counted.states[0].revision != counted.states[1].revision
    assert loop.last_revision == counted.states[1].revision


def test_a_trigger_runs_a_pass_at_once(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    loop, vt, counted = virtual_daemon(local_env(examples, state_dir), STEADY, horizon=100)
    vt.at(10, lambda: loop.trigger("test"))
    loop.run()
    assert counted.starts == [0.0, 10.0]  # same revision: a trigger does not ask head()


def test_resync_runs_a_pass_even_when_the_revision_did_not_move(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    options = daemon.Options(interval=30, jitter=0, resync_interval=600)
    loop, _vt, counted = virtual_daemon(local_env(examples, state_dir), options, horizon=1300)
    loop.run()
    assert counted.starts == [0.0, 600.0, 1200.0]
    assert {s.revision for s in counted.states} == {counted.states[0].revision}


@pytest.mark.parametrize(("full_plan", "later_passes_plan_every_pack"), [(False, False), (True, True)],
                         ids=["incremental", "full"])
def test_full_makes_every_pass_plan_every_pack_not_only_each_resync(
        examples: pathlib.Path, state_dir: pathlib.Path, full_plan: bool, later_passes_plan_every_pack: bool) -> None:
    options = cli_run.daemon_options(run_settings(str(examples), "--interval", "30s", "--resync-interval", "0",
                                                  *(("--full",) if full_plan else ())))
    loop, vt, counted = virtual_daemon(local_env(examples, state_dir), dataclasses.replace(options, jitter=0), horizon=100)
    vt.at(10, lambda: loop.trigger("test"))
    vt.at(20, lambda: loop.trigger("test"))
    loop.run()
    first, *later = counted.states
    bases = {build.base_pack_name for build in first.builds}
    assert len(later) == 2 and len(bases) > 1 and first.replanned == len(bases)
    assert [s.replanned for s in later] == [len(bases) if later_passes_plan_every_pack else 0] * 2
    assert all(s.plan == later[0].plan and not s.plan.writes for s in later)  # the same plan, however it was made


def test_poll_interval_has_jitter_within_ten_percent(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    options = daemon.Options(interval=30, resync_interval=0)
    loop, vt, _counted = virtual_daemon(local_env(examples, state_dir), options, horizon=600)
    loop.run()
    assert len(set(vt.waits)) > 5
    assert all(27.0 <= w <= 33.0 for w in vt.waits), vt.waits


class FlakySource:
    """A source whose fetch fails transiently on the calls listed in ``failing`` (1-based)."""

    def __init__(self, source: ports.Source, failing: set[int]) -> None:
        self.source = source
        self.failing = failing
        self.calls = 0

    def fetch(self) -> ports.Tree:
        self.calls += 1
        if self.calls in self.failing:
            raise errors.TransientError("registry.example: 503 Service Unavailable", reason="RegistryUnavailable")
        return self.source.fetch()

    def head(self) -> str | None:
        return self.source.head()  # type: ignore[attr-defined, no-any-return]


def with_source(open_env: daemon.EnvFactory, wrap: Callable[[ports.Source], ports.Source]) -> daemon.EnvFactory:
    @contextlib.contextmanager
    def opened() -> Iterator[reconcile.Env]:
        with open_env() as env:
            env.source = wrap(env.source)
            yield env

    return opened


def test_transient_errors_back_off_exponentially_and_reset_on_success(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    flaky: list[FlakySource] = []
    open_env = with_source(local_env(examples, state_dir), lambda s: flaky.append(FlakySource(s, {1, 2, 3, 5, 6})) or flaky[0])
    loop, vt, counted = virtual_daemon(open_env, STEADY, horizon=150)
    vt.at(100, lambda: loop.trigger("test"))
    loop.run()
    # 3 failures (waits 1, 2, 4), success at t=7, idle polls, trigger at 100: 2 failures (1, 2), success
    assert [w for w in vt.waits if w < 30] == [1.0, 2.0, 4.0, 1.0, 2.0]
    assert counted.starts == [0.0, 1.0, 3.0, 7.0, 100.0, 101.0, 103.0]
    assert loop.last_error is None and loop.readiness()[1] == "shutting down"
    exposition = loop.metrics.exposition().decode() if loop.metrics else ""
    assert 'gitopsd_errors_total{reason="RegistryUnavailable"} 5.0' in exposition
    assert 'gitopsd_reconcile_duration_seconds_count{result="error"} 5.0' in exposition


def test_backoff_delays_grow_with_jitter_and_stop_at_the_cap(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    open_env = with_source(local_env(examples, state_dir), lambda s: FlakySource(s, set(range(1, 1000))))
    options = daemon.Options(interval=30, resync_interval=0)
    loop, vt, _counted = virtual_daemon(open_env, options, horizon=3000)
    loop.run()
    waits = vt.waits
    assert all(a < b for a, b in itertools.pairwise(waits[:9])), waits[:9]
    for n, w in enumerate(waits[:8]):
        assert 0.9 * 2**n <= w <= 2**n, (n, w)
    assert max(waits) <= 300.0 and waits[-1] >= 270.0
    assert loop.readiness() == (False, "shutting down")


class FlakyHead:
    """A source whose ``head()`` fails transiently on the calls listed in ``failing`` (1-based)."""

    def __init__(self, source: ports.Source, failing: set[int]) -> None:
        self.source = source
        self.failing = failing
        self.calls = 0

    def fetch(self) -> ports.Tree:
        return self.source.fetch()

    def head(self) -> str | None:
        self.calls += 1
        if self.calls in self.failing:
            raise errors.TransientError("git ls-remote: connection reset", reason="RemoteUnreachable")
        return self.source.head()  # type: ignore[attr-defined, no-any-return]


def test_a_failed_head_check_backs_off_and_retries_the_check_not_a_pass(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    open_env = with_source(local_env(examples, state_dir), lambda s: FlakyHead(s, {2, 3}))
    loop, vt, counted = virtual_daemon(open_env, STEADY, horizon=60)
    loop.run()
    assert counted.starts == [0.0]  # head() failed at 30 and 31, succeeded at 33: unchanged, skipped
    assert vt.waits[:4] == [30.0, 1.0, 2.0, 30.0]
    assert loop.skipped == 1 and loop.last_error is None
    exposition = loop.metrics.exposition().decode() if loop.metrics else ""
    assert 'gitopsd_errors_total{reason="RemoteUnreachable"} 2.0' in exposition
    assert 'gitopsd_reconcile_duration_seconds_count{result="error"} 0.0' in exposition


BACKOFF = {
    "first": (1, 1.0),
    "second": (2, 2.0),
    "fifth": (5, 16.0),
    "at-the-cap": (9, 256.0),
    "capped": (10, 300.0),
    "far-past-the-cap": (500, 300.0),
}


@pytest.mark.parametrize(("failures", "expected"), BACKOFF.values(), ids=BACKOFF.keys())
def test_backoff_delay_without_jitter(failures: int, expected: float) -> None:
    assert daemon.backoff_delay(failures, daemon.Options(jitter=0), random.Random(1)) == expected


def test_a_stalled_revision_waits_for_a_new_one(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    config = examples / "gitopsd.yaml"
    good = config.read_text()
    config.write_text(good + "\nnoSuchSetting: true\n")
    loop, vt, counted = virtual_daemon(local_env(examples, state_dir), STEADY, horizon=200)
    vt.at(100, lambda: config.write_text(good))
    loop.run()
    assert counted.starts == [0.0, 120.0]  # polls at 30..90 skip the stalled revision
    assert len(counted.states) == 1 and counted.states[0].summary is not None and counted.states[0].summary.ready
    assert loop.skipped == 3 + 2  # 30, 60, 90 stalled; 150, 180 unchanged


def test_stop_lets_the_pass_in_flight_finish(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    entered, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow(env: reconcile.Env) -> reconcile.PassState:
        entered.set()
        assert release.wait(10)
        state = reconcile.run(env)
        finished.append(state.revision)
        return state

    loop = daemon.Daemon(local_env(examples, state_dir), daemon.Options(interval=3600), run_pass=slow)
    loop.start()
    assert entered.wait(10)
    loop.stop()
    assert loop.trigger("late") is False
    assert loop.join(0.2) is False  # still in the pass
    release.set()
    assert loop.join(10) is True
    assert len(finished) == 1 and loop.error is None and not loop.alive()


def test_branch_comes_from_the_revision() -> None:
    assert daemon.branch_of("main@sha1:" + "a" * 40) == "main"
    assert daemon.branch_of("team/x@sha1:" + "a" * 40) == "team/x"
    assert daemon.branch_of("HEAD@sha1:" + "a" * 40) is None
    assert daemon.branch_of("dir@sha256:" + "a" * 64) is None
    assert daemon.branch_of(None) is None


# --- endpoints ------------------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def get(server: httpserver.Server, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_health_readiness_and_metrics(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    gate = threading.Event()
    opened = local_env(examples, state_dir)

    @contextlib.contextmanager
    def gated() -> Iterator[reconcile.Env]:
        assert gate.wait(10)
        with opened() as env:
            yield env

    measures = metrics.Metrics()
    loop = daemon.Daemon(gated, daemon.Options(interval=3600), metrics=measures)
    server = httpserver.Server("127.0.0.1", 0, loop, metrics=measures)
    loop.start()
    server.start()
    try:
        assert get(server, "/healthz") == (200, "ok\n")
        assert get(server, "/readyz") == (503, "no pass has completed yet\n")
        gate.set()
        assert wait_for(lambda: get(server, "/readyz")[0] == 200)
        status, text = get(server, "/readyz")
        assert text == f"ok: reconciled {loop.last_revision}\n"
        status, text = get(server, "/metrics")
        assert status == 200
        for line in (
            'gitopsd_reconcile_duration_seconds_count{result="ready"} 1.0',
            'gitopsd_changes_total{action="create",kind="ClusterPack"} 5.0',
            'gitopsd_changes_total{action="create",kind="PackInstance"} 15.0',
            "gitopsd_commit_to_applied_seconds_count 1.0",
            f'gitopsd_last_applied_info{{revision="{loop.last_revision}"}} 1.0',
            "gitopsd_packs 5.0",
        ):
            assert line in text.splitlines(), line
        assert "gitopsd_errors_total" in text
        loop.stop()
        assert loop.join(10)
        assert get(server, "/healthz") == (503, "reconcile loop is not running\n")
        assert get(server, "/readyz") == (503, "shutting down\n")
    finally:
        loop.stop()
        server.stop()


def test_readiness_reports_the_error_before_a_first_success(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    open_env = with_source(local_env(examples, state_dir), lambda s: FlakySource(s, set(range(1, 1000))))
    loop = daemon.Daemon(open_env, daemon.Options(interval=3600, backoff_base=3600))
    loop.start()
    try:
        assert wait_for(lambda: loop.last_error is not None)
        assert loop.readiness() == (False, "no pass has completed yet; last error: RegistryUnavailable: "
                                           "registry.example: 503 Service Unavailable")
    finally:
        loop.stop()
        assert loop.join(10)


# --- the local watch ------------------------------------------------------------------------------
def watched_daemon(repo: pathlib.Path, state_dir: pathlib.Path) -> tuple[daemon.Daemon, Counted, threading.Event]:
    counted = Counted(time.monotonic)
    loop = daemon.Daemon(local_env(repo, state_dir), daemon.Options(interval=3600, resync_interval=0), run_pass=counted)
    stop = threading.Event()
    paths, keep, _ = watch.watch_plan(repo, state_dir / "trees")
    loop.start()
    threading.Thread(target=watch.watch, args=(paths, keep), daemon=True,
                     kwargs={"debounce": 0.2, "stop": stop, "trigger": loop.trigger}).start()
    return loop, counted, stop


def until_pass(counted: Counted, change: Callable[[int], None], *, passes: int) -> bool:
    """Make a change until a pass follows (the watcher may not be set up for the first one)."""
    for attempt in range(5):
        change(attempt)
        if wait_for(lambda: len(counted.states) >= passes, timeout=3):
            return True
    return False


def test_watch_on_a_plain_folder_runs_a_pass_when_a_file_is_saved(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    loop, counted, stop = watched_daemon(examples, state_dir)
    try:
        assert wait_for(lambda: len(counted.states) == 1)
        values = examples / "packs" / "observability" / "packbuild.yaml"
        text = values.read_text()
        assert until_pass(counted, lambda n: values.write_text(text.replace("2.3.0", f"2.3.{n + 1}")), passes=2)
        assert counted.states[-1].revision != counted.states[0].revision
    finally:
        stop.set()
        loop.stop()
        assert loop.join(10)


def git(repo: pathlib.Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def test_watch_on_a_git_work_tree_runs_a_pass_on_commit(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    git(examples, "init", "-q", "-b", "main")
    git(examples, "add", "-A")
    git(examples, "commit", "-q", "-m", "packs")
    loop, counted, stop = watched_daemon(examples, state_dir)
    try:
        assert wait_for(lambda: len(counted.states) == 1)
        assert counted.states[0].revision.startswith("main@sha1:")
        path = examples / "packs" / "platform-base" / "packbuild.yaml"
        text = path.read_text()

        def commit(n: int) -> None:
            path.write_text(text.replace("1.0.0", f"1.0.{n + 1}"))
            git(examples, "commit", "-q", "-am", f"platform-base 1.0.{n + 1}")

        assert until_pass(counted, commit, passes=2)
        assert counted.states[-1].revision != counted.states[0].revision
        assert loop.branch() == "main"
    finally:
        stop.set()
        loop.stop()
        assert loop.join(10)


WATCH_FILTER_GIT = {
    "head": (".git/HEAD", True),
    "branch-ref": (".git/refs/heads/main", True),
    "packed-refs": (".git/packed-refs", True),
    "ref-lock": (".git/refs/heads/main.lock", False),
    "index": (".git/index", False),
    "objects": (".git/objects/ab/cdef", False),
    "work-tree-file": ("packs/a/packbuild.yaml", False),
}


@pytest.mark.parametrize(("rel", "kept"), WATCH_FILTER_GIT.values(), ids=WATCH_FILTER_GIT.keys())
def test_watch_on_a_git_work_tree_reacts_to_head_and_refs_only(tmp_path: pathlib.Path, rel: str, kept: bool) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f.yaml").write_text("a: 1\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    paths, keep, _ = watch.watch_plan(repo, tmp_path / "trees")
    assert paths == [(repo / ".git").resolve()]
    assert keep(None, str(repo.resolve() / rel)) is kept


WATCH_FILTER_FOLDER = {
    "pack-file": ("packs/a/packbuild.yaml", True),
    "config": ("gitopsd.yaml", True),
    "status": (".gitopsd/status/a.yaml", False),
    "git-dir": (".git/HEAD", False),
    "vim-swap": ("packs/a/.packbuild.yaml.swp", False),
    "backup": ("packs/a/packbuild.yaml~", False),
}


@pytest.mark.parametrize(("rel", "kept"), WATCH_FILTER_FOLDER.values(), ids=WATCH_FILTER_FOLDER.keys())
def test_watch_on_a_plain_folder_ignores_git_status_and_editor_files(tmp_path: pathlib.Path, rel: str, kept: bool) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    paths, keep, _ = watch.watch_plan(repo, tmp_path / "trees")
    assert paths == [repo.resolve()]
    assert keep(None, str(repo.resolve() / rel)) is kept


# --- the command ----------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="gitopsd")
    cli_run.add_parser(top.add_subparsers(dest="command", required=True))
    return top.parse_args(["run", *argv])


def run_settings(*argv: str) -> wiring_settings.Settings:
    return wiring_settings.Settings.from_args(parse(*argv))


def test_once_exit_codes_match_reconcile(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    assert cli_run.cmd_run(run_settings(str(examples), "--state-dir", str(state_dir), "--once")) == 0
    (examples / "packs" / "observability" / "packbuild.yaml").write_text("name: [broken\n")
    assert cli_run.cmd_run(run_settings(str(examples), "--state-dir", str(state_dir), "--once")) == 1
    with pytest.raises(errors.ConfigError):
        cli_run.cmd_run(run_settings(str(examples / "missing"), "--state-dir", str(state_dir), "--once"))


FLAGS = {
    "defaults": ((), {"interval": 30.0, "resync_interval": 600.0, "watch_debounce": 0.5, "shutdown_timeout": 30.0,
                      "listen": ("127.0.0.1", 9797)}),
    "units": (("--interval", "2m", "--resync-interval", "1h", "--watch-debounce", "250ms", "--shutdown-timeout", "5"),
              {"interval": 120.0, "resync_interval": 3600.0, "watch_debounce": 0.25, "shutdown_timeout": 5.0}),
    "listen-all-interfaces": (("--listen", ":8080"), {"listen": ("", 8080)}),
    "listen-ipv6": (("--listen", "[::1]:9797"), {"listen": ("::1", 9797)}),
    "listen-off": (("--listen", "off"), {"listen": None}),
}


@pytest.mark.parametrize(("argv", "expected"), FLAGS.values(), ids=FLAGS.keys())
def test_flags(argv: tuple[str, ...], expected: dict[str, object]) -> None:
    args = parse("repo", *argv)
    assert {k: getattr(args, k) for k in expected} == expected


@pytest.mark.parametrize("argv", [("--interval", "soon"), ("--listen", "9797"), ("--listen", "host:99999")],
                         ids=["bad-duration", "listen-without-host-colon", "port-out-of-range"])
def test_bad_flags_are_usage_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("repo", *argv)
    assert exit_info.value.code == 2


SCRIPT = textwrap.dedent("""\
    import argparse, sys
    from gitopsd import errors, logs
    from gitopsd.cli import run as cli_run
    from gitopsd.wiring import settings
    top = argparse.ArgumentParser(prog="gitopsd")
    cli_run.add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(sys.argv[1:])
    logs.configure(args.log_level, "json")
    try:
        sys.exit(args.func(settings.Settings.from_args(args)))
    except errors.GitopsdError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
""")


class Process:
    """A ``gitopsd run`` subprocess whose stderr (JSON log lines) is collected by a thread."""

    def __init__(self, tmp_path: pathlib.Path, *argv: str) -> None:
        script = tmp_path / "gitopsd_run.py"
        script.write_text(SCRIPT)
        self.proc = subprocess.Popen([sys.executable, str(script), "run", *argv], stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    def logged(self, event: str) -> list[str]:
        return [line for line in self.lines if f'"event": "{event}"' in line]


@pytest.mark.slow
def test_sigterm_stops_the_daemon_with_exit_0(tmp_path: pathlib.Path, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do-not-log-me\n")
    run = Process(tmp_path, str(examples), "--state-dir", str(state_dir), "--listen", "127.0.0.1:0",
                  "--webhook-secret-file", str(secret), "--interval", "1s", "--shutdown-timeout", "10s")
    try:
        assert wait_for(lambda: bool(run.logged("pass finished")), timeout=20), "".join(run.lines)
        assert run.logged("http server listening")
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=15) == 0, "".join(run.lines)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    text = "".join(run.lines)
    assert run.logged("stopping") and run.logged("stopped")
    assert '"mode": "run"' in run.logged("pass finished")[0]
    assert "do-not-log-me" not in text


def test_a_port_in_use_is_an_error_at_start(tmp_path: pathlib.Path, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    busy = httpserver.Server("127.0.0.1", 0, daemon.Daemon(local_env(examples, state_dir)))
    try:
        host, port = busy.address
        with pytest.raises(errors.ConfigError, match="--listen"):
            cli_run.cmd_run(run_settings(str(examples), "--state-dir", str(state_dir), "--listen", f"{host}:{port}"))
    finally:
        busy.stop()



def test_a_bad_signing_key_stops_the_daemon_with_the_error(tmp_path: pathlib.Path, examples: pathlib.Path,
                                                           state_dir: pathlib.Path) -> None:
    args = run_settings(str(examples), "--state-dir", str(state_dir), "--listen", "off",
                        "--signing-key", str(tmp_path / "missing.key"))
    with pytest.raises(errors.ConfigError, match="signing key not found"):
        cli_run.cmd_run(args)
