"""Delivery into real target clusters: wall time and requests per pass.

    python bench/delivery.py [--packs 200] [--clusters 3] [--skip-generated] [--keep]

1. examples-repo, committed to a Git work tree, delivered to two real clusters (prod-eu, prod-us;
   dev and staging stay records-only): wall time from the commit to every PackInstance Delivered
   (`gitopsd reconcile --kubeconfig-dir` returns once every stage of every pack is healthy), then a
   no-op pass (drift checks only).
2. A generated repo (bench/generate.py) of N packs x M clusters, all M clusters real: the cold
   delivery and a no-op pass.

gitopsd talks to each cluster through a counting proxy (tests/realkube/proxy.py) started in this
process, so every request is counted by verb and resource at the server's door. Clusters are
started with tools/kubecluster (bench-d1 ...) and stopped at the end unless --keep. Prints a table
and one JSON document (--json FILE).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.realkube import proxy as proxy_mod  # noqa: E402

VENV = ROOT / ".venv" / "bin"
GITOPSD = [str(VENV / "gitopsd")] if (VENV / "gitopsd").exists() else [sys.executable, "-m", "gitopsd"]
TOOL = ROOT / "tools" / "kubecluster"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def up(name: str) -> pathlib.Path:
    out = subprocess.run([sys.executable, str(TOOL), "up", name], capture_output=True, text=True, check=True).stdout
    return pathlib.Path(out.strip().splitlines()[-1])


def git(cwd: pathlib.Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args], cwd=cwd, check=True,
                   capture_output=True)


def run_pass(repo: pathlib.Path, state: pathlib.Path, folder: pathlib.Path, proxies: dict[str, proxy_mod.KubeProxy],
             timeout: float) -> dict[str, object]:
    for p in proxies.values():
        p.reset_requests()
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([*GITOPSD, "reconcile", str(repo), "--state-dir", str(state), "--kubeconfig-dir", str(folder),
                           "-o", "json", "--delivery-workers", "4"], capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"gitopsd reconcile failed ({proc.returncode}):\n{proc.stderr[-3000:]}") from None
    results = collections.Counter(f"{d['action']} {d['result']}" for d in doc.get("deliveries", []))
    failures = collections.Counter(d["message"][:200] for d in doc.get("deliveries", [])
                                   if d["result"] not in ("Delivered", "Pruned"))
    by_verb: collections.Counter[str] = collections.Counter()
    writes = 0
    for p in proxies.values():
        for r in p.requests():
            by_verb["dry-run apply" if r.dry_run else r.verb] += 1
            writes += r.is_write
    return {"wall_s": round(wall, 2), "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
            "exit": proc.returncode, "deliveries": dict(sorted(results.items())), "requests": sum(by_verb.values()),
            "writes": writes, "by_verb": dict(sorted(by_verb.items())), "records_only": doc.get("recordsOnly", []),
            "failures": dict(failures.most_common(5))}


def show(label: str, fig: dict[str, object]) -> None:
    print(f"  {label:<34} {fig['wall_s']:>8.2f} s  {fig['requests']:>6} requests, {fig['writes']:>6} writes  "
          f"{fig['deliveries']}", flush=True)


def scenario(name: str, repo: pathlib.Path, clusters: dict[str, pathlib.Path], scratch: pathlib.Path,
             timeout: float) -> dict[str, object]:
    folder = scratch / f"{name}-kubeconfigs"
    folder.mkdir()
    proxies = {c: proxy_mod.KubeProxy(kc).start() for c, kc in clusters.items()}
    try:
        for c, p in proxies.items():
            p.write_kubeconfig(folder / f"{c}.kubeconfig")
        state = scratch / f"{name}-state"
        cold = run_pass(repo, state, folder, proxies, timeout)
        show(f"{name}: commit to all delivered", cold)
        noop = run_pass(repo, state, folder, proxies, timeout)
        show(f"{name}: no-op pass", noop)
        return {"cold": cold, "noop": noop}
    finally:
        for p in proxies.values():
            p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packs", type=int, default=200)
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--skip-generated", action="store_true", help="only examples-repo to two clusters")
    ap.add_argument("--keep", action="store_true", help="leave the bench clusters running")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=pathlib.Path, help="write the figures here too")
    args = ap.parse_args()
    names = [f"bench-d{i + 1}" for i in range(max(2, args.clusters))]
    figures: dict[str, object] = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="gitopsd-bench-delivery-") as tmp:
        scratch = pathlib.Path(tmp)
        started = time.perf_counter()
        kubeconfigs = {n: up(n) for n in names}
        log(f"{len(names)} clusters up in {time.perf_counter() - started:.1f} s")
        try:
            print(f"== delivery on {os.cpu_count()} cores", flush=True)
            repo = scratch / "examples"
            shutil.copytree(ROOT / "examples-repo", repo)
            git(repo, "init", "-q", "-b", "main")
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", "examples")
            figures["examples"] = scenario("examples-repo x 2 clusters", repo,
                                           {"prod-eu": kubeconfigs[names[0]], "prod-us": kubeconfigs[names[1]]},
                                           scratch, args.timeout)
            if not args.skip_generated:
                out = scratch / "generated"
                subprocess.run([sys.executable, str(ROOT / "bench" / "generate.py"), str(out), "--packs", str(args.packs),
                                "--clusters", str(args.clusters)], check=True, capture_output=True)
                targets = {f"c{i:03d}": kubeconfigs[names[i]] for i in range(args.clusters)}
                figures["generated"] = scenario(f"{args.packs} packs x {args.clusters} clusters", out / "work", targets,
                                                scratch, args.timeout)
        finally:
            if not args.keep:
                subprocess.run([sys.executable, str(TOOL), "down", *names], capture_output=True, check=False)
    text = json.dumps(figures, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
