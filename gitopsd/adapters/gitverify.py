"""Commit verification: is a commit signed by a key we trust, and who wrote a status record.

Why this exists: verification (off by default) checks the desired commit's signature: SSH
signatures against an ``allowed_signers`` file (:class:`SshCommitVerifier`), or GPG signatures
against a keyring (:class:`GpgCommitVerifier`); a failure stops the pass before anything is read
(fail closed). Status records are gitopsd's word only: :func:`status_signer_problem` accepts a
commit signed by gitopsd's own key, and :func:`record_writers` finds the commit that wrote each
record's current bytes.

Neighbours: ``adapters.gitsource`` (verifies each fetched revision), ``adapters.sshsig`` and
``adapters.keys`` (signatures and key files), ``wiring`` (builds the verifiers from settings).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from typing import Protocol, cast

import pygit2

from gitopsd import errors
from gitopsd.adapters import keys, sshsig

_MAX_RECORD_WALK = 200_000  # commits walked to find who wrote each status record (one tree lookup each)


# ---------------------------------------------------------------- commit verification


class CommitVerifier(Protocol):
    def problem(self, repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        """Why ``commit`` is not acceptable, or ``None`` when its signature is trusted."""
        ...


def _signature(commit: pygit2.Commit) -> tuple[bytes | None, bytes | None]:
    signature, payload = commit.gpg_signature
    return signature, payload


def _ssh_signer(commit: pygit2.Commit, *, not_ssh: str) -> keys.PublicKey | str:
    """The key whose valid SSH signature ``commit`` carries, or why there is none (``not_ssh``: what
    to say of a signature of another kind)."""
    signature, payload = _signature(commit)
    if signature is None or payload is None:
        return "it is not signed"
    if not signature.lstrip().startswith(b"-----BEGIN SSH SIGNATURE-----"):
        return not_ssh
    signer = sshsig.verify(signature.decode("ascii", "replace"), payload, "git")
    return signer if signer is not None else "its SSH signature is invalid (the commit or the signature was altered)"


def status_signer_problem(commit: pygit2.Commit, status_keys: Mapping[bytes, keys.PublicKey]) -> str | None:
    """Why ``commit`` is not gitopsd's own (signed by one of ``status_keys``, by raw key), or ``None``."""
    signer = _ssh_signer(commit, not_ssh="it is not signed with gitopsd's SSH key")
    if isinstance(signer, str):
        return signer
    return None if signer.raw in status_keys else f"it is signed by {signer.key_id()}, not by gitopsd's key"


def _entry_id(tree: pygit2.Tree, path: str) -> pygit2.Oid | None:
    try:
        return tree[path].id
    except KeyError:
        return None


def record_writers(repo: pygit2.Repository, tip: pygit2.Commit, folder: str) -> dict[str, pygit2.Commit]:
    """For each file under ``folder`` at ``tip``: the commit that wrote its current content, i.e. the
    newest first-parent ancestor-or-self whose parent holds other bytes there (or no such file).

    A status record is gitopsd's word only when that commit is signed by gitopsd's key: a commit
    that changes config and records together, signed by a key trusted for config, does not make
    the records true. The walk skips commits that leave ``folder`` as it was."""
    top = _entry_id(tip.tree, folder)
    if top is None:
        return {}
    pending = {f"{folder}/{e.name}": e.id for e in cast(pygit2.Tree, repo[top]) if e.name is not None}
    found: dict[str, pygit2.Commit] = {}
    commit = tip
    for _ in range(_MAX_RECORD_WALK):
        if not pending:
            break
        parent = cast("pygit2.Commit | None", repo.get(commit.parent_ids[0])) if commit.parent_ids else None
        if parent is not None and _entry_id(parent.tree, folder) == _entry_id(commit.tree, folder):
            commit = parent
            continue
        for path, blob in list(pending.items()):
            if parent is None or _entry_id(parent.tree, path) != blob:
                found[path] = commit
                del pending[path]
        if parent is None:
            break
        commit = parent
    return found


class SshCommitVerifier:
    """SSH signatures (``gpg.format=ssh``) by a key listed in an ``allowed_signers`` file."""

    kind = "ssh"

    def __init__(self, allowed_signers: str | os.PathLike[str]) -> None:
        self.path = pathlib.Path(allowed_signers)
        self.trusted = {key.raw: key for key in keys.load_public_keys(self.path)}

    def problem(self, repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        signer = _ssh_signer(commit, not_ssh="it has a GPG signature, not an SSH signature")
        if isinstance(signer, str):
            return signer
        return None if signer.raw in self.trusted else f"it is signed by {signer.key_id()}, which is not in {self.path}"


class GpgCommitVerifier:
    """GPG signatures by a key of a keyring file, checked with ``gpg --verify`` in a throw-away home."""

    kind = "gpg"

    def __init__(self, keyring: str | os.PathLike[str], gpg: str = "gpg") -> None:
        self.path = pathlib.Path(keyring).resolve()
        if not self.path.is_file():
            raise errors.UsageError(f"{errors.setting('verify_commits_gpg')} {keyring}: no such keyring file",
                                    setting="verify_commits_gpg", reason=errors.UsageReason.KEYRING_NOT_FOUND)
        self.gpg = shutil.which(gpg)
        if self.gpg is None:
            raise errors.UsageError(f"{errors.setting('verify_commits_gpg')} needs the gpg program; install gnupg",
                                    setting="verify_commits_gpg", reason=errors.UsageReason.TOOL_MISSING)
        self.armored = self.path.read_bytes()[:64].lstrip().startswith(b"-----BEGIN PGP")

    def problem(self, repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        signature, payload = _signature(commit)
        if signature is None or payload is None:
            return "it is not signed"
        if not signature.lstrip().startswith(b"-----BEGIN PGP SIGNATURE-----"):
            return "it has an SSH signature, not a GPG signature"
        status = self._verify(signature, payload)
        words = {line.split()[1]: line for line in status.splitlines() if line.startswith("[GNUPG:] ") and len(line.split()) > 1}
        if "GOODSIG" in words and "VALIDSIG" in words:
            if any(bad in words for bad in ("EXPKEYSIG", "REVKEYSIG", "EXPSIG")):
                return "it is signed by an expired or revoked GPG key"
            return None
        if "BADSIG" in words:
            return "its GPG signature is invalid (the commit or the signature was altered)"
        if "NO_PUBKEY" in words or "ERRSIG" in words:
            key_id = (words.get("NO_PUBKEY") or words.get("ERRSIG", "")).split()[2:3]
            return f"it is signed by GPG key {key_id[0] if key_id else '?'}, which is not in {self.path}"
        return "gpg could not verify its signature"

    def _verify(self, signature: bytes, payload: bytes) -> str:
        with tempfile.TemporaryDirectory(prefix="gitopsd-gpg-") as home:
            os.chmod(home, 0o700)
            base = [str(self.gpg), "--homedir", home, "--batch", "--no-tty", "--no-autostart", "--trust-model", "always"]
            if self.armored:
                subprocess.run([*base, "--import", str(self.path)], capture_output=True, check=False)
                keyring: list[str] = []
            else:
                keyring = ["--no-default-keyring", "--keyring", str(self.path)]
            sig_file = pathlib.Path(home) / "commit.sig"
            sig_file.write_bytes(signature)
            done = subprocess.run([*base, *keyring, "--status-fd", "1", "--verify", str(sig_file), "-"],
                                  input=payload, capture_output=True, check=False)
            return done.stdout.decode("utf-8", "replace")


class AnyOfVerifier:
    """Accepts a commit that one of several verifiers accepts (``--verify-commits`` and ``--verify-commits-gpg``)."""

    def __init__(self, verifiers: Iterable[CommitVerifier]) -> None:
        self.verifiers = tuple(verifiers)

    def problem(self, repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        problems = []
        for verifier in self.verifiers:
            problem = verifier.problem(repo, commit)
            if problem is None:
                return None
            problems.append(problem)
        return "; ".join(dict.fromkeys(problems))
