"""The reconcile loop of ``gitopsd run``: when to run a pass, and what to do when one fails.

It runs ``gitopsd.reconcile.run`` on:
- a poll every ``interval`` (±10% jitter). A source that implements ``ports.Pollable`` is asked for
  its ``head()`` first, and when that revision is the one already reconciled the pass is skipped,
  so a poll that finds nothing new costs a ref lookup, not a pass;
- a trigger (``trigger(reason)``: a webhook, a file watch), at once;
- a resync every ``resync_interval`` even when Git did not move, to correct drift in the cluster;
- the end of a render a pass left running (``Env.render_wait``): the next pass takes its result.

A transient error (``errors.TransientError``, or any unexpected exception) is retried with
exponential backoff and jitter, reset by the next success; triggers wait for the backoff, so a
burst of pushes cannot hammer a registry that is down. A stalled error (``errors.StalledError``,
``errors.ConfigError``) needs a human: polls skip the revision that stalled, and only a new
revision, a trigger or the next resync tries again.

Time is injected (``clock``, ``wait``) so tests drive the loop in virtual time. The loop owns the
``Env``: it opens it in its own thread (a SQLite store must be used by the thread that opened it)
and closes it on the way out. ``gitopsd.cli.run`` wires it; ``gitopsd.httpserver`` reads
``alive()``/``readiness()`` and calls ``trigger()``; ``gitopsd.metrics`` is fed after every pass.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import math
import random
import threading
import time
import traceback
from collections.abc import Callable

import structlog

from gitopsd import errors, metrics, ports, reconcile

log = structlog.get_logger()

EnvFactory = Callable[[], contextlib.AbstractContextManager[reconcile.Env]]
Waiter = Callable[[threading.Event, float], object]  # wait(event, seconds): returns early when the event is set
RunPass = Callable[[reconcile.Env], reconcile.PassState]


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    interval: float = 30.0  # seconds between polls
    jitter: float = 0.1  # ±10% on the poll interval; backoff delays get up to -10%
    resync_interval: float = 600.0  # a full pass at least this often; 0 turns resync off
    backoff_base: float = 1.0  # first retry delay after a transient error
    backoff_max: float = 300.0  # retry delays double up to this
    branch: str | None = None  # the branch webhooks must push to; None: the branch of the last revision
    full_plan: bool = False  # every pass plans every pack (``gitopsd run --full``), not only each resync


def jittered(seconds: float, jitter: float, rng: random.Random) -> float:
    return seconds * rng.uniform(1.0 - jitter, 1.0 + jitter) if jitter else seconds


def backoff_delay(failures: int, options: Options, rng: random.Random) -> float:
    """Delay before retry number ``failures`` (1, 2, ...): base·2^(n-1) capped, minus up to ``jitter``.

    The jitter only shortens a delay, so delays keep growing until the cap and never exceed it.
    """
    exponent = min(failures - 1, 62)
    delay = min(options.backoff_max, options.backoff_base * (2.0 ** exponent))
    return delay * rng.uniform(1.0 - options.jitter, 1.0) if options.jitter else delay


def branch_of(revision: str | None) -> str | None:
    """``main`` for ``main@sha1:<hex>``; ``None`` for a plain folder or a detached HEAD."""
    if not revision or "@sha1:" not in revision:
        return None
    ref = revision.split("@sha1:", 1)[0]
    return None if ref in ("", "HEAD") else ref


def summary_facts(state: reconcile.PassState) -> dict[str, object]:
    """The facts of the one summary log line of a pass."""
    assert state.summary is not None
    facts = state.summary.to_json(notes=False)
    facts["seconds"] = round(state.timings.get("total", 0.0), 3)
    return facts


def settle() -> float:
    """Between two passes of one process (the daemon): collect the garbage the last pass left, then
    move every object still alive (memos, caches, the observed state) out of the collector's sight.

    A fleet's state is hundreds of thousands of long-lived objects; without this, every full
    collection during a pass walks all of them again (about half of a no-op pass at 10,000
    PackInstances). Frozen objects are still freed by reference counting when a later pass drops
    them; only a reference cycle among them would outlive its use, and the model has none.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t0


def _event_wait(event: threading.Event, seconds: float) -> object:
    return event.wait(seconds)


class Daemon:
    """The loop. ``run()`` blocks in the calling thread; ``start()`` runs it in a thread.

    Every other method is safe to call from any thread.
    """

    def __init__(self, open_env: EnvFactory, options: Options = Options(), *, metrics: metrics.Metrics | None = None,
                 run_pass: RunPass = reconcile.run, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, wait: Waiter = _event_wait,
                 rng: random.Random | None = None) -> None:
        self.options = options
        self.metrics = metrics
        self._open_env = open_env
        self._run_pass = run_pass
        self._clock = clock
        self._wall = wall
        self._wait = wait
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: str | None = None
        self._stopping = False
        self._running = False
        self._thread: threading.Thread | None = None
        # loop state, touched only by the loop thread
        self._next_poll = 0.0
        self._retry_at: float | None = None
        self._retry_pass = False  # retry a whole pass (True) or just the head() poll (False)
        self._failures = 0
        self._stalled_head: str | None = None
        self._last_pass_end: float | None = None
        self._watched: set[int] = set()  # ids of the renders left running that wake a pass when they end
        # read by other threads (single assignments)
        self.passes = 0  # passes started
        self.skipped = 0  # polls that found the reconciled revision
        self.last_revision: str | None = None
        self.last_error: str | None = None
        self.error: BaseException | None = None  # what stopped the loop, if anything did
        self._ready = False

    # --- control (any thread) -------------------------------------------------------------------
    def trigger(self, reason: str) -> bool:
        """Ask for a pass now; ``False`` when shutting down. Triggers during a pass coalesce into one."""
        with self._lock:
            if self._stopping:
                return False
            self._pending = reason
        self._wake.set()
        return True

    def stop(self) -> None:
        """Refuse new triggers; the loop ends after the pass in flight, if any."""
        with self._lock:
            self._stopping = True
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # --- status (any thread) --------------------------------------------------------------------
    def alive(self) -> bool:
        return self._running

    def readiness(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "shutting down"
        if not self._ready:
            if self.last_error:
                return False, f"no pass has completed yet; last error: {self.last_error}"
            return False, "no pass has completed yet"
        message = f"ok: reconciled {self.last_revision}"
        if self.last_error:
            message += f"; last attempt failed: {self.last_error}"
        return True, message

    def branch(self) -> str | None:
        return self.options.branch or branch_of(self.last_revision)

    # --- the loop -------------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        def target() -> None:
            try:
                self.run()
            except BaseException as err:  # noqa: BLE001 - kept for the thread that waits on the loop
                self.error = err

        self._running = True
        self._thread = threading.Thread(target=target, name="gitopsd-reconcile", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the loop thread; ``True`` when it ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def run(self) -> None:
        self._running = True
        try:
            with structlog.contextvars.bound_contextvars(mode="run"), self._open_env() as env:
                self._loop(env)
        finally:
            self._running = False

    def _loop(self, env: reconcile.Env) -> None:
        source = env.source
        head_of = source.head if isinstance(source, ports.Pollable) else None
        self._next_poll = self._clock()
        while True:
            self._wake.clear()
            if self._stopping:
                return
            now = self._clock()
            with self._lock:
                pending = self._pending
            action, delay = self._decide(now, pending)
            if action is None:
                self._wait(self._wake, delay)
                continue
            head = None
            if head_of is not None:  # cheap by contract; also names the revision a stalled pass was at
                try:
                    head = head_of()
                except Exception as err:  # noqa: BLE001 - every failure is classified in _failed
                    self._failed(err, None, None, retry_pass=action != "poll")
                    continue
                if action == "poll" and head is not None and head in (self.last_revision, self._stalled_head):
                    moved = isinstance(source, ports.StatusMoves) and source.status_moved()
                    if head != self.last_revision or not moved:
                        self._skip(head, now)
                        continue
                    action = "status"  # the same revision under another tip: check (and repair) the status records
            self._pass(env, action, head)

    def _decide(self, now: float, pending: str | None) -> tuple[str | None, float]:
        """What to do now (``retry``, a trigger's reason, ``resync``, ``poll``), or how long to wait."""
        if self._retry_at is not None:
            if now < self._retry_at:
                return None, self._retry_at - now
            return ("retry" if self._retry_pass else "poll"), 0.0
        if pending is not None:
            return pending, 0.0
        resync_at = math.inf
        if self.options.resync_interval > 0 and self._last_pass_end is not None:
            resync_at = self._last_pass_end + self.options.resync_interval
        if now >= resync_at:
            return "resync", 0.0
        if now >= self._next_poll:
            return "poll", 0.0
        return None, min(self._next_poll, resync_at) - now

    def _skip(self, head: str, now: float) -> None:
        self.skipped += 1
        if self.metrics is not None:
            self.metrics.poll_skipped()
        stalled = head == self._stalled_head and head != self.last_revision
        log.debug("no change", revision=head, stalled=stalled)
        if not stalled:
            self.last_error = None  # the head check works again and nothing is left to do
        self._retry_at = None
        self._failures = 0
        self._next_poll = now + jittered(self.options.interval, self.options.jitter, self._rng)

    def _pass(self, env: reconcile.Env, action: str, head: str | None) -> None:
        with self._lock:
            if self._stopping:
                return
            self._pending = None  # this pass reads the newest revision: it answers every trigger so far
        self.passes += 1
        started = self._clock()
        try:
            with structlog.contextvars.bound_contextvars(revision=head or self.last_revision or "", trigger=action):
                env.retry_failed = action == "resync"  # a resync renders remembered failures again
                # ... and retries failed deliveries and checks drift; so does the first pass of the process
                env.resync = action == "resync" or self.passes == 1
                # ... and plans every pack, not only the changed ones (with --full, every pass does)
                env.full_plan = self.options.full_plan or action == "resync"
                state = self._run_pass(env)
        except Exception as err:  # noqa: BLE001 - every failure is classified in _failed
            self._failed(err, head, self._clock() - started, retry_pass=True)
            return
        finally:
            self._watch_renders(env)
            settle()  # the next pass does not walk this one's long-lived objects again
        self._succeeded(state, action)

    def _watch_renders(self, env: reconcile.Env) -> None:
        """A render the pass left running asks for a pass when it ends (at once if it already has)."""
        running = env.memo.renders_running()
        self._watched &= {id(future) for future in running}
        for future in running:
            if id(future) not in self._watched:
                self._watched.add(id(future))
                future.add_done_callback(self._render_ended)

    def _render_ended(self, _: concurrent.futures.Future[ports.Rendered]) -> None:
        self.trigger("render")

    def _succeeded(self, state: reconcile.PassState, action: str) -> None:
        end = self._clock()
        self.last_revision = state.revision
        self.last_error = None
        self._ready = True
        self._stalled_head = None
        self._failures = 0
        self._retry_at = None
        self._last_pass_end = end
        self._next_poll = end + jittered(self.options.interval, self.options.jitter, self._rng)
        if self.metrics is not None:
            self.metrics.pass_finished(state, state.timings.get("total", 0.0), now=self._wall())
        with structlog.contextvars.bound_contextvars(revision=state.revision):
            log.info("pass finished", trigger=action, **summary_facts(state))

    def _failed(self, err: Exception, head: str | None, seconds: float | None, *, retry_pass: bool) -> None:
        """Classify a failure of a pass (``seconds`` it ran) or of ``head()`` (``seconds`` None)."""
        end = self._clock()
        known = err if isinstance(err, errors.GitopsdError) else None
        reason = known.reason if known else "InternalError"
        self.last_error = f"{reason}: {err}"
        if self.metrics is not None:
            self.metrics.failed(reason, seconds)
        step = "poll" if seconds is None else "pass"
        if known is None or known.transient:
            self._failures += 1
            delay = backoff_delay(self._failures, self.options, self._rng)
            self._retry_at = end + delay
            self._retry_pass = retry_pass
            facts: dict[str, object] = {"reason": reason, "error": str(err), "failures": self._failures,
                                        "retry_in": round(delay, 3)}
            if known is None:  # a bug, not an outage: keep the traceback
                facts["traceback"] = "".join(traceback.format_exception(err))
            log.warning(f"{step} failed, will retry", **facts)
            return
        # stalled: needs a change in Git or in the configuration; a resync tries again
        self._stalled_head = head
        self._failures = 0
        self._retry_at = None
        self._last_pass_end = end
        self._next_poll = end + jittered(self.options.interval, self.options.jitter, self._rng)
        log.error(f"{step} stalled", reason=reason, error=str(err),
                  waiting_for="a new revision" if head else "the next poll")
