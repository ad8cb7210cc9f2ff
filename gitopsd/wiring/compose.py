"""Build the reconcile ``Env`` for a mode from command-line options: the composition root.

Local (embedded default): a SQLite store and an OCI layout under the state dir, a signing key
generated there on first use. The state dir is one folder per config repo under
``$XDG_STATE_HOME/gitopsd/`` (``~/.local/state/gitopsd/``), never inside the config repo.

The config repo is a folder (a Git work tree is read at HEAD) or a Git remote: a bare repository
path or a ``file://``, ``ssh://``, ``https://`` URL, read through a mirror under
``<state-dir>/git/`` (``adapters.gitsource``); status commits go back to the remote
(``adapters.statuswriter``), or to a work tree's branch with ``--write-status``.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
import pathlib
import re
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from gitopsd import errors, passstate, ports, reconcile
from gitopsd.adapters import (
    compilecache,
    gitlocation,
    gittree,
    keys,
    localstore,
    ocilayout,
    render,
    schemafiles,
    system,
)
from gitopsd.wiring import settings as settings_mod

if TYPE_CHECKING:  # oras and requests cost ~0.1 s of every command: imported only with --registry
    import pygit2

    from gitopsd.adapters import gitmirror, gitverify, statuswriter
    from gitopsd.adapters import registry as registry_adapter


def default_state_dir(repo: str, state_home: str) -> pathlib.Path:
    """``<state_home>/gitopsd/<repo>-<hash>``: one state dir per config repo, outside it."""
    location = str(pathlib.Path(repo).resolve()) if not gitlocation.is_url(repo) else repo
    name = pathlib.PurePosixPath(location.rstrip("/")).name.removesuffix(".git") or "repo"
    tag = hashlib.sha256(location.encode()).hexdigest()[:10]
    return pathlib.Path(state_home or pathlib.Path.home() / ".local" / "state") / "gitopsd" / f"{name}-{tag}"


def state_dir(settings: settings_mod.Settings) -> pathlib.Path:
    """``--state-dir``, else the config repo's default state dir."""
    if settings.state_dir:
        return pathlib.Path(settings.state_dir)
    if not settings.repo:
        raise errors.ConfigError("give the config repo (REPO) or --state-dir to find the local store", reason="Usage")
    return default_state_dir(settings.repo, settings.state_home)


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

    read_only: bool = False
    scratch: tempfile.TemporaryDirectory[str] | None = None  # exports of a read-only state dir

    @property
    def trees(self) -> pathlib.Path:
        """Where trees are exported for kustomize and helm: the state dir's, or a scratch folder."""
        return pathlib.Path(self.scratch.name) if self.scratch is not None else self.state_dir / "trees"

    def close(self) -> None:
        self.cache.close()
        self.store.close()
        self.layout.close()
        if self.scratch is not None:
            self.scratch.cleanup()


def writable(state_dir: pathlib.Path) -> bool:
    """False for a state dir on a read-only mount (or one gitopsd may not write)."""
    return not state_dir.is_dir() or os.access(state_dir, os.W_OK)


def open_local(state_dir: pathlib.Path, *, read_only: bool = False) -> Local:
    """The embedded backends. ``read_only`` (read-only commands on a state dir that cannot be
    written): nothing under the state dir is created or changed."""
    if not read_only:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise errors.ConfigError(f"state dir {state_dir}: cannot create it ({err.strerror}); choose a writable "
                                     "--state-dir", reason="StateDirUnwritable") from None
    state_dir = state_dir.resolve()  # renderers run in other folders: exported trees need absolute paths
    store = localstore.LocalStore(state_dir / "store.db", read_only=read_only)
    return Local(
        state_dir=state_dir,
        store=store,
        layout=ocilayout.OciLayout(state_dir / "oci", read_only=read_only),
        cache=compilecache.SqliteCompileCache(state_dir / "cache.db", read_only=read_only),
        read_only=read_only,
        scratch=tempfile.TemporaryDirectory(prefix="gitopsd-trees-") if read_only else None,
    )


class KeyVerifier:
    def __init__(self, trusted: tuple[keys.PublicKey, ...]) -> None:
        self.trusted = trusted

    def verify(self, data: bytes, signature: str) -> bool:
        return keys.verify_any(self.trusted, data, signature) is not None

    def key_set(self) -> str:
        """``ports.NamesKeys``: passed checks remembered in cache.db hold only for these keys."""
        return hashlib.sha256(b"".join(key.wire() for key in self.trusted)).hexdigest()


def signing(state_dir: pathlib.Path, signing_key: str | None, trusted_keys: str | None, *, create: bool,
            signed_packs: Callable[[], int] | None = None) -> tuple[keys.SigningKey | None, KeyVerifier | None]:
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
            # Made here once (its public half is still here) and signed the store: a new key would
            # not verify a single ClusterPack. (Without the public half the store was signed by a
            # --signing-key of earlier runs, and a local key is made as on a first run.)
            made_here = local.with_suffix(".key.pub").exists()
            signed = signed_packs() if signed_packs is not None and made_here else 0
            if signed:
                raise errors.ConfigError(
                    f"{local} is missing, but the local store holds {signed} signed ClusterPack(s): a new key would not "
                    "verify them, so none is made; restore the key file from a backup, or pass --signing-key (and "
                    "--trusted-keys with the old public key)",
                    reason="SigningKeyMissing",
                )
            try:
                keys.generate(local.parent)
            except keys.KeyLoadError:
                if not local.exists():
                    raise  # not a lost race with another first run: say what failed
        signer = keys.load_private_key(local) if local.exists() else None
    if trusted_keys:
        return signer, KeyVerifier(keys.load_public_keys(trusted_keys))
    if signer is not None:
        return signer, KeyVerifier((signer.public_key(),))
    return None, None


def local_env(repo: pathlib.Path, local: Local, *, dry_run: bool, signing_key: str | None = None,
              trusted_keys: str | None = None, registry_url: str | None = None,
              render_workers: int | None = None) -> reconcile.Env:
    """The Env of a local folder REPO on the embedded backends (no status write-back), with this
    process's environment (``$GITOPSD_RENDER_WORKERS``): for tests, benchmarks and ``run``'s local mode."""
    settings = settings_mod.Settings.from_environ(signing_key=signing_key, trusted_keys=trusted_keys,
                                                 registry_url=registry_url, render_workers=render_workers)
    return build_env(settings, local, repo=str(repo), dry_run=dry_run).env


RENDER_WORKERS_ENV = settings_mod.RENDER_WORKERS_ENV


def resolve_render_workers(settings: settings_mod.Settings) -> int:
    """Renderer child processes at once: ``--render-workers``, else $GITOPSD_RENDER_WORKERS, else one per CPU."""
    if settings.render_workers is not None:
        return settings.render_workers
    text = settings.render_workers_env
    if not text:
        return passstate.default_render_workers()
    if not text.isdigit() or int(text) < 1:
        raise errors.ConfigError(f"{RENDER_WORKERS_ENV}={text!r}: give a whole number of at least 1 (1 renders one "
                                 "pack after another)", reason="Usage")
    return int(text)


def base_env(local: Local, *, source: ports.Source, cluster: ports.Cluster, dry_run: bool, registry_url: str | None,
             render_workers: int, signer: keys.SigningKey | None = None, verifier: KeyVerifier | None = None,
             progress: Callable[[str, dict[str, object]], None] | None = None) -> reconcile.Env:
    """The adapters every Env has: ``source`` and ``cluster``, the state dir's OCI layout and compile
    cache, the system clock, the renderers and schemas. ``build_env`` and ``gitopsd.preview`` start here."""
    return reconcile.Env(
        source=source,
        cluster=cluster,
        registry=local.layout,
        cache=local.cache,
        clock=system.SystemClock(),
        renderers=render.renderers(),
        schemas=schemafiles.schemas(),
        signer=signer,
        verifier=verifier,
        registry_url=registry_url,
        dry_run=dry_run,
        render_workers=render_workers,
        progress=progress,
    )


# ---------------------------------------------------------------- Git sources and status write-back


class RepoKind(enum.StrEnum):
    FOLDER = "folder"  # a plain folder, or a Git work tree read at HEAD
    BARE = "bare"  # a local bare repository: a Git remote on disk
    URL = "url"  # file://, ssh://, https://, http://, git:// or user@host:path


def repo_kind(repo: str) -> RepoKind:
    """What REPO is; a URL is checked here (scheme, no credentials in it) before anything is written."""
    if gitlocation.is_url(repo):
        gitlocation.parse_location(repo)
        return RepoKind.URL
    path = pathlib.Path(repo)
    if not path.is_dir():
        raise errors.ConfigError(f"config repo {repo} is not a folder, a bare Git repository or a Git URL", reason="RepoNotFound")
    return RepoKind.BARE if gitlocation.is_bare_repository(path) else RepoKind.FOLDER


def open_registry(options: settings_mod.RegistryOptions) -> registry_adapter.OciRegistry:
    """The registry adapter; bad URLs, credential files or an insecure non-loopback host stop here."""
    from gitopsd.adapters import registry as registry_adapter  # noqa: PLC0415 - see the imports
    return registry_adapter.OciRegistry(
        options.url,
        ca=options.ca,
        insecure=options.insecure,
        config=options.config,
        username_file=options.username_file,
        password_file=options.password_file,
    )


@dataclasses.dataclass
class Wired:
    """The pass's Env and what the CLI reports about the Git side."""

    env: reconcile.Env
    kind: RepoKind
    local: Local
    remote: gitmirror.GitRemote | None = None
    writer: statuswriter.GitStatusWriter | None = None
    allowed_signers: pathlib.Path | None = None
    status_repo: pathlib.Path | None = None  # where `git -C` runs verify-commit, for local repositories
    status_off: str | None = None  # why status is not written, when it is not
    secrets: Callable[[str, str, str], bytes | None] | None = None  # kubeconfig Secrets of the management cluster

    def verify_command(self, commit: str) -> str:
        where = f"-C {self.status_repo} " if self.status_repo else ""
        return f"git {where}-c gpg.ssh.allowedSignersFile={self.allowed_signers} verify-commit {commit}"


def mirror_path(state_dir: pathlib.Path, location: gitlocation.Location) -> pathlib.Path:
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", location.url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    name = tail.removesuffix(".git").strip("-.") or "repo"
    return state_dir / "git" / f"{name}-{hashlib.sha256(location.url.encode()).hexdigest()[:8]}.git"


def commit_verifier(options: settings_mod.GitOptions) -> gitverify.CommitVerifier | None:
    from gitopsd.adapters import gitverify  # noqa: PLC0415 - Git remotes, status and commit checks: imported when used

    verifiers: list[gitverify.CommitVerifier] = []
    if options.verify_commits:
        verifiers.append(gitverify.SshCommitVerifier(options.verify_commits))
    if options.verify_commits_gpg:
        verifiers.append(gitverify.GpgCommitVerifier(options.verify_commits_gpg))
    if not verifiers:
        return None
    return verifiers[0] if len(verifiers) == 1 else gitverify.AnyOfVerifier(verifiers)


def git_remote(repo: str, state_dir: pathlib.Path, options: settings_mod.GitOptions) -> gitmirror.GitRemote:
    location = gitlocation.parse_location(repo)
    auth = gitlocation.load_auth(location, credentials_file=options.credentials_file,
                               credentials_env=options.credentials_env, ssh_key=options.ssh_key)
    from gitopsd.adapters import gitmirror  # noqa: PLC0415 - as gitverify above

    gitmirror.configure_timeouts()
    return gitmirror.GitRemote(location, mirror_path(state_dir, location), branch=options.branch, tag=options.tag, auth=auth)


def _status_tip(repo: str, state_dir: pathlib.Path,
                options: settings_mod.GitOptions) -> tuple[pygit2.Repository, pygit2.Commit] | None:
    """REPO's branch tip (a Git remote's, fetched into the mirror, or a work tree's HEAD); ``None`` for a plain folder."""
    if repo_kind(repo) is RepoKind.FOLDER:
        tree = gittree.open_worktree(pathlib.Path(repo), state_dir / "trees")
        return None if tree is None else (tree.repo, tree.commit)
    return git_remote(repo, state_dir, options).tip()


def status_record_writers(repo: str, state_dir: pathlib.Path, options: settings_mod.GitOptions,
                          trusted: tuple[keys.PublicKey, ...]) -> dict[str, str]:
    """Why each status record at REPO's tip is not gitopsd's word: the commit that wrote its content
    is not signed by one of ``trusted`` (gitopsd's keys). Records of a plain folder have no writer."""
    tip = _status_tip(repo, state_dir, options)
    if tip is None:
        return {}
    git_repo, commit = tip
    from gitopsd.adapters import gitverify  # noqa: PLC0415 - as above

    folder = ".gitopsd/status"
    writers = gitverify.record_writers(git_repo, commit, folder)
    status_keys = {key.raw: key for key in trusted}
    out = {}
    for path, _data in status_records(repo, state_dir, options):
        writer = writers.get(path)
        problem = "no commit that wrote it was found" if writer is None else gitverify.status_signer_problem(writer, status_keys)
        if problem is not None:
            what = "" if writer is None else f"commit {writer.id} wrote it and "
            out[path] = f"{what}{problem}: only commits signed by gitopsd's key may write status records"
    return out


def status_records(repo: str, state_dir: pathlib.Path, options: settings_mod.GitOptions) -> list[tuple[str, bytes]]:
    """The status records (``.gitopsd/status/*.yaml``) at the tip of REPO's branch: a Git remote's
    (fetched into the mirror), a work tree's HEAD, or a plain folder's files."""
    folder = ".gitopsd/status"
    tip = _status_tip(repo, state_dir, options)
    if tip is None:
        root = pathlib.Path(repo) / folder
        return [(f"{folder}/{p.name}", p.read_bytes()) for p in sorted(root.glob("*.yaml"))] if root.is_dir() else []
    git_repo, commit = tip
    try:
        entry = commit.tree[folder]
    except KeyError:
        return []
    out = []
    for item in cast("pygit2.Tree", git_repo[entry.id]):
        if item.name is not None and item.name.endswith(".yaml") and item.filemode != 0o040000:
            out.append((f"{folder}/{item.name}", cast("pygit2.Blob", git_repo[item.id]).data))
    return sorted(out)


def write_allowed_signers(state_dir: pathlib.Path, key: keys.SigningKey, principal: str) -> pathlib.Path:
    """``<state-dir>/keys/allowed_signers`` for the status-commit key: the file ``git verify-commit`` needs."""
    path = state_dir / "keys" / "allowed_signers"
    line = f'{principal} namespaces="git" {key.public_key().openssh()}\n'
    if not path.exists() or path.read_text("utf-8") != line:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        temp.write_text(line, "utf-8")
        os.replace(temp, path)
    return path


def ensure_demo_remote(folder: pathlib.Path, state_dir: pathlib.Path) -> pathlib.Path:
    """A local bare remote made from a plain folder: ``<state-dir>/demo-remote.git``, branch main.

    The first run commits the folder's files; later runs commit again only when the files changed
    (keeping gitopsd's ``.gitopsd/`` status at the tip), so editing the folder shows up as a new commit.
    """
    check_state_dir(state_dir, folder)
    remote = state_dir / "demo-remote.git"
    state_dir.mkdir(parents=True, exist_ok=True)
    from gitopsd.adapters import gitsource  # noqa: PLC0415 - as gitverify above

    gitsource.import_folder(folder, remote)
    return remote


def build_env(settings: settings_mod.Settings, local: Local, *, repo: str, dry_run: bool) -> Wired:
    """The Env of one pass for any REPO form on the embedded store; status write-back wired when it
    applies. ``gitopsd.wiring.assemble`` adds the management cluster and delivery."""
    git = settings.git
    registry = settings.registry.options()
    registry_url = settings.registry_url
    if registry is not None:
        if registry_url and registry_url.rstrip("/") != registry.url.rstrip("/"):
            raise errors.ConfigError(
                f"--registry-url {registry_url} differs from --registry {registry.url}: ClusterPacks must name the "
                "registry their artifacts are pushed to; drop --registry-url",
                reason="Usage",
            )
        registry_url = registry.url
    kind = repo_kind(repo)
    signer, verifier = signing(local.state_dir, settings.signing_key, settings.trusted_keys, create=not dry_run,
                               signed_packs=local.store.signed_packs)
    env = base_env(local, source=system.LocalSource(pathlib.Path(repo), local.trees), cluster=local.store,
                   dry_run=dry_run, registry_url=registry_url, render_workers=resolve_render_workers(settings),
                   signer=signer, verifier=verifier)
    if registry is not None:
        env.registry = open_registry(registry)
    wired = Wired(env=env, kind=kind, local=local)
    # The Git remote's source and status write-back are imported when used: a diff of a folder needs neither.
    branch: statuswriter.Branch | None = None
    if kind is RepoKind.FOLDER:
        used = [flag for flag, value in (("--branch", git.branch), ("--tag", git.tag), ("--verify-commits", git.verify_commits),
                                         ("--verify-commits-gpg", git.verify_commits_gpg), ("--git-ssh-key", git.ssh_key),
                                         ("--git-credentials-file", git.credentials_file),
                                         ("--git-credentials-env", git.credentials_env)) if value]
        if used:
            raise errors.ConfigError(f"{used[0]} applies to a Git remote (a bare repository or a URL); {repo} is a folder, "
                                     "read at HEAD when it is a work tree", reason="Usage")
        if git.status:
            from gitopsd.adapters import statuswriter  # noqa: PLC0415 - see above

            branch = statuswriter.WorkTreeBranch(pathlib.Path(repo))
            if not dry_run:
                branch.tip()  # not a work tree, detached, or local changes under .gitopsd/: say so before applying
            wired.status_repo = pathlib.Path(repo).resolve()
        else:
            wired.status_off = "folder (pass --write-status to commit status to its branch)"
    else:
        from gitopsd.adapters import gitsource  # noqa: PLC0415 - see above

        remote = git_remote(repo, local.state_dir, git)
        status_keys = tuple(verifier.trusted) if verifier is not None else ()
        if signer is not None:
            status_keys = (signer.public_key(), *status_keys)
        env.source = gitsource.GitSource(remote, local.trees, verifier=commit_verifier(git),
                                         status_keys=status_keys)
        wired.remote = remote
        wired.status_repo = remote.location.local_path
        if git.tag:
            wired.status_off = "--tag pins a revision; status is written to branches only"
        elif git.status is False:
            wired.status_off = "--no-status"
        else:
            branch = remote
    if dry_run:
        wired.status_off = "dry run"
        branch = None
    if branch is not None:
        if signer is None:
            raise errors.ConfigError("status write-back needs a signing key (--signing-key)", reason="NoSigningKey")
        from gitopsd.adapters import statuswriter  # noqa: PLC0415 - see above

        identity = statuswriter.Identity(git.author_name, git.author_email)
        wired.writer = statuswriter.GitStatusWriter(branch, signer, identity=identity)
        wired.allowed_signers = write_allowed_signers(local.state_dir, signer, git.author_email)
        env.status_writer = wired.writer
    return wired
