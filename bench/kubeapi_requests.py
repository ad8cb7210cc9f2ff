"""Kubernetes API requests of ``gitopsd reconcile --kubeconfig`` against the kubeapi emulator.

    python bench/kubeapi_requests.py OUT      (OUT made by bench/generate.py: OUT/work is a Git work tree)

Starts ``python -m gitopsd.testing.kubeapi``, applies deploy/00-namespace.yaml and deploy/10-crds.yaml
with kubectl, then runs ``gitopsd reconcile OUT/work --kubeconfig KC`` three times as a subprocess:
cold, no-op, and after one pack's version bump (committed in the work tree). Before each pass the
emulator's request log is reset; after it the counts by verb and resource are read from
``GET /__emulator/requests``. Each pass is timed (wall clock of the process) and its peak RSS taken
from wait4. Prints one JSON document on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv" / "bin"
PYTHON = str(VENV / "python") if (VENV / "python").exists() else sys.executable
GITOPSD = [str(VENV / "gitopsd")] if (VENV / "gitopsd").exists() else [PYTHON, "-m", "gitopsd"]
WRITE_VERBS = {"create", "update", "patch", "apply", "delete", "deletecollection"}


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def http(method: str, url: str) -> dict:
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def counts(url: str) -> dict[str, object]:
    """Requests by verb and resource. A paged list (``limit``/``continue``) is one list: its pages after the
    first carry ``continue=`` and are counted as pages, not as more lists."""
    data = http("GET", url + "/__emulator/requests")
    by: dict[str, int] = {}
    lists: dict[str, int] = {}
    pages: dict[str, int] = {}
    for r in data["requests"]:
        resource = r["resource"] or "(discovery)"
        key = f"{r['verb']} {resource}"
        by[key] = by.get(key, 0) + 1
        if r["verb"] == "list":
            pages[resource] = pages.get(resource, 0) + 1
        if r["verb"] == "watch" or (r["verb"] == "list" and "continue=" not in (r.get("query") or "")):
            lists[resource] = lists.get(resource, 0) + 1
    writes = sum(1 for r in data["requests"] if r["verb"] in WRITE_VERBS and not r.get("dry_run"))
    return {"total": len(data["requests"]), "writes": writes, "by_verb_resource": dict(sorted(by.items())),
            "list_watch_per_kind": dict(sorted(lists.items())), "list_pages_per_kind": dict(sorted(pages.items())),
            "max_list_watch_per_kind": max(lists.values(), default=0),
            "failed": sum(1 for r in data["requests"] if r["code"] >= 400)}


def reconcile(work: pathlib.Path, kubeconfig: pathlib.Path, state: pathlib.Path, key: pathlib.Path,
              logfile: pathlib.Path) -> dict[str, object]:
    cmd = [*GITOPSD, "reconcile", str(work), "--kubeconfig", str(kubeconfig), "--state-dir", str(state),
           "--signing-key", str(key), "-o", "json", "--log-level", "warning"]
    with logfile.open("w") as err, open(os.devnull, "w") as devnull:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=devnull, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    # cpu_s: gitopsd's own CPU time; the rest of ``seconds`` is waiting (mostly on the emulator)
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "exit": proc.returncode,
            "rss_mib": usage.ru_maxrss / 1024, "command": cmd}


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=pathlib.Path, help="a folder made by bench/generate.py")
    p.add_argument("--scratch", type=pathlib.Path, help="state dir, kubeconfig, logs (default: OUT/kube)")
    args = p.parse_args()
    out: dict[str, object] = {}
    work = args.out / "work"
    scratch = args.scratch or args.out / "kube"
    scratch.mkdir(parents=True, exist_ok=True)
    kubeconfig, state, keys = scratch / "kubeconfig", scratch / "state", scratch / "keys"
    subprocess.run([*GITOPSD, "keygen", "--dir", str(keys)], check=True, capture_output=True)
    emu_log = (scratch / "emulator.log").open("w")
    emulator = subprocess.Popen([PYTHON, "-m", "gitopsd.testing.kubeapi", "--port", "0", "--kubeconfig", str(kubeconfig)],
                                stdout=subprocess.PIPE, stderr=emu_log, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert emulator.stdout is not None
        url = emulator.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"emulator did not start; see {scratch / 'emulator.log'}")
        for manifest in ("00-namespace.yaml", "10-crds.yaml"):
            subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "apply", "--server-side", "-f",
                            str(ROOT / "deploy" / manifest)], check=True, capture_output=True)
        for name in ("cold", "noop", "one_pack_changed"):
            if name == "one_pack_changed":
                out["changed_pack"] = bump(work)
            http("POST", url + "/__emulator/reset")
            run = reconcile(work, kubeconfig, state, keys / "signing.key", scratch / f"gitopsd-{name}.log")
            run["requests"] = counts(url)
            out[name] = run
            log(f"  kube {name}: {run['seconds']:.2f} s ({run['cpu_s']:.2f} s CPU), exit {run['exit']}, {run['requests']['total']} requests, "
                f"{run['requests']['writes']} writes, max {run['requests']['max_list_watch_per_kind']} list/watch per kind")
    finally:
        emulator.terminate()
        _, _, usage = os.wait4(emulator.pid, 0)
        emulator.returncode = 0
        emu_log.close()
        out["emulator_rss_mib"] = usage.ru_maxrss / 1024
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
