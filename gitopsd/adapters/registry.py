"""The networked registry: pack artifacts pushed to an OCI distribution registry, byte for byte.

Neighbours: ``ocilayout`` is the embedded twin (same ``has``/``push`` contract, a folder instead of a
server) and ``fakes.MemoryRegistry`` the in-memory one; ``reconcile.publish`` calls ``push``;
"verify before apply" and ``gitopsd verify`` call ``verify``.

The contract is byte-exact digests: the ClusterPack records (and its signature covers)
``artifact.manifest_digest`` and the layer digests, so the registry must store exactly the bytes
``core.artifact`` built. oras-py's high-level ``push`` cannot do that: it builds its own manifest
from files on disk, and ``upload_manifest`` sends a dict through ``requests``' ``json=``, i.e.
re-serialized bytes with another digest. So this adapter keeps oras-py's ``Registry`` for its
``requests`` session (cookies ignored, as Harbor needs) and drives the distribution API itself on
that session: HEAD before every upload, blobs by POST + PUT, the manifest PUT with its own bytes.
Repository URLs are built here too, because ``oras.container.Container`` reads a path segment with
a dot (``acme.corp/packs``) as a registry host.

``do_request`` is replaced because, as installed (oras 0.2.x), it
- retries any failure five times sleeping 2+3**n seconds (3, 5, 11, 29, 83 s): a down registry
  would block a pass for over two minutes;
- sends requests without a timeout;
- keeps one bearer token for every repository and re-sends it unchanged after a 401, so a push to a
  second repository fails; and its token backend cannot answer a ``Basic`` challenge (htpasswd).
Here: connect timeout 3 s, two quick retries (0.2 s, 0.5 s) on connection errors and 500/502/503/504,
then ``TransientError(reason="RegistryUnavailable")``; once unreachable, the registry is not asked
again for ``cooldown`` seconds (or until ``flush``), so the other packs of a pass fail at once. Auth
answers the registry's ``WWW-Authenticate`` challenge: ``Basic`` gets the credentials, ``Bearer``
gets a token from the realm, cached per repository and renewed on the next 401 (expiry, wider scope).

Credentials come from a docker ``config.json`` (``auths.<host>.auth`` or ``username``/``password``)
or from two files; never from the command line, never in a message or a log line, and only sent to
the registry's own host (or its token realm). Credential helpers and identity tokens are not read;
``adapters.registryconfig`` parses the URL and reads the credentials.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import NoReturn

import oras.auth.utils
import oras.provider
import requests
import structlog
import urllib3.exceptions

from gitopsd import __version__, errors
from gitopsd.adapters import registryconfig
from gitopsd.core import artifact as artifact_core
from gitopsd.model import pack

log = structlog.get_logger()

MANIFEST_ACCEPT = ", ".join((
    artifact_core.MANIFEST_MEDIA_TYPE,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
RETRY_STATUSES = frozenset({500, 502, 503, 504})
UNAUTHORIZED = errors.UsageReason.REGISTRY_UNAUTHORIZED
UNAVAILABLE = errors.TransientReason.REGISTRY_UNAVAILABLE
TLS = errors.UsageReason.REGISTRY_TLS
_SSL_DETAIL = re.compile(r"\[SSL(?:: [A-Z_]+)?\] ([^(]+?)\s*\(")


def cluster_pack_digests(cp: pack.ClusterPack) -> dict[str, str]:
    """The layer digests a ClusterPack's spec records, by field name, for ``OciRegistry.verify``."""
    fields = {"rbacDigest": cp.rbac_digest, "clusterScopedDigest": cp.cluster_scoped_digest,
              "workloadDigest": cp.workload_digest}
    return {name: digest for name, digest in fields.items() if digest}


class _Client(oras.provider.Registry):
    """oras-py's registry session with a bounded, challenge-answering ``do_request``."""

    def __init__(self, owner: OciRegistry, *, insecure: bool, verify: bool | str) -> None:
        super().__init__(hostname=owner.host, insecure=insecure, tls_verify=verify)
        self.owner = owner
        self.session.headers["User-Agent"] = f"gitopsd/{__version__}"
        self.basic = False  # the registry challenged with Basic: send credentials up front
        self.tokens: dict[str, str] = {}  # repository name -> bearer token

    def do_request(self, url: str, method: str = "GET", data: dict | bytes | None = None,
                   headers: dict | None = None, json: dict | None = None, stream: bool = False) -> requests.Response:
        headers = dict(headers or {})
        own_host = urllib.parse.urlsplit(url).netloc == self.owner.host
        repository = _repository_of(url)
        sent = self._authorization(repository) if own_host else None
        if sent:
            headers["Authorization"] = sent
        response = self.owner._send(method, url, data=data, json=json, headers=headers, stream=stream)
        if response.status_code not in (401, 403) or not own_host:
            return response
        if not self._answer(response, repository, sent):
            return response
        headers["Authorization"] = self._authorization(repository) or ""
        response.close()
        return self.owner._send(method, url, data=data, json=json, headers=headers, stream=stream)

    def _authorization(self, repository: str) -> str | None:
        creds = self.owner.credentials
        if self.basic and creds is not None:
            return creds.basic()
        token = self.tokens.get(repository)
        return f"Bearer {token}" if token else None

    def _answer(self, response: requests.Response, repository: str, sent: str | None) -> bool:
        """Update what to send after a 401/403; ``False`` when a retry cannot help."""
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        creds = self.owner.credentials
        if scheme == "basic":
            if creds is None or (sent is not None and sent.startswith("Basic ")):
                return False
            self.basic = True
            return True
        if scheme == "bearer":
            params = oras.auth.utils.parse_auth_header(challenge)
            if not params.realm:
                return False
            self.tokens[repository] = self.owner._token(params.realm, params.service, params.scope)
            return True
        return False


def _repository_of(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    match = re.match(r"^/v2/(.+?)/(?:manifests|blobs|tags)/", path)
    return match.group(1) if match else ""


class OciRegistry:
    """``ports.Registry`` on an OCI distribution registry at ``HOST[:PORT]/PATH``.

    A pack's artifact goes to repository ``PATH/<repository>`` (``<repository>`` is the
    basePackName), tagged with ``artifact.tag``.
    """

    def __init__(self, url: str, *, ca: pathlib.Path | str | None = None, insecure: bool = False,
                 config: pathlib.Path | str | None = None, username_file: pathlib.Path | str | None = None,
                 password_file: pathlib.Path | str | None = None, connect_timeout: float = 3.0,
                 read_timeout: float = 30.0, retries: int = 2, backoff: tuple[float, ...] = (0.2, 0.5),
                 cooldown: float = 10.0, environ: Mapping[str, str] = os.environ) -> None:
        self.url = url
        self.host, self.hostname, self.path = registryconfig.parse_url(url)
        if insecure and not registryconfig.is_loopback(self.hostname):
            raise errors.UsageError(
                f"{errors.setting('registry_insecure')} is only allowed for a loopback registry (127.0.0.0/8, ::1, "
                f"localhost), not {self.hostname}: give the registry's CA with {errors.setting('registry_ca')} instead",
                setting="registry_insecure", reason=errors.UsageReason.REGISTRY_INSECURE_REFUSED,
            )
        if insecure and ca is not None:
            raise errors.UsageError(f"{errors.setting('registry_ca')} and {errors.setting('registry_insecure')} exclude "
                                    "each other: plain http has no TLS",
                                    setting="registry_ca", reason=errors.UsageReason.REGISTRY_CONFIG)
        verify: bool | str = True
        if ca is not None:
            if not pathlib.Path(ca).is_file():
                raise errors.UsageError(f"{errors.setting('registry_ca')} {ca}: no such file", setting="registry_ca",
                                        reason=TLS)
            verify = str(ca)
        self.ca = str(ca) if ca is not None else None
        self.verify_tls = verify
        self.insecure = insecure
        self.scheme = "http" if insecure else "https"
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.backoff = backoff
        self.cooldown = cooldown
        self._down_until = 0.0
        self._down_reason = ""
        self.credentials, self.searched = registryconfig.find_credentials(self.host, config, username_file, password_file,
                                                                          environ)
        self.client = _Client(self, insecure=insecure, verify=verify)
        self.session: requests.Session = self.client.session

    # ports.Registry -------------------------------------------------------------------------

    def has(self, repository: str, digest: str) -> bool:
        name = self._name(repository)
        response = self._request("HEAD", f"/v2/{name}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        self._fail(response, f"looking up manifest {digest} in {name}")

    def push(self, repository: str, art: pack.Artifact) -> bool:
        """Upload what is missing, then the manifest by tag; ``False`` when the manifest was there."""
        name = self._name(repository)
        if self.has(repository, art.manifest_digest):
            if self._tagged(name, art.tag) != art.manifest_digest:
                self._put_manifest(name, art)
                log.info("artifact tagged", repository=name, tag=art.tag, digest=art.manifest_digest)
            return False
        uploaded = 0
        for blob in art.blobs:
            if not self._blob_exists(name, blob.digest):
                self._upload_blob(name, blob)
                uploaded += 1
        self._put_manifest(name, art)
        log.debug("artifact uploaded", repository=name, tag=art.tag, digest=art.manifest_digest, blobs=uploaded)
        return True

    def flush(self) -> None:
        """End of a pass: forget that the registry was down, so the next pass asks again."""
        self._down_until = 0.0

    # reading back ---------------------------------------------------------------------------

    def pull(self, repository: str, digest: str) -> tuple[bytes, dict[str, bytes]]:
        """The manifest bytes and every blob it names (config and layers), as the registry serves them."""
        name = self._name(repository)
        response = self._request("GET", f"/v2/{name}/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code != 200:
            self._fail(response, f"fetching manifest {digest} from {name}")
        manifest = response.content
        blobs: dict[str, bytes] = {}
        for descriptor in _descriptors(manifest, f"{self.host}/{name}@{digest}"):
            blob_digest = str(descriptor["digest"])
            if blob_digest in blobs:
                continue
            got = self._request("GET", f"/v2/{name}/blobs/{blob_digest}")
            if got.status_code != 200:
                self._fail(got, f"fetching blob {blob_digest} from {name}")
            blobs[blob_digest] = got.content
        return manifest, blobs

    def verify(self, repository: str, manifest_digest: str, layers: Mapping[str, str] | None = None) -> list[str]:
        """Problems with the artifact as served (empty when sound): every digest recomputed from bytes.

        ``layers`` maps a field name to a digest the artifact must have as a layer (see
        ``cluster_pack_digests``). A missing or unreadable artifact is a problem; a registry that
        cannot be reached or refuses the credentials raises, since nothing could be checked.
        """
        ref = f"{self.host}/{self._name(repository)}@{manifest_digest}"
        try:
            manifest, blobs = self.pull(repository, manifest_digest)
            descriptors = _descriptors(manifest, ref)
        except errors.StalledError as err:
            return [str(err)]
        problems = []
        actual = artifact_core.digest_of(manifest)
        if actual != manifest_digest:
            problems.append(f"{ref}: the manifest served has digest {actual}")
        for descriptor in descriptors:
            digest, data = str(descriptor["digest"]), blobs[str(descriptor["digest"])]
            if artifact_core.digest_of(data) != digest:
                problems.append(f"{ref}: blob {digest} served with digest {artifact_core.digest_of(data)}")
            elif len(data) != descriptor.get("size"):
                problems.append(f"{ref}: blob {digest} is {len(data)} bytes, the manifest says {descriptor.get('size')}")
        layer_digests = {str(d["digest"]) for d in descriptors[1:]}
        for field, digest in sorted((layers or {}).items()):
            if digest not in layer_digests:
                problems.append(f"{ref}: {field} {digest} is not a layer of this manifest")
        return problems

    # distribution API -----------------------------------------------------------------------

    def _name(self, repository: str) -> str:
        name = f"{self.path}/{repository}" if self.path else repository
        if not all(registryconfig.COMPONENT.match(c) for c in repository.split("/")) or len(name) > 255:
            raise errors.StalledError(
                f"{repository!r} is not a valid OCI repository name (lowercase letters, digits, '.', '_', '-')",
                reason="InvalidRepositoryName",
            )
        return name

    def _tagged(self, name: str, tag: str) -> str | None:
        response = self._request("HEAD", f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            self._fail(response, f"looking up tag {tag} in {name}")
        return response.headers.get("Docker-Content-Digest")

    def _blob_exists(self, name: str, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{name}/blobs/{digest}")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        self._fail(response, f"looking up blob {digest} in {name}")

    def _upload_blob(self, name: str, blob: pack.Blob) -> None:
        started = self._request("POST", f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})
        location = started.headers.get("Location")
        if started.status_code != 202 or not location:
            self._fail(started, f"starting the upload of blob {blob.digest} to {name}", missing="RepositoryNotFound")
        url = urllib.parse.urljoin(self._url(f"/v2/{name}/blobs/uploads/"), location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": blob.digest})
        done = self._request("PUT", url, data=blob.data, headers={"Content-Type": "application/octet-stream"})
        if done.status_code != 201:
            self._fail(done, f"uploading blob {blob.digest} to {name}")
        self._check_digest(done, blob.digest, f"blob {blob.digest} in {name}")

    def _put_manifest(self, name: str, art: pack.Artifact) -> None:
        media_type = _media_type(art.manifest)
        response = self._request("PUT", f"/v2/{name}/manifests/{art.tag}", data=art.manifest,
                                 headers={"Content-Type": media_type})
        if response.status_code != 201:
            self._fail(response, f"uploading manifest {art.manifest_digest} to {name}:{art.tag}")
        self._check_digest(response, art.manifest_digest, f"manifest {name}:{art.tag}")

    def _check_digest(self, response: requests.Response, expected: str, what: str) -> None:
        served = response.headers.get("Docker-Content-Digest")
        if served and served != expected:
            raise errors.StalledError(f"registry {self.host} stored {what} as {served}, not {expected}: it rewrote "
                                      "the bytes; use a registry that stores content as given", reason="RegistryDigestMismatch")

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def _request(self, method: str, path_or_url: str, *, data: bytes | None = None,
                 headers: dict[str, str] | None = None) -> requests.Response:
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)
        return self.client.do_request(url, method, data=data, headers=headers)

    def _token(self, realm: str, service: str | None, scope: str | None) -> str:
        """A bearer token from the registry's token service (the WWW-Authenticate realm)."""
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme != "https" and not (parts.scheme == "http" and registryconfig.is_loopback(parts.hostname or "")):
            raise errors.ConfigError(f"registry {self.host} names token service {realm} over plain http; "
                                     "refusing to send credentials there", reason="RegistryTLS")
        params: list[tuple[str, str]] = [("service", service)] if service else []
        params += [("scope", s) for s in (scope or "").split() if s]
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic()
        response = self._send("GET", realm, params=params, headers=headers)
        if response.status_code in (401, 403):
            raise errors.ConfigError(self._unauthorized_message(response.status_code, f"token service {parts.netloc}"),
                                     reason=UNAUTHORIZED)
        if response.status_code != 200:
            self._fail(response, f"getting a token from {parts.netloc}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise errors.TransientError(f"token service {parts.netloc} of registry {self.host} answered without a token",
                                        reason=UNAVAILABLE)
        return token

    def _send(self, method: str, url: str, **kwargs: object) -> requests.Response:
        """One HTTP exchange with timeouts and at most ``retries`` quick retries; no auth logic here."""
        now = time.monotonic()
        if now < self._down_until:
            raise errors.TransientError(f"{self._down_reason}; not asking again for {self._down_until - now:.0f}s",
                                        reason=UNAVAILABLE)
        started = now
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.session.request(method, url, timeout=self.timeout, verify=self.verify_tls,
                                                **kwargs)  # type: ignore[arg-type]  # kwargs are requests' own keyword arguments
            except requests.exceptions.SSLError as err:
                raise errors.ConfigError(self._tls_message(err), reason=TLS) from err
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
                if last:
                    netloc = urllib.parse.urlsplit(url).netloc
                    who = f"registry {netloc}" if netloc == self.host else f"token service {netloc} of registry {self.host}"
                    reason = f"{who} is unreachable: {_network_detail(err, self.timeout)} " \
                             f"({attempt + 1} attempts in {time.monotonic() - started:.1f}s)"
                    self._down_until = time.monotonic() + self.cooldown
                    self._down_reason = reason
                    raise errors.TransientError(reason, reason=UNAVAILABLE) from err
            else:
                log.debug("registry request", method=method, path=urllib.parse.urlsplit(url).path,
                          status=response.status_code)
                if response.status_code not in RETRY_STATUSES or last:
                    return response
                response.close()
            time.sleep(self.backoff[min(attempt, len(self.backoff) - 1)] if self.backoff else 0)
        raise AssertionError("unreachable")

    # errors ---------------------------------------------------------------------------------

    def _fail(self, response: requests.Response, what: str, *, missing: str = "ArtifactNotFound") -> NoReturn:
        status = response.status_code
        code, detail = _error_of(response)
        if status in (401, 403):
            raise errors.ConfigError(f"{what}: " + self._unauthorized_message(status, f"registry {self.host}"),
                                     reason=UNAUTHORIZED)
        if status == 404:
            if code == "NAME_UNKNOWN" or missing == "RepositoryNotFound":
                raise errors.StalledError(f"{what}: repository not found on registry {self.host} and not created "
                                          f"by it; create it there or change {errors.setting('registry')}",
                                          reason=errors.StalledReason.REPOSITORY_NOT_FOUND)
            raise errors.StalledError(f"{what}: not found on registry {self.host} ({code or '404'})",
                                      reason="ArtifactNotFound")
        if status == 400 and self.insecure and self._speaks_https(detail):
            raise errors.UsageError(f"registry {self.host} speaks https: drop {errors.setting('registry_insecure')} "
                                    f"(and give {errors.setting('registry_ca')} if its CA is private)",
                                    setting="registry_insecure", reason=TLS)
        if status == 429 or status >= 500:
            raise errors.TransientError(f"{what}: registry {self.host} answered {status} {response.reason}"
                                        + (f" ({code}: {detail})" if code else ""), reason=UNAVAILABLE)
        raise errors.StalledError(f"{what}: registry {self.host} refused it: {status} {code or response.reason}"
                                  + (f": {detail}" if detail else ""), reason="RegistryRejected")

    def _speaks_https(self, detail: str) -> bool:
        """Whether a 400 is Go's answer to plain http on a TLS port (a HEAD shows no body: ask again)."""
        if not detail:
            try:
                detail = self.session.get(self._url("/v2/"), timeout=self.timeout).text
            except requests.exceptions.RequestException:
                return False
        return "HTTP request to an HTTPS server" in detail

    def _unauthorized_message(self, status: int, who: str) -> str:
        verb = "refused the credentials from" if status == 401 else "denied access with the credentials from"
        if self.credentials is None:
            found = f"{who} requires credentials and none were found (looked in {self.searched})"
        else:
            found = f"{who} {verb} {self.credentials.origin} ({status})"
        return f"{found}: check {errors.setting('registry_config')} / credentials for {self.host}"

    def _tls_message(self, err: Exception) -> str:
        match = _SSL_DETAIL.search(str(err))
        detail = match.group(1).strip() if match else "handshake failed"
        if self.ca:
            hint = f"the CA in {errors.setting('registry_ca')} {self.ca} does not verify it"
        else:
            hint = f"if the registry's certificate comes from a private CA, give it with {errors.setting('registry_ca')} PATH"
        if any(isinstance(e, ssl.SSLError) and e.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE")
               for e in _causes(err)):
            hint = f"the registry may speak plain http ({errors.setting('registry_insecure')} is allowed on loopback only)"
        return f"TLS with registry {self.host} failed ({detail}): {hint}"


def _descriptors(manifest: bytes, ref: str) -> list[dict[str, object]]:
    """Config then layers of an image manifest."""
    try:
        doc = json.loads(manifest)
        found = [doc["config"], *doc["layers"]]
        if all(isinstance(d, dict) and isinstance(d.get("digest"), str) for d in found):
            return found
    except (ValueError, KeyError, TypeError):
        pass
    raise errors.StalledError(f"{ref}: not an image manifest with config and layers", reason="ArtifactCorrupt")


def _media_type(manifest: bytes) -> str:
    try:
        value = json.loads(manifest).get("mediaType")
    except (ValueError, AttributeError):
        value = None
    return value if isinstance(value, str) and value else artifact_core.MANIFEST_MEDIA_TYPE


def _error_of(response: requests.Response) -> tuple[str, str]:
    """The first OCI error ``(code, message)`` of a response body, or ``("", first line of text)``."""
    try:
        first = response.json()["errors"][0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        text = (response.text or "").strip().splitlines()
        return "", text[0][:200] if text else ""


def _network_detail(err: Exception, timeout: tuple[float, float]) -> str:
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return f"connect timed out after {timeout[0]:g}s"
    if isinstance(err, requests.exceptions.ReadTimeout):
        return f"no answer within {timeout[1]:g}s"
    found = set(_causes(err))
    if any(isinstance(e, ConnectionRefusedError) for e in found):
        return "connection refused"
    if any(isinstance(e, (socket.gaierror, urllib3.exceptions.NameResolutionError)) for e in found):
        return "host name not resolved"
    if any(isinstance(e, (ConnectionResetError, http.client.RemoteDisconnected)) for e in found):
        return "connection reset"
    return "connection failed"


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it wraps (requests wraps urllib3, which wraps the socket's), by type
    rather than by message."""
    stack, seen = [err], set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        nested = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        stack.extend(n for n in nested if isinstance(n, BaseException))
