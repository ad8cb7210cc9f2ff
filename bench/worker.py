"""One benchmark process: cold pass, no-op pass, one-pack change, compile floors — as JSON on stdout.

Run by ``bench/run``; separate so that its peak RSS is the pass's own. Every figure comes from
this one run; nothing is assumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
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
    """One pass, then what ``gitopsd run`` does after every pass (``daemon.settle``), timed apart."""
    t0 = time.perf_counter()
    state = reconcile.run(env)
    seconds = time.perf_counter() - t0
    SETTLE.append(daemon.settle())
    return seconds, state


def commit_change(work: pathlib.Path, pack: str) -> None:
    path = work / "packs" / pack / "packbuild.yaml"
    text = path.read_text()
    path.write_text(text.replace("version: 1.0.0", "version: 1.0.1"))
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
    """One JSON line on stderr per finished phase, so a run stopped by a timeout still tells how far it got."""
    print(json.dumps({"phase": phase, **figures, "rss_mib": rss_mib()}), file=sys.stderr, flush=True)


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
    noop_s, noop = one_pass(env)
    out["noop"] = {"seconds": noop_s, "writes": noop.writes, "steps": noop.timings}
    progress("noop", {"seconds": noop_s, "writes": noop.writes})
    noop2_s, noop2 = one_pass(env)
    out["noop_again"] = {"seconds": noop2_s, "writes": noop2.writes}
    builds = sorted(cold.builds, key=lambda b: b.path)
    changed = builds[len(builds) // 2].base_pack_name
    commit_change(args.work, changed)
    inc_s, inc = one_pass(env)
    out["incremental"] = {"seconds": inc_s, "recompiled": sum(1 for r in inc.compiled if not r.cached),
                          "writes": inc.writes, "pack": changed, "steps": inc.timings}
    progress("incremental", {"seconds": inc_s, "writes": inc.writes})
    if not args.no_floors:
        out["floors"] = floors(args.work, builds)
        out["compile_by_category"] = compile_by_category(env, inc)
    out["rss_mib"] = rss_mib()
    out["settle_s"] = SETTLE  # after each pass: cold, no-op, no-op again, one pack changed
    local.close()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
