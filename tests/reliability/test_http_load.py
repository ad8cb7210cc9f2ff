"""The daemon's HTTP server under slow clients and replays (issue items 7 and 10): bounded
connections, a deadline per connection, health answered under load; one pass per signed webhook
delivery; a deeply nested body is a 400. Real sockets on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gitopsd import httpserver

pytestmark = pytest.mark.slow

SECRET = b"load-test-secret"


class Backend:
    def __init__(self) -> None:
        self.triggers: list[str] = []

    def alive(self) -> bool:
        return True

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"

    def trigger(self, reason: str) -> bool:
        self.triggers.append(reason)
        return True

    def branch(self) -> str | None:
        return "main"


@pytest.fixture
def served() -> Iterator[tuple[httpserver.Server, Backend]]:
    backend = Backend()
    server = httpserver.Server("127.0.0.1", 0, backend, secret=SECRET)
    server.start()
    try:
        yield server, backend
    finally:
        server.stop()


def _get(server: httpserver.Server, path: str, timeout: float = 5.0) -> tuple[int, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection(*server.address, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status, time.monotonic() - started
    finally:
        conn.close()


def test_health_is_answered_while_hundreds_of_clients_drip_their_requests(
        served: tuple[httpserver.Server, Backend]) -> None:
    server, _ = served
    stop = threading.Event()
    lock = threading.Lock()
    slow: list[socket.socket] = []

    def drip() -> None:
        # every open slow connection gets a byte each 0.5 s from the moment it is opened, far within
        # the per-read timeout: only a bound on connections or on whole-request time can end them
        while not stop.wait(0.5):
            with lock:
                dripping = list(slow)
            for sock in dripping:
                try:
                    sock.send(b"X")
                except OSError:
                    with lock:
                        slow.remove(sock)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    baseline = threading.active_count()
    peak = 0
    try:
        for _ in range(400):
            sock = socket.create_connection(server.address, timeout=5)
            sock.send(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            with lock:
                slow.append(sock)
            peak = max(peak, threading.active_count() - baseline)  # the server runs in this process
        time.sleep(2)  # every slow connection is accepted and dripping by now
        answers = [_get(server, "/healthz") for _ in range(20)]
        peak = max(peak, threading.active_count() - baseline)
    finally:
        stop.set()
        dripper.join()
        with lock:
            for sock in slow:
                sock.close()
    assert [status for status, _ in answers] == [200] * 20
    # at most MAX_CONNECTIONS handler threads however many clients drip, even while dropped ones end: an
    # unbounded server holds one thread per slow client (about 400 here)
    assert peak <= httpserver.MAX_CONNECTIONS, peak


def test_a_connection_gets_a_deadline_for_its_whole_request_not_per_read(
        served: tuple[httpserver.Server, Backend], monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = served
    monkeypatch.setattr(httpserver, "REQUEST_TIMEOUT", 1.0)
    sock = socket.create_connection(server.address)
    sock.send(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    closed_after = None
    while time.monotonic() - started < 10:
        try:
            sock.send(b"X-Drip: 1\r\n")  # a header line each 0.2 s: every single read is quick
        except OSError:
            closed_after = time.monotonic() - started
            break
        time.sleep(0.2)
    sock.close()
    assert closed_after is not None  # closed although every read was quick: the deadline is the request's


def _push(server: httpserver.Server, body: bytes, delivery: str) -> tuple[int, str]:
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    try:
        conn.request("POST", "/hooks/github", body=body, headers={
            "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature,
            "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, answer.read().decode().strip()
    finally:
        conn.close()


PUSH = json.dumps({"ref": "refs/heads/main", "after": "1" * 40}).encode()


def test_a_replayed_signed_delivery_triggers_one_pass(served: tuple[httpserver.Server, Backend]) -> None:
    server, backend = served
    answers = [_push(server, PUSH, "d-1"), _push(server, PUSH, "d-1"), _push(server, PUSH, "d-1"), _push(server, PUSH, "d-2")]
    assert answers == [
        (202, "push to refs/heads/main accepted: pass triggered"),
        (200, "delivery d-1 was already received: no second pass"),
        (200, "delivery d-1 was already received: no second pass"),
        (202, "push to refs/heads/main accepted: pass triggered"),
    ]
    assert backend.triggers == ["webhook github", "webhook github"]


@pytest.mark.parametrize("depth", [1_000, 100_000], ids=["a-thousand-levels", "a-hundred-thousand-levels"])
def test_a_deeply_nested_signed_body_is_a_400(served: tuple[httpserver.Server, Backend], depth: int) -> None:
    server, backend = served
    body = b'{"ref": "refs/heads/main", "x": ' + b"[" * depth + b"]" * depth + b"}"
    assert _push(server, body, f"deep-{depth}") == (400, "unreadable push payload: JSON nested too deeply")
    assert backend.triggers == []
