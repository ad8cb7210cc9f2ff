"""registry: pack artifacts pushed to a real OCI registry (Debian's docker-registry) and read back.

The registries come from ``registry_fixture``: plain http, TLS + htpasswd basic auth, and bearer
tokens from a token service. What the registry serves is read back with plain ``requests`` too, so
byte-for-byte checks do not depend on the adapter's own reading code.
"""

from __future__ import annotations

import base64
import json
import pathlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import requests
import structlog

from gitopsd import errors
from gitopsd.adapters import registry, registryconfig
from gitopsd.core import artifact as artifact_core
from gitopsd.core import compile as compile_core
from gitopsd.model import pack, spec
from tests import clitext, registry_fixture

pytestmark = pytest.mark.slow

PACKS = {
    "rbac-and-workload": """
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: apps}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: web, namespace: apps}
rules: [{apiGroups: [""], resources: [configmaps], verbs: [get]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "nginx:1.27"}]}
""",
    "three-layers": """
apiVersion: v1
kind: Namespace
metadata: {name: platform}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules: [{apiGroups: [""], resources: [pods], verbs: [list]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: platform}
data: {level: info}
""",
    "workload-only-empty-rbac-layer": """
apiVersion: v1
kind: ConfigMap
metadata: {name: only, namespace: apps}
data: {a: "1"}
""",
    "non-ascii": """
apiVersion: v1
kind: ConfigMap
metadata: {name: greeting, namespace: apps}
data: {text: "héllo — ✓ 日本"}
""",
}


def compile_yaml(name: str, text: str, version: str = "1.0.0") -> pack.CompiledPack:
    build = spec.PackBuild(
        path=f"packs/{name}/packbuild.yaml", name=name, version=version, base_pack_name=name,
        targets=(spec.ClusterTarget(name="dev"),), category=spec.Category.RAW,
        source=spec.RawSource(path=f"packs/{name}/manifests"),
    )
    inputs = compile_core.Inputs(namespace="seam-system", registry="registry.test/packs", target_clusters=("dev",),
                                 revision="main@sha1:" + "1" * 40, commit_time="2026-01-01T00:00:00Z",
                                 tree_id="sha256:" + "2" * 64, compiler="gitopsd/test")
    return compile_core.compile_pack(build, (("manifests/all.yaml", text.encode()),), renderers=(), chart=None,
                                     inputs=inputs)


def artifact_of(compiled: pack.CompiledPack) -> pack.Artifact:
    assert compiled.artifact is not None
    return compiled.artifact


@pytest.fixture
def plain(plain_registry: registry_fixture.RunningRegistry, fresh_path: str) -> registry.OciRegistry:
    return registry.OciRegistry(f"{plain_registry.host}/{fresh_path}", insecure=True, environ={})


class Recorder:
    """Every HTTP exchange of a session, as ``METHOD /path STATUS``, through requests' response hook."""

    def __init__(self, session: requests.Session) -> None:
        self.lines: list[str] = []
        session.hooks["response"].append(self._hook)

    def _hook(self, response: requests.Response, **_: object) -> None:
        path = requests.utils.urlparse(response.request.url).path
        self.lines.append(f"{response.request.method} {path} {response.status_code}")

    def uploads(self) -> list[str]:
        return [line for line in self.lines if line.split()[0] in ("PUT", "POST", "PATCH")]


def served_manifest(host: str, name: str, reference: str, *, verify: bool | str = True,
                    scheme: str = "http", auth: tuple[str, str] | None = None) -> requests.Response:
    response = requests.get(f"{scheme}://{host}/v2/{name}/manifests/{reference}", timeout=5, verify=verify,
                            auth=auth, headers={"Accept": artifact_core.MANIFEST_MEDIA_TYPE})
    response.raise_for_status()
    return response


# pushing and reading back --------------------------------------------------------------------

@pytest.mark.parametrize("pack_name", list(PACKS), ids=list(PACKS))
def test_push_stores_the_compiled_bytes_under_the_compiled_digests(
        plain: registry.OciRegistry, plain_registry: registry_fixture.RunningRegistry, pack_name: str) -> None:
    compiled = compile_yaml(pack_name, PACKS[pack_name])
    art, cp = artifact_of(compiled), compiled.cluster_pack

    assert plain.push(pack_name, art) is True

    name = f"{plain.path}/{pack_name}"
    by_tag = served_manifest(plain_registry.host, name, art.tag)
    assert by_tag.headers["Docker-Content-Digest"] == art.manifest_digest == cp.manifest_digest
    assert by_tag.content == art.manifest
    doc = json.loads(by_tag.content)
    assert [layer["digest"] for layer in doc["layers"]] == [blob.digest for blob in art.layers]
    assert [layer["mediaType"] for layer in doc["layers"]] == [blob.media_type for blob in art.layers]
    assert doc["config"]["digest"] == art.config.digest
    assert {cp.rbac_digest, cp.cluster_scoped_digest, cp.workload_digest} - {None} == {b.digest for b in art.layers}
    for blob in art.blobs:
        got = requests.get(f"http://{plain_registry.host}/v2/{name}/blobs/{blob.digest}", timeout=5)
        assert got.content == blob.data
    manifest, blobs = plain.pull(pack_name, art.manifest_digest)
    assert manifest == art.manifest
    assert blobs == {blob.digest: blob.data for blob in art.blobs}


def test_second_push_of_the_same_artifact_uploads_nothing(plain: registry.OciRegistry) -> None:
    art = artifact_of(compile_yaml("web", PACKS["rbac-and-workload"]))
    assert plain.push("web", art) is True
    recorder = Recorder(plain.session)

    assert plain.push("web", art) is False

    name = f"{plain.path}/web"
    assert recorder.lines == [
        f"HEAD /v2/{name}/manifests/{art.manifest_digest} 200",
        f"HEAD /v2/{name}/manifests/{art.tag} 200",
    ]


def test_push_uploads_only_the_blobs_the_repository_lacks(plain: registry.OciRegistry) -> None:
    v1 = artifact_of(compile_yaml("web", PACKS["rbac-and-workload"], "1.0.0"))
    changed = PACKS["rbac-and-workload"].replace("nginx:1.27", "nginx:1.28")
    v2 = artifact_of(compile_yaml("web", changed, "1.1.0"))
    assert plain.push("web", v1) is True
    recorder = Recorder(plain.session)

    assert plain.push("web", v2) is True

    new = {b.digest for b in v2.blobs} - {b.digest for b in v1.blobs}
    assert len(new) == 2  # the config blob and the workload layer; the rbac layer is shared
    name = f"{plain.path}/web"
    puts = [line for line in recorder.uploads() if line.startswith("PUT")]
    assert len(puts) == len(new) + 1
    assert puts[-1] == f"PUT /v2/{name}/manifests/{v2.tag} 201"
    uploaded = {line.split()[1] for line in recorder.uploads() if "/blobs/uploads/" in line and line.startswith("PUT")}
    assert len(uploaded) == len(new)


def test_a_manifest_present_without_its_tag_is_tagged_with_no_blob_upload(
        plain: registry.OciRegistry, plain_registry: registry_fixture.RunningRegistry) -> None:
    art = artifact_of(compile_yaml("web", PACKS["rbac-and-workload"]))
    plain.push("source", art)
    base = f"http://{plain_registry.host}/v2/{plain.path}"
    for blob in art.blobs:  # another client put the manifest there by digest only
        mounted = requests.post(f"{base}/web/blobs/uploads/", params={"mount": blob.digest, "from": f"{plain.path}/source"},
                                timeout=5)
        assert mounted.status_code == 201
    by_digest = requests.put(f"{base}/web/manifests/{art.manifest_digest}", data=art.manifest, timeout=5,
                             headers={"Content-Type": artifact_core.MANIFEST_MEDIA_TYPE})
    assert by_digest.status_code == 201
    recorder = Recorder(plain.session)

    assert plain.push("web", art) is False

    assert recorder.uploads() == [f"PUT /v2/{plain.path}/web/manifests/{art.tag} 201"]
    assert served_manifest(plain_registry.host, f"{plain.path}/web", art.tag).content == art.manifest


def test_has_answers_for_the_manifest_digest_only(plain: registry.OciRegistry) -> None:
    art = artifact_of(compile_yaml("web", PACKS["rbac-and-workload"]))
    assert plain.has("web", art.manifest_digest) is False
    plain.push("web", art)
    assert plain.has("web", art.manifest_digest) is True
    assert plain.has("other", art.manifest_digest) is False
    assert plain.has("web", artifact_core.digest_of(b"something else")) is False


@pytest.mark.parametrize("repository, known", [("web", True), ("never-pushed", False)],
                         ids=["unknown-digest", "unknown-repository"])
def test_pull_of_a_missing_artifact_is_a_stalled_not_found(plain: registry.OciRegistry, repository: str,
                                                           known: bool) -> None:
    plain.push("web", artifact_of(compile_yaml("web", PACKS["rbac-and-workload"])))
    missing = artifact_core.digest_of(b"missing")
    with pytest.raises(errors.StalledError) as caught:
        plain.pull(repository, missing)
    assert caught.value.reason in ("ArtifactNotFound", "RepositoryNotFound")
    assert missing in str(caught.value) and plain.host in str(caught.value)


# verify ---------------------------------------------------------------------------------------

def _sound(reg: registry.OciRegistry, running: registry_fixture.RunningRegistry, art: pack.Artifact,
           cp: pack.ClusterPack) -> tuple[str, dict[str, str], list[str]]:
    return art.manifest_digest, registry.cluster_pack_digests(cp), []


def _corrupt_workload_layer(reg: registry.OciRegistry, running: registry_fixture.RunningRegistry,
                            art: pack.Artifact, cp: pack.ClusterPack) -> tuple[str, dict[str, str], list[str]]:
    assert cp.workload_digest is not None
    data = running.blob_file(cp.workload_digest)
    original = data.read_bytes()
    data.write_bytes(original.replace(b"nginx", b"NGINX"))  # same length, other bytes
    actual = artifact_core.digest_of(data.read_bytes())
    return art.manifest_digest, registry.cluster_pack_digests(cp), [f"blob {cp.workload_digest} served with digest {actual}"]


def _foreign_layer_field(reg: registry.OciRegistry, running: registry_fixture.RunningRegistry,
                         art: pack.Artifact, cp: pack.ClusterPack) -> tuple[str, dict[str, str], list[str]]:
    other = artifact_core.digest_of(b"another layer")
    return art.manifest_digest, {**registry.cluster_pack_digests(cp), "workloadDigest": other}, [
        f"workloadDigest {other} is not a layer of this manifest"]


def _missing_manifest(reg: registry.OciRegistry, running: registry_fixture.RunningRegistry,
                      art: pack.Artifact, cp: pack.ClusterPack) -> tuple[str, dict[str, str], list[str]]:
    missing = artifact_core.digest_of(b"never pushed")
    return missing, {}, [f"fetching manifest {missing} from {reg.path}/web: not found on registry {reg.host}"]


@pytest.mark.parametrize("situation", [_sound, _corrupt_workload_layer, _foreign_layer_field, _missing_manifest],
                         ids=["sound", "corrupt-layer-on-disk", "field-names-another-layer", "missing-manifest"])
def test_verify_recomputes_every_digest_from_the_served_bytes(
        plain: registry.OciRegistry, plain_registry: registry_fixture.RunningRegistry, fresh_path: str,
        situation: Callable[..., tuple[str, dict[str, str], list[str]]]) -> None:
    # Blobs are shared by all repositories of a registry: content unique to this test, so that
    # corrupting a blob on disk cannot leak into other tests.
    compiled = compile_yaml("web", PACKS["rbac-and-workload"].replace("namespace: apps", f"namespace: {fresh_path}"))
    art = artifact_of(compiled)
    plain.push("web", art)
    digest, layers, expected = situation(plain, plain_registry, art, compiled.cluster_pack)

    problems = plain.verify("web", digest, layers)

    assert len(problems) == len(expected)
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


# authentication -------------------------------------------------------------------------------

def _docker_config(directory: pathlib.Path, host_key: str, entry: dict[str, str]) -> pathlib.Path:
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": {host_key: entry}}))
    return path


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _files(directory: pathlib.Path, user: str, password: str) -> dict[str, object]:
    (directory / "username").write_text(f"{user}\n")
    (directory / "password").write_text(f"{password}\n")
    return {"username_file": directory / "username", "password_file": directory / "password"}


def _default_config(directory: pathlib.Path, host: str, user: str, password: str) -> dict[str, object]:
    _docker_config(directory, host, _auth(user, password))
    return {"environ": {"DOCKER_CONFIG": str(directory)}}


CREDENTIALS: dict[str, Callable[[pathlib.Path, str, str, str], dict[str, object]]] = {
    "config-auth-field": lambda d, host, u, p: {"config": _docker_config(d, host, _auth(u, p))},
    "config-username-password": lambda d, host, u, p: {"config": _docker_config(d, host, {"username": u, "password": p})},
    "config-key-with-scheme-and-path": lambda d, host, u, p: {"config": _docker_config(d, f"https://{host}/v1/", _auth(u, p))},
    "default-config-via-DOCKER_CONFIG": _default_config,
    "username-and-password-files": lambda d, host, u, p: _files(d, u, p),
}


@pytest.mark.parametrize("source", list(CREDENTIALS), ids=list(CREDENTIALS))
def test_basic_auth_over_tls_with_the_right_password_pushes(
        secure_registry: registry_fixture.SecureRegistry, fresh_path: str, tmp_path: pathlib.Path, source: str) -> None:
    options = {"environ": {}, **CREDENTIALS[source](tmp_path, secure_registry.host, secure_registry.username,
                                                    secure_registry.password)}
    reg = registry.OciRegistry(f"{secure_registry.host}/{fresh_path}", ca=secure_registry.ca, **options)  # type: ignore[arg-type]
    art = artifact_of(compile_yaml("web", PACKS["rbac-and-workload"]))

    assert reg.push("web", art) is True

    served = served_manifest(secure_registry.host, f"{fresh_path}/web", art.tag, scheme="https",
                             verify=str(secure_registry.ca), auth=(secure_registry.username, secure_registry.password))
    assert served.content == art.manifest
    assert reg.verify("web", art.manifest_digest) == []


@pytest.mark.parametrize("source, password", [
    ("none", None),
    ("config-auth-field", "not-the-pass-7Q"),
    ("config-username-password", "not-the-pass-7Q"),
    ("username-and-password-files", "not-the-pass-7Q"),
], ids=["no-credentials", "wrong-password-config-auth", "wrong-password-config-fields", "wrong-password-files"])
def test_missing_or_wrong_credentials_are_a_config_error_naming_the_flag(
        secure_registry: registry_fixture.SecureRegistry, fresh_path: str, tmp_path: pathlib.Path,
        source: str, password: str | None) -> None:
    options: dict[str, object] = {"environ": {"DOCKER_CONFIG": str(tmp_path / "empty")}}
    if password is not None:
        options.update(CREDENTIALS[source](tmp_path, secure_registry.host, secure_registry.username, password))
    reg = registry.OciRegistry(f"{secure_registry.host}/{fresh_path}", ca=secure_registry.ca, **options)  # type: ignore[arg-type]
    art = artifact_of(compile_yaml("web", PACKS["rbac-and-workload"]))

    with structlog.testing.capture_logs() as logs, pytest.raises(errors.ConfigError) as caught:
        reg.push("web", art)

    err = caught.value
    assert err.reason == "RegistryUnauthorized"
    assert f"check --registry-config / credentials for {secure_registry.host}" in clitext.shown(err)
    assert "\n" not in str(err)
    for secret in ("not-the-pass-7Q", secure_registry.password, base64.b64encode(b"gitopsd:not-the-pass-7Q").decode()):
        assert secret not in str(err)
        assert secret not in repr(logs)


def test_bearer_tokens_are_fetched_per_repository_from_the_token_service(
        token_registry: registry_fixture.TokenRegistry, fresh_path: str, tmp_path: pathlib.Path) -> None:
    reg = registry.OciRegistry(f"{token_registry.host}/{fresh_path}", insecure=True, environ={},
                               **_files(tmp_path, registry_fixture.USERNAME, registry_fixture.PASSWORD))  # type: ignore[arg-type]
    web = artifact_of(compile_yaml("web", PACKS["rbac-and-workload"]))
    db = artifact_of(compile_yaml("db", PACKS["three-layers"]))
    asked = len(token_registry.issuer.requests)

    assert reg.push("web", web) is True
    assert reg.push("db", db) is True  # a second repository needs its own token
    assert reg.verify("web", web.manifest_digest) == []
    assert reg.verify("db", db.manifest_digest) == []

    def normal(scope: str) -> str:  # the registry names the actions in either order ("push,pull" or "pull,push")
        resource, _, actions = scope.rpartition(":")
        return f"{resource}:{','.join(sorted(actions.split(',')))}"

    scopes = [normal(q["scope"][0]) for q in token_registry.issuer.requests[asked:]]
    assert scopes == [f"repository:{fresh_path}/web:pull", f"repository:{fresh_path}/web:pull,push",
                      f"repository:{fresh_path}/db:pull", f"repository:{fresh_path}/db:pull,push"]


def test_a_token_service_refusing_the_password_is_unauthorized(
        token_registry: registry_fixture.TokenRegistry, fresh_path: str, tmp_path: pathlib.Path) -> None:
    reg = registry.OciRegistry(f"{token_registry.host}/{fresh_path}", insecure=True, environ={},
                               **_files(tmp_path, registry_fixture.USERNAME, "not-the-pass-7Q"))  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigError) as caught:
        reg.has("web", artifact_core.digest_of(b"x"))
    assert caught.value.reason == "RegistryUnauthorized"
    assert "token service" in str(caught.value) and "not-the-pass-7Q" not in str(caught.value)


# TLS ------------------------------------------------------------------------------------------

def test_tls_without_the_ca_is_a_tls_error_naming_the_flag(
        secure_registry: registry_fixture.SecureRegistry, fresh_path: str) -> None:
    reg = registry.OciRegistry(f"{secure_registry.host}/{fresh_path}", environ={})
    with pytest.raises(errors.ConfigError) as caught:
        reg.has("web", artifact_core.digest_of(b"x"))
    assert caught.value.reason == "RegistryTLS"
    assert "--registry-ca" in clitext.shown(caught.value) and "certificate verify failed" in str(caught.value)


def test_tls_with_another_ca_names_that_ca(secure_registry: registry_fixture.SecureRegistry, fresh_path: str,
                                           tmp_path: pathlib.Path) -> None:
    other_ca, _, _ = registry_fixture.make_ca(tmp_path, "unrelated CA")
    reg = registry.OciRegistry(f"{secure_registry.host}/{fresh_path}", ca=other_ca, environ={})
    with pytest.raises(errors.ConfigError) as caught:
        reg.has("web", artifact_core.digest_of(b"x"))
    assert caught.value.reason == "RegistryTLS"
    assert str(other_ca) in str(caught.value)


def test_https_to_a_plain_http_registry_is_a_tls_error(plain_registry: registry_fixture.RunningRegistry,
                                                       fresh_path: str) -> None:
    reg = registry.OciRegistry(f"{plain_registry.host}/{fresh_path}", environ={})
    with pytest.raises(errors.ConfigError) as caught:
        reg.has("web", artifact_core.digest_of(b"x"))
    assert caught.value.reason == "RegistryTLS"
    assert "plain http" in str(caught.value)


def test_plain_http_to_a_tls_registry_is_a_tls_error(secure_registry: registry_fixture.SecureRegistry,
                                                     fresh_path: str) -> None:
    reg = registry.OciRegistry(f"{secure_registry.host}/{fresh_path}", insecure=True, environ={})
    with pytest.raises(errors.ConfigError) as caught:
        reg.has("web", artifact_core.digest_of(b"x"))
    assert caught.value.reason == "RegistryTLS"
    assert "drop --registry-insecure" in clitext.shown(caught.value)


@pytest.mark.parametrize("url", [
    "registry.example.com/packs", "10.0.0.5:5000/packs", "[2001:db8::1]:5000/packs", "localhost.example.com/packs",
    "0.0.0.0:5000/packs",
])
def test_insecure_is_refused_for_a_non_loopback_host(url: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        registry.OciRegistry(url, insecure=True, environ={})
    assert caught.value.reason == "RegistryInsecureRefused"
    assert "loopback" in str(caught.value)


@pytest.mark.parametrize("url", ["127.0.0.1:5000/packs", "127.8.9.10/packs", "[::1]:5000/packs", "localhost:5000/packs",
                                 "LOCALHOST:5000"])
def test_insecure_is_allowed_for_a_loopback_host(url: str) -> None:
    assert registry.OciRegistry(url, insecure=True, environ={}).scheme == "http"


# failing fast ---------------------------------------------------------------------------------

@pytest.fixture
def closed_port() -> str:
    """``127.0.0.1:PORT`` with nothing listening."""
    return f"127.0.0.1:{registry_fixture.free_port()}"


OPERATIONS: dict[str, Callable[[registry.OciRegistry], object]] = {
    "has": lambda reg: reg.has("web", artifact_core.digest_of(b"x")),
    "push": lambda reg: reg.push("web", artifact_of(compile_yaml("web", PACKS["rbac-and-workload"]))),
    "pull": lambda reg: reg.pull("web", artifact_core.digest_of(b"x")),
    "verify": lambda reg: reg.verify("web", artifact_core.digest_of(b"x")),
}


@pytest.mark.parametrize("operation", list(OPERATIONS), ids=list(OPERATIONS))
def test_a_down_registry_is_a_transient_error_after_three_attempts(closed_port: str, operation: str) -> None:
    reg = registry.OciRegistry(f"{closed_port}/packs", insecure=True, environ={})
    with pytest.raises(errors.TransientError) as caught:
        OPERATIONS[operation](reg)
    assert caught.value.reason == "RegistryUnavailable"
    assert str(caught.value).startswith(f"registry {closed_port} is unreachable: connection refused (3 attempts in ")


@pytest.fixture
def hanging_up_server() -> Iterator[tuple[str, list[int]]]:
    """A socket that accepts connections and closes each at once (a network failure, not a status);
    the list counts the connections it accepted."""
    accepted = [0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.settimeout(0.1)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                accepted[0] += 1
                conn.close()

        thread = threading.Thread(target=serve, name="test-hanging-up-server")
        thread.start()
        try:
            yield f"127.0.0.1:{sock.getsockname()[1]}", accepted
        finally:
            stop.set()
            thread.join()


def test_after_a_failure_the_registry_is_not_asked_again_until_flush(hanging_up_server: tuple[str, list[int]]) -> None:
    host, accepted = hanging_up_server
    reg = registry.OciRegistry(f"{host}/packs", insecure=True, environ={}, cooldown=60)
    with pytest.raises(errors.TransientError):
        reg.has("web", artifact_core.digest_of(b"x"))
    assert accepted[0] == 3

    with pytest.raises(errors.TransientError) as caught:
        reg.has("other", artifact_core.digest_of(b"x"))
    assert accepted[0] == 3  # not asked at all
    assert "is unreachable" in str(caught.value) and "not asking again for 60s" in str(caught.value)

    reg.flush()
    with pytest.raises(errors.TransientError) as caught:
        reg.has("other", artifact_core.digest_of(b"x"))
    assert "not asking again" not in str(caught.value) and "3 attempts" in str(caught.value)
    assert accepted[0] == 6


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A socket that accepts connections (the kernel does) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_registry_that_never_answers_is_given_up_on_after_the_read_timeout(silent_server: str) -> None:
    reg = registry.OciRegistry(f"{silent_server}/packs", insecure=True, environ={}, read_timeout=0.5)
    with pytest.raises(errors.TransientError) as caught:
        reg.has("web", artifact_core.digest_of(b"x"))
    assert "no answer within 0.5s" in str(caught.value)


HEAD = f"HEAD /v2/packs/web/manifests/{artifact_core.digest_of(b'x')}"


@pytest.mark.parametrize("status_server, error, reason, seen", [
    (500, errors.TransientError, "RegistryUnavailable", [HEAD] * 3),
    (503, errors.TransientError, "RegistryUnavailable", [HEAD] * 3),
    (429, errors.TransientError, "RegistryUnavailable", [HEAD]),
    # a 400 to plain http may be Go's "HTTP request to an HTTPS server": one GET /v2/ reads the body
    (400, errors.StalledError, "RegistryRejected", [HEAD, "GET /v2/"]),
], indirect=["status_server"], ids=["500", "503", "429", "400"])
def test_registry_error_statuses_map_to_the_error_families(
        status_server: registry_fixture.StatusServer, error: type[errors.GitopsdError], reason: str,
        seen: list[str]) -> None:
    reg = registry.OciRegistry(f"{status_server.host}/packs", insecure=True, environ={})
    with pytest.raises(error) as caught:
        reg.has("web", artifact_core.digest_of(b"x"))
    assert caught.value.reason == reason
    assert str(status_server.status) in str(caught.value)
    assert status_server.requests == seen


@pytest.mark.parametrize("status_server", [404], indirect=True, ids=["404"])
def test_a_repository_the_registry_will_not_create_is_named(status_server: registry_fixture.StatusServer) -> None:
    reg = registry.OciRegistry(f"{status_server.host}/packs", insecure=True, environ={})
    with pytest.raises(errors.StalledError) as caught:
        reg.push("web", artifact_of(compile_yaml("web", PACKS["rbac-and-workload"])))
    assert caught.value.reason == "RepositoryNotFound"
    assert "packs/web" in str(caught.value) and "--registry" in clitext.shown(caught.value)


# configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["https://registry.example.com/packs", "registry.example.com/Packs", "",
                                 "/packs", "registry.example.com:notaport/packs", "user:pw@registry.example.com/p"],
                         ids=["scheme", "uppercase-path", "empty", "no-host", "bad-port", "userinfo"])
def test_a_malformed_registry_url_is_a_config_error(url: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        registry.OciRegistry(url, environ={})
    assert "HOST[:PORT]" in str(caught.value)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize("entries, expected", [
    ({"reg.test:5000": _auth("u", "p:with:colons")}, ("u", "p:with:colons")),
    ({"https://reg.test:5000": {"username": "u", "password": "p"}}, ("u", "p")),
    ({"http://reg.test:5000/v2/": _auth("u", "p")}, ("u", "p")),
    ({"reg.test": _auth("u", "p"), "reg.test:5001": _auth("v", "q")}, None),
    ({"reg.test:5000": {"identitytoken": "t"}}, None),
], ids=["auth-field", "username-password", "key-with-path", "other-ports-only", "identity-token-unsupported"])
def test_docker_config_entries_are_matched_by_host_and_port(
        tmp_path: pathlib.Path, entries: dict[str, dict[str, str]], expected: tuple[str, str] | None) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": entries}))
    found = registryconfig.credentials_from_config(path, "reg.test:5000")
    assert (None if found is None else (found.username, found.password)) == expected


@pytest.mark.parametrize("files, message", [
    ({"config": "missing.json"}, "cannot read it"),
    ({"config": "bad.json"}, "not JSON"),
    ({"config": "bad-auth.json"}, "not base64 of 'user:password'"),
    ({"username_file": "user"}, "go together"),
    ({"username_file": "user", "password_file": "empty"}, "is empty"),
], ids=["config-missing", "config-not-json", "config-bad-auth", "only-username-file", "empty-password-file"])
def test_unusable_credential_sources_are_config_errors(tmp_path: pathlib.Path, files: dict[str, str],
                                                       message: str) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad-auth.json").write_text(json.dumps({"auths": {"reg.test": {"auth": "!!!"}}}))
    (tmp_path / "user").write_text("u\n")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(errors.ConfigError) as caught:
        registry.OciRegistry("reg.test/packs", environ={}, **{k: tmp_path / v for k, v in files.items()})  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_credentials_never_show_in_repr() -> None:
    creds = registryconfig.Credentials("u", "hunter2", origin="files")
    assert "hunter2" not in repr(creds)


def test_a_repository_name_outside_the_oci_grammar_is_refused_before_any_request(plain: registry.OciRegistry) -> None:
    recorder = Recorder(plain.session)
    with pytest.raises(errors.StalledError) as caught:
        plain.has("Web_", artifact_core.digest_of(b"x"))
    assert caught.value.reason == "InvalidRepositoryName"
    assert recorder.lines == []
