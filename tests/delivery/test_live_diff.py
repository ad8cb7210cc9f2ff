"""``gitopsd diff --live`` against real target clusters (t1 and t2 behind counting proxies): what each
cluster holds against what a delivery would make of it, read with gets and server-side apply dry
runs only. The proxies count every request at the real server's door, so "nothing written" is
measured, not assumed."""

from __future__ import annotations

import base64
import json
import pathlib
import socket
import subprocess
import sys
from typing import Any

import pytest

from tests.delivery.conftest import Reconcile, Repo, Targets
from tests.gitutil import git

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PASSWORD = "s3cret-live-value"
EDITED_PASSWORD = "edited-by-hand-value"


def manifests(ns: str, *, legacy: bool = True) -> str:
    b64 = base64.b64encode(PASSWORD.encode()).decode()
    out = (f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
           f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: {ns}}}\n"
           "data: {mode: fast, value: '1'}\n"
           f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gone, namespace: {ns}}}\ndata: {{value: '1'}}\n"
           f"---\napiVersion: v1\nkind: Secret\nmetadata: {{name: creds, namespace: {ns}}}\ntype: Opaque\n"
           f"data: {{password: {b64}, user: YWRtaW4=}}\n")
    if legacy:
        out += f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: legacy, namespace: {ns}}}\ndata: {{value: '1'}}\n"
    return out


def diff(state: pathlib.Path, targets: Targets, repo: pathlib.Path, *extra: str,
         check: int) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gitopsd", "diff", str(repo), "--state-dir", str(state), "--kubeconfig-dir",
         str(targets.kubeconfigs), "--live", *extra],
        capture_output=True, text=True, timeout=600, cwd=state.parent, check=False)
    assert proc.returncode == check, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def by_cluster(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["cluster"]: c for c in doc["live"]["clusters"]}


def test_live_diff_shows_a_hand_edit_a_deleted_object_and_what_would_be_pruned_and_writes_nothing(
        targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    ns = repo.ns
    repo.pack("app", "1.0.0", manifests(ns))
    reconcile(repo.root)
    # on cluster a only: a person edits a field gitopsd manages, deletes an object, edits the Secret
    targets.kubectl("a", "patch", "configmap", "settings", "-n", ns, "--type=merge", "-p", '{"data": {"value": "hand"}}')
    targets.kubectl("a", "delete", "configmap", "gone", "-n", ns)
    edited = base64.b64encode(EDITED_PASSWORD.encode()).decode()
    targets.kubectl("a", "patch", "secret", "creds", "-n", ns, "--type=merge", "-p", json.dumps({"data": {"password": edited}}))
    # the repo drops the legacy ConfigMap (not reconciled yet): a delivery would prune it on both clusters
    repo.pack("app", "1.1.0", manifests(ns, legacy=False))
    targets.reset()

    doc = json.loads(diff(reconcile.state, targets, repo.root, "-o", "json", check=1).stdout)

    assert targets.writes() == {"a": 0, "b": 0}  # gets and dry runs only
    dry_runs = [r for r in targets.proxies["a"].requests() if r.dry_run]
    assert dry_runs and {r.field_manager for r in dry_runs} == {"gitopsd"}
    live = by_cluster(doc)
    assert set(live) == {"a", "b"} and doc["live"]["summary"]["unreachable"] == 0
    [pack_a] = live["a"]["packs"]
    assert (pack_a["instance"], pack_a["version"]) == ("app-a", "1.1.0")
    assert pack_a["missing"] == [f"ConfigMap/{ns}/gone"]
    assert pack_a["prune"] == [f"ConfigMap/{ns}/legacy"]
    changed = {c["object"]: c["diff"] for c in pack_a["changed"]}
    assert sorted(changed) == [f"ConfigMap/{ns}/settings", f"Secret/{ns}/creds"]
    assert changed[f"ConfigMap/{ns}/settings"] == [
        f"--- live/ConfigMap/{ns}/settings",
        f"+++ desired/ConfigMap/{ns}/settings",
        "@@ -1,7 +1,7 @@",
        " apiVersion: v1",
        " data:",
        "   mode: fast",
        "-  value: hand",
        "+  value: '1'",
        " kind: ConfigMap",
        " metadata:",
        "   labels:",
    ]
    secret = changed[f"Secret/{ns}/creds"]
    assert "-  password: (hidden)" in secret and "+  password: (hidden, changed)" in secret
    assert not any(line.startswith(("-  user", "+  user")) for line in secret)  # unchanged key: no diff line
    assert pack_a["inSync"] == 1  # the Namespace
    [pack_b] = live["b"]["packs"]
    assert (pack_b["changed"], pack_b["missing"], pack_b["prune"], pack_b["inSync"]) == ([], [], [f"ConfigMap/{ns}/legacy"], 4)
    text = json.dumps(doc)
    for value in (PASSWORD, EDITED_PASSWORD, base64.b64encode(PASSWORD.encode()).decode(), edited):
        assert value not in text

    table = diff(reconcile.state, targets, repo.root, check=1).stdout
    assert "  cluster a: 1 of 1 pack(s) would change" in table
    assert f"        ~ ConfigMap/{ns}/settings (would change)" in table
    assert "            -  value: hand\n            +  value: '1'\n" in table
    assert f"        + ConfigMap/{ns}/gone (missing in the cluster)" in table
    assert f"        - ConfigMap/{ns}/legacy (would be pruned)" in table
    assert PASSWORD not in table and EDITED_PASSWORD not in table and edited not in table
    assert targets.writes() == {"a": 0, "b": 0}


def test_an_unreachable_cluster_is_reported_while_the_other_is_compared(
        targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    ns = repo.ns
    repo.pack("app", "1.0.0", manifests(ns))
    reconcile(repo.root)
    targets.kubectl("a", "patch", "configmap", "settings", "-n", ns, "--type=merge", "-p", '{"data": {"value": "hand"}}')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = {"apiVersion": "v1", "kind": "Config", "current-context": "x",
            "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "x", "user": {}}], "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}
    (targets.kubeconfigs / "b.kubeconfig").write_text(json.dumps(dead))
    targets.reset()

    doc = json.loads(diff(reconcile.state, targets, repo.root, "-o", "json", check=2).stdout)

    live = by_cluster(doc)
    assert live["b"]["reachable"] is False and live["b"]["error"].startswith("ClusterUnreachable: cluster b: cannot reach")
    assert live["b"]["packs"] == []
    [pack_a] = live["a"]["packs"]
    assert [c["object"] for c in pack_a["changed"]] == [f"ConfigMap/{ns}/settings"]
    assert doc["live"]["summary"]["unreachable"] == 1
    assert targets.writes()["a"] == 0

    table = diff(reconcile.state, targets, repo.root, check=2).stdout
    assert "  cluster b: unreachable: ClusterUnreachable: cluster b: cannot reach the API server" in table
    assert f"        ~ ConfigMap/{ns}/settings (would change)" in table


def test_a_cluster_in_sync_exits_0_and_an_uninstalled_pack_would_be_pruned_whole(targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    repo.pack("app", "1.0.0", manifests(repo.ns), clusters="[a]")
    reconcile(repo.root)
    targets.reset()

    doc = json.loads(diff(reconcile.state, targets, repo.root, "-o", "json", check=0).stdout)

    assert by_cluster(doc)["a"] == {"cluster": "a", "reachable": True, "error": None, "packs": [], "packsInSync": 1}
    assert doc["live"]["summary"]["objects"] == {"changed": 0, "missing": 0, "prune": 0, "refused": 0, "inSync": 5}
    assert targets.writes() == {"a": 0, "b": 0}

    repo.remove("app")  # uninstalled at this revision: a delivery deletes the whole inventory
    doc = json.loads(diff(reconcile.state, targets, repo.root, "-o", "json", check=1).stdout)

    [gone] = by_cluster(doc)["a"]["packs"]
    ns = repo.ns
    assert (gone["instance"], gone["version"], gone["changed"], gone["missing"]) == ("app-a", None, [], [])
    assert gone["prune"] == [f"ConfigMap/{ns}/gone", f"ConfigMap/{ns}/legacy", f"ConfigMap/{ns}/settings",
                             f"Secret/{ns}/creds", f"Namespace/{ns}"]  # in the order a prune deletes them
    assert targets.writes() == {"a": 0, "b": 0}


def test_plan_live_compares_the_uncommitted_work_tree_with_what_the_clusters_hold(
        targets: Targets, reconcile: Reconcile, repo: Repo) -> None:
    ns = repo.ns
    repo.pack("app", "1.0.0", manifests(ns), clusters="[a]")
    git("init", "-q", "-b", "main", cwd=repo.root)
    git("add", "-A", cwd=repo.root)
    git("commit", "-q", "-m", "app 1.0.0", cwd=repo.root)
    reconcile(repo.root)
    targets.kubectl("a", "delete", "configmap", "gone", "-n", ns)
    repo.pack("app", "1.0.1", manifests(ns).replace("mode: fast, value: '1'", "mode: fast, value: '2'"), clusters="[a]")
    targets.reset()

    proc = subprocess.run(
        [sys.executable, "-m", "gitopsd", "plan", str(repo.root), "--base", "HEAD", "--state-dir", str(reconcile.state),
         "--kubeconfig-dir", str(targets.kubeconfigs), "--live", "-o", "json"],
        capture_output=True, text=True, timeout=600, cwd=reconcile.state.parent, check=False)

    assert proc.returncode == 1, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["head"].startswith("main+worktree@sha1:")
    live = by_cluster(doc)
    assert live["b"]["packs"] == [] and live["b"]["reachable"] is True
    [pack_a] = live["a"]["packs"]
    assert (pack_a["version"], pack_a["missing"], pack_a["prune"]) == ("1.0.1", [f"ConfigMap/{ns}/gone"], [])
    [settings] = pack_a["changed"]
    assert [line for line in settings["diff"] if line.startswith(("-  ", "+  "))] == ["-  value: '1'", "+  value: '2'"]
    assert targets.writes() == {"a": 0, "b": 0}
