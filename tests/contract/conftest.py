"""The Kubernetes contract suite runs against a real kube-apiserver (the session's management
cluster, ``tests.realkube``; ``GITOPSD_TEST_KUBECONFIG`` points it at another cluster). The CRDs
are ``deploy/10-crds.yaml`` applied as they are; each test works in a fresh namespace that it
deletes at the end. The kubeconfig's user needs the Role of ``deploy/20-rbac.yaml`` in any
namespace plus the rights to create namespaces and CRDs.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import pytest
from kubernetes import client

from gitopsd.adapters import kube
from tests.realkube import clusters as realkube


@dataclasses.dataclass
class Target:
    """Where the contract runs: an API client and a namespace of its own."""

    api: client.ApiClient
    namespace: str

    def cluster(self, **options: object) -> kube.KubeCluster:
        return kube.KubeCluster(self.api, backoff=(0.05, 1.0), **options)  # type: ignore[arg-type]

    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


@pytest.fixture
def target(mgmt_kubeconfig: pathlib.Path) -> Iterator[Target]:
    api = kube.connect(kubeconfig=str(mgmt_kubeconfig), user_agent="gitopsd-contract")
    namespace = realkube.fresh_namespace(api, "contract")
    try:
        yield Target(api=api, namespace=namespace)
    finally:
        try:
            realkube.delete_namespace(api, namespace)
        finally:
            api.close()
