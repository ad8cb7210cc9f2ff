"""The state dir on a bad day (issue items 3 and 8): several writers at once, a lost key, ...

Real processes throughout: ``gitopsd`` commands forked from a pre-imported interpreter.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import threading
from collections.abc import Iterator

import pytest

from gitopsd.adapters import keys, statelock
from tests.reliability import harness, statedir


@pytest.mark.slow
def test_first_runs_started_at_once_on_one_fresh_state_dir_leave_it_sound(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    tally = statedir.first_runs(zygotes, tmp_path, rounds=2, runs=8)
    harness.CHAOS.append(tally.row())
    assert (tally.trials, tally.failures, tally.lost) == (2, [], 0)


def test_a_second_writer_waits_for_the_lock_then_gives_up_with_one_line(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    repo = harness.write_pack_repo(tmp_path / "repo", packs=2)
    state = tmp_path / "state"
    with statelock.acquire(state):
        run = zygotes.run("reconcile", str(repo), "--state-dir", str(state), cwd=tmp_path,
                          env={statelock.TIMEOUT_ENV: "0.3"})
        dry = zygotes.run("dry-run", str(repo), "--state-dir", str(state), cwd=tmp_path,
                          env={statelock.TIMEOUT_ENV: "0.3"})
    assert (run.returncode, run.stderr.splitlines()) == (2, [
        f"waiting for the state dir {state}: gitopsd pid {os.getpid()} is writing to it",
        f"error: state dir {state} is locked by gitopsd pid {os.getpid()}, which is writing to it; waited 0.3s: run "
        f"again when it is done, or use another --state-dir ({statelock.TIMEOUT_ENV} sets the wait) "
        "(reason StateDirLocked; transient, retrying later may succeed)"])
    assert not (state / "keys").exists()  # it waited before its first write
    assert (dry.returncode, dry.stderr) == (0, "")  # read-only: it takes no lock


def test_a_missing_key_with_signed_packs_is_named_not_reported_as_tampering(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    repo = harness.write_pack_repo(tmp_path / "repo", packs=2)
    state = tmp_path / "state"
    assert zygotes.run("reconcile", str(repo), "--state-dir", str(state), cwd=tmp_path).returncode == 0
    (state / "keys" / "signing.key").unlink()
    run = zygotes.run("reconcile", str(repo), "--state-dir", str(state), cwd=tmp_path)
    assert (run.returncode, run.stderr.strip().splitlines()[-1]) == (2, (
        f"error: {state.resolve()}/keys/signing.key is missing, but the local store holds 2 signed ClusterPack(s): "
        "a new key would not verify them, so none is made; restore the key file from a backup, or pass --signing-key "
        "(and --trusted-keys with the old public key) (reason SigningKeyMissing)"))
    assert not (state / "keys" / "signing.key").exists()


def test_keys_made_at_once_in_one_folder_never_replace_each_other(tmp_path: pathlib.Path) -> None:
    made: list[keys.GeneratedKey] = []
    refused: list[str] = []
    start = threading.Barrier(16)

    def one() -> None:
        start.wait()
        try:
            made.append(keys.generate(tmp_path / "keys"))
        except keys.KeyLoadError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(made), len(refused)) == (1, 15)
    on_disk = keys.load_private_key(tmp_path / "keys" / "signing.key")
    assert on_disk.public_key().openssh() == made[0].public_key.openssh()
    assert sorted(os.listdir(tmp_path / "keys")) == ["signing.key", "signing.key.pub"]


@pytest.mark.parametrize("force", [False, True], ids=["kept", "forced"])
def test_keygen_replaces_a_key_only_when_forced(tmp_path: pathlib.Path, force: bool) -> None:
    first = keys.generate(tmp_path)
    if not force:
        with pytest.raises(keys.KeyLoadError):
            keys.generate(tmp_path)
        assert keys.load_private_key(first.private_path).public_key().openssh() == first.public_key.openssh()
    else:
        second = keys.generate(tmp_path, force=True)
        assert keys.load_private_key(first.private_path).public_key().openssh() == second.public_key.openssh()


@pytest.mark.parametrize("scenario", list(statedir.DAMAGE), ids=list(statedir.DAMAGE))
def test_a_damaged_state_dir_is_repaired_or_named_in_one_line(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path, scenario: str) -> None:
    tally = statedir.damaged(zygotes, tmp_path, scenario)
    harness.CHAOS.append(tally.row())
    assert (tally.trials, tally.failures, tally.lost) == (1, [], 0)


@pytest.fixture
def small_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A 16 MiB tmpfs mounted for the test (the state dir goes there: it can fill up or turn read-only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_read_only_commands_work_on_a_read_only_state_dir(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path, small_disk: pathlib.Path) -> None:
    repo = harness.write_pack_repo(tmp_path / "repo", packs=3)
    state = small_disk / "state"
    assert zygotes.run("reconcile", str(repo), "--state-dir", str(state), cwd=tmp_path).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    pub = str(state / "keys" / "signing.key.pub")
    codes = {argv[0]: zygotes.run(*argv, cwd=tmp_path) for argv in (
        ("get", "packs", "--state-dir", str(state)),
        ("verify", "--state-dir", str(state), "--trusted-keys", pub),
        ("dry-run", str(repo), "--state-dir", str(state)),
        ("diff", str(repo), "--state-dir", str(state)),
        ("reconcile", str(repo), "--state-dir", str(state)))}
    assert {cmd: run.returncode for cmd, run in codes.items()} == {
        "get": 0, "verify": 0, "dry-run": 0, "diff": 0, "reconcile": 2}
    assert [line for run in codes.values() for line in run.stderr.splitlines()] == [
        f"error: state dir {state}: cannot open its lock file {state}/lock for writing (Read-only file system); a pass "
        "that writes needs a writable state dir (read-only commands: get, verify, dry-run, diff) (reason StateDirUnwritable)"]
    assert codes["get"].stdout.count("app-0") == 3


def test_a_full_disk_fails_the_pass_in_one_line_and_loses_nothing(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path, small_disk: pathlib.Path) -> None:
    repo = harness.write_pack_repo(tmp_path / "repo", packs=3)
    state = small_disk / "state"
    assert zygotes.run("reconcile", str(repo), "--state-dir", str(state), cwd=tmp_path).returncode == 0
    before = harness.final_state(state)
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as handle:  # fill the disk to the last byte (unbuffered: close has nothing left to write)
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    harness.write_pack_repo(repo, packs=3, revision="B")
    run = zygotes.run("reconcile", str(repo), "--state-dir", str(state), cwd=tmp_path)
    lines = [line for line in run.stderr.strip().splitlines() if not line.startswith("{")]  # not log records
    assert (run.returncode, "Traceback" in run.stderr, lines) == (2, False, [
        "error: the disk is full; free space and run again (reason BackendFailure)"]), run.describe()
    assert harness.final_state(state) == before  # nothing half-applied
    filler.unlink()
    after = zygotes.run("reconcile", str(repo), "--state-dir", str(state), cwd=tmp_path)
    assert after.returncode == 0, after.describe()
    assert harness.state_checks(zygotes._all[0], state, str(state / "keys" / "signing.key.pub"), tmp_path) == []
