"""A gitopsd that has imported everything once and forks a child per command.

``python -m gitopsd`` spends most of a second importing (the Kubernetes client, pygit2, ...)
before it does anything; the reliability suite runs gitopsd hundreds of times. Each command here
is still its own process (forked from this one before any file, socket or thread exists): it can
be killed with SIGKILL, its exit code and peak RSS are its own, a crash takes down only it.

Protocol, one JSON object per line: the parent writes ``{"argv", "cwd", "stdout", "stderr",
"env"}``; this process answers ``{"pid"}`` once the child exists, then ``{"status", "maxrss"}``
(raw wait status, KiB) when it has ended. ``harness.Zygote`` is the parent side.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _child(request: dict[str, object], main: object) -> None:
    code = 70
    try:
        os.setsid()  # its own process group: a kill of the group reaches kustomize and the helm child too
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, key in ((1, "stdout"), (2, "stderr")):
            target = os.open(str(request[key]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        os.chdir(str(request["cwd"]))
        os.environ.update(request.get("env") or {})  # type: ignore[arg-type]
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - fd 0 is /dev/null now
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        code = int(main(list(request["argv"])))  # type: ignore[operator, call-overload]
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - a crash is what the tests look for: keep the traceback
        traceback.print_exc()
        code = 70
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def main() -> None:
    from gitopsd.adapters import render  # noqa: F401, PLC0415
    from gitopsd.cli import main as cli  # noqa: PLC0415 - the point: import once, here

    replies = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        replies.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, cli.main)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status, usage = os.wait4(pid, 0)
        replies.write(json.dumps({"status": status, "maxrss": usage.ru_maxrss}) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
