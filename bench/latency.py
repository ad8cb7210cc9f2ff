"""Commit-to-applied latency of ``gitopsd run``: push a version bump, time until its PackInstance is applied.

    python bench/latency.py OUT --trials 20          (OUT made by bench/generate.py: OUT/work, OUT/remote.git)

Two daemons, one after the other, on the same bare remote and state dir:

1. ``--interval 1s`` (polling only; the webhook receiver is on but never called);
2. ``--interval 60s`` with a GitHub push webhook POSTed to ``/hook`` after every push.

Each trial: ``git fetch`` + ``reset --hard`` a clone (gitopsd pushes its status commits to the same
remote), bump one pack's ``version:`` and one of its manifests, commit and ``git push`` with the git
CLI. The clock starts when ``git push`` returns and stops when the store (``S/store.db``, read-only
SQLite, polled every 10 ms) holds PackInstance ``{pack}-{first cluster}`` at the new version. Before
each push the script waits for the previous pass's status commit (so trials do not overlap) and, in
polling mode, a random 0..interval delay, so pushes land at every phase of the poll cycle.
Prints one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import pathlib
import random
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
GITOPSD = [str(ROOT / ".venv" / "bin" / "gitopsd")] if (ROOT / ".venv" / "bin" / "gitopsd").exists() else \
    [sys.executable, "-m", "gitopsd"]
GIT_ID = ["-c", "user.name=bench", "-c", "user.email=bench@example.com"]
POLL_STORE = 0.01


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def git(cwd: pathlib.Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(cwd), *GIT_ID, *args], check=check, capture_output=True, text=True)


def remote_tip(remote: pathlib.Path) -> str:
    return git(remote, "rev-parse", "refs/heads/main").stdout.strip()


class Daemon:
    def __init__(self, remote: pathlib.Path, state: pathlib.Path, key: pathlib.Path, secret_file: pathlib.Path,
                 interval: str, logfile: pathlib.Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logfile = logfile
        self._log = logfile.open("w")
        cmd = [*GITOPSD, "run", str(remote), "--state-dir", str(state), "--signing-key", str(key),
               "--interval", interval, "--listen", f"127.0.0.1:{self.port}", "--webhook-secret-file", str(secret_file),
               "--log-format", "json"]
        self.command = cmd
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gitopsd run exited {self.proc.returncode}; see {self.logfile}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gitopsd run not ready after {timeout:.0f} s; see {self.logfile}")

    def stop(self) -> dict[str, float]:
        """SIGTERM, wait; the daemon's peak RSS from wait4."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, _status, usage = os.wait4(self.proc.pid, 0)
        except ChildProcessError:
            usage = None
        self.proc.returncode = 0
        self._log.close()
        return {"rss_mib": usage.ru_maxrss / 1024 if usage else 0.0}

    def passes(self) -> list[dict[str, object]]:
        out = []
        for line in self.logfile.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("event") == "pass finished":
                out.append(rec)
        return out


class Store:
    def __init__(self, path: pathlib.Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5)

    def version(self, name: str) -> str | None:
        try:
            row = self.db.execute("SELECT json_extract(body, '$.spec.clusterPackRef.version') FROM objects "
                                  "WHERE kind = 'PackInstance' AND name = ?", (name,)).fetchone()
        except sqlite3.OperationalError:  # busy/locked: try again at the next tick
            return None
        return row[0] if row else None


def bump(clone: pathlib.Path, pack: str, trial: int) -> str:
    """New version in packbuild.yaml and one changed manifest; returns the new version."""
    build = clone / "packs" / pack / "packbuild.yaml"
    text = build.read_text()
    old = re.search(r"^version: (\S+)$", text, re.M)
    assert old is not None, build
    major, minor, patch = (int(x) for x in old[1].lstrip("v").split("."))
    new = f"{major}.{minor}.{patch + 1}"
    build.write_text(text.replace(old[0], f"version: {new}"))
    manifests = sorted(p for p in (clone / "packs" / pack).rglob("*.yaml")
                       if p.name != "packbuild.yaml" and "kustomization" not in p.name)
    target = manifests[0]
    body = target.read_text()
    marker = re.compile(r"^  annotations: \{bench/trial: '\d+'\}\n", re.M)
    note = f"  annotations: {{bench/trial: '{trial}'}}\n"
    if marker.search(body):
        body = marker.sub(note, body, count=1)
    else:
        body = body.replace("kind: ServiceAccount\nmetadata:\n", "kind: ServiceAccount\nmetadata:\n" + note, 1)
    target.write_text(body)
    return new


def sync_clone(clone: pathlib.Path) -> None:
    git(clone, "fetch", "-q", "origin", "main")
    git(clone, "reset", "-q", "--hard", "origin/main")


def push(clone: pathlib.Path) -> tuple[float, int]:
    """``git push``; on a rejection (gitopsd pushed a status commit meanwhile) rebase and push again.
    Returns (perf_counter when the accepted push returned, attempts)."""
    for attempt in range(1, 11):
        done = git(clone, "push", "-q", "origin", "HEAD:main", check=False)
        t = time.perf_counter()
        if done.returncode == 0:
            return t, attempt
        git(clone, "pull", "-q", "--rebase", "origin", "main")
    raise RuntimeError(f"git push kept failing: {done.stderr.strip()}")


def post_hook(url: str, secret: bytes, sha: str, before: str) -> tuple[int, float]:
    body = json.dumps({"ref": "refs/heads/main", "before": before, "after": sha,
                       "repository": {"full_name": "bench/config"}, "pusher": {"name": "bench"}}).encode()
    sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(url + "/hook", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": sha[:12],
        "X-Hub-Signature-256": sig})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status = resp.status
    except urllib.error.HTTPError as err:
        status = err.code
    return status, time.perf_counter() - t0


def wait_status_commit(remote: pathlib.Path, pushed: str, timeout: float) -> bool:
    """Wait until gitopsd's status commit is on top of ``pushed`` (its pass is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if remote_tip(remote) != pushed:
            return True
        time.sleep(0.02)
    return False


def trials(mode: str, daemon: Daemon, remote: pathlib.Path, clone: pathlib.Path, store: Store, packs: list[str],
           first_cluster: str, count: int, interval: float, secret: bytes, rng: random.Random,
           timeout: float) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for i in range(count):
        pack = packs[i % len(packs)]
        sync_clone(clone)
        before = git(clone, "rev-parse", "HEAD").stdout.strip()
        version = bump(clone, pack, i)
        git(clone, "commit", "-qam", f"bench: {pack} {version}")
        sha = git(clone, "rev-parse", "HEAD").stdout.strip()
        if mode == "poll":
            time.sleep(rng.uniform(0, interval))
        t_push0 = time.perf_counter()
        t_pushed, attempts = push(clone)
        if attempts > 1:
            sha = git(clone, "rev-parse", "HEAD").stdout.strip()
        hook_status, hook_s = None, None
        if mode == "webhook":
            hook_status, hook_s = post_hook(daemon.url, secret, sha, before)
        name = f"{pack}-{first_cluster}"
        applied = None
        deadline = t_pushed + timeout
        while time.perf_counter() < deadline:
            if store.version(name) == version:
                applied = time.perf_counter()
                break
            time.sleep(POLL_STORE)
        row: dict[str, object] = {"pack": pack, "version": version, "push_s": round(t_pushed - t_push0, 4),
                                  "push_attempts": attempts,
                                  "latency_s": round(applied - t_pushed, 4) if applied else None}
        if mode == "webhook":
            row["hook_status"], row["hook_s"] = hook_status, round(hook_s or 0, 4)
        results.append(row)
        log(f"  {mode} trial {i + 1}/{count}: {pack} -> {version}: "
            + (f"{row['latency_s']:.3f} s" if applied else f"not applied within {timeout:.0f} s"))
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"gitopsd run exited {daemon.proc.returncode}; see {daemon.logfile}")
        wait_status_commit(remote, sha, timeout=10)
    return results


def summarize(rows: list[dict[str, object]]) -> dict[str, object]:
    lat = [float(r["latency_s"]) for r in rows if r["latency_s"] is not None]  # type: ignore[arg-type]
    return {"trials": len(rows), "applied": len(lat), "p50_s": percentile(lat, 50) if lat else None,
            "p95_s": percentile(lat, 95) if lat else None, "max_s": max(lat) if lat else None,
            "mean_s": statistics.fmean(lat) if lat else None}


def pass_seconds(passes: list[dict[str, object]], skip_first: bool) -> dict[str, object]:
    secs = [float(p.get("seconds", 0.0)) for p in passes]  # type: ignore[arg-type]
    if skip_first:
        secs = secs[1:]
    return {"passes": len(secs), "p50_s": percentile(secs, 50) if secs else None,
            "max_s": max(secs) if secs else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=pathlib.Path, help="a folder made by bench/generate.py")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--scratch", type=pathlib.Path, help="state dir, clone, logs (default: OUT/latency)")
    p.add_argument("--poll-interval", default="1s")
    p.add_argument("--hook-interval", default="60s")
    p.add_argument("--timeout", type=float, default=60.0, help="give up on a trial after this many seconds")
    p.add_argument("--ready-timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    remote = args.out / "remote.git"
    scratch = args.scratch or args.out / "latency"
    scratch.mkdir(parents=True, exist_ok=True)
    state, keys, clone = scratch / "state", scratch / "keys", scratch / "clone"
    subprocess.run([*GITOPSD, "keygen", "--dir", str(keys)], check=True, capture_output=True)
    secret = os.urandom(16).hex().encode()
    secret_file = scratch / "webhook-secret"
    secret_file.write_bytes(secret + b"\n")
    subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    all_packs = sorted(d.name for d in (clone / "packs").iterdir() if d.is_dir())
    clusters = sorted(p.stem for p in (clone / "clusters").glob("*.yaml"))
    rng = random.Random(args.seed)
    # spread over the repo, raw and kustomize packs alike, each pack once per mode
    chosen = rng.sample(all_packs, min(len(all_packs), 2 * args.trials))
    out: dict[str, object] = {"trials": args.trials, "packs": len(all_packs), "clusters": len(clusters)}
    interval_s = float(args.poll_interval.rstrip("s")) if args.poll_interval.endswith("s") and \
        not args.poll_interval.endswith("ms") else 1.0
    for mode, interval, packs in (("poll", args.poll_interval, chosen[:args.trials]),
                                  ("webhook", args.hook_interval, chosen[args.trials:] or chosen)):
        daemon = Daemon(remote, state, keys / "signing.key", secret_file, interval, scratch / f"gitopsd-{mode}.log")
        log(f"  {mode}: {' '.join(daemon.command)}")
        try:
            ready_s = daemon.wait_ready(args.ready_timeout)
            log(f"  {mode}: ready after {ready_s:.2f} s")
            store = Store(state / "store.db")
            rows = trials(mode, daemon, remote, clone, store, packs, clusters[0], args.trials, interval_s, secret,
                          rng, args.timeout)
            store.db.close()
        finally:
            stopped = daemon.stop()
        summary = summarize(rows)
        summary.update({"interval": interval, "ready_s": ready_s, "rss_mib": stopped["rss_mib"],
                        "pass_seconds": pass_seconds(daemon.passes(), skip_first=True),
                        "first_pass_s": (daemon.passes() or [{}])[0].get("seconds"), "rows": rows})
        out[mode] = summary
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
