"""How fast the adapters answer and fail: the figures the test suite used to time (it asserts none).

    .venv/bin/python bench/adapters.py [--only git,registry,http,lease] [--packs 1000] [--polls 50]

- ``git``: a ``--packs``-pack repo in a bare remote (git fast-import): the first fetch (a clone into
  the mirror), ``--polls`` no-change ``head()`` polls (median, p90) and a no-change fetch; then a
  status commit pushed over smart HTTP (``git http-backend`` behind Basic auth, as in
  tests/adapters/test_statuswriter.py), alone and with a user push racing it (two attempts);
- ``registry``: how long the registry adapter takes to give up: a closed port (connection refused,
  three attempts, per operation), a server that never answers (read timeout 0.5 s), servers that
  answer 500/503/429/400, and the second call during the cooldown (no request at all);
- ``http``: the ``/healthz`` answer time while 400 clients drip their request headers (as in
  tests/reliability/test_http_load.py);
- ``lease``: leader election against a real control plane (``tools/kubecluster up bench-lease``,
  stopped at the end when this script started it): the failover after a crash (no release: the
  lease runs out) and the handover after a clean stop, with the timings tests/adapters/test_kube.py
  uses (lease 2 s, renew deadline 1.5 s, retry 0.2 s), ``--lease-trials`` times each.

Prints one line per figure; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from gitopsd import errors, httpserver, logs  # noqa: E402
from gitopsd.adapters import gitlocation, gitmirror, gitsource, keys, lease, registry, statuswriter  # noqa: E402
from gitopsd.core import artifact as artifact_core  # noqa: E402
from tests import gitutil, registry_fixture  # noqa: E402

LEASE_CLUSTER = "bench-lease"
LEASE, RENEW, RETRY = 2.0, 1.5, 0.2  # seconds: the electors' timings in tests/adapters/test_kube.py


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def spread(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (f"median {ms(statistics.median(ordered))}, p90 {ms(ordered[int(len(ordered) * 0.9)])}, "
            f"max {ms(ordered[-1])} ({len(ordered)} samples)")


# --- git -------------------------------------------------------------------------------------------
def git_figures(work: pathlib.Path, packs: int, polls: int) -> None:
    bare = work / "big.git"
    gitutil.git("init", "-q", "--bare", "-b", "main", bare)
    files = gitutil.config_repo()
    for index in range(packs):
        files.update(gitutil.raw_pack(f"pack-{index:05d}"))
    head = gitutil.fast_import(bare, files)
    remote = gitmirror.GitRemote(gitlocation.parse_location(str(bare)), work / "state" / "git" / "mirror.git")
    src = gitsource.GitSource(remote, work / "state" / "trees")
    started = time.perf_counter()
    tree = src.fetch()
    first = time.perf_counter() - started
    assert tree.snapshot.revision == f"main@sha1:{head}", tree.snapshot.revision
    samples = [timed(src.head) for _ in range(polls)]
    refetch = timed(src.fetch)
    print(f"git {packs:,}-pack repo: first fetch (clone) {ms(first)}; no-change head() poll {spread(samples)}; "
          f"no-change fetch {ms(refetch)}", flush=True)

    from tests.adapters.test_statuswriter import record  # noqa: PLC0415

    srv = work / "srv"
    _, user = gitutil.make_remote(srv, gitutil.config_repo("alpha"), name="config.git")
    token = work / "token"
    token.write_text("robot:tok-123\n")
    key = keys.load_private_key(keys.generate(work / "key").private_path)
    with gitutil.GitHttpServer(srv, "robot", "tok-123") as server:
        location = gitlocation.parse_location(f"{server.url}/config.git")
        auth = gitlocation.load_auth(location, credentials_file=str(token))
        http_src = gitsource.GitSource(gitmirror.GitRemote(location, work / "http" / "mirror.git", auth=auth), work / "http")
        http_src.fetch()
        raced: list[str] = []

        def user_pushes(_: str) -> None:
            if not raced:
                raced.append(user.commit("user change", gitutil.raw_pack("beta")))
                user.push()

        writer = statuswriter.GitStatusWriter(http_src.remote, key, backoff=0.001, before_publish=user_pushes)
        racing = timed(lambda: writer.write([record("alpha", "1.0.0")], "status, raced\n"))
        attempts = writer.last.attempts if writer.last else 0
        writer.before_publish = None
        alone = timed(lambda: writer.write([record("alpha", "1.0.1")], "status\n"))
    print(f"git status commit over smart HTTP: {ms(alone)} alone; {ms(racing)} with a user push racing it "
          f"({attempts} attempts)", flush=True)


# --- registry --------------------------------------------------------------------------------------
def registry_figures() -> None:
    digest = artifact_core.digest_of(b"x")
    closed = f"127.0.0.1:{registry_fixture.free_port()}"
    operations: dict[str, Callable[[registry.OciRegistry], object]] = {
        "has": lambda reg: reg.has("web", digest),
        "pull": lambda reg: reg.pull("web", digest),
        "verify": lambda reg: reg.verify("web", digest),
    }
    for name, operation in operations.items():
        reg = registry.OciRegistry(f"{closed}/packs", insecure=True, environ={}, cooldown=60)
        seconds = failing(functools.partial(operation, reg))
        during = failing(functools.partial(reg.has, "other", digest))
        print(f"registry down (connection refused), {name}: gave up in {ms(seconds)}; "
              f"the next call during the cooldown {ms(during)}", flush=True)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        reg = registry.OciRegistry(f"127.0.0.1:{sock.getsockname()[1]}/packs", insecure=True, environ={},
                                   read_timeout=0.5)
        print(f"registry that never answers (read timeout 0.5 s): gave up in {ms(failing(lambda: reg.has('web', digest)))}",
              flush=True)
    for status in (500, 503, 429, 400):
        with registry_fixture.serve_status(status) as served:
            reg = registry.OciRegistry(f"{served.host}/packs", insecure=True, environ={})
            print(f"registry answering {status}: gave up in {ms(failing(functools.partial(reg.has, 'web', digest)))}",
                  flush=True)


def failing(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    try:
        action()
    except errors.GitopsdError:
        return time.perf_counter() - started
    raise RuntimeError("the registry call did not fail")


# --- http ------------------------------------------------------------------------------------------
def http_figures(clients: int = 400, asks: int = 20) -> None:
    """tests/reliability/test_http_load.py's load: ``clients`` connections that send one more byte
    of a header every 0.5 s and never finish their request; ``/healthz`` timed meanwhile."""
    from tests.reliability import test_http_load as load  # noqa: PLC0415

    logs.configure("critical")  # the server gives up on dripping clients (broken pipes): expected here
    server = httpserver.Server("127.0.0.1", 0, load.Backend(), secret=b"bench")
    server.start()
    stop = threading.Event()
    slow = [socket.create_connection(server.address, timeout=5) for _ in range(clients)]

    def drip() -> None:
        while not stop.wait(0.5):
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"X")

    try:
        for sock in slow:
            sock.send(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        time.sleep(2)  # every slow connection is accepted and dripping by now
        answers = [load._get(server, "/healthz", timeout=10) for _ in range(asks)]
        stop.set()
        dripper.join()
    finally:
        stop.set()
        server.stop()
        for sock in slow:
            sock.close()
    statuses = {status for status, _ in answers}
    print(f"http /healthz with {clients} clients dripping their headers: {spread([s for _, s in answers])}"
          f"{'' if statuses == {200} else f'; statuses {sorted(statuses)}'}", flush=True)


# --- lease -----------------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout}s")
        time.sleep(0.005)


def elector(api: client.ApiClient, namespace: str, name: str, identity: str) -> lease.Elector:
    return lease.Elector(api, namespace=namespace, name=name, identity=identity, lease_duration=LEASE,
                         renew_deadline=RENEW, retry_period=RETRY).start()


def holds(seen_by: lease.Elector, identity: str) -> bool:
    return seen_by.holder == identity


def lease_figures(trials: int) -> None:
    from tests.realkube import clusters  # noqa: PLC0415

    kubeconfig, started = clusters.up(LEASE_CLUSTER)
    try:
        with clusters.api(kubeconfig) as api:
            namespace = clusters.fresh_namespace(api, "bench-lease")
            failovers, handovers = [], []
            for trial in range(trials):
                name = f"lease-{trial}-{uuid.uuid4().hex[:6]}"
                a = elector(api, namespace, name, "a")
                wait_until(a.is_leader, 10)
                b = elector(api, namespace, name, "b")
                wait_until(functools.partial(holds, b, "a"), 10)
                crashed = time.monotonic()
                a.stop(release=False)  # a crash: the lease runs out
                wait_until(b.is_leader, 10 * LEASE)
                failovers.append(time.monotonic() - crashed)
                c = elector(api, namespace, name, "c")
                wait_until(functools.partial(holds, c, "b"), 10)
                released = time.monotonic()
                b.stop()  # a clean stop releases the lease
                wait_until(c.is_leader, 10 * LEASE)
                handovers.append(time.monotonic() - released)
                c.stop()
            clusters.delete_namespace(api, namespace)
        print(f"lease failover after a crash (lease {LEASE} s, retry {RETRY} s): "
              f"{spread(failovers)}", flush=True)
        print(f"lease handover after a clean stop: {spread(handovers)}", flush=True)
    finally:
        if started:
            subprocess.run([sys.executable, str(clusters.TOOL), "down", LEASE_CLUSTER], check=False, capture_output=True,
                           timeout=120)


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/adapters.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated subset of: git, registry, http, lease")
    p.add_argument("--packs", type=int, default=1000, help="packs in the repo of the git figures (default: %(default)s)")
    p.add_argument("--polls", type=int, default=50, help="no-change head() polls (default: %(default)s)")
    p.add_argument("--lease-trials", type=int, default=5, help="failovers and handovers timed (default: %(default)s)")
    args = p.parse_args()
    only = set(args.only.split(",")) if args.only else {"git", "registry", "http", "lease"}
    logs.configure("error")
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-adapters-") as tmp:
        if "git" in only:
            git_figures(pathlib.Path(tmp) / "git", args.packs, args.polls)
        if "registry" in only:
            registry_figures()
        if "http" in only:
            http_figures()
        if "lease" in only:
            logs.configure("error")
            lease_figures(args.lease_trials)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
