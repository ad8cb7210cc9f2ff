"""gitsource: a Git remote read through a bare mirror, with real repositories on disk and the git CLI."""

from __future__ import annotations

import pathlib
import re

import pygit2
import pytest
import structlog

from gitopsd import errors
from gitopsd.adapters import gitlocation, gitmirror, gitsource, gitverify, keys, sshsig, statuswriter
from tests import clitext, gitutil

pytestmark = pytest.mark.usefixtures("quiet_logs")
quiet_logs = gitutil.quiet_logs
gpg_keys = gitutil.gpg_keys


def source(repo: str | pathlib.Path, state: pathlib.Path, *, branch: str | None = None, tag: str | None = None,
           verifier: gitverify.CommitVerifier | None = None) -> gitsource.GitSource:
    location = gitlocation.parse_location(str(repo))
    remote = gitmirror.GitRemote(location, state / "git" / "mirror.git", branch=branch, tag=tag)
    return gitsource.GitSource(remote, state / "trees", verifier=verifier)


# ---------------------------------------------------------------- REPO forms, branches, tags


@pytest.mark.parametrize("form", ["bare-path", "file-url"])
def test_bare_repository_path_and_file_url_read_the_remote_tip(tmp_path: pathlib.Path, form: str) -> None:
    bare, user = gitutil.make_remote(tmp_path, examples=True)
    repo = str(bare) if form == "bare-path" else f"file://{bare}"
    tree = source(repo, tmp_path / "state").fetch()
    assert tree.snapshot.revision == f"main@sha1:{user.head()}"
    assert tree.snapshot.commit == user.head()
    assert [name for name, _ in tree.listdir("packs")] == sorted(p.name for p in (gitutil.EXAMPLES / "packs").iterdir())
    assert tree.read("packs/web-frontend/packbuild.yaml") == (gitutil.EXAMPLES / "packs/web-frontend/packbuild.yaml").read_bytes()
    assert (tmp_path / "state/git/mirror.git/HEAD").is_file()  # the persistent clone cache, a bare mirror


def test_default_branch_is_the_remote_head_and_branch_flag_picks_another(tmp_path: pathlib.Path) -> None:
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"), branch="trunk")
    trunk = user.head()
    user.git("checkout", "-qb", "staging")
    staging = user.commit("staging only", gitutil.raw_pack("beta"))
    user.git("push", "-q", "origin", "staging")
    assert source(bare, tmp_path / "s1").fetch().snapshot.revision == f"trunk@sha1:{trunk}"
    tree = source(bare, tmp_path / "s2", branch="staging").fetch()
    assert tree.snapshot.revision == f"staging@sha1:{staging}"
    assert [name for name, _ in tree.listdir("packs")] == ["alpha", "beta"]


@pytest.mark.parametrize("annotated", [True, False], ids=["annotated-tag", "lightweight-tag"])
def test_tag_flag_reads_the_tagged_commit(tmp_path: pathlib.Path, annotated: bool) -> None:
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    tagged = user.head()
    user.git("tag", *(["-a", "-m", "release"] if annotated else []), "v1.0")
    user.git("push", "-q", "origin", "v1.0")
    user.commit("after the tag", gitutil.raw_pack("beta"))
    user.push()
    tree = source(bare, tmp_path / "state", tag="v1.0").fetch()
    assert tree.snapshot.revision == f"v1.0@sha1:{tagged}"
    assert [name for name, _ in tree.listdir("packs")] == ["alpha"]


@pytest.mark.parametrize(("flag", "kwargs", "reason"), [
    ("--branch nope", {"branch": "nope"}, "BranchNotFound"),
    ("--tag nope", {"tag": "nope"}, "TagNotFound"),
], ids=["branch", "tag"])
def test_missing_branch_or_tag_is_a_config_error_naming_the_flag(tmp_path: pathlib.Path, flag: str, kwargs: dict[str, str],
                                                                 reason: str) -> None:
    bare, _ = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    with pytest.raises(errors.ConfigError) as caught:
        source(bare, tmp_path / "state", **kwargs).fetch()
    assert caught.value.reason == reason
    assert clitext.shown(caught.value).startswith(flag)
    assert "main" in str(caught.value) or "none" in str(caught.value)


def test_unreachable_remote_is_transient_with_a_one_line_message(tmp_path: pathlib.Path) -> None:
    for repo in (f"file://{tmp_path}/missing.git", "https://127.0.0.1:9/config.git", "ssh://git@127.0.0.1:9/config.git"):
        with pytest.raises(errors.TransientError) as caught:
            source(repo, tmp_path / "state").fetch()
        assert caught.value.reason == "SourceUnavailable"
        assert "\n" not in str(caught.value) and "cannot" in str(caught.value), repr(str(caught.value))
        assert caught.value.transient


def test_a_url_with_credentials_is_refused_without_echoing_them() -> None:
    for url in ("https://alice:s3cret-token@git.example.com/config.git", "https://s3cret-token@git.example.com/c.git",
                "ssh://git:s3cret-token@git.example.com/config.git"):
        with pytest.raises(errors.ConfigError) as caught:
            gitlocation.parse_location(url)
        assert caught.value.reason == "CredentialsInURL"
        assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)
    with pytest.raises(errors.ConfigError) as caught:
        gitlocation.parse_location("https://u:p@h/r.git")
    assert "--git-credentials-file" in clitext.shown(caught.value) and "--" not in str(caught.value)
    assert gitlocation.parse_location("ssh://git@git.example.com/config.git").scheme == "ssh"
    assert gitlocation.parse_location("git@git.example.com:org/config.git").scheme == "ssh"


def test_credentials_come_from_a_file_or_an_environment_variable_and_never_show(tmp_path: pathlib.Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    https = gitlocation.parse_location("https://git.example.com/config.git")
    both = tmp_path / "both"
    both.write_text("robot:tok-123\n")
    token_only = tmp_path / "token"
    token_only.write_text("tok-456\n")
    assert gitlocation.load_auth(https, credentials_file=str(both)) == gitlocation.Auth(username="robot", token="tok-123")
    assert gitlocation.load_auth(https, credentials_file=str(token_only)) == gitlocation.Auth(
        username=gitlocation.TOKEN_USERNAME, token="tok-456")
    monkeypatch.setenv("CONFIG_REPO_TOKEN", "robot:tok-789")
    auth = gitlocation.load_auth(https, credentials_env="CONFIG_REPO_TOKEN")
    assert auth.token == "tok-789" and "tok-789" not in repr(auth) and "robot" not in repr(auth)
    with pytest.raises(errors.UsageError) as unset:
        gitlocation.load_auth(https, credentials_env="UNSET_VAR")
    assert unset.value.setting == "git_credentials_env"
    assert clitext.shown(unset.value) == "--git-credentials-env UNSET_VAR: the variable is unset or empty"
    with pytest.raises(errors.UsageError) as unreadable:
        gitlocation.load_auth(https, credentials_file=str(tmp_path / "missing"))
    assert re.match(r"--git-credentials-file .*: cannot read", clitext.shown(unreadable.value))
    with pytest.raises(errors.ConfigError, match="only over https"):
        gitlocation.load_auth(gitlocation.parse_location("http://git.example.com/c.git"), credentials_file=str(both))
    with pytest.raises(errors.UsageError, match="git ssh key is for ssh") as not_ssh:
        gitlocation.load_auth(https, ssh_key=str(both))
    assert clitext.shown(not_ssh.value).startswith("--git-ssh-key is for ssh")


# ---------------------------------------------------------------- following upstream


def test_force_pushed_upstream_is_followed_with_a_warning(tmp_path: pathlib.Path) -> None:
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    user.commit("beta", gitutil.raw_pack("beta"))
    user.push()
    src = source(bare, tmp_path / "state")
    assert [n for n, _ in src.fetch().listdir("packs")] == ["alpha", "beta"]
    user.git("reset", "-q", "--hard", "HEAD~1")
    rewritten = user.commit("gamma instead", gitutil.raw_pack("gamma"))
    user.push("--force")
    with structlog.testing.capture_logs() as logs:
        tree = src.fetch()
    assert tree.snapshot.revision == f"main@sha1:{rewritten}"
    assert [n for n, _ in tree.listdir("packs")] == ["alpha", "gamma"]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["upstream history rewritten"]


CORRUPTIONS = gitutil.MIRROR_CORRUPTIONS


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_clone_cache_is_deleted_and_cloned_again(tmp_path: pathlib.Path, corrupt) -> None:  # type: ignore[no-untyped-def]
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    state = tmp_path / "state"
    source(bare, state).fetch()
    corrupt(state / "git/mirror.git")
    user.commit("beta", gitutil.raw_pack("beta"))
    user.push()
    with structlog.testing.capture_logs() as logs:
        tree = source(bare, state).fetch()  # a new process: nothing remembered but the cache on disk
    assert tree.snapshot.revision == f"main@sha1:{user.head()}"
    assert tree.read("packs/beta/manifests/cm.yaml") == gitutil.configmap("beta").encode()
    assert any(e["event"] == "git cache corrupt, rebuilding" for e in logs)
    assert gitutil.git("fsck", "--no-dangling", cwd=state / "git/mirror.git").returncode == 0


# ---------------------------------------------------------------- head(): cheap polls, own commits are not news


def status_writer(src: gitsource.GitSource, tmp_path: pathlib.Path) -> statuswriter.GitStatusWriter:
    return statuswriter.GitStatusWriter(src.remote, keys.load_private_key(keys.generate(tmp_path / "k").private_path),
                                        backoff=0.001)


STATUS = """apiVersion: gitopsd.dev/v1alpha1
kind: PackStatus
basePackName: alpha
sourceRevision: {rev}
clusterPacks: []
instances: []
"""


def test_head_names_the_revision_fetch_reads_and_ignores_status_only_commits(tmp_path: pathlib.Path) -> None:
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    src = source(bare, tmp_path / "state")
    first = src.fetch().snapshot.revision
    assert src.head() == first
    status_commit = status_writer(src, tmp_path).write([(".gitopsd/status/alpha.yaml", STATUS.format(rev=first).encode())], "status\n")
    assert status_commit is not None and gitutil.rev(bare, "main") == status_commit
    assert src.head() == first  # our own status commit is not a new revision
    assert src.fetch().snapshot.revision == first and src.tip == status_commit
    # a user's commit that only touches .gitopsd/ is not news either, once fetched
    user.pull()
    user.commit("note", {".gitopsd/NOTES.md": "hands off\n"})
    user.push()
    unknown = src.head()
    assert unknown == f"main@sha1:{user.head()}"  # not fetched yet: reported as itself, so a daemon fetches once
    assert src.fetch().snapshot.revision == first
    assert src.head() == first
    assert not src.changed_since(first.split(":")[1], user.head())
    # a user's commit that changes desired state is news
    changed = user.commit("beta", gitutil.raw_pack("beta"))
    user.push()
    assert src.head() == f"main@sha1:{changed}"
    assert src.fetch().snapshot.revision == f"main@sha1:{changed}"
    assert src.changed_since(first.split(":")[1], changed)


# ---------------------------------------------------------------- commit verification (fail closed)


def test_ssh_commit_verification_refuses_unsigned_and_untrusted_commits_and_accepts_trusted(tmp_path: pathlib.Path) -> None:
    trusted = gitutil.ssh_key(tmp_path / "keys", "trusted")
    stranger = gitutil.ssh_key(tmp_path / "keys", "stranger")
    signers = gitutil.allowed_signers(tmp_path / "allowed_signers", trusted.with_suffix(".pub"))
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    src = source(bare, tmp_path / "state", verifier=gitverify.SshCommitVerifier(signers))
    unsigned = user.head()
    with pytest.raises(errors.StalledError) as caught:
        src.fetch()
    assert caught.value.reason == "CommitVerificationFailed"
    assert unsigned in str(caught.value) and "it is not signed" in str(caught.value)

    by_stranger = user.commit("stranger", gitutil.raw_pack("beta"), sign=gitutil.ssh_sign_args(stranger))
    user.push()
    with pytest.raises(errors.StalledError) as caught:
        src.fetch()
    stranger_id = keys.load_private_key(stranger).public_key().key_id()
    assert by_stranger in str(caught.value) and f"signed by {stranger_id}, which is not in {signers}" in str(caught.value)

    good = user.commit("trusted", gitutil.raw_pack("gamma"), sign=gitutil.ssh_sign_args(trusted))
    user.push()
    assert gitutil.verify_commit(bare, good, signers).returncode == 0  # git agrees
    tree = src.fetch()
    assert tree.snapshot.revision == f"main@sha1:{good}"
    assert [n for n, _ in tree.listdir("packs")] == ["alpha", "beta", "gamma"]


def test_gitopsd_status_commits_need_not_be_in_the_allowed_signers(tmp_path: pathlib.Path) -> None:
    trusted = gitutil.ssh_key(tmp_path / "keys", "trusted")
    signers = gitutil.allowed_signers(tmp_path / "allowed_signers", trusted.with_suffix(".pub"))
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    good = user.commit("trusted", gitutil.raw_pack("beta"), sign=gitutil.ssh_sign_args(trusted))
    user.push()
    src = source(bare, tmp_path / "state", verifier=gitverify.SshCommitVerifier(signers))
    rev = src.fetch().snapshot.revision
    writer = status_writer(src, tmp_path)
    src.status_keys = {writer.key.public_key().raw: writer.key.public_key()}  # gitopsd's own key signs status
    writer.write([(".gitopsd/status/alpha.yaml", STATUS.format(rev=rev).encode())], "status\n")
    assert src.fetch().snapshot.revision == f"main@sha1:{good}"  # status commits: gitopsd's key, not allowed_signers


def test_gpg_commit_verification_with_a_real_gpg_key(tmp_path: pathlib.Path, gpg_keys) -> None:  # type: ignore[no-untyped-def]
    trusted = gpg_keys(tmp_path / "gpg-trusted", "Trusted Dev <dev@example.com>")
    stranger = gpg_keys(tmp_path / "gpg-stranger", "Stranger <x@example.com>")
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    for armor in (False, True):
        keyring = trusted.export(tmp_path / f"trusted-{armor}.gpg", armor=armor)
        src = source(bare, tmp_path / f"state-{armor}", verifier=gitverify.GpgCommitVerifier(keyring))
        user.env = stranger.env
        by_stranger = user.commit(f"stranger {armor}", gitutil.raw_pack(f"beta-{armor}"), sign=stranger.sign_args())
        user.push()
        with pytest.raises(errors.StalledError) as caught:
            src.fetch()
        assert caught.value.reason == "CommitVerificationFailed"
        assert by_stranger in str(caught.value) and f"GPG key {stranger.fingerprint[-16:]}" in str(caught.value)
        user.env = trusted.env
        good = user.commit(f"trusted {armor}", gitutil.raw_pack(f"gamma-{armor}"), sign=trusted.sign_args())
        user.push()
        assert src.fetch().snapshot.revision == f"main@sha1:{good}"
        user.env = {}
        user.commit(f"unsigned {armor}", gitutil.raw_pack(f"delta-{armor}"))
        user.push()
        with pytest.raises(errors.StalledError, match="it is not signed"):
            src.fetch()


def test_an_ssh_signed_commit_does_not_pass_gpg_only_verification(tmp_path: pathlib.Path, gpg_keys) -> None:  # type: ignore[no-untyped-def]
    trusted = gpg_keys(tmp_path / "gpg", "Trusted Dev <dev@example.com>")
    ssh = gitutil.ssh_key(tmp_path / "keys")
    bare, user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    user.commit("ssh signed", gitutil.raw_pack("beta"), sign=gitutil.ssh_sign_args(ssh))
    user.push()
    verifier = gitverify.AnyOfVerifier([gitverify.GpgCommitVerifier(trusted.export(tmp_path / "k.gpg"))])
    with pytest.raises(errors.StalledError, match="SSH signature, not a GPG signature"):
        source(bare, tmp_path / "state", verifier=verifier).fetch()


def test_a_signature_from_our_sshsig_module_is_accepted_by_the_verifier(tmp_path: pathlib.Path) -> None:
    key = keys.load_private_key(keys.generate(tmp_path / "k").private_path)
    bare, _user = gitutil.make_remote(tmp_path, gitutil.config_repo("alpha"))
    repo = pygit2.Repository(str(bare))
    tip = repo.references["refs/heads/main"].peel(pygit2.Commit)
    who = pygit2.Signature("dev", "dev@example.com", 1700000000, 0)
    builder = repo.TreeBuilder(tip.tree)
    builder.insert("README.md", repo.create_blob(b"config\n"), pygit2.enums.FileMode.BLOB)
    text = repo.create_commit_string(who, who, "signed in-process\n", builder.write(), [tip.id])
    commit = repo.odb.write(pygit2.enums.ObjectType.COMMIT, sshsig.sign_commit_buffer(key, text.encode()))
    repo.references["refs/heads/main"].set_target(commit)
    signers = gitutil.allowed_signers(tmp_path / "signers", key.public_key().openssh())
    src = source(bare, tmp_path / "state", verifier=gitverify.SshCommitVerifier(signers))
    assert src.fetch().snapshot.commit == str(commit)


def test_ssh_credentials_answer_with_the_key_file_or_the_agent_and_only_once(tmp_path: pathlib.Path) -> None:
    # No SSH server runs in the tests; this is the callback libgit2 calls when one asks who we are.
    key = gitutil.ssh_key(tmp_path / "keys", "deploy")
    ssh = gitlocation.parse_location("ssh://git@git.example.com/org/config.git")
    callbacks = gitlocation.Callbacks(gitlocation.load_auth(ssh, ssh_key=str(key)))
    kinds = pygit2.enums.CredentialType
    answer = callbacks.credentials("ssh://git@git.example.com/org/config.git", "git", kinds.SSH_KEY | kinds.USERNAME)
    assert isinstance(answer, pygit2.Keypair)
    assert answer.credential_tuple == ("git", str(key) + ".pub", str(key), "")
    with pytest.raises(gitlocation.AuthRejected):  # refused once: do not loop asking again
        callbacks.credentials("ssh://git@git.example.com/org/config.git", "git", kinds.SSH_KEY)
    agent = gitlocation.Callbacks(gitlocation.load_auth(ssh)).credentials("ssh://h/r", None, kinds.SSH_KEY)
    assert isinstance(agent, pygit2.KeypairFromAgent) and agent.credential_tuple[0] == "git"
    with pytest.raises(errors.UsageError, match=r"git ssh key .*: no such file") as missing:
        gitlocation.load_auth(ssh, ssh_key=str(tmp_path / "missing"))
    assert missing.value.setting == "git_ssh_key" and clitext.shown(missing.value).startswith("--git-ssh-key ")
