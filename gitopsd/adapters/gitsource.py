"""A Git remote as the config repo: a bare mirror in the state dir, fetched each pass, read as tree objects.

Why this exists: users push to a Git server; gitopsd reads that repo at one revision without a
checkout, tells cheaply whether anything new arrived (``head()``), and pushes its status commits
back. The transport is pygit2 (libgit2): local bare repositories and ``file://``, ``ssh://``,
``https://`` (and ``http://``, ``git://``) URLs.

- :class:`GitRemote` owns the transport and the persistent clone cache: a bare mirror under
  ``<state-dir>/git/<name>.git``, fetched with a forced refspec (a force-pushed upstream is logged as
  "upstream history rewritten" and followed), deleted and cloned again when it is corrupt. It also
  pushes (see :meth:`GitRemote.publish`): never forced; a moved branch is a rejection the caller
  retries on top of the new tip.
- :class:`GitSource` is the ``ports.Source`` and ``ports.Pollable`` the reconcile pass sees.
  Commits that only change ``.gitopsd/`` (gitopsd's own status commits) are not desired state: the
  tree of a tip is read at its *desired commit*, the newest first-parent ancestor-or-self that
  changed something outside ``.gitopsd/``, and both ``fetch()`` and ``head()`` report that commit's
  revision (``main@sha1:<hex>``). So a daemon comparing ``head()`` with the revision of its last pass
  skips its own status commits; :meth:`GitSource.changed_since` answers the same question for two
  commits.
- Commit verification (off by default) checks the desired commit's signature: SSH signatures against
  an ``allowed_signers`` file, or GPG signatures against a keyring; a failure stops the pass before
  anything is read (fail closed), so the last good revision stays applied.

Credentials come from a file or an environment variable, never from the command line or the URL,
and never reach a log line or an error message.

Neighbours: ``adapters.gittree`` (a commit as a ``ports.Tree``), ``adapters.statuswriter`` (status
commits, pushed through :meth:`GitRemote.publish`), ``adapters.sshsig`` and ``adapters.keys``
(signature checks), ``wiring`` (builds these from flags).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Protocol, cast

import pygit2
import structlog

from gitopsd import errors
from gitopsd.adapters import gittree, keys, sshsig

log = structlog.get_logger()

STATUS_ROOT = ".gitopsd"  # written by gitopsd only; never desired state
TOKEN_USERNAME = "x-access-token"  # user name sent with a bare token (GitHub, Gitea and GitLab accept it)
_NETWORK_SCHEMES = ("ssh", "https", "http", "git")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/\\].*|/.*)$")
_ZERO = "0" * 40
_MAX_DESIRED_WALK = 10_000
_MAX_RECORD_WALK = 200_000  # commits walked to find who wrote each status record (one tree lookup each)

# libgit2 messages that mean "the server said no to this ref update": a retry on top of the new tip can succeed.
_REJECTED = ("non-fastforward", "non-fast-forward", "not present locally", "fetch first", "rejected",
             "failed to update ref", "stale info", "old reference value does not match", "failed to lock",
             "locked file")
# libgit2 messages of network and server trouble: never a reason to throw the local cache away.
_NETWORK = ("resolve", "connect", "timed out", "timeout", "network", "unreachable", "refused", "ssl", "tls",
            "certificate", "authentication", "auth", "401", "403", "404", "could not find repository",
            "unexpected http status", "no such host", "eof")


def configure_timeouts(connect_ms: int = 15_000, server_ms: int = 60_000) -> None:
    """Bound how long libgit2 waits for a server, so a hung remote becomes a transient error."""
    pygit2.settings.server_connect_timeout = connect_ms
    pygit2.settings.server_timeout = server_ms


# ---------------------------------------------------------------- where the repo is


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """A config repo reachable through Git: what libgit2 is given, and what people are shown."""

    url: str  # for libgit2: a URL, or an absolute path for a local bare repository
    scheme: str  # "local", "file", "ssh", "https", "http" or "git"
    local_path: pathlib.Path | None = None  # the repository folder for "local" and "file"

    @property
    def display(self) -> str:
        return self.url

    @property
    def is_local(self) -> bool:
        return self.local_path is not None


def is_url(repo: str) -> bool:
    """True for ``scheme://...`` and scp-like ``user@host:path`` (when no such local path exists)."""
    if "://" in repo:
        return True
    return bool(_SCP_LIKE.match(repo)) and not pathlib.Path(repo).exists()


def is_bare_repository(path: pathlib.Path) -> bool:
    try:
        repo = pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError:
        return False
    return repo.is_bare


def _strip_userinfo(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def parse_location(repo: str) -> Location:
    """Where a REPO argument points. A URL holding a password or token is refused (it would end up in
    logs, shell history and process listings): credentials go in a file or an environment variable."""
    if "://" in repo:
        parts = urllib.parse.urlsplit(repo)
        scheme = parts.scheme.lower()
        if scheme == "file":
            path = pathlib.Path(urllib.parse.unquote(parts.path)).resolve()
            return Location(url=f"file://{path}", scheme="file", local_path=path)
        if scheme not in _NETWORK_SCHEMES:
            raise errors.UsageError(
                f"{errors.setting('repo')} {_strip_userinfo(parts)}: unsupported scheme {scheme!r}; use a folder, a bare "
                "repository path, or a file://, ssh:// or https:// URL",
                setting="repo", reason=errors.UsageReason.UNSUPPORTED_URL,
            )
        if parts.password is not None or (parts.username and scheme in ("https", "http")):
            raise errors.UsageError(
                f"{errors.setting('repo')} {_strip_userinfo(parts)}: the URL holds credentials; remove them from the URL "
                f"and pass {errors.setting('git_credentials_file')} PATH (a file holding user:token or token) or "
                f"{errors.setting('git_credentials_env')} VAR",
                setting="repo", reason=errors.UsageReason.CREDENTIALS_IN_URL,
            )
        return Location(url=repo, scheme=scheme)
    match = _SCP_LIKE.match(repo)
    if match and not pathlib.Path(repo).exists():
        if match["user"] and ":" in match["user"]:
            raise errors.UsageError(f"{errors.setting('repo')}: the URL holds a password; use "
                                    f"{errors.setting('git_ssh_key')} PATH",
                                    setting="repo", reason=errors.UsageReason.CREDENTIALS_IN_URL)
        return Location(url=repo, scheme="ssh")
    path = pathlib.Path(repo).resolve()
    return Location(url=str(path), scheme="local", local_path=path)


# ---------------------------------------------------------------- credentials


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class Auth:
    """What to answer when the server asks who we are. Its repr never shows a secret."""

    username: str | None = None
    token: str | None = None
    ssh_key: pathlib.Path | None = None

    def __repr__(self) -> str:
        return f"Auth(token={'yes' if self.token else 'no'}, ssh_key={self.ssh_key})"


def load_auth(location: Location, *, credentials_file: str | None = None, credentials_env: str | None = None,
              ssh_key: str | None = None) -> Auth:
    """Credentials from the settings; each error names the setting, never the secret."""
    file_setting, env_setting, key_setting = "git_credentials_file", "git_credentials_env", "git_ssh_key"
    if credentials_file and credentials_env:
        raise errors.UsageError(f"give one of {errors.setting(file_setting)} and {errors.setting(env_setting)}",
                                setting=file_setting)
    if (credentials_file or credentials_env) and location.scheme not in ("https", "http"):
        given = file_setting if credentials_file else env_setting
        raise errors.UsageError(
            f"{errors.setting(given)} is for https:// URLs; {location.display} is not one "
            f"(ssh uses {errors.setting(key_setting)})",
            setting=given,
        )
    if ssh_key and location.scheme != "ssh":
        raise errors.UsageError(f"{errors.setting(key_setting)} is for ssh URLs; {location.display} is not one",
                                setting=key_setting)
    secret: str | None = None
    if credentials_file:
        try:
            secret = pathlib.Path(credentials_file).read_text("utf-8").strip()
        except OSError as err:
            raise errors.UsageError(
                f"{errors.setting(file_setting)} {credentials_file}: cannot read it ({err.strerror}); check the path",
                setting=file_setting, reason=errors.UsageReason.CREDENTIALS_INVALID,
            ) from err
        except UnicodeDecodeError as err:
            raise errors.UsageError(f"{errors.setting(file_setting)} {credentials_file}: not a text file",
                                    setting=file_setting, reason=errors.UsageReason.CREDENTIALS_INVALID) from err
        if not secret:
            raise errors.UsageError(
                f"{errors.setting(file_setting)} {credentials_file} is empty; write user:token or token in it",
                setting=file_setting, reason=errors.UsageReason.CREDENTIALS_INVALID)
    elif credentials_env:
        secret = os.environ.get(credentials_env, "").strip()
        if not secret:
            raise errors.UsageError(f"{errors.setting(env_setting)} {credentials_env}: the variable is unset or empty",
                                    setting=env_setting, reason=errors.UsageReason.CREDENTIALS_INVALID)
    if secret is not None:
        if location.scheme == "http" and urllib.parse.urlsplit(location.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise errors.ConfigError(
                f"{location.display}: credentials are sent only over https (plain http only to localhost)",
                reason=errors.UsageReason.INSECURE_TRANSPORT,
            )
        user, sep, token = secret.partition(":")
        return Auth(username=user if sep else TOKEN_USERNAME, token=token if sep else secret)
    if ssh_key:
        path = pathlib.Path(ssh_key)
        if not path.is_file():
            raise errors.UsageError(f"{errors.setting(key_setting)} {ssh_key}: no such file",
                                    setting=key_setting, reason=errors.UsageReason.CREDENTIALS_INVALID)
        return Auth(ssh_key=path)
    return Auth()


class _AuthRejected(Exception):
    """Raised inside the credentials callback to stop libgit2 from asking again after a refusal."""


class _Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, auth: Auth) -> None:
        super().__init__()
        self.auth = auth
        self.asked = 0
        self.rejected: dict[str, str] = {}

    def credentials(self, url: str, username_from_url: str | None, allowed_types: pygit2.enums.CredentialType):
        self.asked += 1
        if self.asked > 1:
            raise _AuthRejected("the server refused the credentials")
        kinds = pygit2.enums.CredentialType
        if allowed_types & kinds.USERPASS_PLAINTEXT and self.auth.token:
            return pygit2.UserPass(self.auth.username or TOKEN_USERNAME, self.auth.token)
        user = username_from_url or "git"
        if allowed_types & kinds.SSH_KEY:
            if self.auth.ssh_key is not None:
                public = self.auth.ssh_key.with_name(self.auth.ssh_key.name + ".pub")
                return pygit2.Keypair(user, str(public) if public.is_file() else None, str(self.auth.ssh_key), "")
            return pygit2.KeypairFromAgent(user)
        if allowed_types & kinds.USERNAME:
            return pygit2.Username(user)
        raise _AuthRejected(f"the server asks for credentials; pass {errors.setting('git_credentials_file')}, "
                            f"{errors.setting('git_credentials_env')} or {errors.setting('git_ssh_key')}")

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected[refname] = message


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return re.sub(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1", text)[:300]


# ---------------------------------------------------------------- commit verification


class CommitVerifier(Protocol):
    def problem(self, repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        """Why ``commit`` is not acceptable, or ``None`` when its signature is trusted."""
        ...


def _signature(commit: pygit2.Commit) -> tuple[bytes | None, bytes | None]:
    signature, payload = commit.gpg_signature
    return signature, payload


def status_signer_problem(commit: pygit2.Commit, status_keys: Mapping[bytes, keys.PublicKey]) -> str | None:
    """Why ``commit`` is not gitopsd's own (signed by one of ``status_keys``, by raw key), or ``None``."""
    signature, payload = _signature(commit)
    if signature is None or payload is None:
        return "it is not signed"
    if not signature.lstrip().startswith(b"-----BEGIN SSH SIGNATURE-----"):
        return "it is not signed with gitopsd's SSH key"
    signer = sshsig.verify(signature.decode("ascii", "replace"), payload, "git")
    if signer is None:
        return "its SSH signature is invalid (the commit or the signature was altered)"
    if signer.raw not in status_keys:
        return f"it is signed by {signer.key_id()}, not by gitopsd's key"
    return None


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
        parent = (cast(pygit2.Commit, repo[commit.parent_ids[0]])
                  if commit.parent_ids and _has(repo, str(commit.parent_ids[0])) else None)
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
        signature, payload = _signature(commit)
        if signature is None or payload is None:
            return "it is not signed"
        if not signature.lstrip().startswith(b"-----BEGIN SSH SIGNATURE-----"):
            return "it has a GPG signature, not an SSH signature"
        signer = sshsig.verify(signature.decode("ascii", "replace"), payload, "git")
        if signer is None:
            return "its SSH signature is invalid (the commit or the signature was altered)"
        if signer.raw not in self.trusted:
            return f"it is signed by {signer.key_id()}, which is not in {self.path}"
        return None


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


# ---------------------------------------------------------------- the remote and its mirror


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The ref gitopsd follows, resolved against the remote's refs."""

    ref: str  # refs/heads/main or refs/tags/v1
    name: str  # main or v1: the left part of a revision string
    oid: str  # what the remote ref points at (a tag object for annotated tags)
    commit: str  # the commit it peels to

    @property
    def is_branch(self) -> bool:
        return self.ref.startswith("refs/heads/")


class GitRemote:
    """A remote repository and its bare mirror: list refs, fetch the followed ref, publish commits."""

    def __init__(self, location: Location, mirror: pathlib.Path, *, branch: str | None = None, tag: str | None = None,
                 auth: Auth | None = None) -> None:
        if branch and tag:
            raise errors.UsageError(f"give one of {errors.setting('branch')} and {errors.setting('tag')}", setting="branch")
        self.location = location
        self.mirror = mirror
        self.branch = branch
        self.tag = tag
        self.auth = auth or Auth()
        self.target: Target | None = None
        self._complete: set[str] = set()  # commits whose tree was checked complete in the mirror

    @property
    def display(self) -> str:
        return self.location.display

    # ---- the mirror

    def open(self) -> pygit2.Repository:
        """The mirror, created on first use and rebuilt when it cannot be opened."""
        if self.mirror.exists():
            try:
                repo = pygit2.Repository(str(self.mirror),
                                         pygit2.enums.RepositoryOpenFlag.NO_SEARCH | pygit2.enums.RepositoryOpenFlag.BARE)
                repo.references.get("HEAD")  # a garbage HEAD fails here
                if not repo.config.get_bool("core.bare"):  # and a garbage config here (we wrote core.bare = true)
                    raise ValueError("its config lost core.bare = true")
                return repo
            except (pygit2.GitError, ValueError, KeyError, OSError) as err:
                log.warning("git cache corrupt, rebuilding", path=str(self.mirror), error=_one_line(err))
                self._discard()
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        return pygit2.init_repository(str(self.mirror), bare=True)

    def _discard(self) -> None:
        if not self.mirror.exists():
            return
        trash = self.mirror.with_name(f".{self.mirror.name}.broken-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(self.mirror, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # ---- talking to the remote

    def list_heads(self, repo: pygit2.Repository) -> list[pygit2.remotes.RemoteHead]:
        remote = repo.remotes.create_anonymous(self.location.url)
        try:
            return remote.list_heads(callbacks=_Callbacks(self.auth))
        except _AuthRejected as err:
            raise errors.TransientError(f"cannot read {self.display}: {err}", reason="SourceUnavailable") from None
        except (pygit2.GitError, OSError) as err:
            raise errors.TransientError(f"cannot reach {self.display}: {_one_line(err)}", reason="SourceUnavailable") from None

    def resolve(self, heads: list[pygit2.remotes.RemoteHead]) -> Target:
        """The followed ref among the remote's refs; a missing branch or tag names its setting."""
        by_name = {head.name: head for head in heads if head.name is not None}  # every advertised ref has a name
        ref: str | None
        branches = sorted(name.removeprefix("refs/heads/") for name in by_name if name.startswith("refs/heads/"))
        if self.tag:
            ref = f"refs/tags/{self.tag}"
            if ref not in by_name:
                tags = sorted(n.removeprefix("refs/tags/") for n in by_name
                              if n.startswith("refs/tags/") and not n.endswith("^{}"))
                raise errors.UsageError(
                    f"{errors.setting('tag')} {self.tag}: no such tag in {self.display}; "
                    f"tags there: {', '.join(tags[:20]) or 'none'}",
                    setting="tag", reason=errors.UsageReason.TAG_NOT_FOUND,
                )
            peeled = by_name.get(f"{ref}^{{}}", by_name[ref])
            return Target(ref=ref, name=self.tag, oid=str(by_name[ref].oid), commit=str(peeled.oid))
        if self.branch:
            ref = f"refs/heads/{self.branch}"
            if ref not in by_name:
                raise errors.UsageError(
                    f"{errors.setting('branch')} {self.branch}: no such branch in {self.display}; "
                    f"branches there: {', '.join(branches[:20]) or 'none'}",
                    setting="branch", reason=errors.UsageReason.BRANCH_NOT_FOUND,
                )
            return Target(ref=ref, name=self.branch, oid=str(by_name[ref].oid), commit=str(by_name[ref].oid))
        if not branches:
            raise errors.StalledError(f"{self.display} has no branches yet; push a first commit", reason="EmptyRepository")
        head = by_name.get("HEAD")
        ref = head.symref_target if head is not None and head.symref_target else None
        if ref is None or ref not in by_name:  # no symref advertised: the branch HEAD points at, main/master first
            same = [f"refs/heads/{b}" for b in branches if head is not None and by_name[f"refs/heads/{b}"].oid == head.oid]
            preferred = [f"refs/heads/{b}" for b in ("main", "master") if b in branches]
            ref = (same + preferred + [f"refs/heads/{branches[0]}"])[0]
        oid = str(by_name[ref].oid)
        return Target(ref=ref, name=ref.removeprefix("refs/heads/"), oid=oid, commit=oid)

    def remote_tip(self, repo: pygit2.Repository) -> Target:
        self.target = self.resolve(self.list_heads(repo))
        return self.target

    def sync(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        """Bring the followed ref of the mirror up to the remote; the mirror's commit at its tip."""
        repo = self.open()
        target = self.remote_tip(repo)
        try:
            return repo, self._fetch_into(repo, target)
        except _CacheBroken as broken:
            log.warning("git cache corrupt, rebuilding", path=str(self.mirror), error=str(broken))
            self._discard()
            self._complete.clear()
            repo = self.open()
            try:
                return repo, self._fetch_into(repo, target)
            except _CacheBroken as again:
                raise errors.TransientError(f"cannot fetch {self.display}: {again}", reason="SourceUnavailable") from None

    def _fetch_into(self, repo: pygit2.Repository, target: Target) -> pygit2.Commit:
        local = repo.references.get(target.ref)
        before = str(local.target) if local is not None else None
        if before != target.oid or not _has(repo, target.commit):
            remote = repo.remotes.create_anonymous(self.location.url)
            try:
                remote.fetch([f"+{target.ref}:{target.ref}"], callbacks=_Callbacks(self.auth),
                             message=f"gitopsd: fetch {target.name}")
            except _AuthRejected as err:
                raise errors.TransientError(f"cannot fetch {self.display}: {err}", reason="SourceUnavailable") from None
            except pygit2.GitError as err:
                message = _one_line(err)
                if any(word in message.lower() for word in _NETWORK):
                    raise errors.TransientError(f"cannot fetch {self.display}: {message}", reason="SourceUnavailable") from None
                raise _CacheBroken(message) from None
        try:
            commit = repo.references[target.ref].peel(pygit2.Commit)
            if before is not None and before != str(commit.id) and _has(repo, before):
                old = repo[before].peel(pygit2.Commit)
                if target.is_branch and not repo.descendant_of(commit.id, old.id):
                    log.warning("upstream history rewritten", ref=target.name, old=str(old.id), new=str(commit.id),
                                repo=self.display)
            self._check_complete(repo, commit)
        except (pygit2.GitError, KeyError, ValueError) as err:
            raise _CacheBroken(f"the mirror misses objects of {target.name} ({_one_line(err)})") from None
        return commit

    def _check_complete(self, repo: pygit2.Repository, commit: pygit2.Commit) -> None:
        """Every tree and blob of the commit is in the mirror (once per commit and process)."""
        if str(commit.id) in self._complete:
            return
        seen: set[str] = set()
        stack = [commit.tree]
        while stack:
            tree = stack.pop()
            for entry in tree:
                key = str(entry.id)
                if key in seen or entry.filemode == 0o160000:
                    continue
                seen.add(key)
                if entry.filemode == 0o040000:
                    stack.append(cast(pygit2.Tree, repo[entry.id]))
                elif not repo.odb.exists(entry.id):
                    raise KeyError(f"object {key} is missing")
        self._complete.add(str(commit.id))

    def tip(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        """The mirror's commit at the followed branch (fetched when the mirror does not have it yet)."""
        repo = self.open()
        if self.target is not None:
            local = repo.references.get(self.target.ref)
            if local is not None:
                return repo, local.peel(pygit2.Commit)
        return self.sync()

    def refresh(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        return self.sync()

    # ---- pushing

    def publish(self, repo: pygit2.Repository, commit: pygit2.Oid, parent: pygit2.Oid) -> bool:
        """Move the remote branch from ``parent`` to ``commit`` (a fast-forward); ``False`` when the branch
        is no longer at ``parent`` (someone pushed): the caller rebuilds on the new tip and retries."""
        if self.target is None or not self.target.is_branch:
            raise errors.UsageError(f"status write-back needs a branch; {errors.setting('tag')} pins a revision", setting="tag")
        accepted = self._publish_local(repo, commit, parent) if self.location.is_local else self._publish_remote(repo, commit)
        if accepted:
            repo.references.create(self.target.ref, commit, force=True)
        return accepted

    def _publish_local(self, repo: pygit2.Repository, commit: pygit2.Oid, parent: pygit2.Oid) -> bool:
        """A local bare repository: copy the new objects, then compare-and-swap the branch.

        libgit2's local transport checks fast-forward on the refs it listed and then writes the ref
        with force, so a push landing in between would be lost; updating the ref with the expected old
        value under git's own ref lock closes that window.
        """
        assert self.target is not None and self.location.local_path is not None
        try:
            remote = pygit2.Repository(str(self.location.local_path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        except pygit2.GitError as err:
            raise errors.TransientError(f"cannot open {self.display}: {_one_line(err)}", reason="SourceUnavailable") from None
        _copy_objects(repo, remote, commit)
        ref = remote.references.get(self.target.ref)
        if ref is None:
            raise errors.StalledError(f"branch {self.target.name} was deleted from {self.display}", reason="BranchNotFound")
        return swap_ref(ref, commit, parent, where=f"{self.target.name} in {self.display}")

    def _publish_remote(self, repo: pygit2.Repository, commit: pygit2.Oid) -> bool:
        assert self.target is not None
        outgoing = "refs/gitopsd/outgoing"
        repo.references.create(outgoing, commit, force=True)
        callbacks = _Callbacks(self.auth)
        remote = repo.remotes.create_anonymous(self.location.url)
        try:
            remote.push([f"{outgoing}:{self.target.ref}"], callbacks=callbacks)  # no '+': never forced
        except _AuthRejected as err:
            raise errors.TransientError(f"cannot push to {self.display}: {err}", reason="StatusPushFailed") from None
        except pygit2.GitError as err:
            if any(word in str(err).lower() for word in _REJECTED):
                return False
            raise errors.TransientError(f"cannot push to {self.display}: {_one_line(err)}", reason="StatusPushFailed") from None
        if callbacks.rejected:
            log.info("status push rejected", ref=self.target.name, reason=next(iter(callbacks.rejected.values())))
            return False
        return True


def swap_ref(ref: pygit2.Reference, commit: pygit2.Oid, parent: pygit2.Oid, *, where: str,
             rejected: tuple[str, ...] = _REJECTED) -> bool:
    """Move ``ref`` from ``parent`` to ``commit`` (compare-and-swap under git's ref lock).

    ``False`` when the ref moved meanwhile or a concurrent writer holds its lock (libgit2 reports a
    held lock as ``OSError``): the caller rebuilds on the new tip. Anything else is transient."""
    if ref.target != parent:
        return False
    try:
        ref.set_target(commit, "gitopsd: status")
    except (pygit2.GitError, OSError) as err:
        if any(word in str(err).lower() for word in rejected):
            return False
        raise errors.TransientError(f"cannot update {where}: {_one_line(err)}", reason="StatusPushFailed") from None
    return True


class _CacheBroken(Exception):
    """The mirror is unusable (missing or corrupt objects): delete it and clone again."""


def _has(repo: pygit2.Repository, oid: str) -> bool:
    try:
        return pygit2.Oid(hex=oid) in repo
    except (ValueError, pygit2.GitError):
        return False


def _copy_objects(source: pygit2.Repository, dest: pygit2.Repository, start: pygit2.Oid) -> None:
    """Copy ``start`` and what it reaches that ``dest`` lacks (parents are assumed present)."""
    stack = [start]
    while stack:
        oid = stack.pop()
        if oid in dest:
            continue
        kind, data = source.odb.read(oid)
        dest.odb.write(kind, data)
        obj = source[oid]
        if isinstance(obj, pygit2.Commit):
            stack.append(obj.tree_id)
        elif isinstance(obj, pygit2.Tree):
            stack.extend(entry.id for entry in obj if entry.filemode != 0o160000)


# ---------------------------------------------------------------- the source


def desired_tree_equal(a: pygit2.Tree, b: pygit2.Tree) -> bool:
    """True when two root trees differ at most under ``.gitopsd/``."""
    if a.id == b.id:
        return True
    left = {entry.name: entry.id for entry in a if entry.name != STATUS_ROOT}
    right = {entry.name: entry.id for entry in b if entry.name != STATUS_ROOT}
    return left == right


class GitSource:
    """``ports.Source`` and ``ports.Pollable`` over a :class:`GitRemote`."""

    def __init__(self, remote: GitRemote, export_dir: pathlib.Path, *, verifier: CommitVerifier | None = None,
                 status_keys: tuple[keys.PublicKey, ...] = ()) -> None:
        self.remote = remote
        self.export_dir = export_dir
        self.verifier = verifier
        # With verification on, a commit that changes only .gitopsd/ must be signed by one of these
        # (gitopsd's own key): a status record is gitopsd's word, nobody else's.
        self.status_keys = {key.raw: key for key in status_keys}
        self._status_verified: set[str] = set()
        self._desired: dict[str, str] = {}  # tip commit -> its desired commit
        self.tip: str | None = None  # the commit the last fetch found at the tip
        self.listed_tip: str | None = None  # the tip the last head() listed

    def revision(self, commit: str) -> str:
        assert self.remote.target is not None
        return f"{self.remote.target.name}@sha1:{commit}"

    def fetch(self) -> gittree.GitTree:
        repo, tip = self.remote.sync()
        desired = self.desired_commit(repo, tip)
        self.tip = str(tip.id)
        if self.verifier is not None:
            problem = self.verifier.problem(repo, desired)
            if problem is not None:
                raise errors.StalledError(
                    f"commit {desired.id} ({self.revision(str(desired.id))} in {self.remote.display}) was refused: "
                    f"{problem}; nothing was applied, the last verified revision stays in place",
                    reason="CommitVerificationFailed",
                )
            self._verify_status_commits(repo, tip, desired)
        target = self.remote.target
        assert target is not None
        if desired.id != tip.id:
            how = f"{target.name} at {str(tip.id)[:12]}, desired state of {str(desired.id)[:12]}"
        else:
            how = f"{target.name} at {str(tip.id)[:12]}"
        return gittree.GitTree(repo, desired, ref=target.name, export_dir=self.export_dir,
                               description=f"git {self.remote.display} {how}")

    def _verify_status_commits(self, repo: pygit2.Repository, tip: pygit2.Commit, desired: pygit2.Commit) -> None:
        """Every commit above the desired commit changes only ``.gitopsd/``: each must be gitopsd's own,
        signed by its status key (or, with no such key known, pass the commit verifier)."""
        commit = tip
        while commit.id != desired.id:
            key = str(commit.id)
            if key not in self._status_verified:
                problem = self._status_problem(repo, commit)
                if problem is not None:
                    raise errors.StalledError(
                        f"commit {commit.id} in {self.remote.display} changes only {STATUS_ROOT}/ (status records) and "
                        f"was refused: {problem}; only gitopsd's key may write status: revert the commit (or push the "
                        "branch without it); nothing was applied",
                        reason="CommitVerificationFailed",
                    )
                self._status_verified.add(key)
            if not commit.parent_ids:
                return
            commit = cast(pygit2.Commit, repo[commit.parent_ids[0]])

    def _status_problem(self, repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        if not self.status_keys:
            assert self.verifier is not None
            return self.verifier.problem(repo, commit)
        return status_signer_problem(commit, self.status_keys)

    def status_moved(self) -> bool:
        """True when the tip ``head()`` listed is not the one the last fetch read, while the desired
        revision is the same: someone else's commit on top (status records edited) or a force-push
        (status records dropped). A pass then puts the true records back."""
        return self.listed_tip is not None and self.tip is not None and self.listed_tip != self.tip

    def head(self) -> str | None:
        """The revision ``fetch`` would read now, from a ref listing (no fetch).

        For a tip already in the mirror (a status commit gitopsd pushed, a commit fetched before) that
        is the revision of its desired commit, so gitopsd's own commits read as "nothing new"; an
        unknown tip is reported as itself, which differs from any earlier revision.
        """
        repo = self.remote.open()
        target = self.remote.remote_tip(repo)
        self.listed_tip = target.commit
        if not _has(repo, target.commit):
            return self.revision(target.commit)
        return self.revision(str(self.desired_commit(repo, repo[target.commit].peel(pygit2.Commit)).id))

    def changed_since(self, old: str, new: str) -> bool:
        """True when commit ``new`` differs from commit ``old`` outside ``.gitopsd/`` (both must be fetched)."""
        repo = self.remote.open()
        return not desired_tree_equal(repo[old].peel(pygit2.Commit).tree, repo[new].peel(pygit2.Commit).tree)

    def desired_commit(self, repo: pygit2.Repository, tip: pygit2.Commit) -> pygit2.Commit:
        """The newest first-parent ancestor-or-self of ``tip`` that changed anything outside ``.gitopsd/``."""
        key = str(tip.id)
        if key in self._desired:
            return cast(pygit2.Commit, repo[self._desired[key]])
        commit, walked = tip, []
        for _ in range(_MAX_DESIRED_WALK):
            if str(commit.id) in self._desired:
                commit = cast(pygit2.Commit, repo[self._desired[str(commit.id)]])
                break
            walked.append(str(commit.id))
            if not commit.parent_ids or not _has(repo, str(commit.parent_ids[0])):
                break
            parent = cast(pygit2.Commit, repo[commit.parent_ids[0]])
            if not desired_tree_equal(commit.tree, parent.tree):
                break
            commit = parent
        for seen in walked:
            self._desired[seen] = str(commit.id)
        return commit


# ---------------------------------------------------------------- a plain folder as a local remote


def _folder_tree(repo: pygit2.Repository, folder: pathlib.Path, *, top: bool) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if top and entry.name in (".git", STATUS_ROOT):
            continue
        path = pathlib.Path(entry.path)
        if entry.is_symlink():
            builder.insert(entry.name, repo.create_blob(os.fsencode(os.readlink(path))), pygit2.enums.FileMode.LINK)
        elif entry.is_dir():
            sub = _folder_tree(repo, path, top=False)
            if len(cast(pygit2.Tree, repo[sub])):
                builder.insert(entry.name, sub, pygit2.enums.FileMode.TREE)
        elif entry.is_file():
            mode = pygit2.enums.FileMode.BLOB_EXECUTABLE if os.access(path, os.X_OK) else pygit2.enums.FileMode.BLOB
            builder.insert(entry.name, repo.create_blob_fromdisk(str(path)), mode)  # streamed: a large file is never held whole
    return builder.write()


def import_folder(folder: pathlib.Path, bare: pathlib.Path, *, branch: str = "main") -> str:
    """Commit ``folder``'s files to ``branch`` of the bare repository ``bare`` (made on first use).

    Later calls add a commit only when the files changed, keeping what gitopsd wrote under
    ``.gitopsd/`` at the tip; the branch moves by compare-and-swap. Returns the tip commit id.
    """
    if not folder.is_dir():
        raise errors.ConfigError(f"{folder} is not a folder", reason="RepoNotFound")
    repo = (pygit2.Repository(str(bare), pygit2.enums.RepositoryOpenFlag.NO_SEARCH) if bare.exists()
            else pygit2.init_repository(str(bare), bare=True, initial_head=branch))
    files = _folder_tree(repo, folder, top=True)
    who = pygit2.Signature("gitopsd", "gitopsd@localhost")
    ref = repo.references.get(f"refs/heads/{branch}")
    if ref is None:
        commit = repo.create_commit(None, who, who, f"import {folder.name}\n", files, [])
        repo.references.create(f"refs/heads/{branch}", commit)
        return str(commit)
    tip = ref.peel(pygit2.Commit)
    top = repo.TreeBuilder(cast(pygit2.Tree, repo[files]))
    if STATUS_ROOT in tip.tree:
        top.insert(STATUS_ROOT, tip.tree[STATUS_ROOT].id, tip.tree[STATUS_ROOT].filemode)
    tree = top.write()
    if tree == tip.tree_id:
        return str(tip.id)
    commit = repo.create_commit(None, who, who, f"sync {folder.name}\n", tree, [tip.id])
    ref.set_target(commit, f"sync {folder.name}")
    return str(commit)
