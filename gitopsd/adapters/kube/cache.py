"""The watch cache: one ``Informer`` per kind and namespace keeps the managed objects current.

The first ``observe`` of a namespace lists each kind once (in pages, label
``app.kubernetes.io/managed-by=gitopsd``), then a thread per kind watches from the list's
resourceVersion (bookmarks on, relist on 410 Gone, reconnect with backoff when the connection
drops). Every write's response goes into the cache too (``upsert``/``remove``: the newer
resourceVersion wins, a deletion leaves a tombstone), so a pass that follows a pass sees its writes,
and a pass where nothing changed sends no request at all. Without a watch (one-shot CLI commands)
``KubeCluster.observe`` relists instead.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Iterable
from typing import Any

import structlog
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from gitopsd.adapters.kube.connection import (
    API_VERSION,
    GROUP,
    JSON,
    LIST_PAGE,
    MANAGED_BY,
    VERSION,
    Kind,
    Requests,
    rv_of,
    translate,
)
from gitopsd.adapters.kube.objects import base_of

log = structlog.get_logger()


class Informer:
    """One kind in one namespace: a list, then a watch thread that keeps ``items`` current."""

    def __init__(self, requests: Requests, kind: Kind, namespace: str, *, watch_timeout: int,
                 backoff: tuple[float, float]) -> None:
        self.requests = requests
        self.kind = kind
        self.namespace = namespace
        self.watch_timeout = max(1, watch_timeout)
        self.backoff = backoff
        self.lock = threading.RLock()
        self.items: dict[str, JSON] = {}
        self.version = 0  # bumped whenever ``items`` changes
        # the change feed: basePackName -> the ``version`` that last changed one of its objects
        self.touched: dict[str, int] = {}
        self.by_base: dict[str, set[str]] = {}  # basePackName -> the names of its objects in ``items``
        self.resource_version = ""
        self.synced = False  # False until listed, and again after a 410 until relisted
        self.unread = False  # listed and not yet observed (a one-shot observe need not list again)
        self.stale = False  # the watch cannot connect: ``items`` may lag; observe relists
        self._tombstones: dict[str, int] = {}
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    # -- list -----------------------------------------------------------------------------

    def relist(self) -> None:
        """Read every managed object of the kind (in pages) and make it the cache's content."""
        items: dict[str, JSON] = {}
        token: str | None = None
        list_rv = 0
        while True:
            try:
                body = self.requests.send(
                    "list", self.kind.plural, self.requests.custom.list_namespaced_custom_object,
                    GROUP, VERSION, self.namespace, self.kind.plural,
                    label_selector=MANAGED_BY, limit=LIST_PAGE, _continue=token,
                )
            except Exception as err:
                raise translate(err, action="list", kind=self.kind, namespace=self.namespace) from err
            if not list_rv:
                list_rv = rv_of(body)
            for obj in body.get("items") or []:
                obj.setdefault("apiVersion", API_VERSION)
                obj.setdefault("kind", self.kind.kind)
                items[obj["metadata"]["name"]] = obj
            token = (body.get("metadata") or {}).get("continue") or None
            if token is None:
                break
        with self.lock:
            for name, obj in self.items.items():  # written by us after the list was served
                if rv_of(obj) > list_rv:
                    items[name] = obj
            for name, gone in self._tombstones.items():
                if gone > list_rv:
                    items.pop(name, None)
            self._tombstones = {n: r for n, r in self._tombstones.items() if r > list_rv}
            if items != self.items:
                version = self.version + 1
                for name in items.keys() | self.items.keys():
                    old, new = self.items.get(name), items.get(name)
                    if old != new:
                        self._touch(old, version)
                        self._touch(new, version)
                self.items = items
                self.version = version
                self.by_base = {}
                for name, obj in items.items():
                    self.by_base.setdefault(base_of(obj), set()).add(name)
            self.resource_version = str(list_rv)
            self.synced, self.stale, self.unread = True, False, True

    # -- updates (watch events and our own writes) ------------------------------------------

    def upsert(self, obj: JSON) -> None:
        name, rv = obj["metadata"]["name"], rv_of(obj)
        obj.setdefault("apiVersion", API_VERSION)
        obj.setdefault("kind", self.kind.kind)
        with self.lock:
            if name in self._tombstones and rv <= self._tombstones[name]:
                return
            current = self.items.get(name)
            if current is not None and rv_of(current) >= rv:
                return
            self._tombstones.pop(name, None)
            self.items[name] = obj
            self.version += 1
            self._touch(current, self.version)
            self._touch(obj, self.version)
            if current is not None:
                self._unindex(current)
            self.by_base.setdefault(base_of(obj), set()).add(name)

    def remove(self, name: str, rv: int) -> None:
        with self.lock:
            current = self.items.get(name)
            if current is not None and rv_of(current) > rv:
                return
            self._tombstones[name] = max(rv, self._tombstones.get(name, 0))
            if current is not None:
                del self.items[name]
                self.version += 1
                self._touch(current, self.version)
                self._unindex(current)

    def _unindex(self, obj: JSON) -> None:
        base = base_of(obj)
        names = self.by_base.get(base)
        if names is not None:
            names.discard(obj["metadata"]["name"])
            if not names:
                del self.by_base[base]

    def _touch(self, obj: JSON | None, version: int) -> None:
        if obj is not None:
            self.touched[base_of(obj)] = version

    def changed_since(self, version: int) -> set[str]:
        """The bases with an object changed after ``version`` (a past value of ``version``)."""
        with self.lock:
            return {base for base, at in self.touched.items() if at > version}

    def get(self, name: str) -> JSON | None:
        with self.lock:
            return self.items.get(name)

    def of_bases(self, bases: Iterable[str]) -> dict[str, list[JSON]]:
        """The objects of each of ``bases`` (those it has), by name."""
        with self.lock:
            items = self.items
            return {base: [items[name] for name in sorted(self.by_base[base])] for base in bases if base in self.by_base}

    def snapshot(self) -> list[JSON]:
        with self.lock:
            return list(self.items.values())

    # -- watch ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"gitopsd-watch:{self.namespace}/{self.kind.plural}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _delay(self, failures: int) -> float:
        base, cap = self.backoff
        return min(cap, base * 2 ** min(failures - 1, 30)) * random.uniform(0.8, 1.0)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if not self.synced:
                    self.relist()
                    log.info("relisted", kind=self.kind.kind, namespace=self.namespace, resource_version=self.resource_version)
                response = self.requests.open(
                    "watch", self.kind.plural, self.requests.custom.list_namespaced_custom_object,
                    GROUP, VERSION, self.namespace, self.kind.plural,
                    label_selector=MANAGED_BY, watch=True, allow_watch_bookmarks=True,
                    resource_version=self.resource_version, timeout_seconds=self.watch_timeout,
                    _request_timeout=(10, self.watch_timeout + 30),
                )
            except Exception as err:  # noqa: BLE001 - a watch that cannot start retries with backoff, never dies
                if self._stop.is_set():
                    break
                if isinstance(err, ApiException) and err.status == 410:
                    self.synced = False
                    continue
                failures += 1
                self.stale = True
                delay = self._delay(failures)
                log.warning("watch cannot connect", kind=self.kind.kind, namespace=self.namespace, retry_in=round(delay, 2),
                            error=str(translate(err, action="watch", kind=self.kind, namespace=self.namespace)))
                self._stop.wait(delay)
                continue
            self.stale = False
            self._response = response
            opened = time.monotonic()
            try:
                events = self._consume(response)
                if events or time.monotonic() - opened >= 1.0:
                    failures = 0
                elif not self._stop.is_set() and self.synced:  # closed at once, nothing sent: do not spin
                    failures += 1
                    self._stop.wait(self._delay(failures))
            except Exception as err:  # noqa: BLE001 - the connection dropped mid-stream: resume from the last rv
                if self._stop.is_set():
                    break
                failures += 1
                log.info("watch dropped", kind=self.kind.kind, namespace=self.namespace, error=repr(err))
                self._stop.wait(self._delay(failures))
            finally:
                self._response = None
                with contextlib.suppress(Exception):
                    # A watch left mid-stream (410, stop, a dropped event) still has bytes in flight:
                    # close its connection rather than hand them to the pool's next request.
                    response.close()
                    response.release_conn()

    def _consume(self, response: Any) -> int:
        """Apply a watch stream to the cache until it ends; returns the events it carried."""
        events = 0
        for line in iter_resp_lines(response):
            if self._stop.is_set():
                return events
            if not line:
                continue
            event = json.loads(line)
            events += 1
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    log.info("watch expired", kind=self.kind.kind, namespace=self.namespace, message=obj.get("message"))
                    self.synced = False
                    return events
                raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if kind in ("ADDED", "MODIFIED"):
                self.upsert(obj)
            elif kind == "DELETED":
                self.remove(obj["metadata"]["name"], rv_of(obj))
            if rv:
                with self.lock:
                    self.resource_version = str(rv)
                    passed = int(rv) if str(rv).isdigit() else 0
                    self._tombstones = {n: r for n, r in self._tombstones.items() if r > passed}
        return events

