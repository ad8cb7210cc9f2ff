"""Status records in Git that lie (issue item 5): a commit that edits only ``.gitopsd/status/``,
an invented record, records dropped by a force-push. Real bare remotes, real signed commits (the
git CLI with SSH keys), real gitopsd processes.
"""

from __future__ import annotations

import json
import pathlib
import re
import socket
import subprocess
import time
import urllib.request

import pytest

from gitopsd.adapters import keys
from tests import gitutil
from tests.reliability import harness


def _world(tmp: pathlib.Path, zygotes: harness.ZygotePool) -> dict[str, pathlib.Path]:
    repo = harness.write_pack_repo(tmp / "files", packs=2)
    files = {str(p.relative_to(repo)): p.read_text() for p in repo.rglob("*") if p.is_file()}
    user_key = gitutil.ssh_key(tmp / "user-key", "user")
    bare, user = gitutil.make_remote(tmp, files)
    signers = gitutil.allowed_signers(tmp / "allowed_signers", user_key.with_suffix(".pub"))
    user.commit("signed config", {"README.md": "config\n"}, sign=gitutil.ssh_sign_args(user_key))
    user.push()
    key = keys.generate(tmp / "gitopsd-key").private_path
    world = {"bare": bare, "clone": user.path, "signers": signers, "key": key, "user_key": user_key,
             "state": tmp / "state", "pub": key.with_suffix(".key.pub")}
    run = _reconcile(zygotes, world, tmp)
    assert run.returncode == 0, run.describe()
    user.pull()
    return world


def _reconcile(zygotes: harness.ZygotePool, world: dict[str, pathlib.Path], tmp: pathlib.Path) -> harness.Run:
    return zygotes.run("reconcile", str(world["bare"]), "--state-dir", str(world["state"]), "--signing-key",
                       str(world["key"]), "--verify-commits", str(world["signers"]), cwd=tmp)


def _verify(zygotes: harness.ZygotePool, world: dict[str, pathlib.Path], tmp: pathlib.Path) -> tuple[int, dict[str, list[str]]]:
    run = zygotes.run("verify", str(world["bare"]), "--state-dir", str(world["state"]), "--trusted-keys",
                      str(world["pub"]), "-o", "json", cwd=tmp)
    results = json.loads(run.stdout)["results"]
    return run.returncode, {r["name"]: r["problems"] for r in results if not r["ok"]}


def _edit(path: pathlib.Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


LIES = [
    pytest.param("unsigned", id="unsigned-edit-of-a-record"),
    pytest.param("user", id="edit-signed-by-a-trusted-user-not-gitopsd"),
]


@pytest.mark.parametrize("signer", LIES)
def test_a_commit_that_only_edits_status_records_must_be_gitopsds(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path, signer: str) -> None:
    world = _world(tmp_path, zygotes)
    clone = gitutil.Clone(world["clone"])
    _edit(world["clone"] / ".gitopsd/status/app-00.yaml", "version: 1.0.0", "version: 9.9.9")
    sign = gitutil.ssh_sign_args(world["user_key"]) if signer == "user" else ()
    lie = clone.commit("edit a status record", sign=sign)
    clone.push()
    run = _reconcile(zygotes, world, tmp_path)
    why = "it is not signed" if signer == "unsigned" else (
        f"it is signed by {keys.load_public_keys(world['user_key'].with_suffix('.pub'))[0].key_id()}, not by gitopsd's key")
    assert (run.returncode, run.stderr.strip().splitlines()[-1]) == (2, (
        f"error: commit {lie} in {world['bare']} changes only .gitopsd/ (status records) and was refused: {why}; only "
        "gitopsd's key may write status: revert the commit (or push the branch without it); nothing was applied "
        "(reason CommitVerificationFailed)"))


def test_verify_compares_every_record_with_the_store_and_flags_invented_ones(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    world = _world(tmp_path, zygotes)
    assert _verify(zygotes, world, tmp_path) == (0, {})
    clone = gitutil.Clone(world["clone"])
    status = world["clone"] / ".gitopsd/status"
    _edit(status / "app-00.yaml", "name: app-00-edge-a\n  state: installed", "name: app-00-edge-a\n  state: uninstalled")
    (status / "ghost.yaml").write_text((status / "app-01.yaml").read_text().replace("app-01", "ghost"))
    lies = clone.commit("lies")
    clone.push()
    code, failed = _verify(zygotes, world, tmp_path)
    assert code == 1
    unsigned = f"commit {lies} wrote it and it is not signed: only commits signed by gitopsd's key may write status records"
    assert failed[".gitopsd/status/app-00.yaml"] == [
        "PackInstance app-00-edge-a: state 'uninstalled' differs from the stored 'installed'", unsigned]
    assert failed[".gitopsd/status/ghost.yaml"][-1] == unsigned
    assert failed[".gitopsd/status/ghost.yaml"][0] == (
        "no ClusterPack or PackInstance of 'ghost' is in the store or cluster: the record is not gitopsd's")
    assert sorted(failed) == [".gitopsd/status/app-00.yaml", ".gitopsd/status/ghost.yaml"]


def _lie_about_the_source(record: pathlib.Path) -> None:
    """An edit that agrees with the store (verify compares no source revision): only its writer gives it away."""
    text = record.read_text()
    assert re.search(r"(?m)^sourceRevision: main@sha1:[0-9a-f]{40}$", text)
    record.write_text(re.sub(r"(?m)^sourceRevision: main@sha1:[0-9a-f]{40}$", "sourceRevision: main@sha1:" + "e" * 40, text))


def test_records_written_by_a_config_commit_of_a_trusted_user_are_flagged_and_restored(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    """A commit signed by a user key that --verify-commits trusts passes for config, but the status
    records it changes are not gitopsd's word: verify names the commit, and the next pass puts the true
    records back with a commit signed by gitopsd's key."""
    world = _world(tmp_path, zygotes)
    true = _remote_status(world["bare"])
    clone = gitutil.Clone(world["clone"])
    _lie_about_the_source(world["clone"] / ".gitopsd/status/app-00.yaml")
    (world["clone"] / "README.md").write_text("config, edited\n")
    lie = clone.commit("config and a status record together", sign=gitutil.ssh_sign_args(world["user_key"]))
    clone.push()
    code, failed = _verify(zygotes, world, tmp_path)
    user = keys.load_public_keys(world["user_key"].with_suffix(".pub"))[0].key_id()
    assert (code, failed) == (1, {".gitopsd/status/app-00.yaml": [
        f"commit {lie} wrote it and it is signed by {user}, not by gitopsd's key: only commits signed by gitopsd's "
        "key may write status records"]})
    run = _reconcile(zygotes, world, tmp_path)
    assert run.returncode == 0, run.describe()  # the config change is the user's to make: it is applied
    assert _remote_status(world["bare"]) == true
    assert _verify(zygotes, world, tmp_path) == (0, {})
    tip = gitutil.rev(world["bare"], "main")
    assert gitutil.verify_commit(world["bare"], tip, _gitopsd_signers(tmp_path, world)).returncode == 0


def _remote_status(bare: pathlib.Path) -> dict[str, str]:
    out = subprocess.run(["git", "-C", str(bare), "ls-tree", "-r", "main", ".gitopsd/status/"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split("\t")[1]: line.split()[2] for line in out.splitlines()}


@pytest.mark.slow
def test_the_daemon_restores_true_records_after_an_edit_and_after_a_force_push_drops_them(
        zygotes: harness.ZygotePool, tmp_path: pathlib.Path) -> None:
    world = _world(tmp_path, zygotes)
    true = _remote_status(world["bare"])
    assert len(true) == 2
    clone = gitutil.Clone(world["clone"])
    port = _free_port()
    daemon = subprocess.Popen([harness.PYTHON, "-m", "gitopsd", "run", str(world["bare"]), "--state-dir",
                               str(world["state"]), "--signing-key", str(world["key"]), "--interval", "0.2",
                               "--listen", f"127.0.0.1:{port}", "--log-level", "warning"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port)  # its first pass is over: what follows is repaired by later passes
        seen = []
        for lie in ("edit", "config-and-status", "force-push"):
            if lie == "edit":
                _edit(world["clone"] / ".gitopsd/status/app-00.yaml", "version: 1.0.0", "version: 9.9.9")
                clone.commit("edit a status record")
                clone.push()
            elif lie == "config-and-status":  # a new desired revision that carries edited records
                clone.git("fetch", "-q", "origin")
                clone.git("reset", "-q", "--hard", "origin/main")
                _lie_about_the_source(world["clone"] / ".gitopsd/status/app-01.yaml")
                (world["clone"] / "README.md").write_text("config, edited\n")
                clone.commit("config and a status record together", sign=gitutil.ssh_sign_args(world["user_key"]))
                clone.push()
            else:
                clone.git("fetch", "-q", "origin")
                clone.git("reset", "-q", "--hard", "origin/main")
                clone.commit("drop the status", remove=(".gitopsd",))
                clone.push("--force")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _remote_status(world["bare"]) != true:
                time.sleep(0.2)
            seen.append((lie, _remote_status(world["bare"]) == true))
        assert seen == [("edit", True), ("config-and-status", True), ("force-push", True)]
        tip = gitutil.rev(world["bare"], "main")
        assert gitutil.verify_commit(world["bare"], tip, _gitopsd_signers(tmp_path, world)).returncode == 0
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)


def _gitopsd_signers(tmp: pathlib.Path, world: dict[str, pathlib.Path]) -> pathlib.Path:
    return gitutil.allowed_signers(tmp / "gitopsd_signers", world["pub"], principal="gitopsd@localhost")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the daemon was not ready within 60s")
