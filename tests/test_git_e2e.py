"""The whole loop through the real CLI with Git remotes on disk: reconcile, status commits, verification."""

from __future__ import annotations

import json
import pathlib
import shlex
import shutil

import pytest
import yaml

from tests import gitutil
from tests.conftest import Cli

pytestmark = pytest.mark.slow


def status_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(("status:", "verify:"))]


def pushed_commit(stdout: str) -> str:
    lines = stdout.rstrip("\n").splitlines()
    assert lines[-2].startswith("status: commit "), stdout
    return lines[-2].split()[2]


def run_verify_line(stdout: str) -> None:
    line = stdout.rstrip("\n").splitlines()[-1]
    assert line.startswith("verify: git "), stdout
    proc = gitutil.git(*shlex.split(line.removeprefix("verify: git ")), check=False)
    assert proc.returncode == 0 and 'Good "git" signature' in proc.stderr, proc.stderr


def bump(clone: gitutil.Clone, pack: str, old: str, new: str, *push: str) -> str:
    path = clone.path / f"packs/{pack}/packbuild.yaml"
    text = path.read_text()
    assert f"\nversion: {old}\n" in text, text
    path.write_text(text.replace(f"\nversion: {old}\n", f"\nversion: {new}\n"))
    sha = clone.commit(f"{pack} {new}")
    clone.push(*push)
    return sha


def record_at(repo: pathlib.Path, commit: str, pack: str) -> dict:
    return yaml.safe_load(gitutil.git("show", f"{commit}:.gitopsd/status/{pack}.yaml", cwd=repo).stdout)


@pytest.fixture
def remote(tmp_path: pathlib.Path) -> tuple[pathlib.Path, gitutil.Clone]:
    return gitutil.make_remote(tmp_path, examples=True)


@pytest.fixture
def ssh_key(tmp_path: pathlib.Path) -> pathlib.Path:
    return gitutil.ssh_key(tmp_path / "keys", "gitopsd")


def test_reconcile_of_a_bare_remote_pushes_one_verifiable_status_commit_then_nothing(
        cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone], ssh_key: pathlib.Path, state_dir: pathlib.Path) -> None:
    bare, user = remote
    proc = cli("reconcile", str(bare), "--signing-key", str(ssh_key), "--state-dir", str(state_dir))
    commit = pushed_commit(proc.stdout)
    assert gitutil.rev_list(bare, f"{user.head()}..main") == [commit]
    assert f"at main@sha1:{user.head()}" in proc.stdout.splitlines()[0]
    run_verify_line(proc.stdout)
    signers = gitutil.allowed_signers(state_dir.parent / "signers", ssh_key.with_suffix(".pub"))
    assert gitutil.verify_commit(bare, commit, signers).returncode == 0  # with the user's own allowed_signers too
    assert sorted(gitutil.git("ls-tree", "--name-only", f"{commit}:.gitopsd/status", cwd=bare).stdout.split()) == [
        "cert-manager-lite.yaml", "network-policies.yaml", "observability.yaml", "platform-base.yaml", "web-frontend.yaml"]
    again = cli("reconcile", str(bare), "--signing-key", str(ssh_key), "--state-dir", str(state_dir))
    assert status_lines(again.stdout) == [f"status: no status change ({bare} at {commit[:12]})"]
    assert gitutil.rev(bare, "main") == commit
    doc = cli.json("reconcile", str(bare), "--signing-key", str(ssh_key), "--state-dir", str(state_dir))
    assert doc["statusCommit"] is None and doc["revision"] == f"main@sha1:{user.head()}"


def test_a_version_bump_leads_to_exactly_one_status_commit_recording_the_upgrade(
        cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone], ssh_key: pathlib.Path, state_dir: pathlib.Path) -> None:
    bare, user = remote
    args = ("--signing-key", str(ssh_key), "--state-dir", str(state_dir))
    cli("reconcile", str(bare), *args)
    user.pull()
    bumped = bump(user, "network-policies", "1.1.0", "1.2.0")
    doc = cli.json("reconcile", str(bare), *args)
    commit = doc["statusCommit"]
    assert doc["revision"] == f"main@sha1:{bumped}"
    assert gitutil.rev_list(bare, f"{bumped}..main") == [commit]
    assert gitutil.git("diff", "--name-only", bumped, commit, cwd=bare).stdout.split() == [".gitopsd/status/network-policies.yaml"]
    record = record_at(bare, commit, "network-policies")
    assert record["sourceRevision"] == f"main@sha1:{bumped}"
    assert [p["version"] for p in record["clusterPacks"]] == ["1.2.0"]
    assert {(i["cluster"], i["version"], i["upgradeDirection"], i["upgradeFromVersion"]) for i in record["instances"]} == {
        (cluster, "1.2.0", "Upgrade", "1.1.0") for cluster in ("dev", "prod-eu", "prod-us", "staging")}
    assert {i["history"][-1]["state"] for i in record["instances"]} == {"upgraded"}
    assert record_at(bare, commit, "web-frontend") == record_at(bare, f"{commit}~2", "web-frontend")  # untouched
    assert cli.json("reconcile", str(bare), *args)["statusCommit"] is None


def test_dry_run_and_diff_never_write_status(cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone], ssh_key: pathlib.Path,
                                             state_dir: pathlib.Path) -> None:
    bare, user = remote
    for mode, code in (("dry-run", 0), ("diff", 1)):
        proc = cli(mode, f"file://{bare}", "--signing-key", str(ssh_key), "--state-dir", str(state_dir), check=code)
        assert status_lines(proc.stdout) == ["status: not written (dry run)"]
    assert gitutil.rev(bare, "main") == user.head()


def test_a_plain_folder_as_git_remote_shows_the_whole_loop(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    first = cli("reconcile", str(examples), "--as-git-remote", "--state-dir", str(state_dir))
    demo = state_dir / "demo-remote.git"
    commit = pushed_commit(first.stdout)
    run_verify_line(first.stdout)
    assert gitutil.git("log", "--format=%s", "main", cwd=demo).stdout.splitlines()[1] == f"import {examples.name}"
    second = cli("reconcile", str(examples), "--as-git-remote", "--state-dir", str(state_dir))
    assert status_lines(second.stdout)[0].startswith("status: no status change")
    path = examples / "packs/observability/packbuild.yaml"
    path.write_text(path.read_text().replace("version: 2.3.0", "version: 2.4.0"))
    third = cli("reconcile", str(examples), "--as-git-remote", "--state-dir", str(state_dir))
    latest = pushed_commit(third.stdout)
    subjects = gitutil.git("log", "--format=%s", f"{commit}..{latest}", cwd=demo).stdout.splitlines()
    assert len(subjects) == 2 and subjects[1] == f"sync {examples.name}" and subjects[0].startswith("gitopsd: status for main@sha1:")
    assert {i["upgradeDirection"] for i in record_at(demo, latest, "observability")["instances"]} == {"Upgrade"}


def test_force_pushed_upstream_history_is_reconciled_without_a_crash(
        cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone], ssh_key: pathlib.Path, state_dir: pathlib.Path) -> None:
    bare, user = remote
    args = ("--signing-key", str(ssh_key), "--state-dir", str(state_dir), "--log-level", "warning")
    user.pull()
    doomed = bump(user, "web-frontend", "v1.4.2", "v1.5.0")
    cli("reconcile", str(bare), *args)
    user.git("reset", "-q", "--hard", f"{doomed}~1")
    rewritten = bump(user, "platform-base", "1.0.0", "1.0.1", "--force")
    proc = cli("reconcile", str(bare), *args)
    assert "upstream history rewritten" in proc.stderr
    commit = pushed_commit(proc.stdout)
    assert gitutil.rev_list(bare, f"{rewritten}..main") == [commit]
    assert not gitutil.is_ancestor(bare, doomed, commit)
    assert {i["upgradeDirection"] for i in record_at(bare, commit, "platform-base")["instances"]} == {"Upgrade"}
    assert {i["upgradeDirection"] for i in record_at(bare, commit, "web-frontend")["instances"]} == {"Rollback"}


def test_commit_verification_fails_closed(cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone], ssh_key: pathlib.Path,
                                          state_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bare, user = remote
    developer = gitutil.ssh_key(tmp_path / "dev", "developer")
    signers = gitutil.allowed_signers(tmp_path / "allowed_signers", developer.with_suffix(".pub"))
    args = ("--signing-key", str(ssh_key), "--state-dir", str(state_dir), "--verify-commits", str(signers))
    refused = cli("reconcile", str(bare), *args, check=2)
    assert f"commit {user.head()}" in refused.stderr and "it is not signed" in refused.stderr
    assert cli.json("get", "packs", "--state-dir", str(state_dir))["items"] == []  # nothing applied
    assert gitutil.rev(bare, "main") == user.head()
    signed = user.commit("signed", {"README.md": "config repo\n"}, sign=gitutil.ssh_sign_args(developer))
    user.push()
    doc = cli.json("reconcile", str(bare), *args)
    assert doc["revision"] == f"main@sha1:{signed}" and doc["statusCommit"]
    assert len(cli.json("get", "packs", "--state-dir", str(state_dir))["items"]) == 5


def test_tag_reads_a_release_and_writes_no_status(cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone], ssh_key: pathlib.Path,
                                                  state_dir: pathlib.Path) -> None:
    bare, user = remote
    user.git("tag", "release-1")
    user.git("push", "-q", "origin", "release-1")
    proc = cli("reconcile", str(bare), "--tag", "release-1", "--signing-key", str(ssh_key), "--state-dir", str(state_dir))
    assert f"at release-1@sha1:{user.head()}" in proc.stdout.splitlines()[0]
    assert status_lines(proc.stdout) == ["status: not written (--tag pins a revision; status is written to branches only)"]
    missing = cli("reconcile", str(bare), "--tag", "nope", "--state-dir", str(state_dir), check=2)
    assert missing.stderr.startswith("error: --tag nope: no such tag")


def test_a_url_default_state_dir_is_per_url_and_credentials_in_urls_are_refused(
        cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone], ssh_key: pathlib.Path, tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bare, _ = remote
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    doc = cli.json("dry-run", f"file://{bare}", "--signing-key", str(ssh_key))
    state = pathlib.Path(doc["stateDir"])
    assert state.parent == tmp_path / "xdg/gitopsd" and state.name.startswith("remote-")
    assert [p.name.startswith("remote-") for p in (state / "git").iterdir()] == [True]
    proc = cli("dry-run", "https://robot:tok-123@git.example.com/config.git", check=2)
    assert "--git-credentials-file" in proc.stderr and "tok-123" not in proc.stderr + proc.stdout
    assert [p.name for p in (tmp_path / "xdg/gitopsd").iterdir()] == [state.name]  # no state dir for the refused URL


def test_write_status_commits_to_a_work_tree_branch(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    work = gitutil.Clone(examples)
    gitutil.git("init", "-q", "-b", "main", examples)
    head = work.commit("config")
    plain = cli("reconcile", str(examples), "--state-dir", str(state_dir))
    assert status_lines(plain.stdout) == [] and work.head() == head  # off by default for a folder
    shutil.rmtree(state_dir)
    proc = cli("reconcile", str(examples), "--write-status", "--state-dir", str(state_dir))
    commit = pushed_commit(proc.stdout)
    run_verify_line(proc.stdout)
    assert work.head() == commit and work.git("status", "--porcelain").stdout == ""
    assert json.loads(json.dumps(record_at(examples, commit, "platform-base")))["basePackName"] == "platform-base"


def test_a_relative_state_dir_still_renders_kustomize_and_helm_packs(cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone],
                                                                      tmp_path: pathlib.Path) -> None:
    bare, _ = remote
    doc = cli.json("reconcile", str(bare), "--state-dir", "relative-state")  # cli runs in tmp_path
    assert doc["errors"] == [] and doc["summary"]["ready"] is True
    assert (tmp_path / "relative-state/git").is_dir() and doc["statusCommit"]


def test_verify_checks_the_status_records_against_the_signed_cluster_packs(
        cli: Cli, remote: tuple[pathlib.Path, gitutil.Clone], ssh_key: pathlib.Path, state_dir: pathlib.Path) -> None:
    bare, user = remote
    cli("reconcile", str(bare), "--signing-key", str(ssh_key), "--state-dir", str(state_dir))
    trusted = ("--trusted-keys", str(ssh_key.with_suffix(".pub")))
    ok = cli("verify", str(bare), "--state-dir", str(state_dir), *trusted)
    assert "10 of 10 verified (5 ClusterPacks, 5 status records)" in ok.stdout
    assert "ok   .gitopsd/status/web-frontend.yaml: agrees with the verified ClusterPacks" in ok.stdout
    user.pull()
    record = user.read(".gitopsd/status/web-frontend.yaml")
    forged = record.replace("checksum: sha256:", "checksum: sha256:0", 1)
    assert forged != record
    user.commit("forge a status record", {".gitopsd/status/web-frontend.yaml": forged})
    user.push()
    bad = cli("verify", str(bare), "--state-dir", str(state_dir), *trusted, check=1)
    assert "FAIL .gitopsd/status/web-frontend.yaml: web-frontend-v1.4.2: checksum" in bad.stdout
    assert "9 of 10 verified" in bad.stdout
