"""Push webhooks from GitHub, GitLab, Gitea and Gogs: who sent it, is it genuine, does it concern us.

Pure functions over (headers, raw body, secret): no sockets, no clock, no logging, so every
provider's rules are table-tested. ``gitopsd.httpserver`` reads the request and turns the
``Verdict`` into an HTTP answer; ``gitopsd.daemon`` gets a trigger when ``Verdict.trigger`` is set.

Authentication, per provider:

- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``; events in
  ``X-GitHub-Event`` (``push``, ``ping``).
- GitLab: ``X-Gitlab-Token`` is the secret itself; events in ``X-Gitlab-Event`` (``Push Hook``).
- Gitea / Gogs: ``X-Gitea-Signature`` / ``X-Gogs-Signature``: hex HMAC-SHA256 of the raw body;
  events in ``X-Gitea-Event`` / ``X-Gogs-Event`` (``push``).

Every comparison is constant-time (``hmac.compare_digest``). A request is authenticated before its
body is parsed, and a ping is authenticated too, so a wrong secret shows up when the hook is made.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping

MAX_BODY = 1024 * 1024  # GitHub push payloads stay far below this; bigger bodies get 413


class Provider(enum.StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"
    GOGS = "gogs"


class EventKind(enum.StrEnum):
    PUSH = "push"
    PING = "ping"
    OTHER = "other"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    name: str  # the provider's own event name, e.g. "push", "Push Hook", "issues"
    ref: str | None = None  # "refs/heads/main" for pushes


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer and whether to start a pass."""

    status: int
    message: str
    trigger: bool = False
    provider: Provider | None = None
    event: str | None = None
    ref: str | None = None


_EVENT_HEADER = {
    Provider.GITHUB: "x-github-event",
    Provider.GITLAB: "x-gitlab-event",
    Provider.GITEA: "x-gitea-event",
    Provider.GOGS: "x-gogs-event",
}

_SIGNATURE_HEADER = {
    Provider.GITHUB: "x-hub-signature-256",
    Provider.GITLAB: "x-gitlab-token",
    Provider.GITEA: "x-gitea-signature",
    Provider.GOGS: "x-gogs-signature",
}


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names lowercased; the first value of a repeated header wins."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        out.setdefault(str(name).lower(), str(value))
    return out


def detect(headers: Mapping[str, str]) -> Provider | None:
    """The sending provider, from its event header.

    Gitea also sends Gogs- and GitHub-style headers for compatibility, and Gogs GitHub-style ones,
    so the most specific provider is checked first.
    """
    h = lower_headers(headers)
    for provider in (Provider.GITEA, Provider.GOGS, Provider.GITLAB, Provider.GITHUB):
        if _EVENT_HEADER[provider] in h or _SIGNATURE_HEADER[provider] in h:
            return provider
    return None


def hmac_hex(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(provider: Provider, headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """True when the request carries valid proof of the shared secret. A missing header is False."""
    if not secret:
        return False
    given = lower_headers(headers).get(_SIGNATURE_HEADER[provider])
    if given is None:
        return False
    given = given.strip()
    if provider is Provider.GITLAB:
        return hmac.compare_digest(given.encode(), secret)
    if provider is Provider.GITHUB:
        scheme, sep, digest = given.partition("=")
        if not sep or scheme != "sha256":
            return False
        given = digest
    return hmac.compare_digest(given.lower().encode(), hmac_hex(secret, body).encode())


def _payload(headers: Mapping[str, str], body: bytes) -> dict[str, object]:
    """The JSON payload; GitHub may send it form-encoded as ``payload=<json>``."""
    content_type = lower_headers(headers).get("content-type", "").split(";")[0].strip().lower()
    text = body.decode("utf-8")
    if content_type == "application/x-www-form-urlencoded":
        text = urllib.parse.parse_qs(text).get("payload", [""])[0]
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    return data


def parse_event(provider: Provider, headers: Mapping[str, str], body: bytes) -> Event:
    """The event of an authenticated request; ``ValueError`` when a push has no readable ``ref``."""
    name = lower_headers(headers).get(_EVENT_HEADER[provider], "").strip()
    lowered = name.lower()
    if lowered == "ping":
        return Event(EventKind.PING, name)
    if lowered not in ("push", "push hook"):
        return Event(EventKind.OTHER, name)
    ref = _payload(headers, body).get("ref")
    if not isinstance(ref, str) or not ref:
        raise ValueError("push payload has no 'ref'")
    return Event(EventKind.PUSH, name, ref)


def wanted(ref: str, branch: str | None) -> bool:
    """A push to the watched branch; any branch when it is not known. Tags never."""
    if branch is None:
        return ref.startswith("refs/heads/")
    return ref == f"refs/heads/{branch}"


_DELIVERY_HEADER = {
    Provider.GITHUB: "x-github-delivery",
    Provider.GITLAB: "x-gitlab-event-uuid",
    Provider.GITEA: "x-gitea-delivery",
    Provider.GOGS: "x-gogs-delivery",
}


def delivery_id(provider: Provider, headers: Mapping[str, str]) -> str | None:
    """The sender's id of one delivery (the same on a redelivery or a replay), when it sends one."""
    value = lower_headers(headers).get(_DELIVERY_HEADER[provider], "").strip()
    return f"{provider}:{value[:200]}" if value else None


class Deliveries:
    """Delivery ids taken within the last ``window`` seconds: a replayed signed delivery (same id)
    triggers no second pass. Bounded: the oldest ids are forgotten first."""

    def __init__(self, window: float = 600.0, limit: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.limit, self.clock = window, limit, clock
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def first(self, delivery: str) -> bool:
        """True the first time ``delivery`` is seen within the window (and remember it)."""
        now = self.clock()
        with self._lock:
            while self._seen and (len(self._seen) >= self.limit or next(iter(self._seen.values())) < now - self.window):
                self._seen.popitem(last=False)
            if delivery in self._seen:
                return False
            self._seen[delivery] = now
            return True


def receive(headers: Mapping[str, str], body: bytes, *, secret: bytes, branch: str | None,
            provider: Provider | None = None) -> Verdict:
    """Judge one request whose body was read in full. ``provider`` pins it (``/hooks/<provider>``);
    otherwise it is detected from the headers (``/hook``)."""
    if provider is None:
        provider = detect(headers)
        if provider is None:
            return Verdict(400, "unknown webhook sender: expected GitHub, GitLab, Gitea or Gogs event headers")
    if not signature_ok(provider, headers, body, secret):
        header = _SIGNATURE_HEADER[provider]
        return Verdict(401, f"missing or invalid {header} (check the webhook secret)", provider=provider)
    try:
        event = parse_event(provider, headers, body)
    except (ValueError, UnicodeDecodeError) as err:
        return Verdict(400, f"unreadable push payload: {err}", provider=provider)
    except RecursionError:
        return Verdict(400, "unreadable push payload: JSON nested too deeply", provider=provider)
    if event.kind is EventKind.PING:
        return Verdict(200, "pong", provider=provider, event=event.name)
    if event.kind is EventKind.OTHER:
        return Verdict(200, f"event {event.name or '(none)'!r} ignored: only pushes trigger a pass", provider=provider,
                       event=event.name)
    assert event.ref is not None
    if not wanted(event.ref, branch):
        watched = f"refs/heads/{branch}" if branch else "branches (refs/heads/*)"
        return Verdict(200, f"push to {event.ref} ignored: watching {watched}", provider=provider, event=event.name,
                       ref=event.ref)
    return Verdict(202, f"push to {event.ref} accepted: pass triggered", trigger=True, provider=provider,
                   event=event.name, ref=event.ref)
