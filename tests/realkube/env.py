"""One test's view of the real management cluster: a namespace of its own, the counting and
fault-injecting proxy that gitopsd talks through, and a direct client (not counted) that the test
reads and writes with, as another user of the cluster would."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

from kubernetes import client

from gitopsd.model import pack
from tests.realkube import proxy as proxy_mod

# resource -> API path prefix, for the kinds the tests look at
PATHS = {
    "infrastructureclusterpacks": f"/apis/{pack.GROUP}/v1alpha1",
    "packinstances": f"/apis/{pack.GROUP}/v1alpha1",
    "events": "/api/v1",
    "leases": "/apis/coordination.k8s.io/v1",
    "configmaps": "/api/v1",
    "secrets": "/api/v1",
}


class KubeEnv:
    def __init__(self, proxy: proxy_mod.KubeProxy, direct: client.ApiClient, namespace: str,
                 kubeconfig: pathlib.Path) -> None:
        self.proxy = proxy
        self.direct = direct
        self.namespace = namespace
        self.kubeconfig = kubeconfig  # through the proxy: what gitopsd is given
        self.faults = proxy.faults

    # -- what gitopsd sent (through the proxy) ----------------------------------------------

    def requests(self, **filters: Any) -> list[proxy_mod.Record]:
        return self.proxy.requests(**filters)

    def request_counts(self) -> dict[str, int]:
        return self.proxy.request_counts()

    def write_count(self, *, successful_only: bool = False) -> int:
        return self.proxy.write_count(successful_only=successful_only)

    def reset_requests(self) -> None:
        self.proxy.reset_requests()

    # -- the cluster as another user sees it (not counted) -----------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.direct.call_api(method, self.direct.configuration.host + path, body=body,
                                        header_params={"Content-Type": "application/json", "Accept": "application/json"})
        data = response.read()
        if response.status >= 300:
            raise client.ApiException(status=response.status, reason=response.reason, body=data)
        return json.loads(data)

    def _path(self, resource: str, namespace: str | None, name: str = "") -> str:
        ns = self.namespace if namespace is None else namespace
        return f"{PATHS[resource]}/namespaces/{ns}/{resource}" + (f"/{name}" if name else "")

    def list_objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", self._path(resource, namespace))["items"])

    def get_object(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", self._path(resource, namespace, name)))
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def create_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` in this namespace, with its ``status`` if it has one (the CRDs have no
        status subresource: a create keeps it)."""
        resource = _plural(obj["kind"])
        body = {**obj, "metadata": {**obj["metadata"], "namespace": self.namespace}}
        return dict(self._call("POST", self._path(resource, None), body))

    def put_object(self, resource: str, name: str, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace the object as another writer would (a 409 when ``obj``'s resourceVersion is stale)."""
        return dict(self._call("PUT", self._path(resource, namespace, name), obj))

    def delete_object(self, resource: str, name: str) -> None:
        self._call("DELETE", self._path(resource, None, name))


def _plural(kind: str) -> str:
    special = {"InfrastructureClusterPack": "infrastructureclusterpacks"}
    return special.get(kind) or re.sub(r"y$", "ie", kind.lower()) + "s"
