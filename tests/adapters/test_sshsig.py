"""sshsig: our SSH signatures against the real ssh-keygen and git, no mocks.

Ed25519 is deterministic, so besides "ssh-keygen accepts it" we can assert byte equality with what
ssh-keygen -Y sign and git commit -S write for the same key and data.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections import abc

import pygit2
import pytest
from cryptography.hazmat.primitives import serialization

from gitopsd.adapters import keys, sshsig
from tests import gitutil

DATA = b"status: applied\nrevision: main@sha1:0123\n"
PRINCIPAL = "gitopsd@localhost"


def run(
    *args: str | pathlib.Path,
    stdin: bytes | None = None,
    cwd: pathlib.Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in args], input=stdin, cwd=cwd, env=env, capture_output=True, check=check)


openssh_key = gitutil.ssh_key
pkcs8_key = gitutil.pkcs8_key


KeyMaker = abc.Callable[[pathlib.Path], pathlib.Path]
KEY_MAKERS: list[KeyMaker] = [openssh_key, pkcs8_key]
KEY_IDS = ["openssh-key", "pkcs8-key"]


def allowed_signers(directory: pathlib.Path, key: keys.SigningKey, principal: str = PRINCIPAL) -> pathlib.Path:
    path = directory / "allowed_signers"
    path.write_text(f'{principal} namespaces="git" {key.public_key().openssh()}\n')
    return path


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- SSHSIG against ssh-keygen


def test_signature_is_byte_identical_to_ssh_keygen_sign(tmp_path: pathlib.Path) -> None:
    key_path = openssh_key(tmp_path)
    (tmp_path / "data").write_bytes(DATA)
    for namespace in ["git", "file"]:
        run("ssh-keygen", "-q", "-Y", "sign", "-f", key_path, "-n", namespace, tmp_path / "data")
        expected = (tmp_path / "data.sig").read_text()
        (tmp_path / "data.sig").unlink()
        assert sshsig.sign(keys.load_private_key(key_path), DATA, namespace=namespace) == expected


@pytest.mark.parametrize("make_key", KEY_MAKERS, ids=KEY_IDS)
@pytest.mark.parametrize("hash_alg", ["sha512", "sha256"])
def test_ssh_keygen_verify_accepts_our_signature(tmp_path: pathlib.Path, make_key: KeyMaker, hash_alg: str) -> None:
    key = keys.load_private_key(make_key(tmp_path))
    signature = write(tmp_path / "sig", sshsig.sign(key, DATA, namespace="git", hash_alg=hash_alg))
    signers = allowed_signers(tmp_path, key)
    verified = run(
        "ssh-keygen", "-Y", "verify", "-f", signers, "-I", PRINCIPAL, "-n", "git", "-s", signature, stdin=DATA
    )
    assert f'Good "git" signature for {PRINCIPAL} with ED25519 key {key.public_key().key_id()}' in (
        verified.stdout.decode()
    )
    checked = run("ssh-keygen", "-Y", "check-novalidate", "-n", "git", "-s", signature, stdin=DATA)
    assert b'Good "git" signature with ED25519 key' in checked.stdout
    found = run("ssh-keygen", "-Y", "find-principals", "-f", signers, "-s", signature)
    assert found.stdout.decode().strip() == PRINCIPAL


def test_ssh_keygen_verify_rejects_our_signature_for_other_data_or_namespace(tmp_path: pathlib.Path) -> None:
    key = keys.load_private_key(openssh_key(tmp_path))
    signature = write(tmp_path / "sig", sshsig.sign(key, DATA))
    signers = allowed_signers(tmp_path, key)
    base: list[str | pathlib.Path] = ["ssh-keygen", "-Y", "verify", "-f", signers, "-I", PRINCIPAL, "-s", signature]
    assert run(*base, "-n", "git", stdin=DATA + b"x", check=False).returncode != 0
    assert run(*base, "-n", "file", stdin=DATA, check=False).returncode != 0


def test_ssh_keygen_signature_verifies_with_our_verify(tmp_path: pathlib.Path) -> None:
    key_path = openssh_key(tmp_path)
    (tmp_path / "data").write_bytes(DATA)
    run("ssh-keygen", "-q", "-Y", "sign", "-f", key_path, "-n", "git", "-O", "hashalg=sha256", tmp_path / "data")
    armored = (tmp_path / "data.sig").read_text()
    expected = keys.load_private_key(key_path).public_key()
    assert sshsig.verify(armored, DATA, "git") == expected
    assert sshsig.verify(armored, DATA + b"x", "git") is None
    assert sshsig.verify(armored, DATA, "file") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text.replace("-----BEGIN SSH SIGNATURE-----", "-----BEGIN PGP SIGNATURE-----"),
        lambda text: text.replace(text.splitlines()[2], text.splitlines()[2][::-1]),
        lambda text: text.replace(text.splitlines()[1], text.splitlines()[1][:-3]),
        lambda text: "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n",
        lambda text: "",
    ],
    ids=["pgp-armor", "scrambled-line", "truncated-base64", "truncated-blob", "empty"],
)
def test_verify_gives_none_for_damaged_signatures(tmp_path: pathlib.Path, damage: abc.Callable[[str], str]) -> None:
    key = keys.load_private_key(openssh_key(tmp_path))
    armored = sshsig.sign(key, DATA)
    assert sshsig.verify(armored, DATA, "git") == key.public_key()
    assert sshsig.verify(damage(armored), DATA, "git") is None


def test_armor_is_wrapped_at_70_columns_like_ssh_keygen(tmp_path: pathlib.Path) -> None:
    key = keys.load_private_key(pkcs8_key(tmp_path))
    lines = sshsig.sign(key, DATA).splitlines()
    assert lines[0] == "-----BEGIN SSH SIGNATURE-----"
    assert lines[-1] == "-----END SSH SIGNATURE-----"
    assert [len(line) for line in lines[1:-1]] == [70, 70, 70, 22]  # 173-byte blob, 232 base64 chars


# ---------------------------------------------------------------- the gpgsig header

HEADER = (
    b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n"
    b"parent 1111111111111111111111111111111111111111\n"
    b"author A U Thor <a@example.com> 1700000000 +0000\n"
    b"committer gitopsd <gitopsd@localhost> 1700000000 +0000\n"
)


@pytest.mark.parametrize(
    ("buffer", "before", "after"),
    [
        (HEADER + b"\nstatus: 2 packs\n", HEADER, b"\nstatus: 2 packs\n"),
        (HEADER + b"encoding ISO-8859-1\n\nmsg\n", HEADER + b"encoding ISO-8859-1\n", b"\nmsg\n"),
        (HEADER + b"\nsubject\n\nbody\n\n", HEADER, b"\nsubject\n\nbody\n\n"),
    ],
    ids=["after-committer", "after-encoding-header", "blank-lines-in-message-untouched"],
)
def test_gpgsig_header_goes_at_the_end_of_the_header_with_continuation_spaces(
    tmp_path: pathlib.Path, buffer: bytes, before: bytes, after: bytes
) -> None:
    key = keys.load_private_key(openssh_key(tmp_path))
    armored = sshsig.sign(key, buffer).encode()
    signed = sshsig.sign_commit_buffer(key, buffer)
    lines = armored.rstrip(b"\n").split(b"\n")
    header = b"gpgsig " + lines[0] + b"\n" + b"".join(b" " + line + b"\n" for line in lines[1:])
    assert signed == before + header + after


@pytest.mark.parametrize(
    "buffer",
    [b"not a commit\n", b"tree abc\nauthor x\n\nmsg\n", HEADER + b"gpgsig -----BEGIN SSH SIGNATURE-----\n\nmsg\n"],
    ids=["not-a-commit", "no-committer", "already-signed"],
)
def test_sign_commit_buffer_refuses_what_is_not_an_unsigned_commit(tmp_path: pathlib.Path, buffer: bytes) -> None:
    key = keys.load_private_key(openssh_key(tmp_path))
    with pytest.raises(ValueError, match="sshsig: "):
        sshsig.sign_commit_buffer(key, buffer)


# ---------------------------------------------------------------- end to end with git


def git_env(home: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(home),
        GIT_CONFIG_GLOBAL=str(home / "gitconfig"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="A U Thor",
        GIT_AUTHOR_EMAIL="author@example.com",
        GIT_AUTHOR_DATE="1700000000 +0000",
        GIT_COMMITTER_NAME="gitopsd",
        GIT_COMMITTER_EMAIL=PRINCIPAL,
        GIT_COMMITTER_DATE="1700000000 +0000",
    )
    (home / "gitconfig").write_text("")
    return env


def make_repo(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, str]]:
    home = tmp_path / "home"
    home.mkdir()
    env = git_env(home)
    repo = tmp_path / "repo"
    run("git", "init", "-q", "-b", "main", repo, env=env)
    (repo / "README").write_text("config repo\n")
    run("git", "add", "README", cwd=repo, env=env)
    run("git", "commit", "-q", "-m", "initial", cwd=repo, env=env)
    return repo, env


def status_commit_buffer(repo: pygit2.Repository) -> bytes:
    """An unsigned status commit on top of main, built with pygit2 like the status writer does."""
    parent = repo.head.target
    builder = repo.TreeBuilder(repo[parent].tree)
    builder.insert("status.yaml", repo.create_blob(b"packs: 2\n"), pygit2.enums.FileMode.BLOB)
    signature = pygit2.Signature("gitopsd", PRINCIPAL, 1700000100, 0)
    content = str(repo.create_commit_string(signature, signature, "status: 2 packs\n", builder.write(), [parent]))
    return content.encode("utf-8")


def verify_commit(
    repo: pathlib.Path, env: dict[str, str], signers: pathlib.Path, sha: str
) -> subprocess.CompletedProcess[bytes]:
    return run(
        "git", "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", sha, cwd=repo, env=env, check=False
    )


@pytest.mark.parametrize("make_key", KEY_MAKERS, ids=KEY_IDS)
def test_status_commit_signed_with_pygit2_passes_git_verify_commit(tmp_path: pathlib.Path, make_key: KeyMaker) -> None:
    repo_path, env = make_repo(tmp_path)
    key = keys.load_private_key(make_key(tmp_path))
    repo = pygit2.Repository(str(repo_path))
    unsigned = status_commit_buffer(repo)

    signed = sshsig.sign_commit_buffer(key, unsigned)
    oid = repo.odb.write(pygit2.enums.ObjectType.COMMIT, signed)
    # libgit2 puts the header in the same place; it wants the armor without its final newline.
    armored = sshsig.sign(key, unsigned).rstrip("\n")
    assert repo.create_commit_with_signature(unsigned.decode("utf-8"), armored) == oid
    repo.references.create("refs/heads/status", oid)

    sha = str(oid)
    assert run("git", "cat-file", "commit", "status", cwd=repo_path, env=env).stdout == signed
    assert run("git", "fsck", "--strict", "--no-dangling", cwd=repo_path, env=env).returncode == 0
    good = verify_commit(repo_path, env, allowed_signers(tmp_path, key), sha)
    assert good.returncode == 0, good.stderr
    assert f'Good "git" signature for {PRINCIPAL} with ED25519 key {key.public_key().key_id()}' in good.stderr.decode()
    shown = run("git", "-c", f"gpg.ssh.allowedSignersFile={tmp_path / 'allowed_signers'}", "log", "-1",
                "--format=%G?", "status", cwd=repo_path, env=env)  # fmt: skip
    assert shown.stdout == b"G\n"

    stranger = keys.load_private_key(openssh_key(tmp_path, "stranger"))
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    bad = verify_commit(repo_path, env, allowed_signers(other_dir, stranger), sha)
    assert bad.returncode != 0
    assert b"No principal matched." in bad.stderr
    assert f'Good "git" signature for {PRINCIPAL}'.encode() not in bad.stderr


def test_signed_commit_is_byte_identical_to_git_commit_dash_s(tmp_path: pathlib.Path) -> None:
    repo_path, env = make_repo(tmp_path)
    key_path = openssh_key(tmp_path)
    run("git", "-c", "gpg.format=ssh", "-c", f"user.signingkey={key_path}", "commit", "-q", "-S",
        "--allow-empty", "-m", "signed by git", cwd=repo_path, env=env)  # fmt: skip
    by_git = run("git", "cat-file", "commit", "HEAD", cwd=repo_path, env=env).stdout
    assert b"\ngpgsig -----BEGIN SSH SIGNATURE-----\n" in by_git
    unsigned = _strip_gpgsig(by_git)
    assert sshsig.sign_commit_buffer(keys.load_private_key(key_path), unsigned) == by_git


def test_commit_signed_with_pkcs8_key_equals_the_same_key_in_openssh_form(tmp_path: pathlib.Path) -> None:
    pem_path = pkcs8_key(tmp_path)
    private = serialization.load_pem_private_key(pem_path.read_bytes(), password=None)
    ssh_path = tmp_path / "same_openssh"
    ssh_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    ssh_path.chmod(0o600)
    repo_path, env = make_repo(tmp_path)
    run("git", "-c", "gpg.format=ssh", "-c", f"user.signingkey={ssh_path}", "commit", "-q", "-S",
        "--allow-empty", "-m", "signed by git", cwd=repo_path, env=env)  # fmt: skip
    by_git = run("git", "cat-file", "commit", "HEAD", cwd=repo_path, env=env).stdout
    assert sshsig.sign_commit_buffer(keys.load_private_key(pem_path), _strip_gpgsig(by_git)) == by_git


def _strip_gpgsig(commit: bytes) -> bytes:
    kept, in_signature = [], False
    for line in commit.split(b"\n"):
        if line.startswith(b"gpgsig "):
            in_signature = True
            continue
        if in_signature and line.startswith(b" "):
            continue
        in_signature = False
        kept.append(line)
    return b"\n".join(kept)
