"""gitopsd's own cost of the deliver step in the daemon, with every target cluster reachable.

    python bench/deliver_walk.py [--packs 1000] [--clusters 10] [--json FILE]

A repo of N packs x M clusters (``bench/run``'s generator) is reconciled by passes in one process on
the embedded store, as ``gitopsd run`` does, with a stand-in deliverer: every cluster is reachable
and every job ends Delivered at once, with one object in its inventory. So what is measured is the
deliver step's walk over the plan and the delivery records, not the target clusters (those are
``bench/delivery.py``'s). Passes: cold (every instance delivered), three no-ops, one pack changed
(its instances delivered again), a no-op. The status records are made every pass that would write
them, as with status write-back, and not committed. Prints the wall time of each pass, of its
deliver and status steps, and how many jobs it ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import runpy
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import worker  # noqa: E402 - bench/worker.py, beside this file

from gitopsd import logs  # noqa: E402
from gitopsd.core import conditions  # noqa: E402
from gitopsd.model import delivery  # noqa: E402
from gitopsd.wiring import compose  # noqa: E402


class Discard:
    """A status writer that makes every record and commits none (Git's own cost is bench/adapters.py's)."""

    def __init__(self) -> None:
        self.records = 0

    def write(self, records: Iterable[tuple[str, bytes]], message: str) -> None:
        self.records += sum(1 for _ in records)


class StandIn:
    """Every cluster reachable; every job Delivered at once."""

    def __init__(self) -> None:
        self.jobs = 0

    def reachable(self, cluster: object) -> bool:
        return True

    def run(self, clusters: object, jobs: list[Any], namespace: str) -> list[tuple[Any, delivery.Delivery]]:
        self.jobs += len(jobs)
        return [(j, conditions.decide_delivery(delivery.Delivery(
            cluster=j.cluster, result=delivery.Result.DELIVERED, digest=j.digest, version=j.version, message="delivered",
            inventory=(delivery.Entry("v1", "ConfigMap", "bench", j.base_pack_name, "sha256:0"),),
            at="2026-01-01T00:00:00Z"))) for j in jobs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packs", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = p.parse_args()
    logs.configure("error", "json")
    generate = runpy.run_path(str(ROOT / "bench" / "run"))["generate"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gitopsd-deliver-walk-") as scratch:
        out = pathlib.Path(scratch)
        generate(out, args.packs, args.clusters)
        local = compose.open_local(out / "state")
        stand_in = StandIn()
        env = dataclasses.replace(compose.local_env(out / "work", local, dry_run=False), deliverer=stand_in,
                                  status_writer=Discard())
        plan = ["cold", "no-op", "no-op", "no-op", "one pack changed", "no-op"]
        try:
            for label in plan:
                if label == "one pack changed":
                    worker.commit_change(out / "work", "pack-00017")
                stand_in.jobs = 0
                seconds, state = worker.one_pass(env)
                rows.append({"pass": label, "wall_s": round(seconds, 4), "deliver_s": round(state.timings["deliver"], 4),
                             "status_s": round(state.timings["status"], 4), "jobs": stand_in.jobs})
        finally:
            local.close()
    print(f"deliver step, {args.packs} packs x {args.clusters} clusters, every cluster reachable (stand-in deliverer)")
    print(f"{'pass':<18} {'wall':>9} {'deliver':>9} {'status':>9} {'jobs':>7}")
    for r in rows:
        print(f"{r['pass']:<18} {r['wall_s'] * 1000:>7.0f}ms {r['deliver_s'] * 1000:>7.0f}ms {r['status_s'] * 1000:>7.0f}ms "
              f"{r['jobs']:>7}")
    if args.json:
        args.json.write_text(json.dumps({"packs": args.packs, "clusters": args.clusters, "passes": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
