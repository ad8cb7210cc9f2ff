"""A target cluster as delivery sees it: server-side apply, get, delete and dry runs of arbitrary
objects, on the ``kubernetes`` client's connection (its TLS and credentials) with a thin REST layer.

Kinds are resolved to their resource paths by API discovery (``/api/v1``, ``/apis/G/V``), cached
and refreshed when a kind is unknown (a CRD applied in an earlier stage). Every call has a timeout;
connection failures are ``errors.TransientError`` (``ClusterUnreachable``), refusals by the API
server are ``ApiRefusal`` with the server's own message, one line.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gitopsd import errors

if TYPE_CHECKING:  # the kubernetes package is imported by whoever makes the ApiClient
    from kubernetes import client

FIELD_MANAGER = "gitopsd"
REQUEST_TIMEOUT = 30.0
RETRIES = 3  # of a request answered 429 or 5xx
JSON = dict[str, Any]


class ApiRefusal(errors.GitopsdError):
    """The target's API server refused a request (validation, admission, conflict...)."""

    reason = "ApiRefused"

    def __init__(self, message: str, *, status: int, reason: str = "ApiRefused",
                 causes: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.causes = causes  # (field, message) pairs of the Status's details.causes

    def conflicting_managers(self) -> set[str]:
        """The field managers an apply conflicted with (409 ``Conflict``), from the structured causes."""
        found = set()
        for _, message in self.causes:
            head, quote, rest = message.partition('"')
            if quote and head.strip() == "conflict with":
                found.add(rest.partition('"')[0])
        return found


class UnknownKind(errors.GitopsdError):
    reason = "UnknownKind"


class Target:
    def __init__(self, name: str, api: client.ApiClient, *, timeout: float = REQUEST_TIMEOUT,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self.api = api
        self.timeout = timeout
        self.sleep = sleep
        self.requests: dict[str, int] = {}
        self._kinds: dict[tuple[str, str], tuple[str, bool]] = {}  # (apiVersion, kind) -> (plural, namespaced)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.api.close()

    # -- raw requests ------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, body: Any = None, query: Mapping[str, str] | None = None,
              content_type: str = "application/json", verb: str = "") -> tuple[int, Any]:
        """One request; a 429 or a 5xx is tried again (after ``Retry-After`` or a short backoff, at
        most ``RETRIES`` times), as Kubernetes clients do: a busy API server is not a failure yet."""
        for attempt in range(RETRIES + 1):
            status, decoded, retry_after = self._once(method, path, body=body, query=query, content_type=content_type,
                                                      verb=verb)
            if (status != 429 and status < 500) or attempt == RETRIES:
                return status, decoded
            self.sleep(min(retry_after if retry_after is not None else 0.25 * 2 ** attempt, 5.0))
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, *, body: Any, query: Mapping[str, str] | None, content_type: str,
              verb: str) -> tuple[int, Any, float | None]:
        import urllib3  # noqa: PLC0415 - loaded with the ApiClient already; not at start-up of every command

        url = self.api.configuration.host + path + (("?" + urllib.parse.urlencode(query)) if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        key = verb or method.lower()
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1
        try:
            response = self.api.call_api(method, url, header_params=headers, body=body, _request_timeout=self.timeout)
            raw = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise errors.TransientError(f"cluster {self.name}: cannot reach the API server: {err}",
                                        reason="ClusterUnreachable") from err
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            retry_after = float(response.getheader("Retry-After") or "")
        except ValueError:
            retry_after = None
        return response.status, decoded, retry_after

    def _ok(self, status: int, decoded: Any, what: str) -> Any:
        if status < 300:
            return decoded
        message = decoded.get("message") if isinstance(decoded, dict) else str(decoded)[:300]
        reason = decoded.get("reason") if isinstance(decoded, dict) else ""
        if status in (401, 403):
            raise ApiRefusal(f"cluster {self.name}: {what}: access refused ({status}): {message}", status=status,
                             reason="ClusterUnauthorized")
        if status >= 500 or status == 429:
            raise errors.TransientError(f"cluster {self.name}: {what}: {status} {reason}: {message}",
                                        reason="ClusterUnavailable")
        causes = tuple((str(c.get("field", "")), str(c.get("message", "")))
                       for c in ((decoded.get("details") or {}).get("causes") or ()) if isinstance(c, dict)) \
            if isinstance(decoded, dict) else ()
        raise ApiRefusal(f"cluster {self.name}: {what}: {' '.join(str(message).split())}", status=status,
                         reason=str(reason or "ApiRefused"), causes=causes)

    # -- discovery ---------------------------------------------------------------------------

    def _discover(self, api_version: str) -> None:
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        status, decoded = self._call("GET", path, verb="discovery")
        if status == 404:
            return
        found = self._ok(status, decoded, f"discovery of {api_version}")
        for resource in found.get("resources", []):
            if "/" in resource["name"]:
                continue
            self._kinds[(api_version, resource["kind"])] = (resource["name"], bool(resource["namespaced"]))

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind; discovery again when it is not known yet."""
        key = (api_version, kind)
        if key not in self._kinds:
            self._discover(api_version)
        if key not in self._kinds:
            raise UnknownKind(f"cluster {self.name}: the API server does not serve {kind} in {api_version} (is its "
                              "CustomResourceDefinition installed?)")
        return self._kinds[key]

    def served(self, api_version: str, kind: str) -> bool:
        """Whether discovery lists the kind, asked again when it did not before. A
        CustomResourceDefinition is Established a moment before discovery serves its kinds."""
        if (api_version, kind) not in self._kinds:
            self._discover(api_version)
        return (api_version, kind) in self._kinds

    def path(self, api_version: str, kind: str, namespace: str, name: str = "") -> str:
        plural, namespaced = self.resource(api_version, kind)
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        where = f"/namespaces/{namespace or 'default'}" if namespaced else ""  # as kubectl: no namespace is default
        return f"{prefix}{where}/{plural}" + (f"/{name}" if name else "")

    def namespaced(self, api_version: str, kind: str) -> bool:
        return self.resource(api_version, kind)[1]

    # -- verbs -------------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any], *, force: bool = False, dry_run: bool = False) -> JSON:
        """Server-side apply of ``obj`` with field manager ``gitopsd``; the object as stored."""
        meta = obj["metadata"]
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])
        query = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        if dry_run:
            query["dryRun"] = "All"
        status, decoded = self._call("PATCH", path, body=obj, query=query, content_type="application/apply-patch+yaml",
                                     verb="dry-run" if dry_run else "apply")
        return self._ok(status, decoded, f"apply {obj['kind']} {_subject(obj)}")

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> JSON | None:
        status, decoded = self._call("GET", self.path(api_version, kind, namespace, name), verb="get")
        if status == 404:
            return None
        return self._ok(status, decoded, f"get {kind} {namespace + '/' if namespace else ''}{name}")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        status, decoded = self._call("DELETE", self.path(api_version, kind, namespace, name), body=body, verb="delete")
        if status == 404:
            return False
        self._ok(status, decoded, f"delete {kind} {namespace + '/' if namespace else ''}{name}")
        return True


def _subject(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])
