"""gitopsd's CPU per request on the hot write path: ``KubeCluster.apply`` of one pass, in process.

    python bench/kube_apply_cpu.py reconcile WORK --kubeconfig KC --state-dir S --signing-key K

Runs the gitopsd command line given in this process with ``KubeCluster.apply`` wrapped: the
process's CPU time (every thread: the writes, and the watch threads taking in their echoes) and the
calling thread's own CPU time spent inside ``apply``, and the requests it sent (the adapter's
counters). Prints one JSON document on stderr: ``apply_cpu_s``, ``apply_thread_cpu_s``,
``requests`` and both per request in ms. Meant for a cold pass (everything written) on a cluster
started with ``tools/kubecluster up`` and the CRDs of the checkout under test applied.
"""

from __future__ import annotations

import json
import runpy
import sys
import time
from typing import Any

from gitopsd.adapters.kube import cluster as kube_cluster

totals = {"apply_cpu_s": 0.0, "apply_thread_cpu_s": 0.0, "requests": 0}
original = kube_cluster.KubeCluster.apply


def measured(self: kube_cluster.KubeCluster, *args: Any, **kwargs: Any) -> int:
    before = sum(self.requests.counts.values())
    cpu, own = time.process_time(), time.thread_time()
    try:
        return original(self, *args, **kwargs)
    finally:
        totals["apply_cpu_s"] += time.process_time() - cpu
        totals["apply_thread_cpu_s"] += time.thread_time() - own
        totals["requests"] += sum(self.requests.counts.values()) - before


def main() -> None:
    kube_cluster.KubeCluster.apply = measured  # type: ignore[method-assign]
    sys.argv = ["gitopsd", *sys.argv[1:]]
    try:
        runpy.run_module("gitopsd", run_name="__main__")
    except SystemExit:
        pass
    finally:
        n = max(1, int(totals["requests"]))
        print(json.dumps({**totals, "ms_per_request": 1000 * totals["apply_cpu_s"] / n,
                          "thread_ms_per_request": 1000 * totals["apply_thread_cpu_s"] / n}), file=sys.stderr)


if __name__ == "__main__":
    main()
