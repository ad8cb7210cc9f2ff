"""Fault rules for the proxy in front of a real API server (``tests.realkube.proxy``).

A rule matches a request by verb (kubectl's words, plus ``write`` for any write and ``*``),
resource (``fnmatch`` pattern on ``plural`` or ``plural/subresource``), name and namespace, fires
at most ``times`` times (``None``: forever), each time with ``probability`` drawn from one seeded
RNG so a run is reproducible. Its effect is one of:

* :class:`Fail` - an error ``Status`` instead of forwarding (``InternalError()``, ``Conflict()``,
  ``TooManyRequests()``, ``ServiceUnavailable()``); ``Conflict(times=N)`` on ``write`` is a 409 storm;
* :class:`Delay` - sleep, then forward (delays of several rules add up);
* :class:`DropWatch` - end a watch stream after N events (cleanly, or by cutting the connection);
* :class:`WatchGone` - answer a watch with an ``ERROR`` event carrying 410 Gone;
* :class:`StaleWatch` - forward a watch from a resourceVersion long gone, so that the real API
  server answers 410 Expired itself (what a watcher that fell behind the server's history meets).
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import random
import threading
from dataclasses import dataclass, field

WRITE_VERBS = frozenset({"create", "update", "patch", "apply", "delete", "deletecollection"})


@dataclass(frozen=True, slots=True)
class Fail:
    """Answer with an error Status instead of forwarding the request."""

    code: int = 500
    reason: str = "InternalError"
    message: str = ""
    retry_after: int | None = None

    def status(self, resource: str, name: str) -> dict[str, object]:
        message = self.message or f"injected fault: {self.reason}"
        if self.code == 409 and self.reason == "Conflict" and not self.message:
            message = (f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
                       "please apply your changes to the latest version and try again")
        details: dict[str, object] = {"name": name, "kind": resource.partition("/")[0]}
        if self.retry_after:
            details["retryAfterSeconds"] = self.retry_after
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": self.reason, "details": details, "code": self.code}

    def body(self, resource: str, name: str) -> bytes:
        return json.dumps(self.status(resource, name)).encode()


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
    """429 with ``Retry-After``."""

    code: int = 429
    reason: str = "TooManyRequests"
    message: str = "Too many requests, please try again later."
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

    def event(self) -> bytes:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": self.message, "reason": "Expired", "code": 410}
        return json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"


@dataclass(frozen=True, slots=True)
class StaleWatch:
    """Forward the watch with ``resourceVersion`` replaced by ``resource_version``: older than the
    API server's watch window, the server itself answers with an ``ERROR`` event, 410 Expired."""

    resource_version: str = "1"


Effect = Fail | Delay | DropWatch | WatchGone | StaleWatch
_WATCH_ONLY = (DropWatch, WatchGone, StaleWatch)


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


@dataclass(frozen=True, slots=True)
class Decision:
    """What the rules say about one request."""

    delay: float = 0.0
    effect: Fail | DropWatch | WatchGone | StaleWatch | None = None


class Faults:
    """The active rules; thread-safe."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)

    def add(self, effect: Effect, *, verb: str = "*", resource: str = "*", name: str = "*", namespace: str = "*",
            times: int | None = None, probability: float = 1.0) -> Rule:
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        with self._lock:
            rule = Rule(effect, verb, resource, name, namespace, times, probability, next(self._ids))
            self._rules.append(rule)
            return rule

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
