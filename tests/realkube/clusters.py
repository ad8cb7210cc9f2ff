"""Real control planes for the tests, started with the project's own ``tools/kubecluster``.

A test session starts each named cluster on first use (``up``: the binaries are built once per
Kubernetes version into ``~/.cache/gitopsd``; a cluster left running by an earlier session is
reused) and stops the ones it started at the end. ``GITOPSD_TEST_KUBECONFIG`` names an existing
cluster to use as the management cluster instead (it is never stopped). Each test works in
namespaces of its own, so tests share a cluster without seeing each other's objects.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from kubernetes import client

from gitopsd.adapters import kube

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "kubecluster"
UP_TIMEOUT = 1800  # a cold build of the binaries is part of the first ``up``


class Clusters:
    """The named clusters of one test session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kubeconfigs: dict[str, pathlib.Path] = {}
        self._started: list[str] = []

    def kubeconfig(self, name: str) -> pathlib.Path:
        """The kubeconfig of cluster ``name``, started if it is not running yet."""
        with self._lock:
            if name not in self._kubeconfigs:
                if name == "mgmt" and os.environ.get("GITOPSD_TEST_KUBECONFIG"):
                    self._kubeconfigs[name] = pathlib.Path(os.environ["GITOPSD_TEST_KUBECONFIG"])
                else:
                    self._kubeconfigs[name], started = up(f"test-{name}")
                    if started:  # one found running (another session's, or kept) is left running
                        self._started.append(f"test-{name}")
            return self._kubeconfigs[name]

    def stop(self) -> None:
        if self._started and not os.environ.get("GITOPSD_KEEP_CLUSTERS"):
            subprocess.run([sys.executable, str(TOOL), "down", *self._started], check=False, capture_output=True,
                           timeout=120)
        self._started.clear()


def up(name: str) -> tuple[pathlib.Path, bool]:
    """The kubeconfig of cluster ``name``, and whether this call started it."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(TOOL), "up", name], capture_output=True, text=True,
                            timeout=UP_TIMEOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"tools/kubecluster up {name} failed (exit {result.returncode}):\n"
                           f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    path = pathlib.Path(result.stdout.strip().splitlines()[-1])
    if not path.is_file():
        raise RuntimeError(f"tools/kubecluster up {name} did not print a kubeconfig path:\n{result.stdout[-2000:]}")
    sys.stderr.write(f"\ncluster {name} ready in {time.monotonic() - started:.1f} s: {path}\n")
    return path, "is already running" not in result.stdout + result.stderr


def api(kubeconfig: pathlib.Path | str, user_agent: str = "gitopsd-tests") -> client.ApiClient:
    return kube.connect(kubeconfig=str(kubeconfig), user_agent=user_agent)


def fresh_namespace(api_client: client.ApiClient, prefix: str = "t", labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    body = {"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "gitopsd-tests", **(labels or {})}}}
    _done(client.CoreV1Api(api_client).create_namespace(body, _preload_content=False))
    return name


def delete_namespace(api_client: client.ApiClient, name: str) -> None:
    """Delete without waiting: the namespace controller finishes it in the background."""
    try:
        _done(client.CoreV1Api(api_client).delete_namespace(name, _preload_content=False))
    except client.ApiException as err:
        if err.status != 404:
            raise


def apply_documents(api_client: client.ApiClient, documents: list[dict[str, Any]], *, manager: str = "gitopsd-tests",
                    wait_established: bool = True) -> None:
    """Server-side apply CRDs (the only kind the tests install this way) and wait until Established."""
    extensions = client.ApiextensionsV1Api(api_client)
    for doc in documents:
        assert doc["kind"] == "CustomResourceDefinition", doc["kind"]
        _done(extensions.patch_custom_resource_definition(doc["metadata"]["name"], doc, field_manager=manager, force=True,
                                                          _content_type=kube.APPLY_PATCH, _preload_content=False))
    if not wait_established:
        return
    for doc in documents:
        name = doc["metadata"]["name"]
        deadline = time.monotonic() + 60
        while True:
            crd = json.loads(extensions.read_custom_resource_definition(name, _preload_content=False).data)
            conditions = (crd.get("status") or {}).get("conditions") or ()
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {name} not Established within 60 s")
            time.sleep(0.2)


def compact(kubeconfig: pathlib.Path | str) -> int:
    """Compact the cluster's etcd history up to its current revision, for real (physically), through
    etcd's v3 JSON gateway; the client port is in ``cluster.json`` next to a kubeconfig written by
    ``tools/kubecluster``. Returns the revision. Watches and paged lists that need older revisions
    meet 410 Gone from then on, as after the API server's own periodic compaction."""
    info = json.loads((pathlib.Path(kubeconfig).parent / "cluster.json").read_text())
    base = f"http://127.0.0.1:{info['ports']['etcd_client']}/v3/kv"

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))

    revision = int(post("/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    try:
        post("/compaction", {"revision": revision, "physical": True})
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        if "required revision has been compacted" not in detail:  # nothing written since the last one
            raise RuntimeError(f"etcd compaction at {revision} failed: {err.code} {detail}") from err
    return revision


def _done(response: Any) -> None:
    """Read the whole body before the connection goes back to the pool: a connection returned with
    unread bytes hands them to the next request as its status line."""
    try:
        response.data  # noqa: B018 - reading it is the point
    finally:
        response.release_conn()
