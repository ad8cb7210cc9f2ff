"""The write path's own HTTP/1.1 client (gitopsd.adapters.kube.transport) and the Events one pass
sends (gitopsd.adapters.kube.events), against a small recording HTTP server on loopback: keep-alive
connections, chunked answers, a connection the server dropped while idle, error answers, and the
cap on Events per pass. No cluster needed."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from gitopsd import errors
from gitopsd.adapters import kube
from gitopsd.adapters.kube import events as events_mod


class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, str, Any]] = []
        self.authorizations: list[str | None] = []
        self.connections = 0
        self.mode = "length"  # or "chunked", "drop" (close each connection after its answer), "error"
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with self.server.lock:
            self.server.seen.append((self.command, self.path, body))
            self.server.authorizations.append(self.headers.get("Authorization"))
        mode = self.server.mode
        if mode == "error":
            payload = json.dumps({"kind": "Status", "code": 409, "message": "taken", "details": {"name": "x"}}).encode()
            self.send_response(409)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        payload = json.dumps({"metadata": {"name": "x"}, "echo": body}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (payload[:7], payload[7:]):
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        if mode == "drop":
            self.close_connection = True  # as a server ending an idle keep-alive connection (no Connection: close)

    do_PATCH = do_GET = do_POST  # noqa: N815 - http.server's handler names


@pytest.fixture
def server() -> Iterator[Recorder]:
    srv = Recorder()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def requests(server: Recorder) -> Iterator[kube.Requests]:
    configuration = kube.client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    configuration.api_key = {"authorization": "token-not-for-logs"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    sent = kube.Requests(kube.client.ApiClient(configuration), may_write=lambda: True, timeout=5)
    yield sent
    sent.close()


@pytest.mark.parametrize("mode", ["length", "chunked"], ids=["content-length", "chunked"])
def test_requests_share_one_keep_alive_connection_and_answers_are_read_whole(
        server: Recorder, requests: kube.Requests, mode: str) -> None:
    server.mode = mode
    answers = [requests.call("create", "events", "POST", kube.connection.events_path("ns"), {"n": n, "text": "é"},
                             query={"fieldManager": "gitopsd"}) for n in range(5)]
    assert [a["echo"] for a in answers] == [{"n": n, "text": "é"} for n in range(5)]
    assert [path for _, path, _ in server.seen] == ["/api/v1/namespaces/ns/events?fieldManager=gitopsd"] * 5
    assert server.connections == 1
    assert requests.counts == {"create events": 5}
    assert server.authorizations == ["Bearer token-not-for-logs"] * 5


def test_a_connection_the_server_closed_while_idle_is_replaced(server: Recorder, requests: kube.Requests) -> None:
    server.mode = "drop"
    for n in range(3):
        assert requests.call("patch", "events", "PATCH", kube.connection.events_path("ns", "e"), {"n": n})["echo"] == {"n": n}
    assert [body for _, _, body in server.seen] == [{"n": 0}, {"n": 1}, {"n": 2}]  # each sent once
    assert server.connections == 3


def test_an_error_answer_is_an_api_exception_that_translates(server: Recorder, requests: kube.Requests) -> None:
    server.mode = "error"
    with pytest.raises(ApiException) as raised:
        requests.call("create", "events", "POST", kube.connection.events_path("ns"), {})
    assert raised.value.status == 409 and json.loads(raised.value.body)["message"] == "taken"
    assert isinstance(kube.translate(raised.value, action="create", kind="Event", namespace="ns"), errors.Conflict)
    server.mode = "length"  # the connection is still good after an error answer
    assert requests.call("get", "events", "GET", kube.connection.events_path("ns", "e"))["metadata"] == {"name": "x"}
    assert server.connections == 1


def test_through_a_proxy_the_api_clients_pool_sends_the_same_requests_and_answers(server: Recorder) -> None:
    """A proxy in the configuration: the write path keeps the API client's urllib3 pool (its own
    connection does not speak to proxies), with the same credentials, body, answers and errors."""
    configuration = kube.client.Configuration()
    configuration.host = "http://kube.example:6443"
    configuration.proxy = f"http://127.0.0.1:{server.server_address[1]}"  # the recorder, as the proxy
    configuration.api_key = {"authorization": "token-not-for-logs"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    assert kube.transport.Transport.for_configuration(configuration, timeout=5) is None
    requests = kube.Requests(kube.client.ApiClient(configuration), may_write=lambda: True, timeout=5)
    answer = requests.call("create", "events", "POST", kube.connection.events_path("ns"), {"n": 1}, query={"fieldManager": "gitopsd"})
    assert answer["echo"] == {"n": 1}
    assert server.seen == [("POST", "http://kube.example:6443/api/v1/namespaces/ns/events?fieldManager=gitopsd", {"n": 1})]
    server.mode = "error"
    with pytest.raises(ApiException) as raised:
        requests.call("create", "events", "POST", kube.connection.events_path("ns"), {})
    assert raised.value.status == 409 and json.loads(raised.value.body)["message"] == "taken"
    assert server.authorizations == ["Bearer token-not-for-logs"] * 2
    requests.close()


def test_an_unreachable_server_is_cluster_unavailable() -> None:
    configuration = kube.client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard: nothing listens
    requests = kube.Requests(kube.client.ApiClient(configuration), may_write=lambda: True, timeout=2)
    with pytest.raises(OSError) as raised:
        requests.call("get", "events", "GET", kube.connection.events_path("ns", "e"))
    assert isinstance(kube.translate(raised.value, action="read", kind="Event", namespace="ns"), errors.ClusterUnavailable)


def test_a_pass_sends_at_most_events_per_pass_and_sums_up_the_rest_per_reason(
        server: Recorder, requests: kube.Requests) -> None:
    recorder = kube.Events(requests, identity="gitopsd-0", cached=lambda kind, namespace, name: None)
    packs = [f"p{n:03}-v1.0.0" for n in range(150)]
    for name in packs:
        for cluster in ("a", "b"):
            recorder.add("ns", kube.CLUSTER_PACKS, name, "Normal", "Installed", "initial install (revision r)",
                         member=(kube.PACK_INSTANCES, f"{name}-{cluster}"))
    recorder.add("ns", kube.CLUSTER_PACKS, "late-v1.0.0", "Warning", "SignatureInvalid", "bad signature")
    recorder.flush("2026-01-01T00:00:00Z")

    sent = [body for _, _, body in server.seen]
    assert len(sent) == events_mod.EVENTS_PER_PASS + 1
    own = [(e["involvedObject"]["name"], e["reason"]) for e in sent[1:]]
    summary = sent[0]
    # the Warning keeps its own Event; the first packs (in the order of the pass) theirs
    assert own == [("late-v1.0.0", "SignatureInvalid")] + [(n, "Installed") for n in packs[:events_mod.EVENTS_PER_PASS - 1]]
    left = packs[events_mod.EVENTS_PER_PASS - 1:]
    assert summary["involvedObject"] == {"apiVersion": "v1", "kind": "Namespace", "name": "ns", "namespace": "ns"}
    assert summary["reason"] == "Installed" and summary["type"] == "Normal"
    assert summary["message"].startswith(f"{len(left)} more InfrastructureClusterPacks Installed this pass ({left[0]}, ")
    assert f": {2 * len(left)} PackInstances; initial install (revision r)" in summary["message"]
    assert all("token-not-for-logs" not in json.dumps(e) for e in sent)
