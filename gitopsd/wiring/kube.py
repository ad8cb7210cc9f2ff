"""The Kubernetes mode of the CLI: its flags, and the Env pieces they build.

``gitopsd.wiring.compose`` builds the local Env (source, OCI layout, compile cache, keys); this module
swaps in the management cluster when a Kubernetes flag is given: an API client from
``--kubeconfig``/``--context`` or ``--in-cluster``, the ``gitopsd.adapters.kube`` Cluster adapter,
Lease leader election (``gitopsd.adapters.lease``) gating every write, and ``--shard i/N``
(``Env.pack_filter`` plus the same filter on what the adapter observes). Without those flags
:func:`use` hands the Env back untouched, so the CLI hooks in with::

    wiring_kube.add_flags(parser)                              # reconcile, dry-run, diff, run
    with wiring_kube.use(args, env, daemon=False) as env:      # around reconcile.run(env)

``daemon=True`` (``gitopsd run``) keeps a watch-backed cache and waits for leadership before the
first pass; a one-shot write (``reconcile``) takes the Lease too, and refuses to run while another
replica holds it; dry-run and diff only read.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import structlog

from gitopsd import __version__, errors, ports, reconcile

if TYPE_CHECKING:  # imported when a Kubernetes flag is given: the client costs ~0.2 s of every command otherwise
    from gitopsd.adapters import kube, lease

log = structlog.get_logger()

DEFAULT_LEASE_NAMESPACE = "seam-system"


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


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The Kubernetes flags, in their own help group."""
    group = parser.add_argument_group(
        "kubernetes", "apply to a management cluster instead of the embedded store (any of these turns it on)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config "
                       "when only --context is given)")
    where.add_argument("--in-cluster", action="store_true", default=False,
                       help="use the Pod's ServiceAccount (the Deployment in deploy/ does)")
    group.add_argument("--context", metavar="NAME", help="kubeconfig context (default: the current context)")
    group.add_argument("--shard", type=_shard, metavar="I/N", help="own only the packs whose sha256(basePackName) mod N "
                       "is I; each shard elects its own leader (Lease gitopsd-shard-I-of-N)")
    group.add_argument("--lease-namespace", metavar="NS", default=None,
                       help=f"namespace of the leader Lease (default: $POD_NAMESPACE, else {DEFAULT_LEASE_NAMESPACE})")
    group.add_argument("--no-leader-election", dest="leader_election", action="store_false", default=True,
                       help="write without holding the Lease (only when a single gitopsd writes to the cluster)")


def _shard(text: str) -> tuple[int, int]:
    from gitopsd.adapters import lease  # noqa: PLC0415 - see the imports

    try:
        return lease.parse_shard(text)
    except errors.ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def options(args: argparse.Namespace) -> Options | None:
    """The Kubernetes options given, or ``None`` for the embedded (local) mode."""
    kubeconfig = getattr(args, "kubeconfig", None)
    context = getattr(args, "context", None)
    in_cluster = bool(getattr(args, "in_cluster", False))
    shard = getattr(args, "shard", None)
    if not (kubeconfig or context or in_cluster):
        if shard is not None:
            raise errors.ConfigError("--shard needs a cluster: add --kubeconfig, --context or --in-cluster", reason="Usage")
        return None
    if in_cluster and context:
        raise errors.ConfigError("--context selects a kubeconfig context; it does not apply with --in-cluster", reason="Usage")
    from gitopsd.adapters import lease  # noqa: PLC0415 - see the imports

    return Options(
        kubeconfig=kubeconfig,
        context=context,
        in_cluster=in_cluster,
        shard=shard,
        lease_namespace=getattr(args, "lease_namespace", None) or os.environ.get("POD_NAMESPACE") or DEFAULT_LEASE_NAMESPACE,
        leader_election=bool(getattr(args, "leader_election", True)),
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
def use(args: argparse.Namespace, env: reconcile.Env, *, daemon: bool = False,
        stop: threading.Event | None = None) -> Iterator[reconcile.Env]:
    """``env`` with the Kubernetes side when a Kubernetes flag was given; ``env`` unchanged otherwise."""
    opts = options(args)
    if opts is None:
        yield env
        return
    handle = open_kube(opts, daemon=daemon, writes=not env.dry_run)
    try:
        if handle.elector is not None and daemon:
            wait_for_leadership(handle.elector, stop=stop, patient=True)
        yield handle.install(env)
    finally:
        handle.close()


def secret_reader(env: reconcile.Env) -> Callable[[str, str, str], bytes | None] | None:
    """Reads kubeconfig Secrets from the management cluster that ``env`` writes to, if it is one."""
    from gitopsd.adapters import kube  # noqa: PLC0415 - see the imports
    from gitopsd.delivery import reach  # noqa: PLC0415

    if not isinstance(env.cluster, kube.KubeCluster):
        return None
    return reach.secret_reader(env.cluster.api)
