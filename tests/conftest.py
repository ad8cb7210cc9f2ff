"""Shared fixtures: a private copy of examples-repo, a runner for the real CLI, and real Kubernetes
control planes (``tests.realkube``) with a counting, fault-injecting proxy in front."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from tests.realkube import clusters as realkube_clusters
from tests.realkube import env as realkube_env
from tests.realkube import proxy as realkube_proxy

pytest.register_assert_rewrite("tests.registry_fixture")
pytest_plugins = ["tests.registry_fixture"]  # a real OCI registry (Debian's docker-registry) on loopback

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples-repo"


@pytest.fixture
def examples(tmp_path: pathlib.Path) -> pathlib.Path:
    """A writable copy of examples-repo (a plain folder)."""
    dest = tmp_path / "repo"
    shutil.copytree(EXAMPLES, dest)
    return dest


@pytest.fixture
def state_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "state"


class Cli:
    """Runs ``python -m gitopsd`` in a subprocess, as a user would."""

    def __init__(self, cwd: pathlib.Path) -> None:
        self.cwd = cwd

    def __call__(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "gitopsd", *args], capture_output=True, text=True, cwd=self.cwd, timeout=300, check=False
        )
        if check is not None and proc.returncode != check:
            raise AssertionError(
                f"gitopsd {' '.join(args)} exited {proc.returncode}, expected {check}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str, check: int | None = 0) -> dict:
        return json.loads(self(*args, "-o", "json", check=check).stdout)


@pytest.fixture
def cli(tmp_path: pathlib.Path) -> Cli:
    return Cli(tmp_path)


# -- real Kubernetes -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clusters() -> Iterator[realkube_clusters.Clusters]:
    """Real control planes by name (``mgmt``, ``t1``, ``t2``...), started on first use."""
    started = realkube_clusters.Clusters()
    yield started
    started.stop()


@pytest.fixture(scope="session")
def mgmt_kubeconfig(clusters: realkube_clusters.Clusters) -> pathlib.Path:
    """The management cluster, with gitopsd's CRDs from deploy/10-crds.yaml applied as they are."""
    kubeconfig = clusters.kubeconfig("mgmt")
    with realkube_clusters.api(kubeconfig) as api_client:
        crds = [d for d in yaml.safe_load_all((ROOT / "deploy" / "10-crds.yaml").read_text()) if d]
        realkube_clusters.apply_documents(api_client, crds)
    return kubeconfig


@pytest.fixture
def kube_proxy(mgmt_kubeconfig: pathlib.Path) -> Iterator[realkube_proxy.KubeProxy]:
    """A fault-injecting, request-counting proxy in front of the management cluster's API server."""
    with realkube_proxy.KubeProxy(mgmt_kubeconfig) as proxy:
        yield proxy


@pytest.fixture
def kube_namespace(mgmt_kubeconfig: pathlib.Path) -> Iterator[str]:
    """A namespace of the test's own on the management cluster, deleted afterwards."""
    with realkube_clusters.api(mgmt_kubeconfig) as api_client:
        name = realkube_clusters.fresh_namespace(api_client)
        yield name
        realkube_clusters.delete_namespace(api_client, name)


@pytest.fixture
def kube_env(kube_proxy: realkube_proxy.KubeProxy, kube_namespace: str, mgmt_kubeconfig: pathlib.Path,
             tmp_path: pathlib.Path) -> Iterator[realkube_env.KubeEnv]:
    """The test's namespace on the management cluster, the proxy gitopsd talks through (its
    kubeconfig) and a direct client for the test's own reads and writes."""
    with realkube_clusters.api(mgmt_kubeconfig) as direct:
        yield realkube_env.KubeEnv(kube_proxy, direct, kube_namespace,
                                   kube_proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig", kube_namespace))
