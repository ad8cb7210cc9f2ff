"""The contract suite's one switch: the API emulator by default, a real cluster when
``GITOPSD_TEST_KUBECONFIG`` names a kubeconfig. The tests are the same either way.

On a real cluster the fixture installs ``deploy/10-crds.yaml`` with server-side apply (leaving the
CRDs in place afterwards: they may be shared) and runs each test in a fresh namespace that it
deletes at the end. The kubeconfig's user needs the Role of ``deploy/20-rbac.yaml`` in any namespace
plus the rights to create namespaces and CRDs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from gitopsd.adapters import kube
from gitopsd.testing import kubeapi
from tests.contract import harness

REAL_CLUSTER = os.environ.get("GITOPSD_TEST_KUBECONFIG")


@dataclasses.dataclass
class Target:
    """Where the contract runs: an API client and a namespace of its own."""

    api: client.ApiClient
    namespace: str
    real: bool

    def cluster(self, **options: object) -> kube.KubeCluster:
        return kube.KubeCluster(self.api, backoff=(0.05, 1.0), **options)  # type: ignore[arg-type]

    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


def _install_crds(api: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(api)
    for doc in harness.crd_documents():
        name = doc["metadata"]["name"]
        extensions.patch_custom_resource_definition(name, doc, field_manager="gitopsd-contract", force=True,
                                                    _content_type=kube.APPLY_PATCH, _preload_content=False).release_conn()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            crd = json.loads(extensions.read_custom_resource_definition(name, _preload_content=False).data)
            if any(c["type"] == "Established" and c["status"] == "True" for c in (crd.get("status") or {}).get("conditions") or ()):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"CRD {name} not established within 60s")


@pytest.fixture
def target(tmp_path: pathlib.Path) -> Iterator[Target]:
    if REAL_CLUSTER:
        api = kube.connect(kubeconfig=REAL_CLUSTER, user_agent="gitopsd-contract")
        core = client.CoreV1Api(api)
        namespace = f"gitopsd-contract-{uuid.uuid4().hex[:8]}"
        try:
            _install_crds(api)
            core.create_namespace({"metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "gitopsd-contract"}}},
                                  _preload_content=False).release_conn()
            yield Target(api=api, namespace=namespace, real=True)
        finally:
            try:
                core.delete_namespace(namespace, _preload_content=False).release_conn()
            finally:
                api.close()
        return
    with kubeapi.Emulator(bookmark_interval=0.2, namespace_deletion_delay=0.05) as emu:
        namespace = "gitopsd-contract"
        harness.seed_emulator(emu, namespace)
        api = kube.connect(kubeconfig=str(emu.write_kubeconfig(tmp_path / "kubeconfig")), user_agent="gitopsd-contract")
        try:
            yield Target(api=api, namespace=namespace, real=False)
        finally:
            api.close()
