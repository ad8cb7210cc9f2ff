"""One function builds a command's whole Env from Settings: :func:`pass_env`.

The embedded backends under the state dir (``compose.open_local``), the source, keys, registry and
status write-back (``compose.build_env``), the management cluster with its Lease when a Kubernetes
flag is given (``kube.connected``), and the Deliverer (``delivery.deliverer``). ``reconcile``,
``dry-run``, ``diff`` (``gitopsd.cli.main``) and ``run`` (``gitopsd.cli.run``) enter it once per
pass; on exit it releases the Lease and closes the clients and the local store. ``gitopsd plan``
builds its two preview Envs with ``compose.base_env`` (``gitopsd.preview``).
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections.abc import Callable, Iterator

from gitopsd.wiring import compose, kube
from gitopsd.wiring import delivery as wiring_delivery
from gitopsd.wiring import settings as settings_mod


@contextlib.contextmanager
def pass_env(settings: settings_mod.Settings, state_dir: pathlib.Path, *, repo: str, dry_run: bool, daemon: bool = False,
             stop: threading.Event | None = None,
             progress: Callable[[str, dict[str, object]], None] | None = None) -> Iterator[compose.Wired]:
    """The complete Env of a pass on ``repo`` (which may differ from ``settings.repo``: the demo remote
    of ``--as-git-remote``). A dry run on a state dir that cannot be written writes nothing to it.
    ``daemon`` (``gitopsd run``): a watch-backed cluster cache, and a wait for leadership (until ``stop``)."""
    local = compose.open_local(state_dir, read_only=dry_run and not compose.writable(state_dir))
    try:
        wired = compose.build_env(settings, local, repo=repo, dry_run=dry_run)
        env = wired.env
        env.progress = progress
        env.render_wait = settings.render_wait
        env.full_plan = settings.full  # the daemon also sets it per pass (a resync plans every pack)
        env.passes_follow = daemon
        with kube.connected(settings, writes=not dry_run, daemon=daemon, stop=stop) as handle:
            if handle is not None:
                handle.install(env)
            wired.secrets = kube.secret_reader(handle)
            env.deliverer = wiring_delivery.deliverer(settings, registry=env.registry, verifier=env.verifier,
                                                      clock=env.clock, secrets=wired.secrets)
            yield wired
    finally:
        local.close()
