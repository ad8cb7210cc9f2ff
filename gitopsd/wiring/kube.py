"""The Kubernetes side of an Env: the management cluster, when a Kubernetes flag is given.

``gitopsd.wiring.compose`` builds the local Env (source, OCI layout, compile cache, keys);
``gitopsd.wiring.assemble`` puts this module's handle into it: an API client from
``--kubeconfig``/``--context`` or ``--in-cluster`` (``Settings.kube``), the ``gitopsd.adapters.kube``
Cluster adapter, Lease leader election (``gitopsd.adapters.lease``) gating every write, and
``--shard i/N`` (``Env.pack_filter`` plus the same filter on what the adapter observes). The flags
themselves are ``gitopsd.cli.flags.kube``.

``daemon=True`` (``gitopsd run``) keeps a watch-backed cache and waits for leadership before the
first pass; a one-shot write (``reconcile``) takes the Lease too, and refuses to run while another
replica holds it; dry-run and diff only read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import structlog

from gitopsd import __version__, errors, ports, reconcile
from gitopsd.wiring import settings as settings_mod

if TYPE_CHECKING:  # imported when a Kubernetes flag is given: the client costs ~0.2 s of every command otherwise
    from gitopsd.adapters import kube, lease

log = structlog.get_logger()

DEFAULT_LEASE_NAMESPACE = settings_mod.DEFAULT_LEASE_NAMESPACE


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    shard: tuple[int, int] | None = None
    lease_namespace: str = DEFAULT_LEASE_NAMESPACE
    leader_election: bool = True
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def options(settings: settings_mod.Settings) -> Options | None:
    """The Kubernetes options given, or ``None`` for the embedded (local) mode."""
    given = settings.kube
    if not (given.kubeconfig or given.context or given.in_cluster):
        if given.shard is not None:
            raise errors.ConfigError("--shard needs a cluster: add --kubeconfig, --context or --in-cluster", reason="Usage")
        return None
    if given.in_cluster and given.context:
        raise errors.ConfigError("--context selects a kubeconfig context; it does not apply with --in-cluster", reason="Usage")
    from gitopsd.adapters import lease  # noqa: PLC0415 - see the imports

    return Options(
        kubeconfig=given.kubeconfig,
        context=given.context,
        in_cluster=given.in_cluster,
        shard=given.shard,
        lease_namespace=given.lease_namespace or settings.pod_namespace or DEFAULT_LEASE_NAMESPACE,
        leader_election=given.leader_election,
        identity=lease.default_identity(),
    )


@dataclasses.dataclass
class Kube:
    """The open Kubernetes side of one Env."""

    options: Options
    api: kube.client.ApiClient
    cluster: kube.KubeCluster
    elector: lease.Elector | None

    @property
    def pack_filter(self) -> Callable[[str], bool] | None:
        from gitopsd.adapters import lease  # noqa: PLC0415 - see the imports

        return None if self.options.shard is None else lease.shard_filter(*self.options.shard)

    def install(self, env: reconcile.Env) -> reconcile.Env:
        """The cluster adapter in ``env``; with a shard, its filter on what is built, observed and
        written back to Git (a sharded status writer replaces only its own packs' records)."""
        env.cluster = self.cluster
        env.pack_filter = self.pack_filter
        if env.pack_filter is not None and isinstance(env.status_writer, ports.Sharded):
            env.status_writer.owns = env.pack_filter
        return env

    def close(self) -> None:
        if self.elector is not None:
            self.elector.stop()
        self.cluster.close()
        self.api.close()


def open_kube(opts: Options, *, daemon: bool, writes: bool) -> Kube:
    """Client, adapter and (when it writes with leader election) an elector, not yet started."""
    from gitopsd.adapters import kube, lease  # noqa: PLC0415 - see the imports

    shard = f" shard {opts.shard[0]}/{opts.shard[1]}" if opts.shard else ""
    api = kube.connect(kubeconfig=opts.kubeconfig, context=opts.context, in_cluster=opts.in_cluster,
                       user_agent=f"gitopsd/{__version__} ({opts.identity}{shard})")
    elector = None
    if writes and opts.leader_election:
        elector = lease.Elector(api, namespace=opts.lease_namespace, name=lease.lease_name(opts.shard), identity=opts.identity,
                                lease_duration=opts.lease_duration, renew_deadline=opts.renew_deadline,
                                retry_period=opts.retry_period)
    owns = None if opts.shard is None else lease.shard_filter(*opts.shard)
    may_write = None
    if elector is not None:
        may_write = elector.is_leader if daemon else _lead_on_first_write(elector)
    cluster = kube.KubeCluster(api, watch=daemon, owns=owns, may_write=may_write, identity=opts.identity)
    return Kube(options=opts, api=api, cluster=cluster, elector=elector)


def _lead_on_first_write(elector: lease.Elector) -> Callable[[], bool]:
    """A one-shot command takes the Lease only when it is about to write: a pass with nothing to
    change sends no write at all, not even a Lease update."""
    started = False

    def may_write() -> bool:
        nonlocal started
        if not started:
            started = True
            wait_for_leadership(elector, stop=None, patient=False)
        return elector.is_leader()

    return may_write


def wait_for_leadership(elector: lease.Elector, *, stop: threading.Event | None, patient: bool) -> None:
    """Block until ``elector`` leads. A daemon (``patient``) waits as long as it takes (or until
    ``stop``); a one-shot command gives up at once when another replica holds the Lease."""
    elector.start()
    if patient:
        log.info("waiting for leadership", lease=elector.name, namespace=elector.namespace, identity=elector.identity)
        while not elector.wait_until_leader(0.5):
            if stop is not None and stop.is_set():
                return
        return
    if not elector.wait_until_leader(elector.retry_period + elector.request_timeout + 1):
        failed = elector.last_error
        if isinstance(failed, errors.ConfigError):
            hint = "; or pass --lease-namespace" if failed.reason == "LeaseNamespaceNotFound" else ""
            raise errors.ConfigError(f"{failed}{hint}", reason=failed.reason) from failed
        raise errors.ConfigError(
            f"Lease {elector.namespace}/{elector.name} is held by {elector.holder or 'another replica'}: another gitopsd "
            "writes to this cluster; use dry-run or diff, or stop it (a crashed holder's lease expires after "
            f"{elector.lease_duration:g}s)",
            reason="LeaseHeld",
        )


@contextlib.contextmanager
def connected(settings: settings_mod.Settings, *, writes: bool, daemon: bool = False,
              stop: threading.Event | None = None) -> Iterator[Kube | None]:
    """The open Kubernetes side when a Kubernetes flag was given (a daemon that writes waits here until
    it leads), closed on exit (Lease released, clients closed); ``None`` in the embedded mode."""
    opts = options(settings)
    if opts is None:
        yield None
        return
    handle = open_kube(opts, daemon=daemon, writes=writes)
    try:
        if handle.elector is not None and daemon:
            wait_for_leadership(handle.elector, stop=stop, patient=True)
        yield handle
    finally:
        handle.close()


def secret_reader(handle: Kube | None) -> Callable[[str, str, str], bytes | None] | None:
    """Reads kubeconfig Secrets from the management cluster, when the Env writes to one."""
    from gitopsd.delivery import reach  # noqa: PLC0415 - see the imports

    if handle is None:
        return None
    return reach.secret_reader(handle.api)
