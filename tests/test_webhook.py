"""Webhook receiver: the providers' authentication rules as a table, over real HTTP on 127.0.0.1.

The table runs against ``gitopsd.httpserver`` with a backend that records triggers; the last test
drives a real ``Daemon`` end to end (a signed push starts a pass at once).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import http.client
import json
import pathlib
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator

import pytest

from gitopsd import daemon, httpserver, reconcile, webhook
from gitopsd.cli import run as cli_run

SECRET = b"s3cret-webhook-key"
PUSH_MAIN = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()
PUSH_OTHER = json.dumps({"ref": "refs/heads/feature", "after": "0" * 40}).encode()
PUSH_TAG = json.dumps({"ref": "refs/tags/v1.0.0"}).encode()
PING = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()


def sig(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def github(event: str, body: bytes, signature: str | None) -> dict[str, str]:
    h = {"X-GitHub-Event": event, "Content-Type": "application/json"}
    if signature is not None:
        h["X-Hub-Signature-256"] = signature
    return h


def gitlab(event: str, token: str | None) -> dict[str, str]:
    h = {"X-Gitlab-Event": event, "Content-Type": "application/json"}
    if token is not None:
        h["X-Gitlab-Token"] = token
    return h


def gitea(event: str, signature: str | None, *, gogs: bool = False) -> dict[str, str]:
    """Gitea sends its own headers plus Gogs- and GitHub-style copies; Gogs only its own."""
    if gogs:
        h = {"X-Gogs-Event": event, "Content-Type": "application/json"}
        if signature is not None:
            h["X-Gogs-Signature"] = signature
        return h
    h = {"X-Gitea-Event": event, "X-Gogs-Event": event, "X-GitHub-Event": event, "Content-Type": "application/json"}
    if signature is not None:
        h["X-Gitea-Signature"] = signature
        h["X-Gogs-Signature"] = signature
    return h


@dataclasses.dataclass(frozen=True)
class Case:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    trigger: str | None  # the provider whose push triggered a pass, or None


FORM_BODY = urllib.parse.urlencode({"payload": PUSH_MAIN.decode()}).encode()

CASES = {
    # GitHub
    "github-push-good": Case("/hook", github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN)), PUSH_MAIN, 202, "github"),
    "github-push-good-pinned": Case("/hooks/github", github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN)), PUSH_MAIN, 202, "github"),
    "github-push-uppercase-hex": Case("/hook", github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN).upper()), PUSH_MAIN, 202, "github"),
    "github-push-form-encoded": Case("/hook", {**github("push", FORM_BODY, "sha256=" + sig(FORM_BODY)),
                                               "Content-Type": "application/x-www-form-urlencoded"}, FORM_BODY, 202, "github"),
    "github-push-wrong-secret": Case("/hook", github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN, b"other")), PUSH_MAIN, 401, None),
    "github-push-signature-of-other-body": Case("/hook", github("push", PUSH_MAIN, "sha256=" + sig(PUSH_OTHER)), PUSH_MAIN, 401, None),
    "github-push-sha1-scheme": Case("/hook", github("push", PUSH_MAIN, "sha1=" + sig(PUSH_MAIN)), PUSH_MAIN, 401, None),
    "github-push-missing-signature": Case("/hook", github("push", PUSH_MAIN, None), PUSH_MAIN, 401, None),
    "github-ping": Case("/hook", github("ping", PING, "sha256=" + sig(PING)), PING, 200, None),
    "github-ping-bad-signature": Case("/hook", github("ping", PING, "sha256=" + sig(PING, b"x")), PING, 401, None),
    "github-push-other-branch": Case("/hook", github("push", PUSH_OTHER, "sha256=" + sig(PUSH_OTHER)), PUSH_OTHER, 200, None),
    "github-push-tag": Case("/hook", github("push", PUSH_TAG, "sha256=" + sig(PUSH_TAG)), PUSH_TAG, 200, None),
    "github-issues-event": Case("/hook", github("issues", PING, "sha256=" + sig(PING)), PING, 200, None),
    "github-push-without-ref": Case("/hook", github("push", PING, "sha256=" + sig(PING)), PING, 400, None),
    # GitLab
    "gitlab-push-good": Case("/hook", gitlab("Push Hook", SECRET.decode()), PUSH_MAIN, 202, "gitlab"),
    "gitlab-push-good-pinned": Case("/hooks/gitlab", gitlab("Push Hook", SECRET.decode()), PUSH_MAIN, 202, "gitlab"),
    "gitlab-push-bad-token": Case("/hook", gitlab("Push Hook", "guess"), PUSH_MAIN, 401, None),
    "gitlab-push-token-prefix": Case("/hook", gitlab("Push Hook", SECRET.decode()[:-1]), PUSH_MAIN, 401, None),
    "gitlab-push-missing-token": Case("/hook", gitlab("Push Hook", None), PUSH_MAIN, 401, None),
    "gitlab-push-other-branch": Case("/hook", gitlab("Push Hook", SECRET.decode()), PUSH_OTHER, 200, None),
    "gitlab-tag-push": Case("/hook", gitlab("Tag Push Hook", SECRET.decode()), PUSH_TAG, 200, None),
    # Gitea
    "gitea-push-good": Case("/hook", gitea("push", sig(PUSH_MAIN)), PUSH_MAIN, 202, "gitea"),
    "gitea-push-good-pinned": Case("/hooks/gitea", gitea("push", sig(PUSH_MAIN)), PUSH_MAIN, 202, "gitea"),
    "gitea-push-bad-signature": Case("/hook", gitea("push", sig(PUSH_MAIN, b"other")), PUSH_MAIN, 401, None),
    "gitea-push-missing-signature": Case("/hook", gitea("push", None), PUSH_MAIN, 401, None),
    "gitea-push-other-branch": Case("/hook", gitea("push", sig(PUSH_OTHER)), PUSH_OTHER, 200, None),
    # Gogs
    "gogs-push-good": Case("/hook", gitea("push", sig(PUSH_MAIN), gogs=True), PUSH_MAIN, 202, "gogs"),
    "gogs-push-good-pinned": Case("/hooks/gogs", gitea("push", sig(PUSH_MAIN), gogs=True), PUSH_MAIN, 202, "gogs"),
    "gogs-push-bad-signature": Case("/hook", gitea("push", "00" * 32, gogs=True), PUSH_MAIN, 401, None),
    "gogs-push-missing-signature": Case("/hook", gitea("push", None, gogs=True), PUSH_MAIN, 401, None),
    # routing
    "pinned-provider-ignores-other-providers-proof": Case("/hooks/github", gitlab("Push Hook", SECRET.decode()), PUSH_MAIN, 401, None),
    "unknown-sender": Case("/hook", {"Content-Type": "application/json"}, PUSH_MAIN, 400, None),
    "unknown-provider-path": Case("/hooks/bitbucket", gitlab("Push Hook", SECRET.decode()), PUSH_MAIN, 404, None),
}


class Recorder:
    """The daemon side of the server: records triggers; ``accept=False`` plays a daemon shutting down."""

    def __init__(self, branch: str | None = "main", accept: bool = True) -> None:
        self.triggers: list[str] = []
        self._branch = branch
        self.accept = accept

    def alive(self) -> bool:
        return True

    def readiness(self) -> tuple[bool, str]:
        return True, "ok"

    def trigger(self, reason: str) -> bool:
        if self.accept:
            self.triggers.append(reason)
        return self.accept

    def branch(self) -> str | None:
        return self._branch


@pytest.fixture(scope="module")
def server_and_backend() -> Iterator[tuple[httpserver.Server, Recorder]]:
    backend = Recorder()
    server = httpserver.Server("127.0.0.1", 0, backend, secret=SECRET)
    server.start()
    try:
        yield server, backend
    finally:
        server.stop()


@pytest.fixture
def served(server_and_backend: tuple[httpserver.Server, Recorder]) -> tuple[httpserver.Server, Recorder]:
    server_and_backend[1].triggers.clear()
    return server_and_backend


def request(server: httpserver.Server, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, str]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body if method != "GET" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def raw_request(server: httpserver.Server, head: str) -> str:
    """Send request headers only (no body) and return the status line."""
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_webhook_answer_and_trigger(served: tuple[httpserver.Server, Recorder], case: Case) -> None:
    server, backend = served
    status, text = request(server, "POST", case.path, case.body, case.headers)
    expected = [f"webhook {case.trigger}"] if case.trigger else []
    assert (status, backend.triggers) == (case.status, expected), text


def test_body_over_the_limit_is_refused_before_it_is_read(served: tuple[httpserver.Server, Recorder]) -> None:
    server, backend = served
    status_line = raw_request(server, f"POST /hook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
                                      f"Content-Length: {webhook.MAX_BODY + 1}\r\n\r\n")
    assert status_line.split()[1] == "413"
    assert backend.triggers == []


def test_body_at_the_limit_is_read_and_judged(served: tuple[httpserver.Server, Recorder]) -> None:
    server, backend = served
    head, tail = b'{"ref": "refs/heads/main", "pad": "', b'"}'
    body = head + b"x" * (webhook.MAX_BODY - len(head) - len(tail)) + tail
    assert len(body) == webhook.MAX_BODY
    status, text = request(server, "POST", "/hook", body, github("push", body, "sha256=" + sig(body)))
    assert (status, backend.triggers) == (202, ["webhook github"]), text


def test_missing_content_length_is_refused(served: tuple[httpserver.Server, Recorder]) -> None:
    server, backend = served
    assert raw_request(server, "POST /hook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n\r\n").split()[1] == "411"
    assert backend.triggers == []


@pytest.mark.parametrize(("method", "path"), [("GET", "/hook"), ("PUT", "/hooks/github"), ("POST", "/healthz"),
                                              ("DELETE", "/metrics")], ids=["get-hook", "put-hook", "post-healthz", "delete-metrics"])
def test_wrong_method_is_405(served: tuple[httpserver.Server, Recorder], method: str, path: str) -> None:
    server, backend = served
    assert request(server, method, path)[0] == 405
    assert backend.triggers == []


def test_webhook_is_off_without_a_secret() -> None:
    backend = Recorder()
    server = httpserver.Server("127.0.0.1", 0, backend, secret=None)
    server.start()
    try:
        status, text = request(server, "POST", "/hook", PUSH_MAIN, github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN)))
    finally:
        server.stop()
    assert status == 404 and "--webhook-secret-file" in text
    assert backend.triggers == []


def test_push_while_shutting_down_is_503() -> None:
    backend = Recorder(accept=False)
    server = httpserver.Server("127.0.0.1", 0, backend, secret=SECRET)
    server.start()
    try:
        status, _ = request(server, "POST", "/hook", PUSH_MAIN, github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN)))
    finally:
        server.stop()
    assert status == 503


WANTED = {
    "watched-branch": ("refs/heads/main", "main", True),
    "other-branch": ("refs/heads/main2", "main", False),
    "slash-branch": ("refs/heads/team/x", "team/x", True),
    "tag-with-branch": ("refs/tags/main", "main", False),
    "any-branch-when-unknown": ("refs/heads/feature", None, True),
    "tag-when-unknown": ("refs/tags/v1", None, False),
}


@pytest.mark.parametrize(("ref", "branch", "expected"), WANTED.values(), ids=WANTED.keys())
def test_ref_filter(ref: str, branch: str | None, expected: bool) -> None:
    assert webhook.wanted(ref, branch) is expected


DETECT = {
    "github": ({"X-GitHub-Event": "push"}, webhook.Provider.GITHUB),
    "gitlab": ({"x-gitlab-event": "Push Hook"}, webhook.Provider.GITLAB),
    "gitea-with-compat-headers": (gitea("push", "ab"), webhook.Provider.GITEA),
    "gogs": (gitea("push", "ab", gogs=True), webhook.Provider.GOGS),
    "none": ({"User-Agent": "curl"}, None),
}


@pytest.mark.parametrize(("headers", "expected"), DETECT.values(), ids=DETECT.keys())
def test_provider_detection(headers: dict[str, str], expected: webhook.Provider | None) -> None:
    assert webhook.detect(headers) is expected


def test_signature_check_refuses_everything_with_an_empty_secret() -> None:
    headers = github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN, b""))
    assert webhook.signature_ok(webhook.Provider.GITHUB, headers, PUSH_MAIN, b"") is False


def test_any_branch_is_accepted_while_the_branch_is_unknown() -> None:
    verdict = webhook.receive(github("push", PUSH_OTHER, "sha256=" + sig(PUSH_OTHER)), PUSH_OTHER, secret=SECRET, branch=None)
    assert (verdict.status, verdict.trigger, verdict.ref) == (202, True, "refs/heads/feature")


# --- end to end: a signed push starts a pass of the real daemon at once ----------------------------
def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_signed_push_runs_a_pass_of_the_daemon_at_once(examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    passes: list[float] = []

    def counted(env: reconcile.Env) -> reconcile.PassState:
        state = reconcile.run(env)
        passes.append(time.monotonic())
        return state

    open_env = functools.partial(cli_run.open_local_env, examples, state_dir, signing_key=None, trusted_keys=None,
                                 registry_url=None)
    loop = daemon.Daemon(open_env, daemon.Options(interval=3600, resync_interval=0), run_pass=counted)
    server = httpserver.Server("127.0.0.1", 0, loop, secret=SECRET)
    loop.start()
    server.start()
    try:
        assert wait_for(lambda: len(passes) == 1), "the first pass did not run"
        status, text = request(server, "POST", "/hooks/github", PUSH_MAIN, github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN)))
        assert status == 202, text
        assert wait_for(lambda: len(passes) == 2, timeout=5), "the push did not start a pass"  # the interval is an hour
        status, _ = request(server, "POST", "/hooks/github", PUSH_MAIN, github("push", PUSH_MAIN, "sha256=" + sig(PUSH_MAIN, b"bad")))
        assert status == 401
        time.sleep(0.3)
        assert len(passes) == 2
    finally:
        server.stop()
        loop.stop()
        assert loop.join(10)
