"""HTTP: routes kube-apiserver URLs to ``operations``, streams watches, records each request.

Paths follow the API server's layout (``/api/v1/namespaces/<ns>/<plural>/<name>/<sub>``,
``/apis/<group>/<version>/...``, the legacy ``/watch/`` prefix), plus discovery, ``/version``,
health endpoints, and the test-control endpoints under ``/__emulator/``. Responses are JSON (the
emulator never speaks protobuf; clients that ask for it also accept JSON). Watches are chunked
newline-delimited JSON. Faults are decided here, before the request reaches ``operations``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gitopsd.testing.kubeapi import discovery, errors, faults, openapi, tables
from gitopsd.testing.kubeapi.operations import APPLY, Api, Request
from gitopsd.testing.kubeapi.requestlog import RequestLog, RequestRecord
from gitopsd.testing.kubeapi.resources import Registry, ResourceType

log = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Context:
    """What the handler serves from; owned by the ``Emulator``."""

    api: Api
    registry: Registry
    faults: faults.Faults
    log: RequestLog
    clock: Callable[[], datetime]
    compact: Callable[[int | None], None]


class EmulatorServer(ThreadingHTTPServer):
    """A threading HTTP server that can close its open (keep-alive, watch) connections on stop."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: Context) -> None:
        self.context = context
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._watches = 0
        self._watches_done = threading.Condition()
        super().__init__(address, Handler)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Count a watch stream while it is being served."""
        with self._watches_done:
            self._watches += 1
        try:
            yield
        finally:
            with self._watches_done:
                self._watches -= 1
                self._watches_done.notify_all()

    def wait_for_watches(self, timeout: float) -> None:
        """Let watch streams that were told to stop end cleanly (final chunk) before closing."""
        with self._watches_done:
            self._watches_done.wait_for(lambda: self._watches == 0, timeout)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


_NOT_FOUND = errors.ApiError(404, "NotFound", "the server could not find the requested resource")


@dataclass(frozen=True, slots=True)
class _Target:
    rt: ResourceType
    namespace: str
    name: str
    subresource: str
    watch_path: bool


def _verb(method: str, target: _Target, params: dict[str, str], content_type: str) -> str:
    watching = target.watch_path or params.get("watch", "").lower() in ("true", "1")
    match method:
        case "GET":
            if watching:
                return "watch"
            return "get" if target.name else "list"
        case "POST":
            return "create"
        case "PUT":
            return "update"
        case "PATCH":
            return "apply" if content_type == APPLY else "patch"
        case "DELETE":
            return "delete" if target.name else "deletecollection"
    raise errors.method_not_allowed()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY every keep-alive request
    # waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing -------------------------------------------------------------------------

    @property
    def _ctx(self) -> Context:
        return self.server.context

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        code: int,
        body: Any,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: errors.ApiError) -> None:
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        self._send(error.code, error.status(), headers=headers)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _peer_closed(self) -> bool:
        try:
            poller = select.poll()  # not select.select: it fails for descriptors >= 1024
            poller.register(self.connection, select.POLLIN | select.POLLHUP)
            readable = poller.poll(0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- dispatch -------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        params = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
        body = self._read_body()
        if url.path.startswith("/__emulator"):
            self._control(method, url.path, body)
            return
        self._ctx.api.finalize_namespaces()
        segments = [s for s in url.path.split("/") if s]
        base = {
            "method": method,
            "path": url.path,
            "query": url.query,
            "user_agent": self.headers.get("User-Agent", ""),
        }
        if self._is_nonresource(segments):
            self._nonresource(method, segments, base)
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        record: dict[str, Any] = {
            "verb": method.lower(),
            "resource": "",
            "namespace": "",
            "name": "",
            "content_type": content_type,
            **base,
        }
        headers: dict[str, str] = {}
        try:
            target = self._route(segments)
            verb = _verb(method, target, params, content_type)
            resource = f"{target.rt.plural}/{target.subresource}" if target.subresource else target.rt.plural
            record.update(
                verb=verb,
                resource=resource,
                namespace=target.namespace,
                name=target.name,
                group=target.rt.group,
                version=target.rt.version,
                field_manager=params.get("fieldManager", ""),
                dry_run=params.get("dryRun") == "All",
            )
            decision = self._ctx.faults.decide(verb, resource, target.namespace, target.name)
            if decision.delay:
                time.sleep(decision.delay)
            if decision.effect is not None:
                record["fault"] = type(decision.effect).__name__
            if isinstance(decision.effect, faults.Fail):
                raise decision.effect.error(target.rt.group, target.rt.plural, target.name)
            if body and "protobuf" in content_type:
                raise errors.unsupported_media_type(content_type, ["application/json", "application/yaml"])
            if target.name and verb == "watch":
                params["fieldSelector"] = ",".join(
                    filter(None, [params.get("fieldSelector"), f"metadata.name={target.name}"])
                )
            request = Request(
                verb=verb,
                rt=target.rt,
                namespace=target.namespace,
                name=target.name if verb != "watch" else "",
                subresource=target.subresource,
                params=params,
                body=body,
                content_type=content_type,
                user_agent=base["user_agent"],
            )
            if verb == "watch":
                self._ctx.log.add(RequestRecord(**record, code=200))
                with self.server.watching():
                    self._watch(request, decision.effect)
                return
            code, response = self._serve(request)
            response = self._render(target.rt, verb, response)
            if request.warnings:
                headers["Warning"] = ", ".join(f"299 - {json.dumps(w)}" for w in request.warnings)
        except errors.ApiError as error:
            code, response = error.code, error.status()
            if error.retry_after:
                headers["Retry-After"] = str(error.retry_after)
        except Exception as error:  # a bug in the emulator: answer like a server would, and log it
            log.exception("emulator failed to serve %s %s", method, self.path)
            code, response = 500, errors.internal(f"emulator error: {error!r}").status()
        # Logged before the response goes out, so a client never sees an answer the log lacks.
        self._ctx.log.add(RequestRecord(**record, code=code))
        self._send(code, response, headers=headers)

    def _serve(self, request: Request) -> tuple[int, JSON]:
        api = self._ctx.api
        operation = {
            "get": api.get,
            "list": api.list_objects,
            "create": api.create,
            "update": api.update,
            "patch": api.patch,
            "apply": api.patch,
            "delete": api.delete,
            "deletecollection": api.delete_collection,
        }[request.verb]
        return operation(request)

    def _render(self, rt: ResourceType, verb: str, body: JSON) -> JSON:
        if verb not in ("get", "list"):
            return body
        form = tables.wanted_form(self.headers.get("Accept", ""))
        if form == "Table":
            include = parse_qs(urlsplit(self.path).query).get("includeObject", ["Metadata"])[-1]
            return tables.table(rt, body, include, self._ctx.clock())
        if form == "PartialObjectMetadata":
            return tables.partial_metadata(body)
        return body

    def _route(self, segments: list[str]) -> _Target:
        """The resource a path names; raises 404 for anything not served."""
        registry = self._ctx.registry
        if segments[0] == "api":
            group, version, rest = "", segments[1], segments[2:]
        else:
            group, version, rest = segments[1], segments[2], segments[3:]
        watch_path = bool(rest) and rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            nested = registry.resolve(group, version, rest[2])
            if nested is not None and nested.namespaced:
                namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _NOT_FOUND
        rt = registry.resolve(group, version, rest[0])
        if rt is None:
            raise _NOT_FOUND
        name = rest[1] if len(rest) > 1 else ""
        subresource = rest[2] if len(rest) > 2 else ""
        if subresource and subresource not in rt.subresources:
            raise _NOT_FOUND
        if rt.namespaced and name and not namespace:
            raise _NOT_FOUND
        return _Target(rt, namespace, name, subresource, watch_path)

    # -- non-resource paths ---------------------------------------------------------------

    @staticmethod
    def _is_nonresource(segments: list[str]) -> bool:
        if not segments or segments[0] not in ("api", "apis"):
            return True
        return len(segments) <= (2 if segments[0] == "api" else 3)

    def _nonresource(self, method: str, segments: list[str], base: dict[str, Any]) -> None:
        document = self._document(segments) if method == "GET" else None
        body: JSON | str
        content_type = "application/json"
        if method != "GET":
            code, body = 405, errors.method_not_allowed().status()
        elif document is None:
            code, body = 404, _NOT_FOUND.status()
        else:
            code, body = 200, document
            if segments == ["openapi", "v2"]:
                content_type = openapi.V2_PROTOBUF
            elif isinstance(document, str):
                content_type = "text/plain; charset=utf-8"
        self._ctx.log.add(
            RequestRecord(verb=method.lower(), resource="", namespace="", name="", code=code, **base)
        )
        self._send(code, body, content_type=content_type)

    def _document(self, segments: list[str]) -> JSON | str | None:
        registry = self._ctx.registry
        match segments:
            case ["api"]:
                host, port = self.server.server_address[:2]
                host = host.decode() if isinstance(host, bytes) else host
                return discovery.api_versions(f"{host}:{port}")
            case ["api", version]:
                return discovery.resource_list(registry, "", version)
            case ["apis"]:
                return discovery.api_group_list(registry)
            case ["apis", group]:
                return discovery.api_group(registry, group)
            case ["apis", group, version]:
                return discovery.resource_list(registry, group, version)
            case ["version"]:
                return dict(discovery.KUBERNETES_VERSION)
            case ["openapi", "v2"]:
                return ""  # an empty protobuf message: a valid openapi_v2.Document with no schemas
            case ["openapi", "v3"]:
                return openapi.index(registry)
            case ["openapi", "v3", "api", version]:
                return openapi.document(registry, "", version)
            case ["openapi", "v3", "apis", group, version]:
                return openapi.document(registry, group, version)
            case ["healthz"] | ["livez"] | ["readyz"]:
                return "ok"
        return None

    # -- watch ----------------------------------------------------------------------------

    def _watch(self, request: Request, effect: faults.Effect | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.close_connection = True
        events = self._ctx.api.watch(request)  # a generator: closed below to release its cursor
        as_table = tables.wanted_form(self.headers.get("Accept", "")) == "Table"
        include = request.param("includeObject", "Metadata")
        limit = effect.after_events if isinstance(effect, faults.DropWatch) else None
        sent = 0
        try:
            if isinstance(effect, faults.WatchGone):
                gone = {"type": "ERROR", "object": errors.expired(effect.message).status()}
                self._chunk(json.dumps(gone).encode() + b"\n")
            elif limit != 0:
                for event in events:
                    if event is None:
                        if self._peer_closed():
                            return
                        continue
                    if as_table and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        event = {
                            "type": event["type"],
                            "object": tables.table(
                                request.rt, event["object"], include, self._ctx.clock(), columns=sent == 0
                            ),
                        }
                    self._chunk(json.dumps(event, separators=(",", ":")).encode() + b"\n")
                    sent += 1
                    if limit is not None and sent >= limit:
                        break
            if isinstance(effect, faults.DropWatch) and effect.abrupt:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            return  # the client went away
        finally:
            events.close()

    # -- test control ---------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> None:
        ctx = self._ctx
        try:
            spec = json.loads(body or b"{}")
            match (method, path.rstrip("/")):
                case ("GET", "/__emulator/requests"):
                    self._send(200, ctx.log.to_json())
                case ("POST", "/__emulator/reset"):
                    ctx.log.reset()
                    self._send(200, {"status": "ok"})
                case ("GET", "/__emulator/faults"):
                    self._send(200, {"faults": [r.to_json() for r in ctx.faults.rules()]})
                case ("POST", "/__emulator/faults"):
                    self._send(201, ctx.faults.add_json(spec).to_json())
                case ("DELETE", "/__emulator/faults"):
                    ctx.faults.clear()
                    self._send(200, {"status": "ok"})
                case ("DELETE", other) if other.startswith("/__emulator/faults/"):
                    ctx.faults.remove(int(other.rsplit("/", 1)[1]))
                    self._send(200, {"status": "ok"})
                case ("POST", "/__emulator/compact"):
                    ctx.compact(spec.get("resourceVersion"))
                    self._send(200, {"status": "ok"})
                case _:
                    self._send_error(_NOT_FOUND)
        except (ValueError, TypeError) as error:
            self._send_error(errors.bad_request(str(error)))
