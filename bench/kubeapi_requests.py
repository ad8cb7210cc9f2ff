"""Kubernetes API requests of ``gitopsd reconcile --kubeconfig`` against a real control plane.

    python bench/kubeapi_requests.py OUT      (OUT made by bench/generate.py: OUT/work is a Git work tree)

Starts a cluster with ``tools/kubecluster up bench-mgmt`` (a fresh one: a ``bench-mgmt`` left
running is stopped first), applies deploy/00-namespace.yaml and deploy/10-crds.yaml with kubectl,
and starts the counting proxy of the tests (``tests.realkube.proxy.KubeProxy``) in this process.
Then it runs ``gitopsd reconcile OUT/work --kubeconfig KC`` three times as a subprocess, KC being the
proxy's kubeconfig: cold, no-op, and after one pack's version bump (committed in the work tree).
Before each pass the proxy's request log is reset; after it the requests are counted by verb and
resource. Each pass is timed (wall clock of the process), with gitopsd's CPU time (user + sys) and
peak RSS from wait4, and the CPU time kube-apiserver and etcd spent meanwhile (/proc). The cluster is
stopped at the end. Prints one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.realkube import proxy as kube_proxy  # noqa: E402

VENV = ROOT / ".venv" / "bin"
PYTHON = str(VENV / "python") if (VENV / "python").exists() else sys.executable
GITOPSD = [str(VENV / "gitopsd")] if (VENV / "gitopsd").exists() else [PYTHON, "-m", "gitopsd"]
KUBECLUSTER = [sys.executable, str(ROOT / "tools" / "kubecluster")]
CLUSTER = "bench-mgmt"
WRITE_VERBS = kube_proxy.WRITE_VERBS


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def counts(proxy: kube_proxy.KubeProxy) -> dict[str, object]:
    """Requests by verb and resource. A paged list (``limit``/``continue``) is one list: its pages after the
    first carry ``continue=`` and are counted as pages, not as more lists."""
    records = proxy.requests(discovery=True)
    by: dict[str, int] = {}
    lists: dict[str, int] = {}
    pages: dict[str, int] = {}
    for r in records:
        resource = r.resource or "(discovery)"
        key = f"{r.verb} {resource}"
        by[key] = by.get(key, 0) + 1
        if r.verb == "list":
            pages[resource] = pages.get(resource, 0) + 1
        if r.verb == "watch" or (r.verb == "list" and "continue=" not in r.query):
            lists[resource] = lists.get(resource, 0) + 1
    writes = sum(1 for r in records if r.is_write)
    return {"total": len(records), "writes": writes, "by_verb_resource": dict(sorted(by.items())),
            "list_watch_per_kind": dict(sorted(lists.items())), "list_pages_per_kind": dict(sorted(pages.items())),
            "max_list_watch_per_kind": max(lists.values(), default=0),
            "failed": sum(1 for r in records if r.code >= 400),
            "failed_by_verb_resource_code": dict(sorted(collections.Counter(
                f"{r.verb} {r.resource or '(discovery)'} {r.code}" for r in records if r.code >= 400).items()))}


def server_cpu(pids: dict[str, int]) -> float:
    """CPU seconds (user + sys) kube-apiserver and etcd have used so far."""
    total = 0
    for name in ("kube-apiserver", "etcd"):
        fields = pathlib.Path(f"/proc/{pids[name]}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def reconcile(work: pathlib.Path, kubeconfig: pathlib.Path, state: pathlib.Path, key: pathlib.Path,
              logfile: pathlib.Path) -> dict[str, object]:
    # through bench/kube_apply_cpu.py: the same command line, with the CPU spent in the write path
    # (KubeCluster.apply) measured apart; it prints that as the last line of stderr
    cmd = [PYTHON, str(ROOT / "bench" / "kube_apply_cpu.py"), "reconcile", str(work), "--kubeconfig", str(kubeconfig),
           "--state-dir", str(state), "--signing-key", str(key), "-o", "json", "--log-level", "warning"]
    with logfile.open("w") as err, open(os.devnull, "w") as devnull:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=devnull, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = logfile.read_text().strip().splitlines()
    write_path = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    # cpu_s: gitopsd's own CPU time; the rest of ``seconds`` is waiting (on the API server, or for a core)
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "exit": proc.returncode,
            "rss_mib": usage.ru_maxrss / 1024, "command": cmd, "write_path": write_path}


def bump(work: pathlib.Path) -> str:
    packs = sorted(d.name for d in (work / "packs").iterdir() if d.is_dir())
    pack = packs[len(packs) // 2 + 1]
    build = work / "packs" / pack / "packbuild.yaml"
    text = build.read_text()
    old = re.search(r"^version: (\S+)$", text, re.M)
    assert old is not None
    major, minor, patch = (int(x) for x in old[1].lstrip("v").split("."))
    build.write_text(text.replace(old[0], f"version: {major}.{minor}.{patch + 1}"))
    manifest = sorted(p for p in (work / "packs" / pack).rglob("*.yaml")
                      if p.name != "packbuild.yaml" and "kustomization" not in p.name)[0]
    manifest.write_text(manifest.read_text().replace("kind: ServiceAccount\nmetadata:\n",
                                                     "kind: ServiceAccount\nmetadata:\n  annotations: {bench/bump: '1'}\n", 1))
    subprocess.run(["git", "-C", str(work), "-c", "user.name=bench", "-c", "user.email=bench@example.com",
                    "commit", "-qam", f"bump {pack}"], check=True)
    return pack


def start_cluster(scratch: pathlib.Path) -> tuple[pathlib.Path, dict[str, int]]:
    """A fresh ``bench-mgmt`` with gitopsd's namespace and CRDs; its kubeconfig and process ids."""
    subprocess.run([*KUBECLUSTER, "down", CLUSTER], check=False, capture_output=True, timeout=120)
    t0 = time.perf_counter()
    up = subprocess.run([*KUBECLUSTER, "up", CLUSTER], capture_output=True, text=True, timeout=1800, check=False)
    (scratch / "kubecluster.log").write_text(up.stdout + up.stderr)
    if up.returncode != 0:
        raise RuntimeError(f"tools/kubecluster up {CLUSTER} failed (exit {up.returncode}); see {scratch / 'kubecluster.log'}")
    kubeconfig = pathlib.Path(up.stdout.strip().splitlines()[-1])
    log(f"  kube: {CLUSTER} up in {time.perf_counter() - t0:.1f} s")
    for manifest in ("00-namespace.yaml", "10-crds.yaml"):
        subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "apply", "--server-side", "-f",
                        str(ROOT / "deploy" / manifest)], check=True, capture_output=True)
    subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "wait", "--for=condition=Established", "--timeout=60s",
                    "-f", str(ROOT / "deploy" / "10-crds.yaml")], check=True, capture_output=True)
    pids = json.loads((kubeconfig.parent / "cluster.json").read_text())["pids"]
    return kubeconfig, pids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=pathlib.Path, help="a folder made by bench/generate.py")
    p.add_argument("--scratch", type=pathlib.Path, help="state dir, kubeconfig, logs (default: OUT/kube)")
    args = p.parse_args()
    out: dict[str, object] = {"cluster": CLUSTER}
    work = args.out / "work"
    scratch = args.scratch or args.out / "kube"
    scratch.mkdir(parents=True, exist_ok=True)
    state, keys = scratch / "state", scratch / "keys"
    subprocess.run([*GITOPSD, "keygen", "--dir", str(keys)], check=True, capture_output=True)
    try:
        upstream, pids = start_cluster(scratch)
        with kube_proxy.KubeProxy(upstream) as proxy:
            kubeconfig = proxy.write_kubeconfig(scratch / "kubeconfig")
            for name in ("cold", "noop", "one_pack_changed"):
                if name == "one_pack_changed":
                    out["changed_pack"] = bump(work)
                proxy.reset_requests()
                cpu_before = server_cpu(pids)
                run = reconcile(work, kubeconfig, state, keys / "signing.key", scratch / f"gitopsd-{name}.log")
                run["server_cpu_s"] = server_cpu(pids) - cpu_before
                run["requests"] = counts(proxy)
                out[name] = run
                log(f"  kube {name}: {run['seconds']:.2f} s ({run['cpu_s']:.2f} s CPU; API server + etcd "
                    f"{run['server_cpu_s']:.2f} s CPU), exit {run['exit']}, {run['requests']['total']} requests, "
                    f"{run['requests']['writes']} writes, max {run['requests']['max_list_watch_per_kind']} list/watch per kind")
    finally:
        subprocess.run([*KUBECLUSTER, "down", CLUSTER], check=False, capture_output=True, timeout=120)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
