"""Build the reconcile ``Env`` for a mode from command-line options: the composition root.

Local (embedded default): a SQLite store and an OCI layout under the state dir, a signing key
generated there on first use. The state dir is one folder per config repo under
``$XDG_STATE_HOME/gitopsd/`` (``~/.local/state/gitopsd/``), never inside the config repo.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

from gitopsd import errors, reconcile
from gitopsd.adapters import compilecache, keys, localstore, ocilayout, render, schemafiles, system


def default_state_dir(repo: str) -> pathlib.Path:
    base = os.environ.get("XDG_STATE_HOME") or str(pathlib.Path.home() / ".local" / "state")
    location = str(pathlib.Path(repo).resolve()) if "://" not in repo else repo
    name = pathlib.PurePosixPath(location.rstrip("/")).name.removesuffix(".git") or "repo"
    tag = hashlib.sha256(location.encode()).hexdigest()[:10]
    return pathlib.Path(base) / "gitopsd" / f"{name}-{tag}"


def check_state_dir(state_dir: pathlib.Path, repo: pathlib.Path | None) -> None:
    if repo is None:
        return
    state, root = state_dir.resolve(), repo.resolve()
    if state == root or root in state.parents:
        raise errors.ConfigError(
            f"--state-dir {state_dir} is inside the config repo {repo}; gitopsd never writes into the "
            "config repo's files: choose a folder outside it",
            reason="StateDirInRepo",
        )


@dataclasses.dataclass
class Local:
    """Handles of the embedded backends, kept so the CLI can list and close them."""

    state_dir: pathlib.Path
    store: localstore.LocalStore
    layout: ocilayout.OciLayout
    cache: compilecache.SqliteCompileCache

    def close(self) -> None:
        self.cache.close()
        self.store.close()


def open_local(state_dir: pathlib.Path) -> Local:
    state_dir.mkdir(parents=True, exist_ok=True)
    return Local(
        state_dir=state_dir,
        store=localstore.LocalStore(state_dir / "store.db"),
        layout=ocilayout.OciLayout(state_dir / "oci"),
        cache=compilecache.SqliteCompileCache(state_dir / "cache.db"),
    )


class KeyVerifier:
    def __init__(self, trusted: tuple[keys.PublicKey, ...]) -> None:
        self.trusted = trusted

    def verify(self, data: bytes, signature: str) -> bool:
        return keys.verify_any(self.trusted, data, signature) is not None


def signing(state_dir: pathlib.Path, signing_key: str | None, trusted_keys: str | None, *, create: bool) -> tuple[keys.SigningKey | None, KeyVerifier | None]:
    """The signer and the verifier of a local run.

    With ``--signing-key`` that key signs; otherwise a key kept in the state dir (made on first
    reconcile). Trusted keys are ``--trusted-keys`` when given, else the signing key's public key.
    """
    signer: keys.SigningKey | None
    if signing_key:
        signer = keys.load_private_key(signing_key)
    else:
        local = state_dir / "keys" / "signing.key"
        if not local.exists() and create:
            keys.generate(local.parent)
        signer = keys.load_private_key(local) if local.exists() else None
    if trusted_keys:
        return signer, KeyVerifier(keys.load_public_keys(trusted_keys))
    if signer is not None:
        return signer, KeyVerifier((signer.public_key(),))
    return None, None


def local_env(repo: pathlib.Path, local: Local, *, dry_run: bool, signing_key: str | None = None,
              trusted_keys: str | None = None, registry_url: str | None = None) -> reconcile.Env:
    signer, verifier = signing(local.state_dir, signing_key, trusted_keys, create=not dry_run)
    return reconcile.Env(
        source=system.LocalSource(repo, local.state_dir / "trees"),
        cluster=local.store,
        registry=local.layout,
        cache=local.cache,
        clock=system.SystemClock(),
        renderers=render.renderers(),
        schemas=schemafiles.schemas(),
        signer=signer,
        verifier=verifier,
        registry_url=registry_url,
        dry_run=dry_run,
    )
