"""Builds the push-mode Deliverer of a pass from the command line (``gitopsd.delivery``).

Without a way to reach any cluster (no ``--kubeconfig-dir``/``--cluster-kubeconfig``, and no
management cluster whose Secrets ``clusters/<name>.yaml`` may name) there is nothing to deliver
and the Env keeps ``deliverer=None``: records only, as before delivery existed.
"""

from __future__ import annotations

import argparse
import pathlib

from gitopsd import errors, ports, reconcile
from gitopsd.cli import flags
from gitopsd.delivery import engine, reach, runner


class _Now:
    def __init__(self, clock: ports.Clock) -> None:
        self.clock = clock

    def __call__(self) -> str:
        return self.clock.now()


def use(args: argparse.Namespace, env: reconcile.Env, *, secrets: reach.SecretReader | None = None) -> reconcile.Env:
    """``env`` with a Deliverer when the flags (or a management cluster) give a way to reach clusters."""
    files = flags.cluster_kubeconfigs(args)
    folder = getattr(args, "kubeconfig_dir", None)
    if folder is not None and not pathlib.Path(folder).is_dir():
        raise errors.ConfigError(f"--kubeconfig-dir {folder}: not a folder", reason="Usage")
    if not files and folder is None and secrets is None:
        return env
    if not isinstance(env.registry, ports.ServesArtifacts):
        raise errors.ConfigError("this registry cannot serve artifacts back for delivery", reason="Usage")
    where = reach.Reach(files=files, folder=pathlib.Path(folder) if folder else None, secrets=secrets)
    eng = engine.Engine(env.registry, env.verifier, now=_Now(env.clock))
    env.deliverer = runner.Runner(where, eng, workers=getattr(args, "delivery_workers", 4) or 4)
    return env


def reach_of(args: argparse.Namespace, *, secrets: reach.SecretReader | None = None) -> reach.Reach | None:
    """How the flags (or a management cluster's Secrets) reach target clusters, for reading them
    (``gitopsd diff --live``); None when nothing can be reached."""
    files = flags.cluster_kubeconfigs(args)
    folder = getattr(args, "kubeconfig_dir", None)
    if folder is not None and not pathlib.Path(folder).is_dir():
        raise errors.ConfigError(f"--kubeconfig-dir {folder}: not a folder", reason="Usage")
    if not files and folder is None and secrets is None:
        return None
    return reach.Reach(files=files, folder=pathlib.Path(folder) if folder else None, secrets=secrets)
