"""Where an OCI registry is and who we are to it: ``HOST[:PORT]/PATH`` and credentials.

Why this exists: the registry URL is checked before anything is sent (no scheme, a lowercase
repository path, plain http only on loopback). Credentials come from a docker ``config.json``
(``auths.<host>.auth`` or ``username``/``password``) or from two files; never from the command
line, never in a message or a log line. Credential helpers and identity tokens are not read.

Neighbours: ``adapters.registry`` (talks to the registry with these), ``wiring`` (builds them from
settings).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import os
import pathlib
import re
import urllib.parse
from collections.abc import Mapping

from gitopsd import errors

# The distribution spec's repository name grammar, one path component.
COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = dataclasses.field(repr=False)
    origin: str  # where they were read, for messages: a file path, never the values

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_config_path(environ: Mapping[str, str] = os.environ) -> pathlib.Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (docker's own lookup)."""
    if environ.get("DOCKER_CONFIG"):
        return pathlib.Path(environ["DOCKER_CONFIG"]) / "config.json"
    return pathlib.Path.home() / ".docker" / "config.json"


def credentials_from_files(username_file: pathlib.Path, password_file: pathlib.Path) -> Credentials:
    values = []
    for name, path in (("registry_username_file", username_file), ("registry_password_file", password_file)):
        try:
            value = pathlib.Path(path).read_text("utf-8").rstrip("\r\n")
        except OSError as err:
            raise errors.UsageError(f"{errors.setting(name)} {path}: cannot read it ({err.strerror})", setting=name,
                                    reason=errors.UsageReason.REGISTRY_CONFIG) from err
        if not value:
            raise errors.UsageError(f"{errors.setting(name)} {path} is empty", setting=name,
                                    reason=errors.UsageReason.REGISTRY_CONFIG)
        values.append(value)
    return Credentials(values[0], values[1], origin=f"{username_file} and {password_file}")


def credentials_from_config(path: pathlib.Path, host: str) -> Credentials | None:
    """The entry for ``host`` (``HOST[:PORT]``) in a docker config.json, or ``None``."""
    try:
        doc = json.loads(pathlib.Path(path).read_text("utf-8"))
    except OSError as err:
        raise errors.UsageError(f"{errors.setting('registry_config')} {path}: cannot read it ({err.strerror})",
                                setting="registry_config", reason=errors.UsageReason.REGISTRY_CONFIG) from err
    except ValueError as err:
        raise errors.UsageError(f"{errors.setting('registry_config')} {path}: not JSON ({err})",
                                setting="registry_config", reason=errors.UsageReason.REGISTRY_CONFIG) from err
    auths = doc.get("auths") if isinstance(doc, dict) else None
    for key, entry in (auths or {}).items():
        if _config_host(key) != host or not isinstance(entry, dict):
            continue
        where = f"{path} (auths.{key})"
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"], validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError) as err:
                raise errors.ConfigError(f"{where}.auth: not base64 of 'user:password'", reason="RegistryConfig") from err
            if not sep:
                raise errors.ConfigError(f"{where}.auth: not base64 of 'user:password'", reason="RegistryConfig")
            return Credentials(user, password, origin=where)
        if entry.get("username") and entry.get("password"):
            return Credentials(str(entry["username"]), str(entry["password"]), origin=where)
    return None


def _config_host(key: str) -> str:
    """``https://host:5000/v1/`` → ``host:5000``: docker writes keys in several forms."""
    key = key.split("://", 1)[-1]
    return key.split("/", 1)[0].lower()


def parse_url(url: str) -> tuple[str, str, str]:
    """``HOST[:PORT]/PATH`` → (``HOST[:PORT]``, hostname, ``PATH``)."""
    shown = url.rpartition("@")[2]  # never echo a user:password@ someone typed
    if "://" in url:
        raise errors.UsageError(f"{errors.setting('registry')} {shown!r}: give HOST[:PORT]/PATH without a scheme "
                                f"(https is used; {errors.setting('registry_insecure')} selects http on loopback)",
                                setting="registry", reason=errors.UsageReason.REGISTRY_CONFIG)
    host, _, path = url.partition("/")
    try:
        parts = urllib.parse.urlsplit(f"//{host}")
        hostname, _ = parts.hostname, parts.port
    except ValueError as err:
        raise errors.UsageError(f"{errors.setting('registry')} {shown!r}: bad HOST[:PORT] ({err})", setting="registry",
                                reason=errors.UsageReason.REGISTRY_CONFIG) from err
    path = path.strip("/")
    if not hostname or "@" in host or (path and not all(COMPONENT.match(c) for c in path.split("/"))):
        raise errors.UsageError(f"{errors.setting('registry')} {shown!r}: expected HOST[:PORT]/PATH with a lowercase "
                                "repository path such as registry.example.com/packs",
                                setting="registry", reason=errors.UsageReason.REGISTRY_CONFIG)
    return host.lower(), hostname, path


def find_credentials(host: str, config: pathlib.Path | str | None, username_file: pathlib.Path | str | None,
                      password_file: pathlib.Path | str | None, environ: Mapping[str, str]) -> tuple[Credentials | None, str]:
    if username_file is not None or password_file is not None:
        if username_file is None or password_file is None:
            raise errors.UsageError(f"{errors.setting('registry_username_file')} and "
                                    f"{errors.setting('registry_password_file')} go together",
                                    setting="registry_username_file", reason=errors.UsageReason.REGISTRY_CONFIG)
        return credentials_from_files(pathlib.Path(username_file), pathlib.Path(password_file)), "files"
    if config is not None:
        return credentials_from_config(pathlib.Path(config), host), str(config)
    path = default_config_path(environ)
    if path.is_file():
        return credentials_from_config(path, host), str(path)
    return None, f"{path} (absent)"
