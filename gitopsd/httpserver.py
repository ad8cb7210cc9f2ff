"""The daemon's HTTP endpoints, on the standard library's threading HTTP server.

  GET  /healthz            200 while the reconcile loop runs, else 503
  GET  /readyz             200 once a pass has completed, else 503 with the reason
  GET  /metrics            Prometheus text format (``gitopsd.metrics``)
  POST /hook               push webhook; provider detected from its headers
  POST /hooks/<provider>   push webhook from github | gitlab | gitea | gogs

It only moves bytes: ``gitopsd.webhook`` judges a webhook, the ``Backend`` (``gitopsd.daemon``)
answers health questions and takes triggers. Webhook bodies are bounded (``Content-Length``
checked before reading), connections are bounded in number and in total time (``_Server``), and a
replayed signed delivery (same delivery id) triggers no second pass, so slow, huge or repeated
requests cannot tie up the daemon. Request headers and the secret are never logged.
"""

from __future__ import annotations

import contextlib
import http
import http.server
import socket
import threading
import time
from typing import Protocol

import structlog

from gitopsd import metrics, webhook

log = structlog.get_logger()

READ_TIMEOUT = 10.0  # seconds one read from a client may take
REQUEST_TIMEOUT = 15.0  # seconds a connection may stay open in all: whole requests, not single reads
MAX_CONNECTIONS = 64  # connections (handler threads) at once; at the cap the oldest is dropped
REAP_INTERVAL = 0.5
SLOT_WAIT = 2.0  # seconds the accept loop waits for a dropped connection's thread to end


class Backend(Protocol):
    def alive(self) -> bool: ...

    def readiness(self) -> tuple[bool, str]: ...

    def trigger(self, reason: str) -> bool: ...

    def branch(self) -> str | None: ...


class _Server(http.server.ThreadingHTTPServer):
    """One thread per connection, but at most ``MAX_CONNECTIONS`` of them, and each connection has
    ``REQUEST_TIMEOUT`` seconds in all (not per read) to be done. At the cap, the connection open
    the longest (a client that drips its request, or an idle keep-alive) is dropped for the new one:
    quick requests such as ``/healthz`` are answered under any number of slow clients."""

    daemon_threads = True
    request_queue_size = 128
    app: Server

    def __init__(self, address: tuple[str, int], app: Server) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self._open: dict[socket.socket, float] = {}  # connection -> when it was accepted
        self._open_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)  # one per running handler thread
        self._stopped = threading.Event()
        super().__init__(address, _Handler)
        threading.Thread(target=self._reap, name="gitopsd-http-reaper", daemon=True).start()

    # the ignore below: narrower than socketserver: this server only takes sockets
    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        # a slot is given back only when its handler thread has finished, so threads never outnumber
        # MAX_CONNECTIONS, not even for the moment a dropped connection's thread takes to wind down
        with self._open_lock:
            if len(self._open) >= MAX_CONNECTIONS:
                self._drop(min(self._open, key=self._open.__getitem__))
        while not self._slots.acquire(timeout=SLOT_WAIT):
            with self._open_lock:  # the dropped one has not ended in time: drop the next oldest
                if self._open:
                    self._drop(min(self._open, key=self._open.__getitem__))
        with self._open_lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    # the ignore below: narrower than socketserver: this server only takes sockets
    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    # the ignore below: narrower than socketserver: this server only takes sockets
    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def _drop(self, request: socket.socket) -> None:
        """End a connection from outside its thread: its blocked read returns, the thread ends."""
        self._open.pop(request, None)
        with contextlib.suppress(OSError):
            request.shutdown(socket.SHUT_RDWR)

    def _reap(self) -> None:
        while not self._stopped.wait(REAP_INTERVAL):
            cutoff = time.monotonic() - REQUEST_TIMEOUT
            with self._open_lock:
                for request in [r for r, opened in self._open.items() if opened < cutoff]:
                    self._drop(request)

    def server_close(self) -> None:
        self._stopped.set()
        super().server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT
    server_version = "gitopsd"
    sys_version = ""

    # --- routing --------------------------------------------------------------------------------
    def _route(self, method: str) -> None:
        try:
            self._dispatch(method)
        except ConnectionError:
            # the client went away (or its connection was dropped at the cap): nobody to answer
            self.close_connection = True
        except Exception as err:  # noqa: BLE001 - one bad request must not reach the server's stderr dump
            log.error("http handler failed", path=self.path.split("?", 1)[0], error=repr(err))
            with contextlib.suppress(OSError):
                self._answer(500, "internal error\n", close=True)

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        app = self.server.app
        if path in ("/healthz", "/readyz", "/metrics"):
            if method not in ("GET", "HEAD"):
                return self._answer(405, "use GET\n", allow="GET, HEAD")
            if path == "/healthz":
                alive = app.backend.alive()
                return self._answer(200 if alive else 503, "ok\n" if alive else "reconcile loop is not running\n")
            if path == "/readyz":
                ready, reason = app.backend.readiness()
                return self._answer(200 if ready else 503, reason + "\n")
            if app.metrics is None:
                return self._answer(404, "metrics are off\n")
            return self._answer(200, app.metrics.exposition(), content_type=metrics.CONTENT_TYPE)
        provider: webhook.Provider | None = None
        if path.startswith("/hooks/"):
            try:
                provider = webhook.Provider(path.removeprefix("/hooks/"))
            except ValueError:
                return self._answer(404, f"unknown webhook provider in {path}: use one of "
                                    f"{', '.join('/hooks/' + p for p in webhook.Provider)} or /hook\n")
        elif path != "/hook":
            return self._answer(404, "not found: /healthz, /readyz, /metrics, POST /hook, POST /hooks/<provider>\n")
        if method != "POST":
            return self._answer(405, "webhooks are POSTed\n", allow="POST")
        return self._hook(provider)

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    # --- webhook --------------------------------------------------------------------------------
    def _hook(self, provider: webhook.Provider | None) -> None:
        app = self.server.app
        if app.secret is None:
            return self._answer(404, "the webhook receiver is off: start gitopsd run with --webhook-secret-file\n")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return self._answer(411, "Content-Length required\n", close=True)
        try:
            length = int(length_text)
        except ValueError:
            return self._answer(400, "bad Content-Length\n", close=True)
        if length < 0:
            return self._answer(400, "bad Content-Length\n", close=True)
        if length > app.max_body:
            log.warning("webhook refused", status=413, length=length, limit=app.max_body)
            return self._answer(413, f"body of {length} bytes is over the {app.max_body} byte limit\n", close=True)
        try:
            body = self.rfile.read(length)
        except (TimeoutError, OSError):
            return self._answer(408, "request body not received in time\n", close=True)
        if len(body) != length:
            return self._answer(400, "body shorter than Content-Length\n", close=True)
        headers = webhook.lower_headers(dict(self.headers.items()))
        verdict = webhook.receive(headers, body, secret=app.secret, branch=app.backend.branch(), provider=provider)
        status, message = verdict.status, verdict.message
        delivery = webhook.delivery_id(verdict.provider, headers) if verdict.trigger and verdict.provider else None
        if delivery is not None and not app.deliveries.first(delivery):
            status, message = 200, f"delivery {delivery.partition(':')[2]} was already received: no second pass"
        elif verdict.trigger and not app.backend.trigger(f"webhook {verdict.provider}"):
            status, message = 503, "shutting down: push not taken, the next start reconciles it"
        log.info("webhook received", status=status, provider=str(verdict.provider or ""), hook_event=verdict.event,
                 ref=verdict.ref, outcome=message, peer=self.client_address[0])
        self._answer(status, message + "\n")

    # --- plumbing -------------------------------------------------------------------------------
    def _answer(self, status: int, body: str | bytes, *, content_type: str = "text/plain; charset=utf-8",
                allow: str | None = None, close: bool = False) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status, http.HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        log.debug("http request", line=format % args, peer=self.client_address[0])


class Server:
    """The HTTP endpoints, served by a background thread. ``port`` 0 picks a free port."""

    def __init__(self, host: str, port: int, backend: Backend, *, metrics: metrics.Metrics | None = None,
                 secret: bytes | None = None, max_body: int = webhook.MAX_BODY) -> None:
        self.backend = backend
        self.metrics = metrics
        self.secret = secret
        self.max_body = max_body
        self.deliveries = webhook.Deliveries()  # signed deliveries taken recently: a replay triggers nothing
        self._httpd = _Server((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="gitopsd-http", daemon=True)
        self._thread.start()
        log.info("http server listening", url=self.url, webhook=self.secret is not None)

    def stop(self) -> None:
        """Stop accepting connections; requests in flight finish on their own threads."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
