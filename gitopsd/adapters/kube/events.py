"""Events: every write and every failure of the adapter records a core/v1 Event on its object.

Best effort: a lost event never fails a pass. A repeated event raises the count of the one already
sent (as Kubernetes' own recorder does); a Warning that repeats the last one about the same object is
not sent again. ``reportingInstance`` is the replica's identity.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kubernetes.client.exceptions import ApiException

from gitopsd.adapters.kube.connection import API_VERSION, FIELD_MANAGER, JSON, MERGE_PATCH, Kind, Requests, translate

log = structlog.get_logger()

MAX_EVENT_MESSAGE = 1024
EVENTS_KEPT = 1000  # events remembered to count repeats


class Events:
    """The Event recorder of one ``KubeCluster``; ``cached(kind, namespace, name)`` is the object as
    the watch cache holds it (for its uid), or None."""

    def __init__(self, requests: Requests, *, identity: str,
                 cached: Callable[[Kind, str, str], Mapping[str, Any] | None]) -> None:
        self.requests = requests
        self.identity = identity
        self.cached = cached
        self._events: collections.OrderedDict[tuple[str, ...], tuple[str, int]] = collections.OrderedDict()
        self._last_warning: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._serial = 0

    def record(self, namespace: str, kind: Kind, name: str, type_: str, reason: str, message: str, now: str,
               obj: Mapping[str, Any] | None = None) -> None:
        """Record a core/v1 Event (best effort: a lost event never fails a pass)."""
        message = message if len(message) <= MAX_EVENT_MESSAGE else message[: MAX_EVENT_MESSAGE - 3] + "..."
        subject = (namespace, kind.kind, name)
        if obj is None:
            obj = self.cached(kind, namespace, name)
        if type_ == "Warning" and self._last_warning.get(subject) == (reason, message):
            return  # the same warning again: like Kubernetes, do not repeat it
        key = (*subject, type_, reason, message)
        try:
            if key in self._events:
                event_name, count = self._events[key]
                self.requests.send("patch", "events", self.requests.core.patch_namespaced_event, event_name, namespace,
                                   {"count": count + 1, "lastTimestamp": now}, field_manager=FIELD_MANAGER,
                                   _content_type=MERGE_PATCH)
                self._events[key] = (event_name, count + 1)
                self._events.move_to_end(key)
            else:
                self._serial += 1
                event_name = f"{name}.{time.time_ns():x}{self._serial:x}"[:253]
                meta = (obj or {}).get("metadata") or {}
                involved: JSON = {"apiVersion": API_VERSION, "kind": kind.kind, "name": name, "namespace": namespace}
                if meta.get("uid"):
                    involved["uid"] = meta["uid"]
                body = {
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": event_name, "namespace": namespace},
                    "involvedObject": involved, "reason": reason, "message": message, "type": type_,
                    "source": {"component": "gitopsd"}, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                    "reportingComponent": "gitopsd", "reportingInstance": self.identity,
                    "action": "Reconcile",
                }
                self.requests.send("create", "events", self.requests.core.create_namespaced_event, namespace, body,
                                   field_manager=FIELD_MANAGER)
                self._events[key] = (event_name, 1)
                while len(self._events) > EVENTS_KEPT:
                    self._events.popitem(last=False)
        except Exception as err:  # noqa: BLE001 - an event is best effort: a failed one is logged, never raised
            if isinstance(err, ApiException) and err.status == 404 and key in self._events:
                del self._events[key]  # expired: the next one is created anew
            log.warning("event not recorded", kind=kind.kind, name=name, reason=reason, error=str(translate(
                err, action="record an event about", kind=kind, namespace=namespace, name=name)))
            return
        if type_ == "Warning":
            self._last_warning[subject] = (reason, message)
        else:
            self._last_warning.pop(subject, None)


