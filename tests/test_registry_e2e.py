"""The CLI with a real OCI registry: push, skip, verify before apply, and `gitopsd verify`."""

from __future__ import annotations

import json
import pathlib
import sqlite3

import pytest
import requests

from tests.conftest import Cli
from tests.registry_fixture import RunningRegistry, SecureRegistry

pytestmark = pytest.mark.slow


@pytest.fixture
def key(cli: Cli, tmp_path: pathlib.Path) -> str:
    cli("keygen", "--dir", str(tmp_path / "key"))
    return str(tmp_path / "key" / "signing.key")


def served_manifest(host: str, name: str, digest: str, *, session: requests.Session | None = None, scheme: str = "http") -> dict:
    http = session or requests.Session()
    response = http.get(f"{scheme}://{host}/v2/{name}/manifests/{digest}",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    response.raise_for_status()
    assert response.headers["Docker-Content-Digest"] == digest
    return response.json()


def test_reconcile_pushes_one_artifact_per_pack_version_and_a_second_pass_uploads_nothing(
        key: str, cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path, plain_registry: RunningRegistry, fresh_path: str) -> None:
    target = f"{plain_registry.host}/{fresh_path}"
    flags = ["--state-dir", str(state_dir), "--registry", target, "--registry-insecure", "--signing-key", key]
    first = cli.json("reconcile", str(examples), *flags)
    assert first["summary"]["published"] == 5 and first["summary"]["ready"] is True
    for obj in first["clusterPacks"]:
        spec = obj["spec"]
        assert spec["registryRef"]["url"] == f"{target}/{spec['basePackName']}:{spec['version']}"
        manifest = served_manifest(plain_registry.host, f"{fresh_path}/{spec['basePackName']}", spec["registryRef"]["digest"])
        layers = [layer["digest"] for layer in manifest["layers"]]
        expected = [d for d in (spec.get("rbacDigest"), spec.get("clusterScopedDigest"), spec.get("workloadDigest")) if d]
        assert layers == expected
    second = cli.json("reconcile", str(examples), *flags)
    assert second["summary"]["published"] == 0 and second["summary"]["writes"] == 0
    verified = cli("verify", "--state-dir", str(state_dir), "--registry", target, "--registry-insecure", "--trusted-keys", key + ".pub")
    assert verified.stdout.count("ok ") == 5


def test_a_corrupted_artifact_in_the_registry_blocks_delivery_and_fails_verify(
        key: str, cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path, plain_registry: RunningRegistry, fresh_path: str) -> None:
    target = f"{plain_registry.host}/{fresh_path}"
    flags = ["--state-dir", str(state_dir), "--registry", target, "--registry-insecure", "--signing-key", key]
    first = cli.json("reconcile", str(examples), *flags)
    policies = next(o for o in first["clusterPacks"] if o["spec"]["basePackName"] == "network-policies")["spec"]
    blob = plain_registry.blob_file(policies["workloadDigest"])
    blob.write_bytes(blob.read_bytes().replace(b"default-deny", b"default-allo"))  # one changed byte range, same size
    proc = cli("verify", "--state-dir", str(state_dir), "--registry", target, "--registry-insecure", "--trusted-keys", key + ".pub", check=1)
    assert "FAIL network-policies-v1.1.0" in proc.stdout and "4 of 5 verified (5 ClusterPacks, 0 status records)" in proc.stdout
    # A new cluster for the pack means a new PackInstance pointing at the corrupted artifact: blocked.
    (examples / "clusters/edge.yaml").write_text("name: edge\nlabels: {env: edge}\n")
    packbuild = examples / "packs/network-policies/packbuild.yaml"
    packbuild.write_text(packbuild.read_text().replace("staging, dev]", "staging, dev, edge]"))
    result = cli.json("reconcile", str(examples), *flags, check=1)
    blocked = {(c["name"], c["reason"]) for c in result["changes"] if c["action"] == "blocked"}
    assert blocked == {("network-policies-edge", "ArtifactMismatch")}
    instances = cli.json("get", "instances", "--state-dir", str(state_dir))["items"]
    assert "network-policies-edge" not in {i["metadata"]["name"] for i in instances}


def test_tampering_with_a_stored_spec_fails_verify_and_blocks_delivery(
        key: str, cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path, plain_registry: RunningRegistry, fresh_path: str) -> None:
    target = f"{plain_registry.host}/{fresh_path}"
    flags = ["--state-dir", str(state_dir), "--registry", target, "--registry-insecure", "--signing-key", key]
    cli("reconcile", str(examples), *flags)
    db = sqlite3.connect(state_dir / "store.db")
    body = json.loads(db.execute("SELECT body FROM objects WHERE name='platform-base-v1.0.0'").fetchone()[0])
    body["spec"]["targetClusters"] = ["prod-eu"]  # one changed value
    db.execute("UPDATE objects SET body=? WHERE name='platform-base-v1.0.0'", (json.dumps(body),))
    db.execute("DELETE FROM objects WHERE kind='PackInstance' AND name='platform-base-dev'")
    db.commit()
    db.close()
    proc = cli("verify", "--state-dir", str(state_dir), "--registry", target, "--registry-insecure", "--trusted-keys", key + ".pub", check=1)
    assert "FAIL platform-base-v1.0.0: signature does not verify" in proc.stdout
    result = cli.json("reconcile", str(examples), *flags, check=1)
    # every instance of the tampered pack reports it, and none is created or moved
    assert {(c["name"], c["reason"]) for c in result["changes"] if c["action"] == "blocked"} == {
        (f"platform-base-{cluster}", "SignatureInvalid") for cluster in ("dev", "prod-eu", "prod-us", "staging")
    }
    assert result["summary"]["writes"] == 3  # only the SignatureInvalid condition on the three live instances
    instances = {i["metadata"]["name"] for i in cli.json("get", "instances", "--state-dir", str(state_dir))["items"]}
    assert "platform-base-dev" not in instances


def test_tls_and_basic_auth_registry_with_credentials_from_files(
        key: str, cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path, secure_registry: SecureRegistry, fresh_path: str,
        tmp_path: pathlib.Path) -> None:
    (tmp_path / "user").write_text(secure_registry.username)
    (tmp_path / "password").write_text(secure_registry.password)
    target = f"{secure_registry.host}/{fresh_path}"
    base = ["--state-dir", str(state_dir), "--registry", target, "--registry-ca", str(secure_registry.ca), "--signing-key", key]
    denied = cli("reconcile", str(examples), *base, check=1)
    assert "RegistryUnauthorized" in denied.stdout and secure_registry.password not in denied.stdout + denied.stderr
    creds = ["--registry-username-file", str(tmp_path / "user"), "--registry-password-file", str(tmp_path / "password")]
    ok = cli.json("reconcile", str(examples), *base, *creds)
    assert ok["summary"]["published"] == 5
    no_ca = cli("reconcile", str(examples), "--state-dir", str(tmp_path / "other"), "--registry", target, *creds,
                "--signing-key", key, check=1)
    assert "RegistryTLS" in no_ca.stdout and "--registry-ca" in no_ca.stdout


def test_writing_to_a_registry_without_a_signing_key_stops_at_start(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    proc = cli("reconcile", str(examples), "--state-dir", str(state_dir), "--registry", "127.0.0.1:1/packs",
               "--registry-insecure", check=2)
    assert "needs --signing-key" in proc.stderr
    assert not (state_dir / "store.db").exists()
    assert cli("dry-run", str(examples), "--state-dir", str(state_dir), "--registry", "127.0.0.1:1/packs",
               "--registry-insecure").returncode == 0  # writing nothing needs no key
