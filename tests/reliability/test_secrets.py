"""Canaries: secrets planted where gitopsd touches them must never show up where people or other
programs read gitopsd's results.

Planted: a Secret object's ``data`` and ``stringData`` in a pack, the signing key, a registry
password (docker config.json), a Git token (credentials file, and in a URL), a webhook secret.
Looked for (every command at ``--log-level debug``, every ``-o``): stdout and stderr of reconcile,
dry-run, diff, run --once, get, verify; the store (every byte of store.db and its WAL), the compile
cache, the OCI layout's index.json, the status records committed to Git, the mirror and every
other file of the state dir except the artifact blobs.

By design the artifact layers hold the pack's manifests, Secrets included (base64, as in the
manifest): that is the artifact. The blobs are therefore not searched; everything that describes
them (ClusterPacks, plans, events, status) must hold digests only. The webhook's rejection rules
themselves are tested in tests/test_webhook.py; here the daemon's logs are searched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import http.server
import json
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives import serialization

from gitopsd.adapters import keys
from tests import gitutil, registry_fixture
from tests.reliability import harness

pytestmark = pytest.mark.slow

SECRET_DATA = "canary-secret-data-7f3a9c1e"
SECRET_STRING = "canary-stringdata-2b8d4e60"
TOKEN = "canary-git-token-9e1f7a5b3c"
REGISTRY_PASSWORD = "canary-registry-pass-4c6e8a"
WEBHOOK_SECRET = "canary-webhook-secret-5d7b9f"

SECRET_PACK = {
    "packs/credentials/packbuild.yaml": gitutil.packbuild("credentials", namespace="apps", targets="[dev, prod-eu]"),
    "packs/credentials/manifests/secret.yaml": (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db-credentials}\ntype: Opaque\n"
        f"data:\n  password: {base64.b64encode(SECRET_DATA.encode()).decode()}\n"
        f"stringData:\n  token: {SECRET_STRING}\n"
    ),
    "packs/credentials/manifests/app.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {mode: prod}\n",
    # a Secret that fails to compile: the error must quote neither value
    "packs/broken-secret/packbuild.yaml": gitutil.packbuild("broken-secret", namespace="apps"),
    "packs/broken-secret/manifests/secret.yaml": (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: broken}}\nstringData:\n  token: {SECRET_STRING}\n"
        f"  token: {SECRET_DATA}\n"
    ),
}


def forms(*secrets: str) -> list[str]:
    """A secret as it could leak: itself, base64 of it, base64 of ``user:secret``, hex."""
    out = []
    for s in secrets:
        out += [s, base64.b64encode(s.encode()).decode().rstrip("="), s.encode().hex()]
        out.append(base64.b64encode(f"{registry_fixture.USERNAME}:{s}".encode()).decode().rstrip("="))
        out.append(base64.b64encode(f"x-access-token:{s}".encode()).decode().rstrip("="))
    return out


def signing_key_forms(path: pathlib.Path) -> list[str]:
    """The private key as it could leak: lines of its file, its raw 32 bytes in base64 and hex."""
    key = serialization.load_ssh_private_key(path.read_bytes(), password=None) if b"OPENSSH" in path.read_bytes() \
        else serialization.load_pem_private_key(path.read_bytes(), password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    lines = [line for line in path.read_text().splitlines() if len(line) > 20 and "PRIVATE KEY" not in line]
    return [*lines, base64.b64encode(raw).decode().rstrip("="), raw.hex()]


def leaks(text: str | bytes, canaries: list[str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [c for c in canaries if c.encode() in data]


def state_files(state: pathlib.Path) -> Iterator[pathlib.Path]:
    """Every file of the state dir but the artifact blobs (they are the pack itself)."""
    blobs = state / "oci" / "blobs"
    for path in sorted(state.rglob("*")):
        if path.is_file() and blobs not in path.parents:
            yield path


def write(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def secret_repo(tmp_path: pathlib.Path) -> pathlib.Path:
    repo = tmp_path / "repo"
    shutil.copytree(harness.EXAMPLES, repo)
    write(repo, SECRET_PACK)
    harness.commit_all(repo)
    return repo


def test_secret_objects_and_the_signing_key_stay_out_of_every_output(secret_repo: pathlib.Path, tmp_path: pathlib.Path,
                                                                     zygotes: harness.ZygotePool) -> None:
    key = keys.generate(tmp_path / "key").private_path
    canaries = forms(SECRET_DATA, SECRET_STRING) + signing_key_forms(key)
    state = tmp_path / "state"
    common = ["--state-dir", str(state), "--log-level", "debug", "--log-format", "json"]
    with_key = [*common, "--signing-key", str(key)]
    runs: list[tuple[str, harness.Run]] = []

    def gitopsd(label: str, *argv: str) -> harness.Run:
        run = zygotes.run(*argv, cwd=tmp_path)
        runs.append((label, run))
        return run

    first = {fmt: gitopsd("dry-run", "dry-run", str(secret_repo), *with_key, "-o", fmt, "-v") for fmt in ("json", "yaml", "table")}
    for fmt in ("json", "yaml", "table"):
        gitopsd("diff", "diff", str(secret_repo), *with_key, "-o", fmt, "-v")
    gitopsd("reconcile", "reconcile", str(secret_repo), *with_key, "--write-status", "-o", "json")
    (secret_repo / "packs/credentials/manifests/app.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {mode: canary}\n")
    (secret_repo / "packs/credentials/packbuild.yaml").write_text(
        SECRET_PACK["packs/credentials/packbuild.yaml"].replace("1.0.0", "1.1.0"))
    harness.commit_all(secret_repo)  # a second revision: the Secret pack is superseded
    second = {fmt: gitopsd("diff", "diff", str(secret_repo), *with_key, "-o", fmt, "-v") for fmt in ("json", "yaml", "table")}
    gitopsd("run", "run", str(secret_repo), "--once", "--state-dir", str(state), "--log-level", "debug", "--log-format",
            "json", "--signing-key", str(key), "--listen", "off", "--write-status")
    for fmt in ("json", "yaml", "table"):
        gitopsd("reconcile", "reconcile", str(secret_repo), *with_key, "--write-status", "-o", fmt)
        for what in ("packs", "instances", "events"):
            gitopsd("get", "get", what, *common, "-o", fmt)
        gitopsd("verify", "verify", *common, "--trusted-keys", f"{key}.pub", "-o", fmt)

    # exit codes: a pack (broken-secret) fails, so passes and diff say 1, as reconcile does; reads succeed
    expected = {"dry-run": 1, "reconcile": 1, "run": 1, "diff": 1, "get": 0, "verify": 0}
    for label, run in runs:
        assert "Traceback" not in run.stderr, run.describe()
        assert run.returncode == expected[label], run.describe()
        assert not leaks(run.stdout, canaries), f"stdout leaks {leaks(run.stdout, canaries)}\n{run.describe()}"
        assert not leaks(run.stderr, canaries), f"stderr leaks {leaks(run.stderr, canaries)}\n{run.describe()}"

    # the passes did what they should: the Secret pack is delivered, the broken one refused in one line
    packs = {o["spec"]["basePackName"] for o in harness.store_objects(state, harness.CLUSTER_PACK)}
    assert "credentials" in packs and "broken-secret" not in packs
    plan = json.loads(first["json"].stdout)
    assert any(c["basePackName"] == "credentials" and c["action"] == "create" for c in plan["changes"])
    assert any(cp["spec"]["basePackName"] == "credentials" for cp in plan["clusterPacks"])  # digests, not data
    [broken] = [e for e in plan["errors"] if e["pack"] == "broken-secret"]
    assert "duplicate key 'token'" in broken["message"]
    assert any(c["basePackName"] == "credentials" and c["action"] == "supersede"
               for c in json.loads(second["json"].stdout)["changes"])

    # nothing at rest outside the artifact blobs: store (and WAL), cache, index, keys' public half, mirrors
    searched = list(state_files(state))
    assert state / "store.db" in searched and state / "oci" / "index.json" in searched
    for path in searched:
        if path.name == "signing.key":
            continue  # the state dir's own key, unused here (--signing-key)
        assert not leaks(path.read_bytes(), canaries), f"{path} holds {leaks(path.read_bytes(), canaries)}"
    events = harness.store_events(state)
    assert events and not leaks(json.dumps(events), canaries)

    # the status records committed to Git
    git = ["git", "-C", str(secret_repo)]
    names = subprocess.run([*git, "ls-tree", "-r", "--name-only", "HEAD", "--", ".gitopsd"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert any("credentials" in n for n in names), names
    for name in names:
        blob = subprocess.run([*git, "show", f"HEAD:{name}"], capture_output=True, check=True).stdout
        assert not leaks(blob, canaries), f"status record {name} holds {leaks(blob, canaries)}"

    # and the artifact does hold the Secret (so the searches above could have found it)
    blobs = b"".join(p.read_bytes() for p in (state / "oci" / "blobs" / "sha256").iterdir())
    assert base64.b64encode(SECRET_DATA.encode()) in blobs


def _docker_config(path: pathlib.Path, host: str, password: str) -> pathlib.Path:
    auth = base64.b64encode(f"{registry_fixture.USERNAME}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def test_registry_passwords_stay_out_of_outputs_logs_and_state(secure_registry: registry_fixture.SecureRegistry,
                                                               fresh_path: str, tmp_path: pathlib.Path,
                                                               zygotes: harness.ZygotePool) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(harness.EXAMPLES, repo)
    canaries = forms(registry_fixture.PASSWORD, REGISTRY_PASSWORD)
    target = f"{secure_registry.host}/{fresh_path}"
    key = keys.generate(tmp_path / "key").private_path
    flags = ["--registry", target, "--signing-key", str(key), "--registry-ca", str(secure_registry.ca), "--log-level", "debug", "--log-format", "json"]
    good = _docker_config(tmp_path / "good.json", secure_registry.host, registry_fixture.PASSWORD)
    bad = _docker_config(tmp_path / "bad.json", secure_registry.host, REGISTRY_PASSWORD)
    runs = [
        zygotes.run("reconcile", str(repo), "--state-dir", str(tmp_path / "s1"), *flags,
                            "--registry-config", str(good), "-o", "json", cwd=tmp_path),
        zygotes.run("reconcile", str(repo), "--state-dir", str(tmp_path / "s2"), *flags,
                            "--registry-config", str(bad), "-o", "yaml", cwd=tmp_path),
        zygotes.run("run", str(repo), "--once", "--state-dir", str(tmp_path / "s3"), *flags,
                            "--registry-config", str(bad), "--listen", "off", cwd=tmp_path),
    ]
    assert runs[0].returncode == 0, runs[0].describe()
    assert json.loads(runs[0].stdout)["summary"]["published"] == 5
    assert runs[1].returncode != 0 and "bad.json" in runs[1].stdout + runs[1].stderr, runs[1].describe()
    for run in runs:
        assert "Traceback" not in run.stderr, run.describe()
        found = leaks(run.stdout + run.stderr, canaries)
        assert not found, f"leaks {found}\n{run.describe()}"
    for state in ("s1", "s2", "s3"):
        for path in state_files(tmp_path / state):
            assert not leaks(path.read_bytes(), canaries), path


class _AuthChallenge(http.server.BaseHTTPRequestHandler):
    """A Git smart-HTTP server that wants credentials and accepts none: records what it was sent."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _AuthChallenge.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def git_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthChallenge)
    _AuthChallenge.seen = []
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_git_tokens_stay_out_of_errors_logs_and_state(git_server: str, tmp_path: pathlib.Path,
                                                      zygotes: harness.ZygotePool) -> None:
    creds = tmp_path / "git-credentials"
    creds.write_text(f"deploy:{TOKEN}\n")
    canaries = forms(TOKEN)
    env = {"GITOPSD_CANARY_TOKEN": TOKEN}
    runs = [
        zygotes.run("reconcile", f"http://{git_server}/config.git", "--state-dir", str(tmp_path / "s1"),
                            "--git-credentials-file", str(creds), "--log-level", "debug", "--log-format", "json",
                            "-o", "json", cwd=tmp_path, timeout=60),
        zygotes.run("dry-run", f"http://{git_server}/config.git", "--state-dir", str(tmp_path / "s2"),
                            "--git-credentials-env", "GITOPSD_CANARY_TOKEN", "--log-level", "debug", cwd=tmp_path,
                            timeout=60, env=env),
        zygotes.run("reconcile", f"http://deploy:{TOKEN}@{git_server}/config.git", "--state-dir",
                            str(tmp_path / "s3"), "--log-level", "debug", "-o", "yaml", cwd=tmp_path, timeout=60),
        zygotes.run("run", f"http://{git_server}/config.git", "--once", "--state-dir", str(tmp_path / "s4"),
                            "--git-credentials-file", str(creds), "--log-level", "debug", "--listen", "off",
                            cwd=tmp_path, timeout=60),
    ]
    expected = base64.b64encode(f"deploy:{TOKEN}".encode()).decode()
    assert any(expected in header for header in _AuthChallenge.seen), "the token was never offered to the server"
    for run in runs:
        assert run.returncode != 0, run.describe()  # the server accepts nothing
        assert "Traceback" not in run.stderr, run.describe()
        found = leaks(run.stdout + run.stderr, canaries)
        assert not found, f"leaks {found}\n{run.describe()}"
    for state in ("s1", "s2", "s3", "s4"):
        for path in state_files(tmp_path / state):
            assert not leaks(path.read_bytes(), canaries), path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_webhook_secret_stays_out_of_the_daemon_logs(tmp_path: pathlib.Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(harness.EXAMPLES, repo)
    harness.commit_all(repo)
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(WEBHOOK_SECRET + "\n")
    port = _free_port()
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gitopsd", "run", str(repo), "--state-dir", str(tmp_path / "state"), "--interval", "1h",
             "--listen", f"127.0.0.1:{port}", "--webhook-secret-file", str(secret_file), "--log-level", "debug",
             "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        body = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()
        good = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        bad = "sha256=" + hmac.new(b"wrong", body, hashlib.sha256).hexdigest()
        answers = {
            "github-bad-signature": _post(port, "/hooks/github", body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": bad}),
            "github-no-signature": _post(port, "/hooks/github", body, {"X-GitHub-Event": "push"}),
            "gitlab-wrong-token": _post(port, "/hooks/gitlab", body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"}),
            "github-secret-as-signature": _post(port, "/hooks/github", body,
                                                   {"X-GitHub-Event": "push", "X-Hub-Signature-256": WEBHOOK_SECRET}),
            "github-good": _post(port, "/hooks/github", body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": good}),
            "gitlab-good": _post(port, "/hooks/gitlab", body, {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": WEBHOOK_SECRET}),
        }
        time.sleep(1.0)  # let the triggered pass log its lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert {k: v for k, v in answers.items() if not k.endswith("-good")} == {
        "github-bad-signature": 401, "github-no-signature": 401, "gitlab-wrong-token": 401,
        "github-secret-as-signature": 401}, answers
    assert answers["github-good"] == answers["gitlab-good"] == 202, answers
    text = log.read_text()
    assert "webhook received" in text and "webhook" in text
    found = leaks(text, [*forms(WEBHOOK_SECRET), good.removeprefix("sha256=")])
    assert not found, f"daemon log leaks {found}:\n{text[-3000:]}"
