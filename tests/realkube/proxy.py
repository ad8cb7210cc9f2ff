"""A small HTTP proxy in front of a real kube-apiserver: it counts requests and injects faults.

Clients talk plain HTTP to ``127.0.0.1:<port>`` (``write_kubeconfig`` gives them a kubeconfig);
the proxy forwards each request over TLS with the upstream kubeconfig's client certificate and
streams the answer back, watches included (newline-delimited JSON, re-chunked line by line). Every
resource request is logged as a :class:`Record` (kubectl's verb words, ``plural`` or
``plural/subresource``, namespace, name, field manager, status code), so "a no-op pass sends 0
writes" is measured at the real server's door. ``faults`` (``tests.realkube.faults``) makes
matching requests fail, stall, lose their watch or get 410 Gone (injected, or the server's own).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import http.client
import http.server
import pathlib
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import urllib.parse
from typing import Any

import yaml

from tests.realkube import faults as faults_mod

WRITE_VERBS = faults_mod.WRITE_VERBS
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "content-length", "host", "accept-encoding"}


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    verb: str
    resource: str  # plural, or plural/subresource; "" for discovery and other non-resource paths
    namespace: str
    name: str
    code: int
    method: str = ""
    path: str = ""
    query: str = ""
    content_type: str = ""
    field_manager: str = ""
    user_agent: str = ""
    dry_run: bool = False
    fault: str = ""
    seconds: float = 0.0

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS and not self.dry_run

    @property
    def ok(self) -> bool:
        return self.code < 400


@dataclasses.dataclass(frozen=True, slots=True)
class Upstream:
    """Where and how to reach the real API server, read from its kubeconfig."""

    host: str
    port: int
    context: ssl.SSLContext

    @classmethod
    def from_kubeconfig(cls, path: str | pathlib.Path) -> Upstream:
        config = yaml.safe_load(pathlib.Path(path).read_text())
        current = config.get("current-context") or config["contexts"][0]["name"]
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
        url = urllib.parse.urlsplit(cluster["server"])
        tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if "certificate-authority-data" in cluster:
            tls.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif "certificate-authority" in cluster:
            tls.load_verify_locations(cafile=cluster["certificate-authority"])
        cert, key = user.get("client-certificate"), user.get("client-key")
        with tempfile.TemporaryDirectory() as scratch:
            if "client-certificate-data" in user:
                cert = f"{scratch}/cert.pem"
                pathlib.Path(cert).write_bytes(base64.b64decode(user["client-certificate-data"]))
            if "client-key-data" in user:
                key = f"{scratch}/key.pem"
                pathlib.Path(key).write_bytes(base64.b64decode(user["client-key-data"]))
            if cert:
                tls.load_cert_chain(cert, key)
        return cls(url.hostname or "127.0.0.1", url.port or 443, tls)

    def connect(self, timeout: float | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)


def parse_path(method: str, path: str, query: dict[str, list[str]], content_type: str) -> tuple[str, str, str, str]:
    """(verb, resource, namespace, name) of an API request path, the way the API server names them."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        rest = parts[3:]
    else:
        return method.lower(), "", "", ""
    namespace = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]  # a namespaced resource; otherwise the Namespace itself
    if not rest:
        return method.lower(), "", "", ""
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    return _verb(method, query, content_type, named=bool(name)), resource, namespace, name


def _verb(method: str, query: dict[str, list[str]], content_type: str, *, named: bool) -> str:
    if method == "GET":
        if query.get("watch", [""])[0] in ("true", "1"):
            return "watch"
        return "get" if named else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "apply" if content_type.startswith("application/apply-patch") else "patch"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return method.lower()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: KubeProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK of the headers (40 ms on Linux) on every response
    disable_nagle_algorithm = True
    server: _Server
    upstream: http.client.HTTPSConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self, add=False)
            if self.upstream is not None:
                self.upstream.close()

    def cut(self) -> None:
        """End this connection now, and the upstream one it may be waiting on (a watch)."""
        for sock in (self.connection, getattr(self.upstream, "sock", None)):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def do_GET(self) -> None:
        self._forward()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET  # noqa: N815 - http.server's handler names

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        proxy = self.server.proxy
        started = time.monotonic()
        split = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(split.query)
        content_type = self.headers.get("Content-Type", "")
        verb, resource, namespace, name = parse_path(self.command, split.path, query, content_type)
        body = self._read_body()
        record = {
            "verb": verb, "resource": resource, "namespace": namespace, "name": name, "method": self.command, "path": split.path,
            "query": split.query, "content_type": content_type, "field_manager": query.get("fieldManager", [""])[0],
            "user_agent": self.headers.get("User-Agent", ""), "dry_run": query.get("dryRun", [""])[0] == "All",
        }
        decision = proxy.faults.decide(verb, resource, namespace, name) if resource else faults_mod.Decision()
        if decision.delay:
            time.sleep(decision.delay)
        effect = decision.effect
        if isinstance(effect, faults_mod.Fail):
            payload = effect.body(resource, name)
            self.send_response(effect.code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if effect.retry_after:
                self.send_header("Retry-After", str(effect.retry_after))
            self.end_headers()
            self.wfile.write(payload)
            proxy._log(Record(code=effect.code, fault=type(effect).__name__, seconds=time.monotonic() - started, **record))
            return
        if isinstance(effect, faults_mod.WatchGone):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(effect.event())
            self.wfile.write(b"0\r\n\r\n")
            proxy._log(Record(code=200, fault="WatchGone", seconds=time.monotonic() - started, **record))
            return
        path = self.path
        if isinstance(effect, faults_mod.StaleWatch):
            query["resourceVersion"] = [effect.resource_version]
            path = urllib.parse.urlunsplit(("", "", split.path, urllib.parse.urlencode(query, doseq=True), ""))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "authorization"}
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        try:
            response = self._upstream_request(verb, path, body, headers)
        except OSError as err:
            payload = faults_mod.ServiceUnavailable(message=f"proxy: upstream unreachable: {err}").body(resource, name)
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            proxy._log(Record(code=503, fault="UpstreamUnreachable", seconds=time.monotonic() - started, **record))
            return
        code = response.status
        proxy._log(Record(code=code, fault=type(effect).__name__ if effect else "", seconds=time.monotonic() - started, **record))
        self.send_response(code, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        if verb != "watch" or code >= 300:
            payload = response.read()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._stream_watch(response, effect if isinstance(effect, faults_mod.DropWatch) else None)

    def _upstream_request(self, verb: str, path: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            if self.upstream is None or verb == "watch":
                if self.upstream is not None:
                    self.upstream.close()
                self.upstream = self.server.proxy.upstream.connect(timeout=None if verb == "watch" else 60)
            try:
                self.upstream.request(self.command, path, body=body or None, headers=headers)
                return self.upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.upstream.close()
                self.upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream_watch(self, response: http.client.HTTPResponse, drop: faults_mod.DropWatch | None) -> None:
        events = 0
        try:
            while True:
                if drop is not None and events >= drop.after_events:
                    if drop.abrupt:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    break
                line = response.readline()
                if not line:
                    break
                self._chunk(line)
                events += 1
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            response.close()
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None


class KubeProxy:
    """Start with ``with KubeProxy(kubeconfig) as proxy:``; ``proxy.write_kubeconfig(path)``."""

    def __init__(self, upstream_kubeconfig: str | pathlib.Path, *, seed: int = 0) -> None:
        self.upstream = Upstream.from_kubeconfig(upstream_kubeconfig)
        self.faults = faults_mod.Faults(seed)
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._handlers: set[_Handler] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> KubeProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kube-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            open_now = list(self._handlers)
        for handler in open_now:  # kept-alive connections and watches in flight end now
            handler.cut()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> KubeProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy", "namespace": namespace}}],
        }

    def write_kubeconfig(self, path: str | pathlib.Path, namespace: str = "default") -> pathlib.Path:
        target = pathlib.Path(path)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace)))
        return target

    # -- the request log -------------------------------------------------------------------

    def _log(self, record: Record) -> None:
        with self._lock:
            self._records.append(record)

    def _track(self, handler: _Handler, *, add: bool) -> None:
        with self._lock:
            (self._handlers.add if add else self._handlers.discard)(handler)

    def requests(self, *, verb: str | None = None, resource: str | None = None, namespace: str | None = None,
                 name: str | None = None, discovery: bool = False) -> list[Record]:
        """Resource requests in the order they came, optionally filtered (discovery and other
        non-resource paths are left out unless ``discovery``)."""
        with self._lock:
            records = list(self._records)
        return [r for r in records if (r.resource or discovery)
                and (verb is None or r.verb == verb) and (resource is None or r.resource == resource)
                and (namespace is None or r.namespace == namespace) and (name is None or r.name == name)]

    def request_counts(self) -> dict[str, int]:
        """``{"list packinstances": 1, "apply packinstances/status": 3, ...}``."""
        return dict(sorted(collections.Counter(f"{r.verb} {r.resource}" for r in self.requests()).items()))

    def write_count(self, *, successful_only: bool = False) -> int:
        return sum(1 for r in self.requests() if r.is_write and (r.ok or not successful_only))

    def reset_requests(self) -> None:
        with self._lock:
            self._records.clear()
