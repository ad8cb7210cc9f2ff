"""One writer at a time per state dir: an exclusive ``flock`` on ``<state-dir>/lock``.

Why this exists: two gitopsd processes writing one state dir at once (two first runs, a manual
``reconcile`` next to ``run``) could each create a signing key, sign the store with one and leave
the other on disk, breaking every later pass. A pass that writes holds this lock from before the
state dir's first write (the demo remote, the key) until its store and cache are closed; a second
process waits up to ``GITOPSD_LOCK_TIMEOUT`` seconds (default ``DEFAULT_TIMEOUT``), saying once
that it waits and for whom, and then gives up with one line. Read-only commands never take it.

The lock belongs to the open file: it goes away when the process dies, even by ``kill -9``, so a
crash never leaves a state dir locked. Neighbours: ``wiring`` and ``cli_run`` take it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import sys
import time

from gitopsd import errors

LOCK_NAME = "lock"
TIMEOUT_ENV = "GITOPSD_LOCK_TIMEOUT"
DEFAULT_TIMEOUT = 300.0


class StateLock:
    def __init__(self, fd: int, path: pathlib.Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def timeout_from_env() -> float:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise errors.ConfigError(f"{TIMEOUT_ENV}={text!r}: give a number of seconds (0: do not wait)", reason="Usage")
    return value


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return "another gitopsd process"
    return f"gitopsd pid {text}" if text.isdigit() else "another gitopsd process"


def acquire(state_dir: pathlib.Path, *, timeout: float | None = None) -> StateLock:
    """The state dir's write lock, waiting up to ``timeout`` seconds for the process holding it."""
    wait = timeout_from_env() if timeout is None else timeout
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise errors.ConfigError(
            f"state dir {state_dir}: cannot open its lock file {path} for writing ({err.strerror}); a pass that writes "
            "needs a writable state dir (read-only commands: get, verify, dry-run, diff)",
            reason="StateDirUnwritable",
        ) from None
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise errors.ConfigError(f"state dir {state_dir}: cannot lock {path} ({err.strerror})",
                                         reason="StateDirUnwritable") from None
        if time.monotonic() >= deadline:
            holder = _holder(fd)
            os.close(fd)
            raise errors.TransientError(
                f"state dir {state_dir} is locked by {holder}, which is writing to it; waited {wait:g}s: run again "
                f"when it is done, or use another {errors.setting('state_dir')} ({TIMEOUT_ENV} sets the wait)",
                reason="StateDirLocked",
            )
        if not told:
            print(f"waiting for the state dir {state_dir}: {_holder(fd)} is writing to it", file=sys.stderr, flush=True)
            told = True
        time.sleep(0.05)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    except OSError:
        pass  # who holds it is a courtesy for the next waiter; the lock itself is held
    return StateLock(fd, path)
