"""Bounded child processes: the watchdog the external renderers run under, and the limits of one pack.

Why this exists: a template or base that multiplies must never take the daemon down. The two
external renderers (kustomize, the Helm SDK in a child Python) run under :func:`run_bounded`, which
kills them past ``RENDER_TIMEOUT``, ``RENDER_MAX_RSS`` resident memory or ``MAX_PACK_BYTES`` of
output; :func:`stopped_error` and :func:`too_big` say which limit was met and what to do.

Neighbours: ``adapters.renderkustomize`` and ``adapters.renderhelm`` (run under it),
``adapters.renderraw`` (the same size cap, counted as files are read).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time

from gitopsd import errors
from gitopsd.core import compile as compile_core
from gitopsd.model import spec

RENDER_TIMEOUT = 120  # seconds a kustomize build or a helm render may take


KUSTOMIZE_TIMEOUT = RENDER_TIMEOUT


RENDER_MAX_RSS = 384 * 1024 * 1024  # resident memory of a renderer process


MAX_PACK_BYTES = compile_core.MAX_PACK_BYTES  # rendered YAML of one pack


_PAGE = os.sysconf("SC_PAGE_SIZE")


def too_big(build: spec.PackBuild, field: str, what: str) -> errors.RenderError:
    return errors.RenderError(
        f"field {field!r}: {what} more than {MAX_PACK_BYTES // (1024 * 1024)} MiB of YAML, the limit of one pack; "
        "split it into several packs",
        path=build.path,
        reason="PackTooLarge",
    )


class Bounded:
    """What a child process left: exit code, stdout, the tail of stderr, and why it was stopped."""

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes, stopped: str | None) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.stopped = stopped  # "timeout", "memory", "output" or None

    def last_error_line(self) -> str:
        lines = [line for line in self.stderr.decode("utf-8", "replace").strip().splitlines() if line.strip()]
        return " ".join(lines[-1].split()) if lines else f"exit code {self.returncode}"


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def run_bounded(argv: list[str], *, stdin: bytes = b"", cwd: str | os.PathLike[str] | None = None,
                env: dict[str, str] | None = None, timeout: float = RENDER_TIMEOUT, max_rss: int = RENDER_MAX_RSS,
                max_output: int = MAX_PACK_BYTES) -> Bounded:
    """Run a renderer as a child under a watchdog: killed (with its process group) past ``timeout``
    seconds, ``max_rss`` bytes resident or ``max_output`` bytes on stdout."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                            env=env, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def feed() -> None:
        try:
            proc.stdin.write(stdin)  # type: ignore[union-attr]  # Popen(stdin=PIPE): stdin is set
            proc.stdin.close()  # type: ignore[union-attr]  # Popen(stdin=PIPE): stdin is set
        except OSError:
            pass  # the child exited or was killed: its exit code tells

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out, err = bytearray(), bytearray()
    stopped: str | None = None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        open_streams = 2
        while open_streams and stopped is None:
            for key, _ in sel.select(timeout=0.02):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                buffer: bytearray = key.data
                buffer += chunk
                if buffer is err and len(err) > 1 << 16:
                    del err[: len(err) - (1 << 16)]
            if len(out) > max_output:
                stopped = "output"
            elif _rss(proc.pid) > max_rss:
                stopped = "memory"
            elif time.monotonic() > deadline:
                stopped = "timeout"
    if stopped is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 5))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
        stopped = stopped or "timeout"
    writer.join(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    return Bounded(returncode, bytes(out), bytes(err), stopped)


def stopped_error(result: Bounded, *, tool: str, what: str, build: spec.PackBuild, field: str) -> errors.RenderError:
    if result.stopped == "output":
        return too_big(build, field, f"{tool} rendered {what} into")
    if result.stopped == "memory":
        detail = f"used over {RENDER_MAX_RSS // (1024 * 1024)} MiB of memory rendering {what}"
    else:
        detail = f"did not finish rendering {what} within {RENDER_TIMEOUT}s"
    return errors.RenderError(f"field {field!r}: {tool} {detail} and was stopped; the source expands too much: "
                              "make it smaller", path=build.path, reason="RenderTooLarge")
