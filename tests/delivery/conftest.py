"""Two real target clusters (``t1``, ``t2``) with counting proxies in front, and small config repos
whose packs live in namespaces of the test's own, so tests share the clusters without meeting."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.realkube import clusters as realkube
from tests.realkube import proxy as realkube_proxy

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Targets:
    """Cluster ``a`` is t1 and ``b`` is t2, each behind a proxy; ``kubeconfigs`` is the folder
    gitopsd is given (``--kubeconfig-dir``), ``direct`` the clusters' own kubeconfigs."""

    def __init__(self, proxies: dict[str, realkube_proxy.KubeProxy], direct: dict[str, pathlib.Path],
                 folder: pathlib.Path) -> None:
        self.proxies = proxies
        self.direct = direct
        self.kubeconfigs = folder

    def kubectl(self, cluster: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = shutil.which("kubectl")
        assert binary, "kubectl must be on PATH"
        return subprocess.run([binary, "--kubeconfig", str(self.direct[cluster]), *args], capture_output=True, text=True,
                              timeout=120, check=check, env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.kubeconfigs)})

    def get(self, cluster: str, *args: str) -> dict[str, Any] | None:
        result = self.kubectl(cluster, "get", *args, "-o", "json", check=False)
        if result.returncode != 0:
            assert "NotFound" in result.stderr or "not found" in result.stderr, result.stderr
            return None
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def writes(self) -> dict[str, int]:
        return {name: p.write_count() for name, p in self.proxies.items()}

    def reset(self) -> None:
        for p in self.proxies.values():
            p.reset_requests()


@pytest.fixture(scope="session")
def target_kubeconfigs(clusters: realkube.Clusters) -> dict[str, pathlib.Path]:
    return {"a": clusters.kubeconfig("t1"), "b": clusters.kubeconfig("t2")}


@pytest.fixture
def targets(target_kubeconfigs: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> Iterator[Targets]:
    folder = tmp_path / "kubeconfigs"
    folder.mkdir()
    with realkube_proxy.KubeProxy(target_kubeconfigs["a"]) as pa, realkube_proxy.KubeProxy(target_kubeconfigs["b"]) as pb:
        pa.write_kubeconfig(folder / "a.kubeconfig")
        pb.write_kubeconfig(folder / "b.kubeconfig")
        yield Targets({"a": pa, "b": pb}, target_kubeconfigs, folder)


class Repo:
    """A config repo with clusters a and b and packs written by the test; ``ns`` is a namespace
    name of this test's own."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.ns = f"d-{uuid.uuid4().hex[:8]}"
        (root / "clusters").mkdir(parents=True)
        (root / "gitopsd.yaml").write_text("apiVersion: gitopsd.dev/v1alpha1\nkind: GitopsdConfig\nnamespace: seam-system\n")
        for name in ("a", "b"):
            (root / "clusters" / f"{name}.yaml").write_text(f"apiVersion: gitopsd.dev/v1alpha1\nkind: Cluster\nname: {name}\n")

    def pack(self, name: str, version: str, manifests: str, *, clusters: str = "[a, b]", extra: str = "") -> None:
        folder = self.root / "packs" / name
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "m").mkdir(parents=True)
        (folder / "m" / "all.yaml").write_text(manifests)
        (folder / "packbuild.yaml").write_text(
            f"name: {name}\nversion: {version}\nbasePackName: {name}\ncategory: raw\nrawSource: {{path: m}}\n"
            f"targetClusters: {clusters}\n{extra}")

    def remove(self, name: str) -> None:
        shutil.rmtree(self.root / "packs" / name)


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> Repo:
    return Repo(tmp_path / "repo")


class Reconcile:
    def __init__(self, state: pathlib.Path, targets: Targets) -> None:
        self.state = state
        self.targets = targets

    def __call__(self, repo: pathlib.Path, *extra: str, check: int | None = 0) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "gitopsd", "reconcile", str(repo), "--state-dir", str(self.state), "--kubeconfig-dir",
             str(self.targets.kubeconfigs), "-o", "json", *extra],
            capture_output=True, text=True, timeout=600, cwd=self.state.parent, check=False)
        if check is not None and proc.returncode != check:
            raise AssertionError(f"gitopsd reconcile exited {proc.returncode}, expected {check}\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def reconcile(tmp_path: pathlib.Path, targets: Targets) -> Reconcile:
    return Reconcile(tmp_path / "state", targets)


def deliveries(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["instance"]: d for d in result["deliveries"]}
