"""``python -m gitopsd.testing.kubeapi``: run the emulator as a process until SIGINT/SIGTERM.

For tests of another process (the gitopsd daemon, kubectl scripts): it prints its URL on stdout,
writes a kubeconfig, and takes faults and request-log queries over ``/__emulator/`` endpoints.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from gitopsd.testing.kubeapi.emulator import Emulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gitopsd.testing.kubeapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the emulator to this file")
    parser.add_argument(
        "--history", type=int, default=1000, help="changes kept for watches and paging (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for uids, generated names and faults")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with Emulator(host=args.host, port=args.port, history=args.history, seed=args.seed) as emulator:
        if args.kubeconfig:
            emulator.write_kubeconfig(args.kubeconfig)
        print(emulator.url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
