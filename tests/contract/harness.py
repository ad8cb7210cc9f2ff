"""Helpers for the tests that run gitopsd against a real Kubernetes API server.

``Passes`` runs real reconcile passes of a config repo with the Kubernetes Cluster adapter; the
source, OCI layout, compile cache and keys stay local, as ``gitopsd.wiring`` sets them up.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gitopsd import ports, reconcile
from gitopsd.adapters import render, schemafiles, system
from gitopsd.wiring import compose as wiring

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples-repo"
GROUP = "infrastructure.ontai.dev"
PACKS = "infrastructureclusterpacks"
INSTANCES = "packinstances"


class Passes:
    """Reconcile passes of ``repo`` against ``cluster``."""

    def __init__(self, repo: pathlib.Path, state: pathlib.Path, cluster: ports.Cluster,
                 pack_filter: Callable[[str], bool] | None = None) -> None:
        self.repo = repo
        self.cluster = cluster
        self.pack_filter = pack_filter
        self.local = wiring.open_local(state)
        self.signer, self.verifier = wiring.signing(state, None, None, create=True)

    def env(self, *, dry_run: bool = False) -> reconcile.Env:
        return reconcile.Env(
            source=system.LocalSource(self.repo, self.local.state_dir / "trees"),
            cluster=self.cluster,
            registry=self.local.layout,
            cache=self.local.cache,
            clock=system.SystemClock(),
            renderers=render.renderers(),
            schemas=schemafiles.schemas(),
            signer=self.signer,
            verifier=self.verifier,
            dry_run=dry_run,
            pack_filter=self.pack_filter,
        )

    def run(self, *, dry_run: bool = False) -> reconcile.PassState:
        return reconcile.run(self.env(dry_run=dry_run))

    def close(self) -> None:
        self.local.close()


def wait_until(predicate: Callable[[], object], *, timeout: float = 10.0, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def threads_left(before: set[threading.Thread], timeout: float = 5.0) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := [t for t in set(threading.enumerate()) - before if t.is_alive()]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def gitopsd_threads() -> Iterator[threading.Thread]:
    return (t for t in threading.enumerate() if t.name.startswith("gitopsd-"))
