"""gitopsd's CPU for one Kubernetes request alone: ``Requests.call`` in a loop, thread CPU time.

    python bench/kube_request_cpu.py KUBECONFIG [--namespace seam-system] [--gets 2000] [--applies 500]

On a cluster with gitopsd's namespace and CRDs (``tools/kubecluster up NAME``, then
``kubectl apply --server-side -f deploy/00-namespace.yaml -f deploy/10-crds.yaml``) that holds
PackInstances (a ``gitopsd reconcile`` ran against it): applies a copy of one as
``bench-request-cpu``, then GETs it ``--gets`` times and server-side applies it ``--applies``
times through the adapter's ``Requests.call`` (the write path), and deletes it. Prints one JSON
document: ms of this thread's CPU per GET and per apply. Run it with ``PYTHONPATH`` set to another
checkout to measure that one.
"""

from __future__ import annotations

import argparse
import json
import time

from gitopsd.adapters import kube
from gitopsd.adapters.kube import connection


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kubeconfig")
    p.add_argument("--namespace", default="seam-system")
    p.add_argument("--gets", type=int, default=2000)
    p.add_argument("--applies", type=int, default=500)
    args = p.parse_args()
    requests = kube.Requests(kube.connect(kubeconfig=args.kubeconfig), may_write=lambda: True, timeout=30)
    name = "bench-request-cpu"
    path = connection.custom_path(args.namespace, kube.PACK_INSTANCES.plural, name)
    listed = requests.call("list", "packinstances", "GET", connection.custom_path(args.namespace, kube.PACK_INSTANCES.plural),
                           query={"limit": "1"})["items"]
    if not listed:
        raise SystemExit(f"no PackInstance in {args.namespace} to copy: run a gitopsd reconcile against the cluster first")
    model = listed[0]
    body = {"apiVersion": kube.API_VERSION, "kind": kube.PACK_INSTANCES.kind,
            "metadata": {"name": name, "namespace": args.namespace, "labels": model["metadata"].get("labels") or {}},
            "spec": model["spec"], "status": model.get("status") or {}}
    apply = {"fieldManager": "gitopsd", "force": "true"}
    requests.call("apply", "packinstances", "PATCH", path, body, query=apply, content_type=kube.APPLY_PATCH)
    try:
        for _ in range(50):  # warm up: connection, TLS, caches
            requests.call("get", "packinstances", "GET", path)
        started = time.thread_time()
        for _ in range(args.gets):
            requests.call("get", "packinstances", "GET", path)
        get_ms = (time.thread_time() - started) / args.gets * 1000
        started = time.thread_time()
        for _ in range(args.applies):
            requests.call("apply", "packinstances", "PATCH", path, body, query=apply, content_type=kube.APPLY_PATCH)
        apply_ms = (time.thread_time() - started) / args.applies * 1000
    finally:
        requests.call("delete", "packinstances", "DELETE", path)
    print(json.dumps({"get_ms": round(get_ms, 3), "apply_ms": round(apply_ms, 3), "gets": args.gets,
                      "applies": args.applies}))


if __name__ == "__main__":
    main()
