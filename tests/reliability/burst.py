"""Many gitopsd commands started at the same instant: forked from one pre-imported interpreter,
released together through a pipe, waited for together.

The parent writes one JSON object on stdin: ``{"runs": [{"argv", "stdout", "stderr"}], "cwd",
"env"}``; this process prints ``[{"status"}]`` (raw wait statuses, in the order of ``runs``).
``statedir.first_runs`` uses it to start first runs on one fresh state dir by the hundred.
"""

from __future__ import annotations

import json
import os
import sys

from tests.reliability import zygote


def main() -> None:
    from gitopsd.cli import main as cli  # noqa: PLC0415 - imported once, before the forks

    request = json.loads(sys.stdin.read())
    go_read, go_write = os.pipe()
    pids = []
    for run in request["runs"]:
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            os.read(go_read, 1)  # every child waits here until all exist
            zygote._child({**run, "cwd": request["cwd"], "env": request.get("env") or {}}, cli.main)
        pids.append(pid)
    os.close(go_read)
    os.close(go_write)  # EOF: all children go at once
    statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    sys.stdout.write(json.dumps([{"status": s} for s in statuses]))


if __name__ == "__main__":
    main()
