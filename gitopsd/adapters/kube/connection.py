"""The connection to the API server: the client, every request the adapter sends, and its errors.

``connect`` builds an API client from a kubeconfig or in-cluster; ``Requests`` sends every call of
the adapter (raw JSON in and out, counted per verb and resource, writes gated by leadership);
``translate`` turns a library error into gitopsd's vocabulary, deciding from the HTTP status code
and the Status object's details only:

- 5xx, 429, timeouts and refused connections are ``errors.ClusterUnavailable`` (transient: the
  pass stops at once and the next one retries);
- 401/403 are ``errors.ConfigError`` (``ClusterUnauthorized``, naming the RBAC needed);
- a 404 naming the namespace is ``NamespaceNotFound``; one naming no object means the kinds are
  not served (``CRDNotInstalled``: apply ``deploy/10-crds.yaml``); one naming the object means it
  went away during the pass (``errors.Conflict``);
- 409 is ``errors.Conflict``; 400/422 are ``errors.StalledError`` (``InvalidObject``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from gitopsd import __version__, errors
from gitopsd.adapters.kube import transport
from gitopsd.model import instance, pack

GROUP = pack.GROUP
VERSION = pack.API_VERSION.rpartition("/")[2]
API_VERSION = pack.API_VERSION
FIELD_MANAGER = "gitopsd"
DELIVERY_FIELD_MANAGER = "gitopsd-delivery"  # owns status.delivery of PackInstances
MANAGED_BY = "app.kubernetes.io/managed-by=gitopsd"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
LIST_PAGE = 500
RBAC_NEEDED = (
    "get, list, watch, create, patch and delete on infrastructureclusterpacks and packinstances "
    "(infrastructure.ontai.dev), patch on their /status, create and patch on events"
)

JSON = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    kind: str
    plural: str


CLUSTER_PACKS = Kind(pack.CLUSTER_PACK_KIND, "infrastructureclusterpacks")
PACK_INSTANCES = Kind(instance.PACK_INSTANCE_KIND, "packinstances")


def connect(*, kubeconfig: str | None = None, context: str | None = None, in_cluster: bool = False,
            user_agent: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig (``$KUBECONFIG``/``~/.kube/config`` by default) or in-cluster."""
    configuration = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration,
                                    persist_config=False)
    except (config.ConfigException, OSError, ValueError, TypeError) as err:
        where = "the in-cluster ServiceAccount" if in_cluster else f"kubeconfig {kubeconfig or '(default)'}"
        what = f" context {context!r}" if context else ""
        raise errors.ConfigError(f"cannot load {where}{what}: {err}", reason="KubeconfigInvalid") from err
    api = client.ApiClient(configuration)
    api.user_agent = user_agent or f"gitopsd/{__version__}"
    return api


# -- errors -------------------------------------------------------------------------------------


def status_of(err: ApiException) -> JSON:
    """The Status object an API error carries (empty when its body is not one)."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def names_the_object(err: ApiException) -> bool:
    """Is this a 404 about the object itself (it does not exist), rather than about its kind or namespace?"""
    return err.status == 404 and bool((status_of(err).get("details") or {}).get("name"))


def translate(err: Exception, *, action: str, kind: Kind | str, namespace: str, name: str = "") -> errors.GitopsdError:
    """A library error as gitopsd's vocabulary (raise it ``from err``)."""
    if isinstance(err, errors.GitopsdError):
        return err
    label = kind.kind if isinstance(kind, Kind) else kind
    what = f"{label} {namespace}/{name}" if name else f"{label} objects in namespace {namespace}"
    if isinstance(err, ApiException):
        code = int(err.status or 0)
        status = status_of(err)
        message = status.get("message") or err.reason or "no message"
        if code in (401, 403):
            return errors.ConfigError(
                f"the API server refused to {action} {what} ({code} {status.get('reason') or err.reason}: {message}); "
                f"the ServiceAccount needs {RBAC_NEEDED} in namespace {namespace}: kubectl apply -f deploy/20-rbac.yaml",
                reason="ClusterUnauthorized",
            )
        if code == 404:
            details = status.get("details") or {}
            if details.get("kind") == "namespaces":
                return errors.ConfigError(
                    f"namespace {namespace} does not exist: create it (kubectl apply -f deploy/00-namespace.yaml) or set "
                    "'namespace' in gitopsd.yaml",
                    reason="NamespaceNotFound",
                )
            if not details.get("name"):
                return errors.ConfigError(
                    f"the API server does not serve {label} ({GROUP}/{VERSION}): install the CRDs with "
                    "kubectl apply -f deploy/10-crds.yaml",
                    reason="CRDNotInstalled",
                )
            return errors.Conflict(f"{what} disappeared during the pass; the next pass reads it again")
        if code == 409:
            return errors.Conflict(f"cannot {action} {what}: {message}; the next pass retries")
        if code in (400, 422):
            return errors.StalledError(
                f"the API server rejected {what} ({code} {status.get('reason') or ''}: {message}); if the cluster's CRDs "
                "are older than this gitopsd, update them: kubectl apply -f deploy/10-crds.yaml",
                reason="InvalidObject",
            )
        return errors.ClusterUnavailable(f"cannot {action} {what}: {code} {message}")
    if isinstance(err, (urllib3.exceptions.HTTPError, OSError)):
        return errors.ClusterUnavailable(f"cannot reach the API server to {action} {what}: {err}")
    return errors.ClusterUnavailable(f"cannot {action} {what}: {err!r}")


# -- requests -----------------------------------------------------------------------------------


def rv_of(obj: Mapping[str, Any] | None) -> int:
    """An object's resourceVersion as an integer (etcd revisions are); 0 when absent or opaque."""
    if not obj:
        return 0
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def custom_path(namespace: str, plural: str, name: str = "", subresource: str = "") -> str:
    """The URL path of a custom resource collection or object (``/apis/GROUP/VERSION/...``)."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{plural}"
    if name:
        path += "/" + quote(name, safe="")
    return path + ("/" + subresource if subresource else "")


def events_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/events" + ("/" + quote(name, safe="") if name else "")


class Requests:
    """Every API call of the adapter: raw JSON in and out, counted, writes gated by leadership.

    The writes and reads of ``writes`` and ``events`` go through ``call``: the body is serialised
    once with ``json.dumps`` and the answer parsed once, without the generated client's per-call
    argument validation and model sanitising, and sent on a keep-alive connection of this thread
    (``transport``, with the API client's TLS settings and credentials; the API client's own pool
    where a proxy or socket options are configured).
    Errors are the generated client's ``ApiException`` (status, reason, body), so ``translate``
    reads both alike. ``send`` and ``open`` call a generated client method (the watch cache's list
    and watch); ``custom`` and ``core`` are built on first use only.
    """

    def __init__(self, api: client.ApiClient, *, may_write: Callable[[], bool], timeout: float) -> None:
        self.api = api
        self.may_write = may_write
        self.timeout = timeout
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._host = api.configuration.host.rstrip("/")
        self._prefix = urllib3.util.parse_url(self._host).path or ""  # an API server behind a path
        self._headers = {"Accept": "application/json", "User-Agent": str(api.user_agent)}
        self._queries: dict[tuple[tuple[str, str], ...], str] = {}

    @functools.cached_property
    def _pool(self) -> Any:
        """The connection pool to the API server (no PoolManager URL handling per request; through
        a proxy, the PoolManager's own handling is kept)."""
        manager = self.api.rest_client.pool_manager
        if isinstance(manager, urllib3.ProxyManager):
            return _Absolute(manager, self._host.removesuffix(self._prefix))
        return manager.connection_from_url(self._host)

    @functools.cached_property
    def _transport(self) -> transport.Transport | None:
        """The write path's own keep-alive connections; None where the API client's settings need its pool."""
        return transport.Transport.for_configuration(self.api.configuration, timeout=self.timeout)

    @functools.cached_property
    def _head(self) -> bytes:
        return "".join(f"{k}: {v}\r\n" for k, v in self._headers.items()).encode("latin-1")

    @functools.cached_property
    def _timeout(self) -> urllib3.Timeout:
        return urllib3.Timeout(total=self.timeout)

    @functools.cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @functools.cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def call(self, verb: str, resource: str, method: str, path: str, body: Any = None, *,
             query: Mapping[str, str] | None = None, content_type: str = "application/json") -> JSON:
        """One request: ``method`` on ``path`` (``custom_path``/``events_path``) with ``body`` as
        JSON; the answer's JSON (``{}`` when empty). A non-2xx answer raises ``ApiException``."""
        if verb not in ("get", "list", "watch") and not self.may_write():
            raise errors.NotLeader("this replica is not the leader any more: write skipped")
        self.count(verb, resource)
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        target = self._prefix + path + (self._query(query) if query else "")
        transport = self._transport
        if transport is None:
            return self._call_pooled(method, target, data, content_type)
        head = [self._head]
        for key, value in self._auth():
            head.append(f"{key}: {value}\r\n".encode("latin-1"))
        if data is not None:
            head.append(b"Content-Type: " + content_type.encode("ascii") + b"\r\n")
        response = transport.request(method, target, b"".join(head), data)
        return _answer(response.status, response.reason, response.body, lambda: response.headers)

    def _auth(self) -> list[tuple[str, str]]:
        """The API client's header credentials, asked for each request (a token may be refreshed)."""
        return [(auth["key"], auth["value"]) for auth in self.api.configuration.auth_settings().values()
                if auth["in"] == "header" and auth["value"]]

    def _query(self, query: Mapping[str, str]) -> str:
        """``?k=v&...``; the few distinct queries of the write path are encoded once."""
        key = tuple(query.items())
        text = self._queries.get(key)
        if text is None:
            text = self._queries[key] = "?" + urlencode(query)
        return text

    def _call_pooled(self, method: str, target: str, data: bytes | None, content_type: str) -> JSON:
        """``call`` through the API client's pool (a proxy, or socket options, in its configuration)."""
        headers = {**self._headers, **dict(self._auth())}
        if data is not None:
            headers["Content-Type"] = content_type
        response = self._pool.urlopen(method, target, body=data, headers=headers, timeout=self._timeout,
                                      preload_content=True, assert_same_host=False)
        return _answer(response.status, response.reason, response.data, lambda: response.headers)

    def close(self) -> None:
        """Close the write path's connections (the API client's pool is closed with the client)."""
        if self.__dict__.get("_transport") is not None:
            self.__dict__["_transport"].close()

    def count(self, verb: str, resource: str) -> None:
        with self._lock:
            self.counts[f"{verb} {resource}"] += 1

    def send(self, verb: str, resource: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> JSON:
        """Call ``method`` with ``_preload_content=False`` and parse the body (this client drops the
        body of answers it has no declared type for, such as the 201 of an apply that creates)."""
        if verb not in ("get", "list", "watch") and not self.may_write():
            raise errors.NotLeader("this replica is not the leader any more: write skipped")
        self.count(verb, resource)
        kwargs.setdefault("_request_timeout", self.timeout)
        response = method(*args, _preload_content=False, **kwargs)
        try:
            data = response.data
            return json.loads(data) if data else {}
        finally:
            response.release_conn()

    def open(self, verb: str, resource: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A streaming response (a watch): the caller reads and closes it."""
        self.count(verb, resource)
        return method(*args, _preload_content=False, **kwargs)


def _answer(status: int, reason: str | None, body: bytes, headers: Callable[[], Any]) -> JSON:
    """An answer's JSON (``{}`` when empty), or ``ApiException`` for a non-2xx status, as the generated
    client raises it (``headers`` is asked for only then: the write path parses them lazily)."""
    if not 200 <= status < 300:
        err = ApiException(status=status, reason=reason)
        err.body = body.decode("utf-8", "replace")
        err.headers = headers()
        raise err
    return json.loads(body) if body else {}


class _Absolute:
    """``urlopen`` with a path, on a ``ProxyManager`` (which needs the absolute URL)."""

    def __init__(self, manager: urllib3.ProxyManager, host: str) -> None:
        self.manager, self.host = manager, host

    def urlopen(self, method: str, target: str, **kwargs: Any) -> Any:
        kwargs.pop("assert_same_host", None)
        return self.manager.urlopen(method, self.host + target, **kwargs)
