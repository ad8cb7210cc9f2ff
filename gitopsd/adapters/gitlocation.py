"""Where a config repo is and who we are to its server: REPO forms and credentials.

Why this exists: a REPO argument is a folder, a bare repository path, a ``file://``, ``ssh://`` or
``https://`` URL or an scp-like ``user@host:path``; a URL that holds a password or token is refused
(it would end up in logs, shell history and process listings). Credentials come from a file or an
environment variable, never from the command line or the URL, and never reach a log line or an
error message; :class:`Callbacks` answers libgit2 when the server asks for them.

Neighbours: ``adapters.gitmirror`` (talks to the remote with these), ``wiring`` (builds them from
settings).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import urllib.parse

import pygit2

from gitopsd import errors

TOKEN_USERNAME = "x-access-token"  # user name sent with a bare token (GitHub, Gitea and GitLab accept it)
_NETWORK_SCHEMES = ("ssh", "https", "http", "git")
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/\\].*|/.*)$")


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


class AuthRejected(Exception):
    """Raised inside the credentials callback to stop libgit2 from asking again after a refusal."""


class Callbacks(pygit2.RemoteCallbacks):
    def __init__(self, auth: Auth) -> None:
        super().__init__()
        self.auth = auth
        self.asked = 0
        self.rejected: dict[str, str] = {}

    def credentials(self, url: str, username_from_url: str | None, allowed_types: pygit2.enums.CredentialType):
        self.asked += 1
        if self.asked > 1:
            raise AuthRejected("the server refused the credentials")
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
        raise AuthRejected(f"the server asks for credentials; pass {errors.setting('git_credentials_file')}, "
                            f"{errors.setting('git_credentials_env')} or {errors.setting('git_ssh_key')}")

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejected[refname] = message


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return re.sub(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1", text)[:300]
