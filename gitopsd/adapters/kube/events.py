"""Events: the writes and failures of the adapter as core/v1 Events, one per pack and reason per pass.

A pass that installs a pack on ten clusters records one Event, not ten: ``add`` collects what
``writes`` and ``KubeCluster.apply`` did during a pass, grouped by the object the Event is about
(the ClusterPack the PackInstances run, or the object itself) and its type and reason, and ``flush``
sends one Event per group at the end of the pass, whose message says how many objects and which
("10 PackInstances Upgrade to web-v1.2.0 (web-dev, web-prod, ...): upgrade 1.1.0 -> 1.2.0").
A ClusterPack created in the same pass as the instances that point to it is named in their Event
instead of getting one of its own. A pass sends at most ``EVENTS_PER_PASS`` such Events (Warnings
first); the groups beyond are summed up in one Event per reason about the namespace ("900 more
ClusterPacks Installed this pass (...): 9000 PackInstances; ..."), so a cold start of 1,000 packs
sends 101 Events, not 1,000. ``record`` sends a single-object Event at once.

A repeated reason continues a series, like Kubernetes' own recorder: the Event of a (subject, type,
reason) has a name derived from them, so the next pass (in this process or a new one) raises its
``count`` and ``series.count``, sets ``lastTimestamp`` and the new message instead of creating
another Event. A Warning whose message repeats the last one about the same subject is not sent
again. Best effort: a lost event never fails a pass. ``reportingInstance`` is the replica's identity.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from kubernetes.client.exceptions import ApiException

from gitopsd.adapters.kube.connection import (
    API_VERSION,
    FIELD_MANAGER,
    JSON,
    MERGE_PATCH,
    Kind,
    Requests,
    events_path,
    translate,
)

log = structlog.get_logger()

MAX_EVENT_MESSAGE = 1024
EVENTS_KEPT = 1000  # series remembered to count repeats without a read
NAMES_SHOWN = 600  # characters of member names a message lists before "..."
# Events about single objects one pass sends at most; the others of a pass (a cold start, a change
# to every pack) are summed up in one Event per reason about the namespace, as Kubernetes' own
# recorders and its EventRateLimit admission cap a burst instead of sending one Event an object
EVENTS_PER_PASS = 100
NAMESPACES = Kind("Namespace", "namespaces")

Subject = tuple[str, str, str]  # (namespace, kind, name) of the object an Event is about


@dataclasses.dataclass(slots=True)
class Group:
    """What one Event of a pass will say: the objects (``members``) a reason applies to."""

    kind: Kind
    obj: Mapping[str, Any] | None
    member_kind: str
    members: list[str] = dataclasses.field(default_factory=list)
    details: list[str] = dataclasses.field(default_factory=list)
    created: str | None = None  # a ClusterPack created in the same pass, named in the message


class Events:
    """The Event recorder of one ``KubeCluster``; ``cached(kind, namespace, name)`` is the object as
    the watch cache holds it (for its uid), or None."""

    def __init__(self, requests: Requests, *, identity: str,
                 cached: Callable[[Kind, str, str], Mapping[str, Any] | None]) -> None:
        self.requests = requests
        self.identity = identity
        self.cached = cached
        self._series: collections.OrderedDict[tuple[str, ...], tuple[str, int]] = collections.OrderedDict()
        self._last_warning: dict[tuple[str, ...], str] = {}
        self._pending: dict[tuple[str, ...], Group] = {}

    # -- a pass: add, then flush ----------------------------------------------------------------

    def add(self, namespace: str, kind: Kind, name: str, type_: str, reason: str, detail: str, *,
            member: tuple[Kind, str] | None = None, obj: Mapping[str, Any] | None = None) -> None:
        """Count ``member`` (default: the subject itself) under the Event about ``kind``/``name``."""
        member_kind, member_name = member if member is not None else (kind, name)
        key = (namespace, kind.kind, name, type_, reason)
        group = self._pending.get(key)
        if group is None:
            group = self._pending[key] = Group(kind=kind, obj=obj, member_kind=member_kind.kind)
        group.obj = group.obj or obj
        if member_name not in group.members:
            group.members.append(member_name)
        if detail not in group.details:
            group.details.append(detail)

    @property
    def pending(self) -> bool:
        """Has anything been added since the last flush?"""
        return bool(self._pending)

    def discard(self) -> None:
        self._pending = {}

    def flush(self, now: str) -> None:
        """Send one Event per group added since the last flush."""
        pending, self._pending = self._pending, {}
        created = {key[:3]: key for key, g in pending.items() if key[4] == "Created" and g.member_kind == g.kind.kind}
        for key, group in pending.items():
            made = created.get(key[:3])
            if made is not None and made != key and group.member_kind != group.kind.kind:
                group.created = key[2]  # the instances' Event names the creation of their ClusterPack
                pending[made].members = []
        groups = [(key, group) for key, group in pending.items() if group.members]
        if len(groups) > EVENTS_PER_PASS:
            groups.sort(key=lambda item: item[0][3] != "Warning")  # Warnings keep their own Events first
            groups, rest = groups[:EVENTS_PER_PASS], groups[EVENTS_PER_PASS:]
            for key, total in summed(rest).items():
                namespace, type_, reason = key
                self.record(namespace, NAMESPACES, namespace, type_, reason, total.text(reason), now)
        for (namespace, _, name, type_, reason), group in groups:
            self.record(namespace, group.kind, name, type_, reason, message(group, reason), now, group.obj)

    # -- one Event ------------------------------------------------------------------------------

    def record(self, namespace: str, kind: Kind, name: str, type_: str, reason: str, message: str, now: str,
               obj: Mapping[str, Any] | None = None) -> None:
        """Record a core/v1 Event about ``kind``/``name`` now, or continue its series."""
        message = message if len(message) <= MAX_EVENT_MESSAGE else message[: MAX_EVENT_MESSAGE - 3] + "..."
        key = (namespace, kind.kind, name, type_, reason)
        if type_ == "Warning" and self._last_warning.get(key) == message:
            return  # the same warning again: like Kubernetes, do not repeat it
        try:
            self._send(key, kind, message, now, obj)
        except Exception as err:  # noqa: BLE001 - an event is best effort: a failed one is logged, never raised
            self._series.pop(key, None)
            log.warning("event not recorded", kind=kind.kind, name=name, reason=reason, error=str(translate(
                err, action="record an event about", kind=kind, namespace=namespace, name=name)))
            return
        if type_ == "Warning":
            self._last_warning[key] = message
        else:
            self._last_warning.pop((*key[:3], "Warning", reason), None)

    def _send(self, key: tuple[str, ...], kind: Kind, message: str, now: str, obj: Mapping[str, Any] | None) -> None:
        namespace, _, name, type_, reason = key
        known = self._series.get(key)
        if known is not None:
            try:
                self._continue(key, known, message, now)
                return
            except ApiException as err:
                if err.status != 404:
                    raise
                # expired: a new series
        event_name = series_name(kind.kind, name, type_, reason)
        if obj is None:
            obj = self.cached(kind, namespace, name)
        uid = ((obj or {}).get("metadata") or {}).get("uid")
        # (a Namespace names itself as its namespace: an Event's namespace must be its object's)
        involved: JSON = {"apiVersion": "v1" if kind is NAMESPACES else API_VERSION, "kind": kind.kind, "name": name,
                          "namespace": namespace}
        if uid:
            involved["uid"] = uid
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": namespace},
            "involvedObject": involved, "reason": reason, "message": message, "type": type_,
            "source": {"component": "gitopsd"}, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "gitopsd", "reportingInstance": self.identity, "action": "Reconcile",
        }
        try:
            self.requests.call("create", "events", "POST", events_path(namespace), body, query={"fieldManager": FIELD_MANAGER})
        except ApiException as err:
            if err.status != 409:
                raise
            # the series of an earlier pass (another process): continue it
            found = self.requests.call("get", "events", "GET", events_path(namespace, event_name))
            self._continue(key, (event_name, int(found.get("count") or 1)), message, now)
            return
        self._remember(key, event_name, 1)

    def _continue(self, key: tuple[str, ...], known: tuple[str, int], message: str, now: str) -> None:
        event_name, count = known
        patch = {"count": count + 1, "lastTimestamp": now, "message": message,
                 "series": {"count": count + 1, "lastObservedTime": micro_time(now)}}
        self.requests.call("patch", "events", "PATCH", events_path(key[0], event_name), patch,
                           query={"fieldManager": FIELD_MANAGER}, content_type=MERGE_PATCH)
        self._remember(key, event_name, count + 1)

    def _remember(self, key: tuple[str, ...], event_name: str, count: int) -> None:
        self._series[key] = (event_name, count)
        self._series.move_to_end(key)
        while len(self._series) > EVENTS_KEPT:
            self._series.popitem(last=False)


@dataclasses.dataclass(slots=True)
class Total:
    """The groups of one namespace, type and reason left over by ``EVENTS_PER_PASS``: one Event."""

    subjects: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # kind -> names
    members: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # kind -> objects
    details: list[str] = dataclasses.field(default_factory=list)

    def text(self, reason: str) -> str:
        """``900 more ClusterPacks Installed this pass (a-v1.0.0, ...): 9000 PackInstances; initial install ...``."""
        subjects = "; ".join(f"{len(names)} more {kind}{'s' if len(names) != 1 else ''} {reason} this pass "
                             f"({listed(names)})" for kind, names in self.subjects.items())
        objects = ", ".join(f"{count} {kind}{'s' if count != 1 else ''}" for kind, count in self.members.items())
        details = "; ".join(self.details[:3]) + ("; ..." if len(self.details) > 3 else "")
        return f"{subjects}: {objects}; {details}"


def summed(rest: list[tuple[tuple[str, ...], Group]]) -> dict[tuple[str, str, str], Total]:
    totals: dict[tuple[str, str, str], Total] = {}
    for (namespace, kind, name, type_, reason), group in rest:
        total = totals.setdefault((namespace, type_, reason), Total())
        total.subjects.setdefault(kind, []).append(name)
        total.members[group.member_kind] += len(group.members)
        for detail in group.details:
            if detail not in total.details:
                total.details.append(detail)
    return totals


def listed(names: list[str]) -> str:
    """Names, comma-separated, cut with ``...`` after ``NAMES_SHOWN`` characters."""
    text = ""
    for name in names:
        if len(text) + len(name) > NAMES_SHOWN:
            return text + ", ..."
        text += (", " if text else "") + name
    return text


def message(group: Group, reason: str) -> str:
    """``3 PackInstances Installed (web-dev, web-prod, web-qa): initial install (revision ...)``."""
    count = len(group.members)
    details = "; ".join(group.details[:3]) + ("; ..." if len(group.details) > 3 else "")
    created = f"ClusterPack {group.created} created; " if group.created else ""
    if count == 1 and group.member_kind == group.kind.kind:
        return f"{created}{group.kind.kind} {group.members[0]} {reason}: {details}"
    names = listed(group.members)
    plural = group.member_kind + ("s" if count != 1 else "")
    return f"{created}{count} {plural} {reason} ({names}): {details}"


def series_name(kind: str, name: str, type_: str, reason: str) -> str:
    """The Event name of a (subject, type, reason) series: the same in every process."""
    digest = hashlib.sha256(json.dumps([kind, type_, reason]).encode()).hexdigest()[:12]
    return f"{name[: 253 - 13]}.{digest}"


def micro_time(now: str) -> str:
    """An RFC 3339 time as the API's MicroTime (``2026-01-01T00:00:00.000000Z``)."""
    try:
        moment = datetime.datetime.fromisoformat(now.replace("Z", "+00:00")).astimezone(datetime.UTC)
    except ValueError:
        return now
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
