"""The write path's HTTP client: one keep-alive HTTP/1.1 connection per thread to the API server.

``connection.Requests.call`` (every write and read of ``writes`` and ``events``) sends its requests
here rather than through urllib3's pool: a request is one ``sendall`` of the head and body, built
as bytes, and the answer one read of its head (status line and headers, of which only the framing
ones are looked at: ``Content-Length`` or chunked ``Transfer-Encoding``, and ``Connection``) and
its body. That is
where a pass of 10,000 writes spent most of gitopsd's CPU per request (bench/README.md).

The TLS settings are the API client's (CA file or data, client certificate and key, server name,
verification on or off); a connection opened again resumes the TLS session of the last one. A
connection the server closed while it was idle is noticed before it is used (it reads as ready) and
replaced; a request whose reused connection fails before any byte of an answer arrived is sent
once more on a new connection (the server closed it while the request was on its way: it was not
processed). Every failure is an ``OSError`` (``connection.translate`` makes it
``errors.ClusterUnavailable``). ``for_configuration`` returns None where this client does not
apply (a proxy, custom socket options, a pinned host name to assert): ``Requests`` keeps the API
client's pool there. Watches and paged lists keep the generated client (``cache``).
"""

from __future__ import annotations

import dataclasses
import io
import re
import select
import socket
import ssl
import threading
from typing import Any, cast
from urllib.parse import urlsplit

MAX_HEAD = 65536  # bytes of status line and headers accepted
READ_BUFFER = 65536  # an answer of a write (the object with its managedFields) in one or two reads


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.1 as expected (or it closed the connection mid-answer)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    head: bytes  # status line and headers, as received
    body: bytes

    @property
    def headers(self) -> dict[str, str]:
        """The headers, names in lower case (parsed when asked: the write path reads only the framing ones)."""
        lines = self.head.decode("latin-1").splitlines()[1:]
        return {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines) if name}


_FRAMING = {name: re.compile(rb"\n" + name + rb"[ \t]*:[ \t]*([^\r\n]*)")
            for name in (b"content-length", b"transfer-encoding", b"connection")}


def _framing(head: bytes, name: bytes) -> bytes:
    """One framing header's value, lower case (b"" when absent), found in the lower-cased head."""
    found = _FRAMING[name].search(head)
    return found.group(1).strip() if found else b""


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = cast(io.BufferedReader, sock.makefile("rb", buffering=READ_BUFFER))

    def close(self) -> None:
        for closing in (self.reader, self.sock):
            try:
                closing.close()
            except OSError:
                pass

    def idle_but_readable(self) -> bool:
        """An idle keep-alive connection with something to read was closed (or spoiled) by the server."""
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(ready)


class Transport:
    """Requests to one API server, each thread on its own keep-alive connection."""

    def __init__(self, scheme: str, host: str, port: int, *, timeout: float, context: ssl.SSLContext | None,
                 server_hostname: str | None) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.timeout = timeout
        self.context = context
        self.server_hostname = server_hostname or host
        default = 443 if scheme == "https" else 80
        name = f"[{host}]" if ":" in host else host
        self._host_header = (f"Host: {name}" + (f":{port}" if port != default else "") + "\r\n").encode("ascii")
        self._local = threading.local()
        self._session: ssl.SSLSession | None = None
        self._all: list[_Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def for_configuration(cls, configuration: Any, *, timeout: float) -> Transport | None:
        """A transport with the TLS settings of a ``kubernetes.client.Configuration``; None when its
        settings need urllib3 (a proxy, socket options, a host name to assert other than the server's)."""
        if configuration.proxy or configuration.socket_options is not None:
            return None
        if configuration.assert_hostname not in (None, True, False):
            return None
        url = urlsplit(configuration.host)
        if url.scheme not in ("http", "https") or not url.hostname:
            return None
        context = None
        if url.scheme == "https":
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None,
                                                 cadata=configuration.ca_cert_data or None)
            if not configuration.verify_ssl:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif configuration.assert_hostname is False:
                context.check_hostname = False
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
        return cls(url.scheme, url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout=timeout,
                   context=context, server_hostname=configuration.tls_server_name or None)

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    # -- one request ------------------------------------------------------------------------

    def request(self, method: str, target: str, headers: bytes, body: bytes | None) -> Response:
        """``method`` on ``target`` (path and query) with extra ``headers`` (``Name: value\\r\\n`` lines)."""
        head = b"".join((method.encode("ascii"), b" ", target.encode("ascii"), b" HTTP/1.1\r\n", self._host_header, headers,
                         b"Content-Length: %d\r\n\r\n" % len(body) if body is not None else b"\r\n"))
        data = head + body if body is not None else head
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.idle_but_readable():
            self._drop(conn)
            conn = None
        while True:
            reused = conn is not None
            if conn is None:
                conn = self._open()
            answered = False
            try:
                conn.sock.sendall(data)
                head = self._head(conn)
                if not head:
                    raise ProtocolError("the API server closed the connection without an answer")
                answered = True
                response, keep = self._read(conn, method, head)
            except (OSError, ValueError) as err:
                self._drop(conn)
                if reused and not answered:
                    conn = None
                    continue  # closed by the server while idle: the request never got there
                if isinstance(err, OSError):
                    raise
                raise ProtocolError(f"unreadable answer from the API server: {err}") from err
            if self.context is not None and self._session is None:
                self._session = getattr(conn.sock, "session", None)  # TLS 1.3: the ticket came with the answer
            if not keep:
                self._drop(conn)
            return response

    @staticmethod
    def _head(conn: _Connection) -> bytes:
        """The status line and headers of an answer, up to the blank line; b"" when the connection
        ended before any of it. Nearly always one read of what is buffered already."""
        buffered = conn.reader.peek(1)
        if not buffered:
            return b""
        end = buffered.find(b"\r\n\r\n")
        if end >= 0:
            return conn.reader.read(end + 4)
        lines, size = [], 0  # a head split across reads
        while True:
            line = conn.reader.readline(MAX_HEAD)
            size += len(line)
            if not line or size > MAX_HEAD:
                raise ProtocolError("the API server's answer ended within its headers")
            lines.append(line)
            if line in (b"\r\n", b"\n"):
                return b"".join(lines)

    def _read(self, conn: _Connection, method: str, head: bytes) -> tuple[Response, bool]:
        status_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"not an HTTP/1.1 answer: {status_line[:80]!r}")
        status = int(code)
        lower = head.lower()
        keep = version == b"HTTP/1.1" and _framing(lower, b"connection") != b"close"
        length = _framing(lower, b"content-length")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif _framing(lower, b"transfer-encoding") == b"chunked":
            body = self._chunked(conn)
        elif length:
            expected = int(length)
            body = conn.reader.read(expected)
            if len(body) != expected:
                raise ProtocolError(f"the API server's answer ended after {len(body)} of {expected} bytes")
        else:
            body, keep = conn.reader.read(), False
        return Response(status, reason.decode("latin-1"), head, body), keep

    @staticmethod
    def _chunked(conn: _Connection) -> bytes:
        parts: list[bytes] = []
        while True:
            line = conn.reader.readline(MAX_HEAD)
            if not line:
                raise ProtocolError("the API server's answer ended within a chunk")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while conn.reader.readline(MAX_HEAD) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            chunk = conn.reader.read(size)
            if len(chunk) != size:
                raise ProtocolError("the API server's answer ended within a chunk")
            parts.append(chunk)
            conn.reader.readline(MAX_HEAD)

    # -- connections ------------------------------------------------------------------------

    def _open(self) -> _Connection:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.server_hostname, session=self._session)
        except BaseException:
            sock.close()
            raise
        conn = _Connection(sock)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
