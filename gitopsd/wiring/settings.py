"""What one ``gitopsd`` command was asked to do: its flags and the environment, read once.

``Settings`` is the only reader of the command line (``Settings.from_args``, after argparse) and
of the environment (``Settings.from_environ``: ``$XDG_STATE_HOME``, ``$GITOPSD_RENDER_WORKERS``,
``$POD_NAMESPACE``). The CLI (``gitopsd.cli``) parses argv into one Settings; the wiring
(``gitopsd.wiring.compose``, ``.kube``, ``.delivery``, ``.assemble``) builds the Env from it and
never sees ``argparse``. Values are kept as given: checks that can fail (a registry flag without
``--registry``, a malformed ``--cluster-kubeconfig``, a bad ``$GITOPSD_RENDER_WORKERS``) run where
the command uses them, so a command reports its errors in the same order as before.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from gitopsd import errors

RENDER_WORKERS_ENV = "GITOPSD_RENDER_WORKERS"
DEFAULT_LEASE_NAMESPACE = "seam-system"
DEFAULT_DELIVERY_WORKERS = 4
DEFAULT_MAX_DIFF_LINES = 60  # gitopsd plan -o markdown: lines of one object's diff (planformat.MAX_LINES)


@dataclasses.dataclass(frozen=True, slots=True)
class GitOptions:
    """The Git flags of reconcile, dry-run, diff (and run)."""

    branch: str | None = None
    tag: str | None = None
    credentials_file: str | None = None
    credentials_env: str | None = None
    ssh_key: str | None = None
    verify_commits: str | None = None  # allowed_signers file: SSH signatures
    verify_commits_gpg: str | None = None  # keyring file: GPG signatures
    author_name: str = "gitopsd"
    author_email: str = "gitopsd@localhost"
    status: bool | None = None  # None: on for a Git remote, off for a folder; False: --no-status; True: --write-status


@dataclasses.dataclass(frozen=True, slots=True)
class RegistryOptions:
    """Where artifacts are pushed when not to the local OCI layout (``--registry`` and friends)."""

    url: str
    ca: str | None = None
    insecure: bool = False
    config: str | None = None
    username_file: str | None = None
    password_file: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RegistryFlags:
    """The registry flags as given; ``options()`` is None without ``--registry``."""

    url: str | None = None
    ca: str | None = None
    insecure: bool = False
    config: str | None = None
    username_file: str | None = None
    password_file: str | None = None

    def options(self) -> RegistryOptions | None:
        if not self.url:
            for flag, value in (("--registry-ca", self.ca), ("--registry-config", self.config),
                                ("--registry-username-file", self.username_file),
                                ("--registry-password-file", self.password_file)):
                if value:
                    raise errors.ConfigError(f"{flag} needs --registry", reason="Usage")
            return None
        return RegistryOptions(url=self.url, ca=self.ca, insecure=self.insecure, config=self.config,
                               username_file=self.username_file, password_file=self.password_file)


@dataclasses.dataclass(frozen=True, slots=True)
class KubeFlags:
    """The management-cluster flags as given (``gitopsd.wiring.kube.options`` checks and resolves them)."""

    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    shard: tuple[int, int] | None = None
    lease_namespace: str | None = None  # None: $POD_NAMESPACE, else seam-system
    leader_election: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryFlags:
    """How target clusters are reached (push delivery, ``diff --live``)."""

    kubeconfig_dir: str | None = None
    cluster_kubeconfig: tuple[str, ...] = ()  # NAME=PATH, as given
    workers: int = DEFAULT_DELIVERY_WORKERS

    def kubeconfigs(self) -> dict[str, pathlib.Path]:
        """``--cluster-kubeconfig NAME=PATH`` flags as a mapping."""
        out = {}
        for value in self.cluster_kubeconfig:
            name, eq, path = value.partition("=")
            if not eq or not name or not path:
                raise errors.ConfigError(f"--cluster-kubeconfig {value!r}: expected NAME=PATH", reason="Usage")
            out[name] = pathlib.Path(path)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonFlags:
    """``gitopsd run``: when passes run, what it serves, how it stops."""

    once: bool = False
    interval: float = 30.0
    resync_interval: float = 600.0
    watch: bool = False
    watch_debounce: float = 0.5
    listen: tuple[str, int] | None = ("127.0.0.1", 9797)
    webhook_secret_file: str | None = None
    shutdown_timeout: float = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class PlanFlags:
    """``gitopsd plan``: the two revisions and the Markdown cut."""

    base: str = ""
    head: str | None = None
    max_diff_lines: int = DEFAULT_MAX_DIFF_LINES


@dataclasses.dataclass(frozen=True, slots=True)
class KeygenFlags:
    dir: str = "."
    principal: str = "gitopsd@localhost"
    force: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything one command reads from outside: flags (defaults for the ones it has not) and environment."""

    command: str = ""  # reconcile, dry-run, diff, run, plan, get, verify, keygen
    repo: str | None = None
    state_dir: str | None = None  # --state-dir; None: one folder per repo under state_home
    output: str = "table"
    log_level: str = "warning"
    log_format: str = "auto"
    verbose: bool = False
    signing_key: str | None = None
    trusted_keys: str | None = None
    registry_url: str | None = None
    git: GitOptions = GitOptions()
    as_git_remote: bool = False
    registry: RegistryFlags = RegistryFlags()
    render_workers: int | None = None  # --render-workers; None: $GITOPSD_RENDER_WORKERS, else one per CPU
    render_wait: float | None = None  # reconcile and run only: dry-run and diff wait for every render
    full: bool = False  # --full (reconcile and run): every pass plans every pack (Env.full_plan)
    kube: KubeFlags = KubeFlags()
    delivery: DeliveryFlags = DeliveryFlags()
    live: bool = False
    namespace: str = DEFAULT_LEASE_NAMESPACE  # verify: namespace of the ClusterPacks
    what: str = ""  # get: packs, instances or events
    daemon: DaemonFlags = DaemonFlags()
    plan: PlanFlags = PlanFlags()
    keygen: KeygenFlags = KeygenFlags()
    # the environment, as read by from_environ (empty when not read)
    state_home: str = ""  # $XDG_STATE_HOME, else ~/.local/state
    render_workers_env: str = ""  # $GITOPSD_RENDER_WORKERS, stripped
    pod_namespace: str = ""  # $POD_NAMESPACE (the Deployment sets it): the Lease's default namespace

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, **given: Any) -> Settings:
        """Settings with the environment ``environ`` (default: this process's) and the ``given`` fields."""
        environ = os.environ if environ is None else environ
        home = environ.get("HOME") or str(pathlib.Path.home())
        return cls(**given,
                   state_home=environ.get("XDG_STATE_HOME") or str(pathlib.Path(home) / ".local" / "state"),
                   render_workers_env=environ.get(RENDER_WORKERS_ENV, "").strip(),
                   pod_namespace=environ.get("POD_NAMESPACE", ""))

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        """The parsed command line (any subcommand's: a flag it does not have takes its default) and the environment."""
        def flag(name: str, default: Any = None) -> Any:
            return getattr(args, name, default)

        return cls.from_environ(
            environ,
            command=str(flag("command", "") or ""),
            repo=flag("repo"),
            state_dir=flag("state_dir"),
            output=flag("output", "table"),
            log_level=flag("log_level", "warning"),
            log_format=flag("log_format", "auto"),
            verbose=bool(flag("verbose", False)),
            signing_key=flag("signing_key"),
            trusted_keys=flag("trusted_keys"),
            registry_url=flag("registry_url"),
            git=GitOptions(branch=flag("branch"), tag=flag("tag"), credentials_file=flag("git_credentials_file"),
                           credentials_env=flag("git_credentials_env"), ssh_key=flag("git_ssh_key"),
                           verify_commits=flag("verify_commits"), verify_commits_gpg=flag("verify_commits_gpg"),
                           author_name=flag("git_author_name", "gitopsd"),
                           author_email=flag("git_author_email", "gitopsd@localhost"), status=flag("status")),
            as_git_remote=bool(flag("as_git_remote", False)),
            registry=RegistryFlags(url=flag("registry"), ca=flag("registry_ca"), insecure=bool(flag("registry_insecure", False)),
                                   config=flag("registry_config"), username_file=flag("registry_username_file"),
                                   password_file=flag("registry_password_file")),
            render_workers=flag("render_workers"),
            render_wait=flag("render_wait"),
            full=bool(flag("full", False)),
            kube=KubeFlags(kubeconfig=flag("kubeconfig"), context=flag("context"), in_cluster=bool(flag("in_cluster", False)),
                           shard=flag("shard"), lease_namespace=flag("lease_namespace"),
                           leader_election=bool(flag("leader_election", True))),
            delivery=DeliveryFlags(kubeconfig_dir=flag("kubeconfig_dir"),
                                   cluster_kubeconfig=tuple(flag("cluster_kubeconfig") or ()),
                                   workers=flag("delivery_workers", DEFAULT_DELIVERY_WORKERS) or DEFAULT_DELIVERY_WORKERS),
            live=bool(flag("live", False)),
            namespace=flag("namespace", DEFAULT_LEASE_NAMESPACE),
            what=flag("what", ""),
            daemon=DaemonFlags(once=bool(flag("once", False)), interval=flag("interval", 30.0),
                               resync_interval=flag("resync_interval", 600.0), watch=bool(flag("watch", False)),
                               watch_debounce=flag("watch_debounce", 0.5), listen=flag("listen", ("127.0.0.1", 9797)),
                               webhook_secret_file=flag("webhook_secret_file"),
                               shutdown_timeout=flag("shutdown_timeout", 30.0)),
            plan=PlanFlags(base=flag("base", ""), head=flag("head"),
                           max_diff_lines=flag("max_diff_lines", DEFAULT_MAX_DIFF_LINES)),
            keygen=KeygenFlags(dir=flag("dir", "."), principal=flag("principal", "gitopsd@localhost"),
                               force=bool(flag("force", False))),
        )
