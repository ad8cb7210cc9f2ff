"""The state dir on a bad day (issue items 3 and 8): several writers at once, a lost key, ...

Real processes throughout: ``gitopsd`` commands forked from a pre-imported interpreter.
"""

from __future__ import annotations

import os
import pathlib
import threading

import pytest

from gitopsd.adapters import keys, statelock
from tests.reliability import harness, statedir


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
