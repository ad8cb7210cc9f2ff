"""One benchmark process: cold pass, no-op pass, one-pack change, compile floors — as JSON on stdout.

Run by ``bench/run``; separate so that its peak RSS is the pass's own. Every figure comes from
this one run; nothing is assumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import time

import yaml

from gitopsd import daemon, logs, reconcile
from gitopsd.adapters import renderkustomize
from gitopsd.model import spec
from gitopsd.wiring import compose as wiring


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SETTLE: list[float] = []


def cpu_s() -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its children that ended (renderers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def one_pass(env: reconcile.Env) -> tuple[float, reconcile.PassState]:
    """One pass as ``gitopsd run`` makes it between two resyncs (the first pass of a process is a full
    one: it retries failed deliveries and checks every artifact), then what ``gitopsd run`` does after
    every pass (``daemon.settle``), timed apart."""
    env.resync = not SETTLE
    env.full_plan = env.retry_failed = False
    t0 = time.perf_counter()
    state = reconcile.run(env)
    seconds = time.perf_counter() - t0
    SETTLE.append(daemon.settle())
    return seconds, state


def steps(state: reconcile.PassState) -> dict[str, list[float]]:
    """Per step of a pass: [wall seconds, CPU seconds of the pass's thread], the steps that took any."""
    return {name: [round(state.timings[name], 4), round(state.cpu_timings.get(name, 0.0), 4)]
            for name in state.timings if state.timings[name] >= 0.0005 or state.cpu_timings.get(name, 0.0) >= 0.0005}


def commit_change(work: pathlib.Path, pack: str) -> None:
    """A new version of ``pack`` with one manifest changed (the next patch version: the worker may run
    again on the same repo and state dir)."""
    path = work / "packs" / pack / "packbuild.yaml"
    text = path.read_text()
    found = re.search(r"^version: (\d+)\.(\d+)\.(\d+)$", text, re.MULTILINE)
    assert found is not None, f"{path}: no version: X.Y.Z line"
    major, minor, patch = found.groups()
    path.write_text(text.replace(found.group(0), f"version: {major}.{minor}.{int(patch) + 1}"))
    manifests = sorted((work / "packs" / pack).rglob("*.yaml"))
    target = next(p for p in manifests if p.name != "packbuild.yaml" and "kustomization" not in p.name)
    target.write_text(target.read_text().replace("replicas: 1", "replicas: 6").replace("replicas: 2", "replicas: 7") + "\n")
    git = ["git", "-C", str(work), "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run([*git, "commit", "-qam", f"bump {pack}"], check=True)


def floors(work: pathlib.Path, builds: list[spec.PackBuild]) -> dict[str, float]:
    """Parse+hash floor over the raw packs' YAML bytes, and kustomize alone (the renderer's command) for kustomize packs."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    t0 = time.perf_counter()
    for build in (b for b in builds if b.category is spec.Category.RAW):
        for path in sorted((work / build.folder).rglob("*.y*ml")):
            data = path.read_bytes()
            list(yaml.load_all(data, Loader=loader))
            hashlib.sha256(data).hexdigest()
    parse_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    kustomize = [b for b in builds if b.category is spec.Category.KUSTOMIZE]
    command, _ = renderkustomize._kustomize_command()  # the command the renderer runs
    for build in kustomize:
        assert isinstance(build.source, spec.KustomizeSource)
        subprocess.run([*command, str(work / build.source.path)], check=True, capture_output=True)
    return {"parse_hash_s": parse_hash, "kustomize_alone_s": time.perf_counter() - t0, "kustomize_packs": len(kustomize)}


def compile_by_category(env: reconcile.Env, state: reconcile.PassState) -> dict[str, float]:
    times: dict[str, float] = {}
    for build in state.builds:
        t0 = time.perf_counter()
        reconcile.compile_one(env, state, build, use_cache=False)
        times[str(build.category)] = times.get(str(build.category), 0.0) + time.perf_counter() - t0
    return times


def progress(phase: str, figures: dict[str, object]) -> None:
    """One JSON line on stderr per finished phase, so a run stopped by a timeout still tells how far it
    got; with the load average then (the machine may be shared: wall times say how busy it was)."""
    print(json.dumps({"phase": phase, **figures, "rss_mib": rss_mib(), "loadavg": os.getloadavg()}),
          file=sys.stderr, flush=True)


def measured(env: reconcile.Env) -> tuple[float, reconcile.PassState, dict[str, object]]:
    """One pass, and its figures: wall and CPU seconds (of the thread that ran it), writes, steps, the
    settle after it."""
    seconds, state = one_pass(env)
    figures: dict[str, object] = {"seconds": seconds, "cpu_s": state.cpu_timings["total"], "writes": state.writes,
                                  "replanned": state.replanned, "settle_s": SETTLE[-1], "steps": steps(state)}
    return seconds, state, figures


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("work", type=pathlib.Path)
    p.add_argument("state", type=pathlib.Path)
    p.add_argument("--no-floors", action="store_true",
                   help="skip the compile floors (they recompile every pack and run kustomize once per kustomize pack)")
    args = p.parse_args()
    logs.configure("error", "json")
    local = wiring.open_local(args.state)
    env = wiring.local_env(args.work, local, dry_run=False)
    out: dict[str, object] = {}
    cpu0 = cpu_s()
    cold_s, cold = one_pass(env)
    cpu1 = cpu_s()
    assert cold.summary is not None
    out["cold"] = {"seconds": cold_s, "packs": len(cold.compiled), "writes": cold.writes, "failed": len(cold.pack_errors),
                   "rss_mib": rss_mib(), "steps": cold.timings,
                   # CPU time of this process and of its renderer children (kustomize, helm): on a shared
                   # machine the wall time says as much about the other work as about the pass
                   "cpu_s": cpu1[0] - cpu0[0], "children_cpu_s": cpu1[1] - cpu0[1]}
    progress("cold", {"seconds": cold_s, "packs": len(cold.compiled), "writes": cold.writes,
                      "cpu_s": cpu1[0] - cpu0[0], "children_cpu_s": cpu1[1] - cpu0[1], "steps": cold.timings})
    # the passes that follow are the daemon's between two resyncs; each prints its steps as [wall, CPU] seconds
    _, _, out["noop"] = measured(env)
    progress("noop", out["noop"])
    _, _, out["noop_again"] = measured(env)
    progress("noop_again", out["noop_again"])
    builds = sorted(cold.builds, key=lambda b: b.path)
    changed = builds[len(builds) // 2].base_pack_name
    commit_change(args.work, changed)
    _, inc, out["incremental"] = measured(env)
    out["incremental"] |= {"recompiled": sum(1 for r in inc.compiled if not r.cached), "pack": changed}
    progress("incremental", out["incremental"])
    _, _, out["noop_after_change"] = measured(env)
    progress("noop_after_change", out["noop_after_change"])
    if not args.no_floors:
        out["floors"] = floors(args.work, builds)
        out["compile_by_category"] = compile_by_category(env, inc)
    out["rss_mib"] = rss_mib()
    out["settle_s"] = SETTLE  # after each pass: cold, no-op, no-op again, one pack changed, no-op after it
    local.close()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
