"""Fault injection: rules that make matching requests fail, stall, or lose their watch.

A rule matches a request by verb (kubectl's words, plus ``write`` for any write and ``*``),
resource (``fnmatch`` pattern on ``plural`` or ``plural/subresource``), name and namespace, fires
at most ``times`` times (``None``: forever), each time with ``probability`` drawn from one seeded
RNG so a run is reproducible. Its effect is one of:

* :class:`Fail` - an error ``Status`` (``InternalError()``, ``Conflict()``, ``TooManyRequests()``,
  ``ServiceUnavailable()`` are the usual ones); ``Conflict(times=N)`` on ``write`` is a 409 storm;
* :class:`Delay` - sleep, then serve normally (delays of several rules add up);
* :class:`DropWatch` - end a watch stream after N events (cleanly, or by cutting the connection);
* :class:`WatchGone` - answer a watch with an ``ERROR`` event carrying 410 Gone.
"""

from __future__ import annotations

import fnmatch
import itertools
import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gitopsd.testing.kubeapi import errors

WRITE_VERBS = frozenset({"create", "update", "patch", "apply", "delete", "deletecollection"})


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer with an error Status instead of serving the request."""

    code: int = 500
    reason: str = "InternalError"
    message: str = ""
    retry_after: int | None = None

    def error(self, group: str, plural: str, name: str) -> errors.ApiError:
        if self.code == 409 and self.reason == "Conflict" and not self.message:
            return errors.conflict(group, plural, name or "")
        if self.code == 429 and not self.message:
            return errors.too_many_requests(self.retry_after or 1)
        message = self.message or f"injected fault: {self.reason}"
        details = {"retryAfterSeconds": self.retry_after} if self.retry_after else None
        return errors.ApiError(self.code, self.reason, message, details=details, retry_after=self.retry_after)


@dataclass(frozen=True, slots=True)
class InternalError(Fail):
    code: int = 500
    reason: str = "InternalError"
    message: str = "Internal error occurred: injected fault"


@dataclass(frozen=True, slots=True)
class Conflict(Fail):
    """409 Conflict, worded like an optimistic-concurrency failure on the requested object."""

    code: int = 409
    reason: str = "Conflict"


@dataclass(frozen=True, slots=True)
class TooManyRequests(Fail):
    """429 with ``Retry-After`` (clients such as urllib3 wait and retry reads)."""

    code: int = 429
    reason: str = "TooManyRequests"
    retry_after: int | None = 1


@dataclass(frozen=True, slots=True)
class ServiceUnavailable(Fail):
    code: int = 503
    reason: str = "ServiceUnavailable"
    message: str = "the server is currently unable to handle the request"


@dataclass(frozen=True, slots=True)
class Delay:
    seconds: float


@dataclass(frozen=True, slots=True)
class DropWatch:
    """End the watch after ``after_events`` events; ``abrupt`` cuts the TCP connection instead of
    ending the chunked stream."""

    after_events: int = 0
    abrupt: bool = False


@dataclass(frozen=True, slots=True)
class WatchGone:
    """Send an ``ERROR`` event with a 410 ``Expired`` Status and end the watch."""

    message: str = "too old resource version: injected fault"


Effect = Fail | Delay | DropWatch | WatchGone
_WATCH_ONLY = (DropWatch, WatchGone)


@dataclass(slots=True)
class Rule:
    effect: Effect
    verb: str = "*"
    resource: str = "*"
    name: str = "*"
    namespace: str = "*"
    times: int | None = None
    probability: float = 1.0
    id: int = 0
    fired: int = field(default=0)

    def matches(self, verb: str, resource: str, namespace: str, name: str) -> bool:
        verb_ok = self.verb in ("*", verb) or (self.verb == "write" and verb in WRITE_VERBS)
        if isinstance(self.effect, _WATCH_ONLY) and verb != "watch":
            return False
        return (
            verb_ok
            and fnmatch.fnmatchcase(resource, self.resource)
            and fnmatch.fnmatchcase(name, self.name)
            and fnmatch.fnmatchcase(namespace, self.namespace)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "effect": type(self.effect).__name__,
            **asdict(self.effect),
            "verb": self.verb,
            "resource": self.resource,
            "name": self.name,
            "namespace": self.namespace,
            "times": self.times,
            "probability": self.probability,
            "fired": self.fired,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """What the rules say about one request."""

    delay: float = 0.0
    effect: Fail | DropWatch | WatchGone | None = None


class Faults:
    """The active rules; thread-safe."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)

    def add(
        self,
        effect: Effect,
        *,
        verb: str = "*",
        resource: str = "*",
        name: str = "*",
        namespace: str = "*",
        times: int | None = None,
        probability: float = 1.0,
    ) -> Rule:
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            rule = Rule(effect, verb, resource, name, namespace, times, probability, next(self._ids))
            self._rules.append(rule)
            return rule

    def add_json(self, spec: Mapping[str, Any]) -> Rule:
        """A rule from the JSON form ``POST /__emulator/faults`` takes (see :func:`effect_from_json`)."""
        match = {
            k: spec[k] for k in ("verb", "resource", "name", "namespace", "times", "probability") if k in spec
        }
        return self.add(effect_from_json(spec), **match)

    def remove(self, rule: Rule | int) -> None:
        wanted = rule if isinstance(rule, int) else rule.id
        with self._lock:
            self._rules = [r for r in self._rules if r.id != wanted]

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def decide(self, verb: str, resource: str, namespace: str, name: str) -> Decision:
        delay, effect = 0.0, None
        with self._lock:
            for rule in list(self._rules):
                if effect is not None and not isinstance(rule.effect, Delay):
                    continue
                if not rule.matches(verb, resource, namespace, name):
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                if isinstance(rule.effect, Delay):
                    delay += rule.effect.seconds
                else:
                    effect = rule.effect
        return Decision(delay, effect)


def effect_from_json(spec: Mapping[str, Any]) -> Effect:
    """``{"effect": "error"|"conflict"|"internal"|"throttle"|"unavailable"|"delay"|"drop_watch"|"gone", ...}``."""
    kind = str(spec.get("effect", "error")).lower()
    match kind:
        case "error" | "fail":
            return Fail(
                int(spec.get("code", 500)),
                str(spec.get("reason", "InternalError")),
                str(spec.get("message", "")),
                spec.get("retry_after"),
            )
        case "internal" | "internalerror":
            return InternalError()
        case "conflict":
            return Conflict()
        case "throttle" | "toomanyrequests" | "too_many_requests":
            return TooManyRequests(retry_after=int(spec.get("retry_after", 1)))
        case "unavailable" | "serviceunavailable":
            return ServiceUnavailable(retry_after=spec.get("retry_after"))
        case "delay":
            return Delay(float(spec.get("seconds", 1.0)))
        case "drop_watch" | "dropwatch":
            return DropWatch(int(spec.get("after_events", 0)), bool(spec.get("abrupt", False)))
        case "gone" | "watchgone" | "watch_gone":
            return WatchGone()
    raise ValueError(f"unknown fault effect {kind!r}")
