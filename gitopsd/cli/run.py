"""``gitopsd run``: the daemon's command line, wiring and process life (signals, shutdown).

``gitopsd.cli`` registers it with ``cli_run.add_parser(sub)``. The loop itself is
``gitopsd.daemon``; the endpoints ``gitopsd.httpserver``; this module builds them from flags, adds
the local file watch, and turns SIGTERM/SIGINT into a graceful stop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import pathlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog

from gitopsd import errors, reconcile
from gitopsd.adapters import statelock
from gitopsd.cli import flags
from gitopsd.wiring import assemble
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import kube as wiring_kube
from gitopsd.wiring import settings as wiring_settings

if TYPE_CHECKING:  # the daemon, its HTTP server and metrics are imported by `gitopsd run` alone, when it starts
    from gitopsd import daemon

log = structlog.get_logger()

EXIT_OK, EXIT_NOT_READY, EXIT_ERROR = 0, 1, 2
DEFAULT_LISTEN = "127.0.0.1:9797"

EPILOG = f"""\
endpoints (--listen, default {DEFAULT_LISTEN}; loopback only, so nothing is exposed by default;
in a container use --listen 0.0.0.0:9797):
  GET  /healthz            200 while the reconcile loop runs
  GET  /readyz             200 once a pass has completed, else 503 and the reason
  GET  /metrics            Prometheus metrics (gitopsd_*)
  POST /hook               push webhook, provider detected from its headers
  POST /hooks/PROVIDER     push webhook from github, gitlab, gitea or gogs
  Webhooks need --webhook-secret-file: GitHub/Gitea/Gogs HMAC-SHA256 signatures, GitLab's token.

when passes run:
  every --interval (±10% jitter), but only when the revision moved (a cheap HEAD check first);
  at once on a webhook push or a --watch change; every --resync-interval even without a new
  revision (drift correction). Transient errors retry with backoff (1s, 2s, 4s ... 5m); stalled
  errors wait for a new revision. SIGTERM/SIGINT: finish the pass in flight (up to
  --shutdown-timeout, then abandon it: the store applies in one transaction) and exit 0.

durations: 500ms, 30s, 10m, 1h, or plain seconds.

exit codes:
  0  stopped by SIGTERM/SIGINT; with --once: the pass is Ready
  1  with --once: a pack failed or is blocked
  2  error (bad arguments, unreadable repo, invalid gitopsd.yaml, port in use, backend failure)

examples:
  gitopsd run examples-repo                         poll every 30s, serve on {DEFAULT_LISTEN}
  gitopsd run ./my-packs --watch --interval 5m      a pass on every saved edit of a plain folder
  gitopsd run repo --listen 0.0.0.0:9797 --webhook-secret-file /etc/gitopsd/webhook-secret
"""

parse_duration = flags.parse_duration


def parse_listen(text: str) -> tuple[str, int] | None:
    """``HOST:PORT``, ``:PORT`` (all interfaces), ``[v6]:PORT``; ``off`` turns the server off."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"--listen {text!r}: use HOST:PORT (e.g. {DEFAULT_LISTEN}), :PORT or off")
    return host.removeprefix("[").removesuffix("]"), int(port)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    help_text = "the daemon: reconcile on every new revision, webhook and resync; serve /metrics, /healthz, /readyz"
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run", help=help_text, description=help_text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.common(p, output=False, log_level="info")
    flags.signing(p)
    flags.registry(p)
    flags.git(p)
    flags.render(p)
    flags.render_wait(p)
    flags.delivery(p)
    flags.kube(p)
    flags.full(p, daemon=True)
    p.add_argument("--once", action="store_true", help="run one pass and exit (exit codes as 'gitopsd reconcile')")
    p.add_argument("--interval", type=parse_duration, default=30.0, metavar="DURATION",
                   help="how often to look for a new revision, ±10%% jitter (default: 30s)")
    p.add_argument("--resync-interval", type=parse_duration, default=600.0, metavar="DURATION",
                   help="a full pass at least this often even without a new revision, to correct drift; "
                   "0 turns it off (default: 10m)")
    p.add_argument("--watch", action="store_true",
                   help="also run a pass when the local REPO changes. On a plain folder: every saved edit. On a Git "
                   "work tree gitopsd reconciles committed content only, so it reacts to commits, checkouts and "
                   "resets (HEAD and refs moving), not to uncommitted edits: to try edits before committing, run "
                   "on a plain folder (a copy without .git)")
    p.add_argument("--watch-debounce", type=parse_duration, default=0.5, metavar="DURATION",
                   help="with --watch: a batch of changes ends after this long without another change (default: 500ms)")
    p.add_argument("--listen", type=parse_listen, default=parse_listen(DEFAULT_LISTEN), metavar="HOST:PORT",
                   help=f"address of /metrics, /healthz, /readyz and the webhook receiver; :PORT for all "
                   f"interfaces, off for none (default: {DEFAULT_LISTEN})")
    p.add_argument("--webhook-secret-file", metavar="PATH", help="file holding the webhook shared secret (surrounding "
                   "whitespace ignored); without it the webhook endpoints answer 404")
    p.add_argument("--shutdown-timeout", type=parse_duration, default=30.0, metavar="DURATION",
                   help="on SIGTERM/SIGINT, how long the pass in flight may take before it is abandoned (default: 30s)")
    p.set_defaults(func=cmd_run)
    return p


# --- wiring ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_env(settings: wiring_settings.Settings, repo: str, state_dir: pathlib.Path,
             stop: threading.Event | None = None) -> Iterator[reconcile.Env]:
    """The Env of ``run`` for any REPO form (folder, bare repository, URL), with status write-back
    to a Git remote and, with Kubernetes flags, the cluster backend behind a Lease (a follower
    waits here until it leads); the embedded store, cache and layout are closed on exit."""
    with statelock.acquire(state_dir), \
            assemble.pass_env(settings, state_dir, repo=repo, dry_run=False, daemon=not settings.daemon.once,
                              stop=stop) as wired:  # one writer per state dir, for the whole pass
        yield wired.env


@contextlib.contextmanager
def open_local_env(repo: pathlib.Path, state_dir: pathlib.Path, *, signing_key: str | None, trusted_keys: str | None,
                   registry_url: str | None) -> Iterator[reconcile.Env]:
    """The Env of ``run`` on a local folder with the embedded store and default Git options."""
    held = statelock.acquire(state_dir)
    try:
        local = wiring.open_local(state_dir)
    except BaseException:
        held.release()
        raise
    try:
        yield wiring.local_env(repo, local, dry_run=False, signing_key=signing_key, trusted_keys=trusted_keys,
                               registry_url=registry_url)
    finally:
        local.close()
        held.release()


def read_secret(path: str) -> bytes:
    try:
        secret = pathlib.Path(path).read_bytes().strip()
    except OSError as err:
        raise errors.ConfigError(f"--webhook-secret-file {path}: {err.strerror}", reason="WebhookSecret") from err
    if not secret:
        raise errors.ConfigError(f"--webhook-secret-file {path} is empty; put the webhook's shared secret in it",
                                 reason="WebhookSecret")
    return secret


def run_once(open_env: daemon.EnvFactory) -> int:
    from gitopsd import daemon  # noqa: PLC0415 - see the imports at the top

    with structlog.contextvars.bound_contextvars(mode="run"), open_env() as env:
        state = reconcile.run_applying_slow_renders_last(env)
        with structlog.contextvars.bound_contextvars(revision=state.revision):
            log.info("pass finished", trigger="once", **daemon.summary_facts(state))
    assert state.summary is not None
    return EXIT_OK if state.summary.ready else EXIT_NOT_READY


def daemon_options(settings: wiring_settings.Settings) -> daemon.Options:
    """When the loop runs passes and how each one plans, from the flags of ``gitopsd run``."""
    from gitopsd import daemon  # noqa: PLC0415 - see the imports at the top

    given = settings.daemon
    return daemon.Options(interval=given.interval, resync_interval=given.resync_interval, branch=settings.git.branch,
                          full_plan=settings.full)


class _Signals:
    """SIGTERM/SIGINT: the first asks for a graceful stop, a second one stops waiting for the pass.

    The handler only sets events (no locks, no logging: it interrupts the main thread anywhere).
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abandon = threading.Event()
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _: object) -> None:
        if self.stop.is_set():
            self.abandon.set()
        self.received = self.received or signal.Signals(signum).name
        self.stop.set()

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]  # getsignal() may give None for handlers set outside Python


def cmd_run(settings: wiring_settings.Settings) -> int:
    assert settings.repo is not None  # REPO is a positional argument of run
    given = settings.daemon
    kind = wiring.repo_kind(settings.repo)  # a missing folder or a URL holding credentials stops here
    state_dir = wiring.state_dir(settings)
    repo_arg = settings.repo
    if settings.as_git_remote:
        if kind is not wiring.RepoKind.FOLDER:
            raise errors.ConfigError(f"--as-git-remote takes a plain folder; {settings.repo} already is a Git remote",
                                     reason="Usage")
        with statelock.acquire(state_dir):
            repo_arg = str(wiring.ensure_demo_remote(pathlib.Path(settings.repo), state_dir))
        kind = wiring.repo_kind(repo_arg)
    if kind is not wiring.RepoKind.URL:
        wiring.check_state_dir(state_dir, pathlib.Path(repo_arg))
    if given.watch and kind is not wiring.RepoKind.FOLDER:
        raise errors.ConfigError("--watch watches a local folder; for a Git remote use the webhook receiver", reason="Usage")
    repo = pathlib.Path(settings.repo)
    flags.require_signing_key(settings, writes=True, kube=wiring_kube.options(settings) is not None)
    signals = _Signals()
    env_factory = functools.partial(open_env, settings, repo_arg, state_dir, signals.stop)
    if given.once:
        return run_once(env_factory)
    if given.interval <= 0:
        raise errors.ConfigError("--interval must be more than 0", reason="Usage")
    secret = read_secret(given.webhook_secret_file) if given.webhook_secret_file else None
    if secret is not None and given.listen is None:
        raise errors.ConfigError("--webhook-secret-file needs the HTTP server: drop --listen off", reason="Usage")

    from gitopsd import daemon, httpserver, metrics  # noqa: PLC0415 - see the imports at the top
    from gitopsd.adapters import watch  # noqa: PLC0415

    measures = metrics.Metrics()
    loop = daemon.Daemon(env_factory, daemon_options(settings), metrics=measures)
    server = None
    if given.listen is not None:
        host, port = given.listen
        try:
            server = httpserver.Server(host, port, loop, metrics=measures, secret=secret)
        except OSError as err:
            raise errors.ConfigError(f"--listen {host}:{port}: {err.strerror}", reason="ListenFailed") from err

    watching = watch.watch_plan(repo, state_dir / "trees") if given.watch else None

    with signals:
        log.info("daemon starting", repo=str(repo), state_dir=str(state_dir), interval=given.interval,
                 resync_interval=given.resync_interval, watch=given.watch)
        loop.start()
        if server is not None:
            server.start()
        if watching is not None:
            paths, keep, what = watching
            log.info("watching", paths=[str(p) for p in paths], reacts_to=what)
            threading.Thread(target=watch.watch, args=(paths, keep), name="gitopsd-watch", daemon=True,
                             kwargs={"debounce": given.watch_debounce, "stop": signals.stop, "trigger": loop.trigger}).start()
        while not signals.stop.wait(0.2) and loop.alive():
            pass
        if signals.received:
            log.info("stopping", signal=signals.received, shutdown_timeout=given.shutdown_timeout)
        loop.stop()
        signals.stop.set()  # ends the watch
        if server is not None:
            server.stop()
        deadline = time.monotonic() + given.shutdown_timeout
        while not loop.join(0.1):
            if signals.abandon.is_set() or time.monotonic() >= deadline:
                log.warning("pass in flight abandoned", shutdown_timeout=given.shutdown_timeout,
                            note="the local store applies a pass in one transaction: nothing is half-applied")
                return EXIT_OK
    if loop.error is not None:
        if isinstance(loop.error, errors.GitopsdError):
            raise loop.error
        log.error("reconcile loop crashed", error=repr(loop.error))
        return EXIT_ERROR
    log.info("stopped", passes=loop.passes)
    return EXIT_OK

