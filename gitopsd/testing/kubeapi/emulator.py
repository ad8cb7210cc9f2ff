"""The :class:`Emulator`: a Kubernetes API server on 127.0.0.1 for tests, started in a thread.

It ties the store, the registry of served types, the API semantics, fault rules and the request
log to an HTTP server, and gives tests a kubeconfig plus direct access for seeding and asserting.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from gitopsd.testing.kubeapi import faults, handler
from gitopsd.testing.kubeapi.operations import Api, Request
from gitopsd.testing.kubeapi.requestlog import RequestLog, RequestRecord
from gitopsd.testing.kubeapi.resources import Registry, ResourceType
from gitopsd.testing.kubeapi.store import Store

JSON = dict[str, Any]

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CONTEXT = "emulator"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Emulator:
    """A faithful-enough kube-apiserver for the ``kubernetes`` client and ``kubectl``.

    Use as a context manager (``with Emulator() as emu:``) or call :meth:`start`/:meth:`stop`.
    ``history`` is how many changes are kept for watches and exact/paged lists (older ones get
    410 Gone); ``seed`` makes uids, generated names and probabilistic faults reproducible.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history: int = 1000,
        seed: int = 0,
        bookmark_interval: float = 5.0,
        namespace_deletion_delay: float = 2.0,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._address = (host, port)
        self._clock = clock
        self.store = Store(history)
        self.registry = Registry()
        self.faults = faults.Faults(seed)
        self.log = RequestLog()
        self.api = Api(
            self.store,
            self.registry,
            clock=clock,
            rng=random.Random(seed),
            bookmark_interval=bookmark_interval,
            namespace_deletion_delay=namespace_deletion_delay,
        )
        self._server: handler.EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        for name in namespaces:
            self.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        if self.store.closed:
            raise RuntimeError("a stopped emulator cannot be restarted; create a new one")
        context = handler.Context(self.api, self.registry, self.faults, self.log, self._clock, self.compact)
        self._server = handler.EmulatorServer(self._address, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"kubeapi-emulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: end watches, close connections, join every server thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.store.close()
        server.shutdown()
        server.wait_for_watches(timeout=2.0)
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- where it is ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> JSON:
        """A kubeconfig whose cluster, user and current context are all named ``emulator``."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT, "cluster": {"server": self.url}}],
            "users": [{"name": CONTEXT, "user": {"token": "emulator"}}],
            "contexts": [
                {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}
            ],
            "current-context": CONTEXT,
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False))
        return path

    # -- requests -------------------------------------------------------------------------

    def requests(
        self,
        *,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
    ) -> list[RequestRecord]:
        """Served requests in order, optionally filtered."""
        return self.log.records(verb=verb, resource=resource, namespace=namespace, name=name)

    def request_counts(self) -> dict[str, int]:
        """Resource requests by ``"<verb> <resource>"``, e.g. ``{"apply packinstances": 3}``."""
        return self.log.counts()

    def write_count(self, *, successful_only: bool = False) -> int:
        """create + update + patch + apply + delete + deletecollection requests (dry runs excluded)."""
        return self.log.write_count(successful_only=successful_only)

    def reset_requests(self) -> None:
        self.log.reset()

    # -- state ----------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self.store.resource_version

    def compact(self, resource_version: int | None = None) -> None:
        """Forget history up to ``resource_version`` (default: now): older watches/lists get 410."""
        self.store.compact(resource_version)

    def finalize_namespaces(self) -> None:
        """Finish deleting terminating namespaces now instead of after ``namespace_deletion_delay``."""
        self.api.finalize_namespaces(force=True)

    def resource(self, resource: str, group: str | None = None) -> ResourceType:
        """A served type by plural, kind, short name or ``plural.group``."""
        return self.registry.find(resource, group)

    def get_object(
        self, resource: str, name: str, namespace: str = "", *, group: str | None = None
    ) -> JSON | None:
        rt = self.resource(resource, group)
        self.api.finalize_namespaces()
        obj = self.store.get(rt.storage_key, namespace if rt.namespaced else "", name)
        return None if obj is None else self.api.external(rt, obj)

    def list_objects(
        self, resource: str, namespace: str | None = None, *, group: str | None = None
    ) -> list[JSON]:
        rt = self.resource(resource, group)
        self.api.finalize_namespaces()
        return [self.api.external(rt, o) for o in self.store.objects(rt.storage_key, namespace)]

    def create_object(self, obj: Mapping[str, Any]) -> JSON:
        """Create an object directly (not logged, no faults): for seeding a test's cluster state."""
        rt = self._type_of(obj)
        namespace = (obj.get("metadata") or {}).get("namespace", "default") if rt.namespaced else ""
        request = Request(
            "create",
            rt,
            namespace,
            params={"fieldManager": "emulator"},
            body=json.dumps(obj).encode(),
            content_type="application/json",
        )
        return self.api.create(request)[1]

    def delete_object(
        self, resource: str, name: str, namespace: str = "", *, group: str | None = None
    ) -> JSON:
        """Delete an object directly (finalizers respected), not logged."""
        rt = self.resource(resource, group)
        return self.api.delete(Request("delete", rt, namespace if rt.namespaced else "", name))[1]

    def _type_of(self, obj: Mapping[str, Any]) -> ResourceType:
        group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
        for rt in self.registry.all():
            if (rt.group, rt.version, rt.kind) == (group, version, obj.get("kind")):
                return rt
        raise KeyError(f"no served type for {obj.get('apiVersion')} {obj.get('kind')}")
