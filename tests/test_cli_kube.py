"""The CLI against a real management cluster, as a user runs it: ``gitopsd reconcile REPO
--kubeconfig KC --signing-key K`` in a subprocess, through the counting proxy; what it made is read
back with the real ``kubectl``."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import pytest

from tests.conftest import Cli
from tests.realkube.env import KubeEnv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

EXAMPLE_PACKS = ["cert-manager-lite-v0.9.1", "network-policies-v1.1.0", "observability-v2.3.0", "platform-base-v1.0.0",
                 "web-frontend-v1.4.2"]


@pytest.fixture
def repo(examples: pathlib.Path, kube_env: KubeEnv) -> pathlib.Path:
    settings = examples / "gitopsd.yaml"
    settings.write_text(settings.read_text().replace("namespace: seam-system", f"namespace: {kube_env.namespace}", 1))
    return examples


@pytest.fixture
def signing_key(cli: Cli, tmp_path: pathlib.Path) -> pathlib.Path:
    cli("keygen", "--dir", str(tmp_path / "keys"))
    return tmp_path / "keys" / "signing.key"


def kubectl(kube_env: KubeEnv, mgmt_kubeconfig: pathlib.Path, *args: str) -> Any:
    binary = shutil.which("kubectl")
    assert binary, "kubectl must be on PATH"
    result = subprocess.run([binary, "--kubeconfig", str(mgmt_kubeconfig), "-n", kube_env.namespace, *args, "-o", "json", "--show-managed-fields"],
                            capture_output=True, text=True, timeout=60, check=True,
                            env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")})
    return json.loads(result.stdout)


def test_reconcile_with_a_kubeconfig_writes_what_kubectl_shows_then_nothing(
        cli: Cli, repo: pathlib.Path, kube_env: KubeEnv, mgmt_kubeconfig: pathlib.Path, signing_key: pathlib.Path,
        state_dir: pathlib.Path) -> None:
    flags = ["--kubeconfig", str(kube_env.kubeconfig), "--lease-namespace", kube_env.namespace, "--signing-key",
             str(signing_key), "--state-dir", str(state_dir)]

    first = cli.json("reconcile", str(repo), *flags)

    assert first["summary"]["writes"] == 20
    packs = kubectl(kube_env, mgmt_kubeconfig, "get", "infrastructureclusterpacks")["items"]
    assert sorted(p["metadata"]["name"] for p in packs) == EXAMPLE_PACKS
    assert all(p["status"]["signed"] is True and p["metadata"]["managedFields"][0]["manager"] == "gitopsd" for p in packs)
    instances = {i["metadata"]["name"]: i for i in kubectl(kube_env, mgmt_kubeconfig, "get", "packinstances")["items"]}
    assert len(instances) == 15 and {i["status"]["state"] for i in instances.values()} == {"installed"}
    assert {m["manager"] for i in instances.values() for m in i["metadata"]["managedFields"]} == {"gitopsd"}
    kube_env.reset_requests()

    second = cli.json("reconcile", str(repo), *flags)

    assert second["summary"]["writes"] == 0
    assert kube_env.write_count() == 0, kube_env.request_counts()  # counted at the real server's door
    assert kube_env.request_counts() == {"list infrastructureclusterpacks": 1, "list packinstances": 1}

    packbuild = repo / "packs" / "web-frontend" / "packbuild.yaml"
    packbuild.write_text(packbuild.read_text().replace("version: v1.4.2", "version: v1.5.0", 1))
    bumped = cli.json("reconcile", str(repo), *flags)

    assert sorted((c["kind"], c["name"], c["action"]) for c in bumped["changes"] if c["action"] != "unchanged") == [
        ("ClusterPack", "web-frontend-v1.5.0", "create"),
        ("PackInstance", "web-frontend-prod-eu", "supersede"), ("PackInstance", "web-frontend-prod-us", "supersede"),
    ]
    after = {i["metadata"]["name"]: i for i in kubectl(kube_env, mgmt_kubeconfig, "get", "packinstances")["items"]}
    for name in ("web-frontend-prod-eu", "web-frontend-prod-us"):
        assert after[name]["metadata"]["uid"] == instances[name]["metadata"]["uid"]  # superseded in place
        assert (after[name]["status"]["version"], after[name]["status"]["upgradeDirection"]) == ("1.5.0", "Upgrade")


def test_a_lease_namespace_that_does_not_exist_is_one_clear_line(cli: Cli, repo: pathlib.Path, kube_env: KubeEnv,
                                                                  signing_key: pathlib.Path, state_dir: pathlib.Path) -> None:
    result = cli("reconcile", str(repo), "--kubeconfig", str(kube_env.kubeconfig), "--lease-namespace", "no-such-ns",
                 "--signing-key", str(signing_key), "--state-dir", str(state_dir), check=2)

    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line == ("error: namespace no-such-ns does not exist, so Lease no-such-ns/gitopsd-leader cannot be created: "
                    "create the namespace or elect the leader in another one; or pass --lease-namespace "
                    "(reason LeaseNamespaceNotFound)")
    assert kube_env.requests(verb="create", resource="leases")  # the real server said so
    assert [r for r in kube_env.requests() if r.is_write and r.resource != "leases"] == []  # nothing else written
