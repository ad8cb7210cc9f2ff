"""statuswriter: signed status commits pushed without force, against real bare remotes and the git CLI."""

from __future__ import annotations

import pathlib
import random
import threading
import time

import pygit2
import pytest
import yaml

from gitopsd import errors
from gitopsd.adapters import gitlocation, gitmirror, gitsource, keys, statuswriter
from tests import gitutil

pytestmark = pytest.mark.usefixtures("quiet_logs")
quiet_logs = gitutil.quiet_logs

RECORD = """apiVersion: gitopsd.dev/v1alpha1
kind: PackStatus
basePackName: {name}
sourceRevision: {rev}
clusterPacks: []
instances:
  - name: {name}-dev
    cluster: dev
    state: installed
    version: "{version}"
"""


def record(name: str, version: str = "1.0.0", rev: str = "main@sha1:" + "0" * 40) -> tuple[str, bytes]:
    return f".gitopsd/status/{name}.yaml", RECORD.format(name=name, version=version, rev=rev).encode()


def remote_source(bare: pathlib.Path, state: pathlib.Path) -> gitsource.GitSource:
    remote = gitmirror.GitRemote(gitlocation.parse_location(str(bare)), state / "git/mirror.git")
    src = gitsource.GitSource(remote, state / "trees")
    src.fetch()
    return src


def generated_key(directory: pathlib.Path) -> pathlib.Path:
    return keys.generate(directory).private_path


def openssh_key(directory: pathlib.Path) -> pathlib.Path:
    return gitutil.ssh_key(directory)


def pkcs8_key(directory: pathlib.Path) -> pathlib.Path:
    return gitutil.pkcs8_key(directory, "k.pem")


KEY_MAKERS = {"ssh-keygen": openssh_key, "pkcs8-pem": pkcs8_key, "keys.generate": generated_key}


def signers_for(key: keys.SigningKey, path: pathlib.Path) -> pathlib.Path:
    return gitutil.allowed_signers(path, key.public_key().openssh())


def files_at(bare: pathlib.Path, commit: str, folder: str = ".gitopsd/status") -> list[str]:
    return gitutil.git("ls-tree", "--name-only", f"{commit}:{folder}", cwd=bare).stdout.split()


@pytest.mark.parametrize("make_key", KEY_MAKERS.values(), ids=KEY_MAKERS.keys())
def test_first_write_is_one_commit_git_verify_commit_accepts(tmp_path: pathlib.Path, make_key) -> None:  # type: ignore[no-untyped-def]
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    key = keys.load_private_key(make_key(tmp_path / "keys"))
    writer = statuswriter.GitStatusWriter(remote_source(bare, tmp_path / "state").remote, key,
                                          identity=statuswriter.Identity("gitopsd-bot", "bot@example.com"))
    commit = writer.write([record("alpha"), record("beta")], "gitopsd: status\n")
    assert commit is not None and gitutil.rev(bare, "main") == commit
    assert gitutil.rev_list(bare, f"{user.head()}..main") == [commit]  # exactly one commit, on top of the user's
    proc = gitutil.verify_commit(bare, commit, signers_for(key, tmp_path / "signers"))
    assert proc.returncode == 0, proc.stderr
    assert 'Good "git" signature' in proc.stderr
    assert gitutil.git("log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", commit, cwd=bare).stdout.strip() == (
        "gitopsd-bot <bot@example.com>|gitopsd-bot <bot@example.com>|gitopsd: status")
    assert files_at(bare, commit) == ["alpha.yaml", "beta.yaml"]
    assert gitutil.git("diff", "--name-only", user.head(), commit, cwd=bare).stdout.split() == [
        ".gitopsd/status/alpha.yaml", ".gitopsd/status/beta.yaml"]
    assert writer.last is not None and writer.last.attempts == 1 and writer.last.parent == user.head()


def test_same_records_again_make_no_commit(tmp_path: pathlib.Path) -> None:
    bare, _ = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    writer = statuswriter.GitStatusWriter(remote_source(bare, tmp_path / "state").remote,
                                          keys.load_private_key(generated_key(tmp_path / "k")))
    first = writer.write([record("alpha")], "status\n")
    assert writer.write([record("alpha")], "status\n") is None
    assert gitutil.rev(bare, "main") == first
    assert writer.last is not None and writer.last.commit is None and writer.last.parent == first


def test_records_of_removed_packs_are_deleted_and_other_gitopsd_files_kept(tmp_path: pathlib.Path) -> None:
    bare, user = gitutil.make_remote(tmp_path, {**gitutil.config_repo("alpha"), ".gitopsd/README.md": "written by gitopsd\n"})
    writer = statuswriter.GitStatusWriter(remote_source(bare, tmp_path / "state").remote,
                                          keys.load_private_key(generated_key(tmp_path / "k")))
    writer.write([record("alpha"), record("beta")], "two\n")
    one = writer.write([record("alpha")], "one\n")
    assert one is not None and files_at(bare, one) == ["alpha.yaml"]
    none = writer.write([], "none\n")
    assert none is not None
    assert files_at(bare, none, ".gitopsd") == ["README.md"]
    assert gitutil.git("diff", "--stat", user.head(), none, cwd=bare).stdout == ""  # back to the user's tree


def test_an_invalid_record_is_refused_before_anything_is_written(tmp_path: pathlib.Path) -> None:
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    writer = statuswriter.GitStatusWriter(remote_source(bare, tmp_path / "state").remote,
                                          keys.load_private_key(generated_key(tmp_path / "k")))
    bad = RECORD.format(name="alpha", version="1.0.0", rev="r").replace("state: installed", "state: sideways")
    with pytest.raises(errors.StalledError) as caught:
        writer.write([(".gitopsd/status/alpha.yaml", bad.encode())], "status\n")
    assert caught.value.reason == "InvalidStatusRecord"
    assert str(caught.value).startswith(".gitopsd/status/alpha.yaml: instances/0/state: 'sideways' is not one of")
    with pytest.raises(errors.StalledError, match=r"directly under \.gitopsd/status/"):
        writer.write([("packs/alpha/status.yaml", RECORD.encode())], "status\n")
    assert gitutil.rev(bare, "main") == user.head()


RACE_ROUNDS = 20  # bench/chaos --git-trials runs more (its "git: user push during a status push" row)
RACE_SEED = 5


def user_push_races(root: pathlib.Path, rounds: int, seed: int) -> list[str]:
    """The race, ``rounds`` times: a user pushes one to three commits (``seed`` decides how many, and
    which files) while the status commit is in flight (a hook between building the commit and pushing
    it). Returns what went wrong, empty when no user commit is lost, history stays linear and every
    status commit verifies and changes only its record."""
    bare, user = gitutil.make_remote(root, gitutil.config_repo("alpha"))
    key = keys.load_private_key(generated_key(root / "k"))
    rng = random.Random(seed)
    user_commits: list[str] = []
    push_now = [False]

    def user_pushes(_: str) -> None:
        if not push_now[0]:
            return
        push_now[0] = False
        user.git("fetch", "-q", "origin")
        user.git("reset", "-q", "--hard", "origin/main")
        for _ in range(rng.randint(1, 3)):
            note = f"notes/{rng.randrange(8)}.txt"
            user_commits.append(user.commit(f"user change {len(user_commits)}", {note: f"{len(user_commits)}\n"}))
        user.push()

    writer = statuswriter.GitStatusWriter(remote_source(bare, root / "state").remote, key, backoff=0.001,
                                          before_publish=user_pushes)
    problems: list[str] = []
    status_commits = []
    for index in range(rounds):
        push_now[0] = True
        commit = writer.write([record("alpha", version=f"1.0.{index}")], f"status {index}\n")
        if commit is None or writer.last is None or writer.last.attempts != 2:
            problems.append(f"round {index}: commit {commit}, attempts {writer.last and writer.last.attempts} (expected 2)")
        else:
            status_commits.append(commit)
    history = gitutil.rev_list(bare, "main")
    if gitutil.rev(bare, "main") != (status_commits or ["?"])[-1]:
        problems.append("the tip is not the last status commit")
    if lost := [sha for sha in user_commits if sha not in history]:
        problems.append(f"{len(lost)} user commits lost: {lost[:3]}")
    if missing := [sha for sha in status_commits if sha not in history]:
        problems.append(f"{len(missing)} status commits not in history: {missing[:3]}")
    if merges := gitutil.rev_list(bare, "--merges", "main"):
        problems.append(f"merge commits in history: {merges[:3]}")
    if len(history) != 1 + len(user_commits) + len(status_commits):  # linear: initial, then user..., status, ...
        problems.append(f"history has {len(history)} commits, expected {1 + len(user_commits) + len(status_commits)}")
    signers = signers_for(key, root / "signers")
    if unverified := [sha for sha in status_commits if gitutil.verify_commit(bare, sha, signers).returncode != 0]:
        problems.append(f"{len(unverified)} status commits do not verify: {unverified[:3]}")
    for sha in status_commits:  # each status commit changes only the status files
        changed = gitutil.git("diff", "--name-only", f"{sha}~1", sha, cwd=bare).stdout.split()
        if changed != [".gitopsd/status/alpha.yaml"]:
            problems.append(f"status commit {sha} changes {changed}")
    return problems


@pytest.mark.slow
def test_a_user_push_between_building_and_pushing_is_kept(tmp_path: pathlib.Path) -> None:
    """The race: each round a user pushes while the status commit is in flight. No user commit is
    lost, history stays linear, every status commit verifies."""
    problems = user_push_races(tmp_path, RACE_ROUNDS, RACE_SEED)
    assert problems == [], f"seed {RACE_SEED}, {RACE_ROUNDS} rounds:\n" + "\n".join(problems[:10])


@pytest.mark.slow
def test_user_pushes_from_another_thread_are_never_lost(tmp_path: pathlib.Path) -> None:
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    key = keys.load_private_key(generated_key(tmp_path / "k"))
    writer = statuswriter.GitStatusWriter(remote_source(bare, tmp_path / "state").remote, key, backoff=0.002, attempts=12)
    pushed: list[str] = []
    stop = threading.Event()
    failures: list[BaseException] = []
    landed = threading.Event()  # a user push went through

    def user_loop() -> None:
        try:
            while not stop.is_set():
                user.git("fetch", "-q", "origin")
                user.git("reset", "-q", "--hard", "origin/main")
                sha = user.commit(f"user {len(pushed)}", {f"notes/{len(pushed)}.txt": "x\n"})
                if user.push(check=False).returncode == 0:  # a push that lost the race is the user's to redo
                    pushed.append(sha)
                    landed.set()
        except BaseException as err:  # noqa: BLE001 - reported below  # pragma: no cover
            failures.append(err)

    thread = threading.Thread(target=user_loop)
    thread.start()
    status_commits, attempts = [], 0
    rng = random.Random(7)
    try:
        index = 0
        while (index < 40 or len(pushed) < 15) and index < 400 and not failures:
            commit = writer.write([record("alpha", version=f"2.0.{index}")], f"status {index}\n")
            assert commit is not None and writer.last is not None
            status_commits.append(commit)
            attempts += writer.last.attempts
            index += 1
            time.sleep(rng.uniform(0.02, 0.12))  # a pass takes a while: leave the user room to push
            if index % 3 == 0:
                # on a loaded machine the user could lose every race: every third write waits for one
                # of the user's pushes to land, so both sides keep landing commits however slow it is
                landed.clear()
                assert landed.wait(60) or failures, "no user push landed in 60 s while status writes paused"
    finally:
        stop.set()
        thread.join()
    assert failures == []
    history = gitutil.rev_list(bare, "main")
    assert [sha for sha in pushed if sha not in history] == []
    assert [sha for sha in status_commits if sha not in history] == []
    assert gitutil.rev_list(bare, "--merges", "main") == []
    assert len(pushed) >= 15
    signers = signers_for(key, tmp_path / "signers")
    assert [sha for sha in status_commits if gitutil.verify_commit(bare, sha, signers).returncode != 0] == []
    print(f"\n[race-thread] {len(status_commits)} status commits in {attempts} push attempts while a thread pushed "
          f"{len(pushed)} user commits: 0 lost")


def test_a_branch_that_keeps_moving_ends_in_a_transient_error(tmp_path: pathlib.Path) -> None:
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))

    def always_push(_: str) -> None:
        user.git("fetch", "-q", "origin")
        user.git("reset", "-q", "--hard", "origin/main")
        user.commit("again", {"notes/n.txt": gitutil.rev(bare, "main")})
        user.push()

    delays: list[float] = []
    writer = statuswriter.GitStatusWriter(remote_source(bare, tmp_path / "state").remote,
                                          keys.load_private_key(generated_key(tmp_path / "k")), attempts=4,
                                          backoff=0.5, sleep=delays.append, before_publish=always_push)
    with pytest.raises(errors.TransientError) as caught:
        writer.write([record("alpha")], "status\n")
    assert caught.value.reason == "StatusPushRejected"
    assert len(delays) == 3 and all(0.25 * 2**i <= d <= 0.5 * 2**i for i, d in enumerate(delays))  # exponential
    assert gitutil.rev(bare, "main") == user.head()  # only the user's commits landed
    assert gitutil.git("ls-tree", "main", ".gitopsd", cwd=bare).stdout == ""


# ---------------------------------------------------------------- a local work tree (--write-status)


def work_tree(tmp_path: pathlib.Path) -> gitutil.Clone:
    path = tmp_path / "config"
    gitutil.git("init", "-q", "-b", "main", path)
    repo = gitutil.Clone(path)
    repo.commit("config", gitutil.config_repo("alpha"))
    return repo


def test_work_tree_status_commit_keeps_git_status_clean(tmp_path: pathlib.Path) -> None:
    repo = work_tree(tmp_path)
    (repo.path / "scratch.txt").write_text("the user's own uncommitted file\n")
    key = keys.load_private_key(generated_key(tmp_path / "k"))
    writer = statuswriter.GitStatusWriter(statuswriter.WorkTreeBranch(repo.path), key)
    commit = writer.write([record("alpha"), record("beta")], "status\n")
    assert commit is not None and repo.head() == commit
    assert repo.git("status", "--porcelain").stdout == "?? scratch.txt\n"
    assert yaml.safe_load((repo.path / ".gitopsd/status/beta.yaml").read_text())["basePackName"] == "beta"
    assert gitutil.verify_commit(repo.path, commit, signers_for(key, tmp_path / "signers")).returncode == 0
    assert writer.write([record("alpha"), record("beta")], "status\n") is None
    assert writer.write([record("alpha")], "status\n") is not None
    assert not (repo.path / ".gitopsd/status/beta.yaml").exists()
    assert repo.git("status", "--porcelain").stdout == "?? scratch.txt\n"
    assert gitutil.rev_list(repo.path, "--merges", "HEAD") == []


def test_work_tree_with_local_changes_under_gitopsd_is_refused(tmp_path: pathlib.Path) -> None:
    repo = work_tree(tmp_path)
    head = repo.head()
    gitutil.write_files(repo.path, {".gitopsd/status/alpha.yaml": "hand edited\n"})
    writer = statuswriter.GitStatusWriter(statuswriter.WorkTreeBranch(repo.path), keys.load_private_key(generated_key(tmp_path / "k")))
    with pytest.raises(errors.StalledError) as caught:
        writer.write([record("alpha")], "status\n")
    assert caught.value.reason == "WorkTreeDirty" and ".gitopsd/status/alpha.yaml" in str(caught.value)
    assert repo.head() == head
    repo.git("checkout", "-q", "--detach")
    (repo.path / ".gitopsd/status/alpha.yaml").unlink()
    with pytest.raises(errors.ConfigError, match="detached"):
        writer.write([record("alpha")], "status\n")


def test_status_tree_replaces_only_the_status_folder(tmp_path: pathlib.Path) -> None:
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    base = repo.TreeBuilder()
    base.insert("gitopsd.yaml", repo.create_blob(b"namespace: x\n"), pygit2.enums.FileMode.BLOB)
    root = repo[base.write()]
    assert statuswriter.status_tree(repo, root, {}) == root.id
    with_status = repo[statuswriter.status_tree(repo, root, {"a.yaml": b"a"})]
    assert [e.name for e in with_status] == [".gitopsd", "gitopsd.yaml"]
    assert statuswriter.status_tree(repo, with_status, {}) == root.id
    builder = repo.TreeBuilder(root)
    builder.insert(".gitopsd", repo.create_blob(b"a file"), pygit2.enums.FileMode.BLOB)
    with pytest.raises(errors.StalledError, match="is a file"):
        statuswriter.status_tree(repo, repo[builder.write()], {"a.yaml": b"a"})


# ---------------------------------------------------------------- over the network: smart HTTP with credentials


@pytest.mark.slow
def test_smart_http_remote_with_credentials_fetches_pushes_and_survives_a_race(tmp_path: pathlib.Path) -> None:
    bare, user = gitutil.make_remote(tmp_path / "srv", gitutil.config_repo("alpha"), name="config.git")
    token = tmp_path / "token"
    token.write_text("robot:tok-123\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("robot:nope\n")
    with gitutil.GitHttpServer(tmp_path / "srv", "robot", "tok-123") as server:
        location = gitlocation.parse_location(f"{server.url}/config.git")

        def http_source(state: str, credentials: pathlib.Path | None) -> gitsource.GitSource:
            auth = gitlocation.load_auth(location, credentials_file=str(credentials) if credentials else None)
            return gitsource.GitSource(gitmirror.GitRemote(location, tmp_path / f"state-{state}" / "mirror.git", auth=auth),
                                      tmp_path / f"state-{state}")

        for state, credentials, expected in (("anonymous", None, "asks for credentials"),
                                             ("wrong", wrong, "refused the credentials")):
            with pytest.raises(errors.TransientError) as caught:
                http_source(state, credentials).fetch()
            assert caught.value.reason == "SourceUnavailable" and expected in str(caught.value)
            assert "tok-123" not in str(caught.value) and "nope" not in str(caught.value)

        src = http_source("good", token)
        assert src.fetch().snapshot.revision == f"main@sha1:{user.head()}"
        assert src.head() == f"main@sha1:{user.head()}"
        key = keys.load_private_key(generated_key(tmp_path / "k"))
        pushed_by_user: list[str] = []

        def user_pushes(_: str) -> None:
            if not pushed_by_user:
                pushed_by_user.append(user.commit("user change", gitutil.raw_pack("beta")))
                user.push()

        writer = statuswriter.GitStatusWriter(src.remote, key, backoff=0.001, before_publish=user_pushes)
        commit = writer.write([record("alpha")], "status over http\n")
        assert commit is not None and writer.last is not None and writer.last.attempts == 2
        assert gitutil.rev(bare, "main") == commit
        assert gitutil.rev_list(bare, "main~1", "-1") == pushed_by_user  # built on the user's commit
        assert gitutil.verify_commit(bare, commit, signers_for(key, tmp_path / "signers")).returncode == 0
        assert ("POST", "/config.git/git-receive-pack", 200) in server.requests
        assert src.head() == f"main@sha1:{pushed_by_user[0]}"  # our status commit is not news; the user's is
        assert writer.write([record("alpha")], "again\n") is None
        writer.before_publish = None
        assert writer.write([record("alpha", version="1.0.1")], "no race\n") is not None
        assert writer.last is not None and writer.last.attempts == 1


def test_a_sharded_writer_replaces_only_the_records_of_its_own_packs(tmp_path: pathlib.Path) -> None:
    bare, _ = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    remote = remote_source(bare, tmp_path / "state").remote
    key = keys.load_private_key(generated_key(tmp_path / "k"))
    statuswriter.GitStatusWriter(remote, key).write([record("alpha"), record("beta"), record("gamma")], "all\n")
    shard = statuswriter.GitStatusWriter(remote, key, owns=lambda base: base in ("alpha", "beta"))
    commit = shard.write([record("alpha", version="2.0.0")], "shard: alpha changed, beta gone\n")
    assert commit is not None and files_at(bare, commit) == ["alpha.yaml", "gamma.yaml"]
    assert gitutil.git("diff", "--name-only", f"{commit}~1", commit, cwd=bare).stdout.split() == [
        ".gitopsd/status/alpha.yaml", ".gitopsd/status/beta.yaml"]
