"""Real OCI registries for tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

Three flavours, each a process started once per test session on a free port, with filesystem
storage under a temp dir; tests get a fresh repository path each (``fresh_path``) so they never
see each other's content:
- ``plain_registry``: plain http, no auth;
- ``secure_registry``: TLS with a CA made here (``cryptography``) and htpasswd basic auth (bcrypt
  entry made by ``htpasswd -B`` from apache2-utils);
- ``token_registry``: plain http with bearer-token auth; the token service is a small stdlib HTTP
  server here issuing ES256 JWTs whose ``x5c`` certificate the registry trusts.
Plus ``status_server``: a stdlib HTTP server answering every request with one status (500s).

A missing binary fails the test run loudly; it never skips. Use with
``pytest_plugins = ["tests.registry_fixture"]`` in a test module or the root conftest.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import http.server
import ipaddress
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REGISTRY_BINARY = "docker-registry"  # Debian package docker-registry (distribution 2.8)
USERNAME = "gitopsd"
PASSWORD = "s3cret-pass"
SERVICE = "gitopsd-test-registry"
ISSUER = "gitopsd-test-token-issuer"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} not found on PATH: install the Debian package {package} "
                    f"(apt-get install -y {package}); these tests need the real tool", pytrace=False)
    return path


@dataclasses.dataclass
class RunningRegistry:
    host: str  # 127.0.0.1:PORT
    root: pathlib.Path  # filesystem storage root
    log: pathlib.Path
    process: subprocess.Popen[bytes]
    ca: pathlib.Path | None = None

    def blob_file(self, digest: str) -> pathlib.Path:
        hexdigest = digest.split(":", 1)[1]
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_registry(workdir: pathlib.Path, *, tls: tuple[pathlib.Path, pathlib.Path, pathlib.Path] | None = None,
                   htpasswd: pathlib.Path | None = None, token: dict[str, str] | None = None) -> RunningRegistry:
    """Start ``docker-registry serve`` with a generated config; return once ``/v2/`` answers."""
    binary = require(REGISTRY_BINARY, "docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    root = workdir / "storage"
    http_cfg: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex}
    if tls is not None:
        http_cfg["tls"] = {"certificate": str(tls[1]), "key": str(tls[2])}
    config: dict[str, object] = {
        "version": "0.1",
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": http_cfg,
        "health": {"storagedriver": {"enabled": False}},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "gitopsd-test", "path": str(htpasswd)}}
    if token is not None:
        config["auth"] = {"token": token}
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    log_path = workdir / "registry.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([binary, "serve", str(config_path)], stdout=log_file, stderr=subprocess.STDOUT,
                                   env=env)
    running = RunningRegistry(host=f"127.0.0.1:{port}", root=root, log=log_path, process=process,
                              ca=tls[0] if tls else None)
    scheme = "https" if tls else "http"
    context = ssl.create_default_context(cafile=str(tls[0])) if tls else None
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited with {process.returncode}:\n{log_path.read_text()[-3000:]}",
                        pytrace=False)
        try:
            with urllib.request.urlopen(f"{scheme}://{running.host}/v2/", timeout=1, context=context):
                return running
        except urllib.error.HTTPError as err:
            if err.code == 401:
                return running
        except OSError:
            pass
        if time.monotonic() > deadline:
            running.stop()
            pytest.fail(f"docker-registry did not answer on {running.host}:\n{log_path.read_text()[-3000:]}",
                        pytrace=False)
        time.sleep(0.05)


# certificates --------------------------------------------------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: pathlib.Path,
            name: str = "gitopsd test CA") -> tuple[pathlib.Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name.replace(' ', '-')}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(directory: pathlib.Path, ca_key: ec.EllipticCurvePrivateKey,
                     ca_cert: x509.Certificate) -> tuple[pathlib.Path, pathlib.Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def make_htpasswd(path: pathlib.Path, username: str, password: str) -> pathlib.Path:
    binary = require("htpasswd", "apache2-utils")
    # -B bcrypt (distribution accepts nothing else), -C 5 cheap cost, -i password on stdin.
    entry = subprocess.run([binary, "-niB", "-C", "5", username], input=password.encode(), capture_output=True,
                           check=True).stdout
    path.write_bytes(entry.strip() + b"\n")
    return path


# token service -------------------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Docker token service: Basic credentials in, an ES256 JWT for the requested scopes out."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.cert_path, self.key, self.cert = make_ca(directory, "gitopsd token signer")
        self.requests: list[dict[str, list[str]]] = []

    def token(self, scopes: list[str], subject: str) -> str:
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def serve(self) -> tuple[http.server.ThreadingHTTPServer, str]:
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                issuer.requests.append(query)
                expected = "Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": issuer.token(query.get("scope", []), USERNAME)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}/token"


# fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    running = start_registry(tmp_path_factory.mktemp("registry-plain"))
    yield running
    running.stop()


@dataclasses.dataclass
class SecureRegistry:
    registry: RunningRegistry
    ca: pathlib.Path
    username: str = USERNAME
    password: str = PASSWORD

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture(scope="session")
def secure_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRegistry]:
    workdir = tmp_path_factory.mktemp("registry-secure")
    ca_path, ca_key, ca_cert = make_ca(workdir)
    cert, key = make_server_cert(workdir, ca_key, ca_cert)
    htpasswd = make_htpasswd(workdir / "htpasswd", USERNAME, PASSWORD)
    running = start_registry(workdir, tls=(ca_path, cert, key), htpasswd=htpasswd)
    yield SecureRegistry(running, ca_path)
    running.stop()


@dataclasses.dataclass
class TokenRegistry:
    registry: RunningRegistry
    issuer: TokenIssuer

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    workdir = tmp_path_factory.mktemp("registry-token")
    issuer = TokenIssuer(workdir)
    server, realm = issuer.serve()
    running = start_registry(workdir, token={"realm": realm, "service": SERVICE, "issuer": ISSUER,
                                             "rootcertbundle": str(issuer.cert_path)})
    yield TokenRegistry(running, issuer)
    running.stop()
    server.shutdown()


@pytest.fixture
def fresh_path() -> str:
    """A repository path prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@dataclasses.dataclass
class StatusServer:
    host: str
    status: int
    requests: list[str]


@contextlib.contextmanager
def serve_status(status: int) -> Iterator[StatusServer]:
    """A server on loopback that answers every request with ``status``."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            body = json.dumps({"errors": [{"code": "UNKNOWN", "message": "injected failure"}]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = _answer  # noqa: N815 (stdlib names)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield StatusServer(f"127.0.0.1:{server.server_address[1]}", status, seen)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def status_server(request: pytest.FixtureRequest) -> Iterator[StatusServer]:
    """Answers every request with ``status`` (default 500; parametrize indirectly to change it)."""
    with serve_status(getattr(request, "param", 500)) as server:
        yield server
