"""Time ``gitopsd plan`` for a one-pack change in a synthetic config repo (``generate.py``).

    python bench/plan.py [--packs 1000] [--clusters 10] [--pack 1] [--scratch DIR]

The repo gets a second commit that edits one ConfigMap of one pack and bumps its version. Each
figure is one ``gitopsd plan ... -o json`` process (wall time, and the command's own timings):

- cold: an empty state dir; both revisions compiled (unchanged packs once: the cache serves the head)
- CI, cache of main: a state dir that planned main before (``--base HEAD~1 --head HEAD~1``), as a
  CI cache restored from the main branch holds; only the changed pack is rendered
- again: the same plan a second time (nothing rendered; objects from the layer cache)
- floor: ``--base HEAD --head HEAD`` on a warm state dir: two passes over cached packs, no render

Figures are printed, not asserted (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import generate  # noqa: E402 - bench/generate.py, not a package


def git(work: pathlib.Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(work), "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
                   check=True, capture_output=True)


def change_one_pack(work: pathlib.Path, index: int) -> str:
    name = f"pack-{index:05d}"
    folder = work / "packs" / name
    for path in sorted(folder.rglob("*.yaml")):
        text = path.read_text()
        if "kind: ConfigMap" in text and "line0:" in text:
            path.write_text(text.replace("line0: ", "line0: changed-", 1))
            break
    else:
        raise SystemExit(f"{name} has no ConfigMap to edit; pick another --pack")
    build = folder / "packbuild.yaml"
    build.write_text(build.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    git(work, "commit", "-qam", f"{name}: one ConfigMap value")
    return name


def plan(work: pathlib.Path, state: pathlib.Path, *args: str) -> tuple[float, dict[str, object]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gitopsd", "plan", str(work), "--state-dir", str(state), "-o", "json", *args],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"gitopsd plan {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return wall, json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packs", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--pack", type=int, default=1, help="index of the pack to change (every fifth is kustomize)")
    p.add_argument("--scratch", type=pathlib.Path, help="folder for the repo and state dirs (default: a temporary one)")
    args = p.parse_args(argv)
    scratch = args.scratch or pathlib.Path(tempfile.mkdtemp(prefix="gitopsd-bench-plan-"))
    try:
        t0 = time.perf_counter()
        work = generate.generate(scratch / "repo", args.packs, args.clusters, 1)
        name = change_one_pack(work, args.pack)
        print(f"{args.packs} packs x {args.clusters} clusters generated in {time.perf_counter() - t0:.1f} s; changed {name}")
        rows = []

        def row(label: str, wall: float, doc: dict[str, object]) -> None:
            timings = doc["timings"]
            assert isinstance(timings, dict)
            summary = doc["summary"]
            assert isinstance(summary, dict)
            rows.append((label, wall, timings))
            print(f"  {label:<28} {wall:6.2f} s wall  (base pass {timings['base']:.2f} s, head pass {timings['head']:.2f} s, "
                  f"objects+diff {timings['diff']:.3f} s; {summary['packsChanged']} pack(s) changed)", flush=True)

        row("cold (empty state dir)", *plan(work, scratch / "cold", "--base", "HEAD~1"))
        row("again (same state dir)", *plan(work, scratch / "cold", "--base", "HEAD~1"))
        plan(work, scratch / "ci", "--base", "HEAD~1", "--head", "HEAD~1")
        row("CI, cache of main", *plan(work, scratch / "ci", "--base", "HEAD~1"))
        row("floor (HEAD vs HEAD, warm)", *plan(work, scratch / "cold", "--base", "HEAD", "--head", "HEAD"))
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
