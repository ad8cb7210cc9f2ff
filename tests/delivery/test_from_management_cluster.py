"""The daemon's way: ``gitopsd run --once`` against a management cluster, whose
``clusters/<name>.yaml`` name kubeconfig Secrets there; delivery reaches the targets with them and
no kubeconfig text reaches the output, the logs or the PackInstance status."""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
import sys

import pytest
from kubernetes import client

from tests.delivery.conftest import Repo, Targets
from tests.realkube.env import KubeEnv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_run_once_delivers_with_kubeconfig_secrets_and_never_shows_them(
        kube_env: KubeEnv, targets: Targets, repo: Repo, tmp_path: pathlib.Path, mgmt_kubeconfig: pathlib.Path) -> None:
    settings = repo.root / "gitopsd.yaml"
    settings.write_text(settings.read_text().replace("namespace: seam-system", f"namespace: {kube_env.namespace}"))
    for name in ("a", "b"):
        (repo.root / "clusters" / f"{name}.yaml").write_text(
            f"apiVersion: gitopsd.dev/v1alpha1\nkind: Cluster\nname: {name}\n"
            f"kubeconfig: {{secretRef: {{name: target-{name}, key: kubeconfig}}}}\n")
        text = (targets.kubeconfigs / f"{name}.kubeconfig").read_bytes()
        client.CoreV1Api(kube_env.direct).create_namespaced_secret(kube_env.namespace, {
            "metadata": {"name": f"target-{name}"}, "data": {"kubeconfig": base64.b64encode(text).decode()}})
    repo.pack("cfg", "1.0.0", f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {repo.ns}}}\n"
              f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: one, namespace: {repo.ns}}}\ndata: {{v: '1'}}\n")
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "gitopsd", "keygen", "--dir", str(keys)], check=True, capture_output=True)

    proc = subprocess.run(
        [sys.executable, "-m", "gitopsd", "run", str(repo.root), "--once", "--kubeconfig", str(kube_env.kubeconfig),
         "--lease-namespace", kube_env.namespace, "--signing-key", str(keys / "signing.key"), "--state-dir",
         str(tmp_path / "state"), "--log-level", "debug"],
        capture_output=True, text=True, timeout=240, check=False)

    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("a", "b"):
        found = targets.get(name, "configmap", "one", "-n", repo.ns)
        assert found is not None and found["metadata"]["labels"]["gitopsd.dev/instance"] == f"cfg-{name}"
    instances = {i["metadata"]["name"]: i for i in kube_env.list_objects("packinstances")}
    assert {n: i["status"]["delivery"]["result"] for n, i in instances.items()} == {"cfg-a": "Delivered", "cfg-b": "Delivered"}
    managers = {m["manager"] for m in instances["cfg-a"]["metadata"]["managedFields"]}
    assert managers == {"gitopsd", "gitopsd-delivery"}
    secret_text = base64.b64encode((targets.kubeconfigs / "a.kubeconfig").read_bytes()).decode()
    server = json.dumps(str(targets.proxies["a"].url))
    for where in (proc.stdout, proc.stderr, json.dumps(instances)):
        assert secret_text not in where and "client-key" not in where
    assert server not in json.dumps(instances)  # not even the target's address is recorded
    reads = kube_env.requests(verb="get", resource="secrets")
    assert sorted(r.name for r in reads) == ["target-a", "target-b"]
    # the deliveries of one pack to both clusters make one Event, about its ClusterPack (not one per PackInstance)
    events = client.CoreV1Api(kube_env.direct).list_namespaced_event(kube_env.namespace).items
    delivered = [(e.involved_object.kind, e.involved_object.name, e.message) for e in events if e.reason == "Delivered"]
    assert [d[:2] for d in delivered] == [("InfrastructureClusterPack", "cfg-v1.0.0")]
    assert delivered[0][2].startswith("2 PackInstances Delivered (cfg-a, cfg-b)")
