"""Builds the push-mode Deliverer of a pass from Settings (``gitopsd.delivery``).

Without a way to reach any cluster (no ``--kubeconfig-dir``/``--cluster-kubeconfig``, and no
management cluster whose Secrets ``clusters/<name>.yaml`` may name) there is nothing to deliver
and the Env keeps ``deliverer=None``: records only, as before delivery existed.
``gitopsd.wiring.assemble`` calls :func:`deliverer` while it builds an Env.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

from gitopsd import errors, ports
from gitopsd.delivery import reach
from gitopsd.wiring import settings as settings_mod

if TYPE_CHECKING:  # the delivery engine is imported only when a target cluster can be reached
    from gitopsd.delivery import runner


class _Now:
    def __init__(self, clock: ports.Clock) -> None:
        self.clock = clock

    def __call__(self) -> str:
        return self.clock.now()


def deliverer(settings: settings_mod.Settings, *, registry: ports.Registry, verifier: ports.Verifier | None,
              clock: ports.Clock, secrets: reach.SecretReader | None = None) -> runner.Runner | None:
    """A Deliverer when the flags (or a management cluster) give a way to reach clusters, else None."""
    where = reach_of(settings, secrets=secrets)
    if where is None:
        return None
    if not isinstance(registry, ports.ServesArtifacts):
        raise errors.ConfigError("this registry cannot serve artifacts back for delivery", reason="Usage")
    from gitopsd.delivery import engine, runner  # noqa: PLC0415 - see the imports at the top

    eng = engine.Engine(registry, verifier, now=_Now(clock))
    return runner.Runner(where, eng, workers=settings.delivery.workers)


def reach_of(settings: settings_mod.Settings, *, secrets: reach.SecretReader | None = None) -> reach.Reach | None:
    """How the flags (or a management cluster's Secrets) reach target clusters; None when nothing can be
    reached (then there is nothing to deliver, and ``gitopsd diff --live`` has nothing to read)."""
    files = settings.delivery.kubeconfigs()
    folder = settings.delivery.kubeconfig_dir
    if folder is not None and not pathlib.Path(folder).is_dir():
        raise errors.ConfigError(f"--kubeconfig-dir {folder}: not a folder", reason="Usage")
    if not files and folder is None and secrets is None:
        return None
    return reach.Reach(files=files, folder=pathlib.Path(folder) if folder else None, secrets=secrets)
