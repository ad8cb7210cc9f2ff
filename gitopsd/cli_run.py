"""``gitopsd run``: the daemon's command line, wiring and process life (signals, shutdown).

``gitopsd.cli`` registers it with ``cli_run.add_parser(sub)``. The loop itself is
``gitopsd.daemon``; the endpoints ``gitopsd.httpserver``; this module builds them from flags, adds
the local file watch, and turns SIGTERM/SIGINT into a graceful stop.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import pathlib
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator

import structlog

from gitopsd import daemon, errors, httpserver, metrics, ports, reconcile, wiring
from gitopsd.adapters import fstree, gittree, system

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

_DURATION = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``10m``, ``1h`` or plain seconds, as seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 500ms, 30s, 10m, 1h")
    return float(match["value"]) * _UNITS[match["unit"]]


def parse_listen(text: str) -> tuple[str, int] | None:
    """``HOST:PORT``, ``:PORT`` (all interfaces), ``[v6]:PORT``; ``off`` turns the server off."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"--listen {text!r}: use HOST:PORT (e.g. {DEFAULT_LISTEN}), :PORT or off")
    return host.removeprefix("[").removesuffix("]"), int(port)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    help_text = "the daemon: reconcile on every new revision, webhook and resync; serve /metrics, /healthz, /readyz"
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run", help=help_text, description=help_text, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo", metavar="REPO", help="config repo: a plain folder, or a Git work tree (read at HEAD: "
                   "committed content only)")
    p.add_argument("--state-dir", metavar="DIR", help="where the embedded store, OCI layout, cache and keys live "
                   "(default: $XDG_STATE_HOME/gitopsd/<repo>-<hash>, i.e. ~/.local/state/gitopsd/...)")
    p.add_argument("--signing-key", metavar="PATH", help="Ed25519 private key that signs ClusterPacks "
                   "(default: a key generated in the state dir)")
    p.add_argument("--trusted-keys", metavar="PATH", help="trusted public keys; delivery needs a signature by one "
                   "of them (default: the signing key)")
    p.add_argument("--registry-url", metavar="HOST[:PORT]/PATH", help="registry URL recorded in ClusterPacks "
                   "(default: gitopsd.yaml 'registry', else oci-layout://packs)")
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
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="log level on stderr (default: %(default)s)")
    p.add_argument("--log-format", default="auto", choices=("auto", "json", "console"),
                   help="log format (default: JSON unless stderr is a TTY)")
    p.set_defaults(func=cmd_run)
    return p


# --- wiring ---------------------------------------------------------------------------------------
class LocalHeadSource:
    """The local folder source, made ``ports.Pollable``: ``head()`` names the revision a fetch would
    read (the HEAD commit of a Git work tree, or the content hash of a plain folder) without a pass."""

    def __init__(self, source: system.LocalSource) -> None:
        self.source = source

    def fetch(self) -> ports.Tree:
        return self.source.fetch()

    def head(self) -> str | None:
        tree = gittree.open_worktree(self.source.path, self.source.export_dir)
        if tree is not None:
            return tree.snapshot.revision
        return fstree.FsTree(self.source.path).snapshot.revision


@contextlib.contextmanager
def open_local_env(repo: pathlib.Path, state_dir: pathlib.Path, *, signing_key: str | None, trusted_keys: str | None,
                   registry_url: str | None) -> Iterator[reconcile.Env]:
    """The Env of ``run`` on a local REPO with the embedded store; closed on exit.

    Local folders only for now: this switches to the shared env builder once Git remotes land.
    """
    local = wiring.open_local(state_dir)
    try:
        env = wiring.local_env(repo, local, dry_run=False, signing_key=signing_key, trusted_keys=trusted_keys,
                               registry_url=registry_url)
        if isinstance(env.source, system.LocalSource):
            env.source = LocalHeadSource(env.source)  # type: ignore[assignment]
        yield env
    finally:
        local.close()


def read_secret(path: str) -> bytes:
    try:
        secret = pathlib.Path(path).read_bytes().strip()
    except OSError as err:
        raise errors.ConfigError(f"--webhook-secret-file {path}: {err.strerror}", reason="WebhookSecret") from err
    if not secret:
        raise errors.ConfigError(f"--webhook-secret-file {path} is empty; put the webhook's shared secret in it",
                                 reason="WebhookSecret")
    return secret


# --- local watch -----------------------------------------------------------------------------------
_IGNORED_NAMES = ("*.swp", "*.swx", "*~", ".#*", "4913", ".DS_Store")  # editor scratch files


def _git_dirs(repo: pathlib.Path) -> list[pathlib.Path]:
    """The folders holding HEAD and the refs of a work tree (two for a linked work tree)."""
    dot_git = repo / ".git"
    if dot_git.is_dir():
        return [dot_git.resolve()]
    text = dot_git.read_text(encoding="utf-8").strip()
    git_dir = (repo / text.removeprefix("gitdir:").strip()).resolve()
    dirs = [git_dir]
    common = git_dir / "commondir"
    if common.is_file():
        dirs.append((git_dir / common.read_text(encoding="utf-8").strip()).resolve())
    return dirs


def watch_plan(repo: pathlib.Path, export_dir: pathlib.Path) -> tuple[list[pathlib.Path], Callable[[object, str], bool], str]:
    """What ``--watch`` watches: (paths, filter, description).

    A Git work tree is reconciled at HEAD, so only HEAD and refs moving can change what a pass
    reads: watch those. A plain folder is read as it is: watch its files, minus ``.git/``,
    ``.gitopsd/`` (never desired state) and editor scratch files.
    """
    if gittree.open_worktree(repo, export_dir) is not None:
        roots = _git_dirs(repo)

        def git_filter(_: object, path: str) -> bool:
            p = pathlib.Path(path)
            if p.name.endswith(".lock"):
                return False
            for root in roots:
                if p == root / "HEAD" or p == root / "packed-refs" or root / "refs" in p.parents:
                    return True
            return False

        return roots, git_filter, "git work tree: commits, checkouts and resets"

    root = repo.resolve()

    def folder_filter(_: object, path: str) -> bool:
        p = pathlib.Path(path)
        try:
            parts = p.relative_to(root).parts
        except ValueError:
            return False
        if any(part in fstree.SKIP for part in parts):
            return False
        return not any(fnmatch.fnmatch(p.name, pattern) for pattern in _IGNORED_NAMES)

    return [root], folder_filter, "plain folder: saved edits"


def watch(paths: list[pathlib.Path], keep: Callable[[object, str], bool], *, debounce: float, stop: threading.Event,
          trigger: Callable[[str], bool]) -> None:
    """Trigger a pass for each batch of changes until ``stop`` is set. Runs in its own thread."""
    import watchfiles  # noqa: PLC0415 - only --watch needs it

    step = max(int(debounce * 1000), 1)
    try:
        for changes in watchfiles.watch(*paths, watch_filter=keep, step=step, debounce=max(step * 10, 1600),
                                        stop_event=stop, rust_timeout=1000, raise_interrupt=False):
            names = sorted(pathlib.Path(p).name for _, p in changes)
            log.info("files changed", count=len(names), files=names[:5])
            if not trigger("watch"):
                return
    except Exception as err:  # noqa: BLE001 - a dead watch must not go unnoticed
        log.error("watch stopped", error=str(err), paths=[str(p) for p in paths])


# --- the command ----------------------------------------------------------------------------------
def _repo_path(args: argparse.Namespace) -> pathlib.Path:
    repo = pathlib.Path(args.repo)
    if not repo.is_dir():
        raise errors.ConfigError(f"config repo {args.repo} is not a folder; give the path of a config repo", reason="RepoNotFound")
    return repo


def run_once(open_env: daemon.EnvFactory) -> int:
    with structlog.contextvars.bound_contextvars(mode="run"), open_env() as env:
        state = reconcile.run(env)
        with structlog.contextvars.bound_contextvars(revision=state.revision):
            log.info("pass finished", trigger="once", **daemon.summary_facts(state))
    assert state.summary is not None
    return EXIT_OK if state.summary.ready else EXIT_NOT_READY


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
            signal.signal(signum, previous)  # type: ignore[arg-type]


def cmd_run(args: argparse.Namespace) -> int:
    repo = _repo_path(args)
    state_dir = pathlib.Path(args.state_dir) if args.state_dir else wiring.default_state_dir(args.repo)
    wiring.check_state_dir(state_dir, repo)
    open_env = functools.partial(open_local_env, repo, state_dir, signing_key=args.signing_key,
                                 trusted_keys=args.trusted_keys, registry_url=args.registry_url)
    if args.once:
        return run_once(open_env)
    if args.interval <= 0:
        raise errors.ConfigError("--interval must be more than 0", reason="Usage")
    secret = read_secret(args.webhook_secret_file) if args.webhook_secret_file else None
    if secret is not None and args.listen is None:
        raise errors.ConfigError("--webhook-secret-file needs the HTTP server: drop --listen off", reason="Usage")

    measures = metrics.Metrics()
    loop = daemon.Daemon(open_env, daemon.Options(interval=args.interval, resync_interval=args.resync_interval),
                         metrics=measures)
    server = None
    if args.listen is not None:
        host, port = args.listen
        try:
            server = httpserver.Server(host, port, loop, metrics=measures, secret=secret)
        except OSError as err:
            raise errors.ConfigError(f"--listen {host}:{port}: {err.strerror}", reason="ListenFailed") from err

    watching = watch_plan(repo, state_dir / "trees") if args.watch else None

    with _Signals() as signals:
        log.info("daemon starting", repo=str(repo), state_dir=str(state_dir), interval=args.interval,
                 resync_interval=args.resync_interval, watch=args.watch)
        loop.start()
        if server is not None:
            server.start()
        if watching is not None:
            paths, keep, what = watching
            log.info("watching", paths=[str(p) for p in paths], reacts_to=what)
            threading.Thread(target=watch, args=(paths, keep), name="gitopsd-watch", daemon=True,
                             kwargs={"debounce": args.watch_debounce, "stop": signals.stop, "trigger": loop.trigger}).start()
        while not signals.stop.wait(0.2) and loop.alive():
            pass
        if signals.received:
            log.info("stopping", signal=signals.received, shutdown_timeout=args.shutdown_timeout)
        loop.stop()
        signals.stop.set()  # ends the watch
        if server is not None:
            server.stop()
        deadline = time.monotonic() + args.shutdown_timeout
        while not loop.join(0.1):
            if signals.abandon.is_set() or time.monotonic() >= deadline:
                log.warning("pass in flight abandoned", shutdown_timeout=args.shutdown_timeout,
                            note="the local store applies a pass in one transaction: nothing is half-applied")
                return EXIT_OK
    if loop.error is not None:
        if isinstance(loop.error, errors.GitopsdError):
            raise loop.error
        log.error("reconcile loop crashed", error=repr(loop.error))
        return EXIT_ERROR
    log.info("stopped", passes=loop.passes)
    return EXIT_OK

