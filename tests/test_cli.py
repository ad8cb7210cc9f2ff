"""The CLI end to end on the embedded default, run as a user runs it (a subprocess per command)."""

from __future__ import annotations

import json
import pathlib
import shutil
import sqlite3
import subprocess

import jsonschema
import pytest

from tests.conftest import ROOT, Cli

SEED = ROOT / "schemas" / "clusterpack.schema.json"  # the user's InfrastructureClusterPack schema, as given
GOLDEN = ROOT / "tests" / "golden" / "examples-plan.json"


def bump(repo: pathlib.Path, pack: str, old: str, new: str) -> None:
    path = repo / "packs" / pack / "packbuild.yaml"
    text = path.read_text()
    assert f"version: {old}" in text
    path.write_text(text.replace(f"version: {old}", f"version: {new}"))


def instances(cli: Cli, state: pathlib.Path) -> dict[str, dict]:
    items = cli.json("get", "instances", "--state-dir", str(state))["items"]
    return {i["metadata"]["name"]: i for i in items}


@pytest.mark.slow
def test_reconcile_then_diff_is_in_sync(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    first = cli.json("reconcile", str(examples), "--state-dir", str(state_dir))
    assert first["summary"]["ready"] is True
    assert first["summary"]["changes"] == {"ClusterPack create": 5, "PackInstance create": 15}
    second = cli.json("reconcile", str(examples), "--state-dir", str(state_dir))
    assert second["summary"]["writes"] == 0
    assert {c["action"] for c in second["changes"]} == {"unchanged"}
    diff = cli("diff", str(examples), "--state-dir", str(state_dir), check=0)
    assert "no changes" in diff.stdout


@pytest.mark.slow
def test_every_cluster_pack_validates_against_the_seed_schema(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    seed = json.loads(SEED.read_text())
    cli("reconcile", str(examples), "--state-dir", str(state_dir))
    packs = cli.json("get", "packs", "--state-dir", str(state_dir))["items"]
    assert len(packs) == 5
    for obj in packs:
        jsonschema.validate(obj, seed)
        spec = obj["spec"]
        assert spec["executionOrder"] and spec["provenance"]["commit"].startswith("dir@sha256:")
        assert obj["metadata"]["name"] == f"{spec['basePackName']}-v{spec['version']}"
        assert obj["status"]["signed"] is True and obj["status"]["packSignature"]
        assert spec["registryRef"]["digest"].startswith("sha256:")
    helm = next(p for p in packs if p["spec"]["basePackName"] == "cert-manager-lite")["spec"]
    assert (helm["chartName"], helm["chartVersion"]) == ("cert-manager-lite", "0.9.1")
    assert helm["helmVersion"].startswith("v4.")
    full = next(p for p in packs if p["spec"]["basePackName"] == "observability")["spec"]
    assert [s["name"] for s in full["executionOrder"]] == ["rbac", "storage", "stateful", "stateless"]
    assert full["rbacDigest"] and full["clusterScopedDigest"] and full["workloadDigest"]


@pytest.mark.slow
def test_version_bump_upgrades_in_place_and_going_back_rolls_back(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    cli("reconcile", str(examples), "--state-dir", str(state_dir))
    before = instances(cli, state_dir)["web-frontend-prod-eu"]
    bump(examples, "web-frontend", "v1.4.2", "v1.5.0")
    (examples / "packs/web-frontend/base/deployment.yaml").write_text(
        (examples / "packs/web-frontend/base/deployment.yaml").read_text().replace("web:1.4.2", "web:1.5.0")
    )
    assert cli("diff", str(examples), "--state-dir", str(state_dir), check=1).returncode == 1
    up = cli.json("reconcile", str(examples), "--state-dir", str(state_dir))
    sup = [c for c in up["changes"] if c["action"] == "supersede"]
    assert sorted((c["name"], c["upgradeDirection"], c["upgradeFromVersion"], c["version"]) for c in sup) == [
        ("web-frontend-prod-eu", "Upgrade", "1.4.2", "1.5.0"),
        ("web-frontend-prod-us", "Upgrade", "1.4.2", "1.5.0"),
    ]
    after = instances(cli, state_dir)["web-frontend-prod-eu"]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["status"]["history"][-1]["state"] == "upgraded"

    bump(examples, "web-frontend", "v1.5.0", "v1.4.2")
    (examples / "packs/web-frontend/base/deployment.yaml").write_text(
        (examples / "packs/web-frontend/base/deployment.yaml").read_text().replace("web:1.5.0", "web:1.4.2")
    )
    back = cli.json("reconcile", str(examples), "--state-dir", str(state_dir))
    assert not [c for c in back["changes"] if c["kind"] == "ClusterPack" and c["action"] == "create"]  # kept for rollback
    rolled = [c for c in back["changes"] if c["action"] == "supersede"]
    assert {(c["upgradeDirection"], c["upgradeFromVersion"], c["version"]) for c in rolled} == {("Rollback", "1.5.0", "1.4.2")}
    assert instances(cli, state_dir)["web-frontend-prod-eu"]["metadata"]["uid"] == before["metadata"]["uid"]


@pytest.mark.slow
def test_deleting_a_pack_uninstalls_its_instances(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    cli("reconcile", str(examples), "--state-dir", str(state_dir))
    shutil.rmtree(examples / "packs" / "network-policies")
    result = cli.json("reconcile", str(examples), "--state-dir", str(state_dir))
    gone = sorted(c["name"] for c in result["changes"] if c["action"] == "uninstall")
    assert gone == ["network-policies-dev", "network-policies-prod-eu", "network-policies-prod-us", "network-policies-staging"]
    assert not [n for n in instances(cli, state_dir) if n.startswith("network-policies")]  # deleted, as on Kubernetes
    events = cli.json("get", "events", "--state-dir", str(state_dir))["items"]
    assert sorted(e["name"] for e in events if e["reason"] == "Uninstalled") == gone
    packs = [p["metadata"]["name"] for p in cli.json("get", "packs", "--state-dir", str(state_dir))["items"]]
    assert "network-policies-v1.1.0" in packs  # kept so a revert rolls back without recompiling
    assert cli("diff", str(examples), "--state-dir", str(state_dir), check=0).returncode == 0


@pytest.mark.slow
def test_digests_are_identical_across_processes_and_machines(cli: Cli, examples: pathlib.Path, tmp_path: pathlib.Path) -> None:
    a = cli.json("dry-run", str(examples), "--state-dir", str(tmp_path / "a"))
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(examples, moved)
    b = cli.json("dry-run", str(moved), "--state-dir", str(tmp_path / "b"))

    def digests(doc: dict) -> dict[str, tuple]:
        return {p["metadata"]["name"]: (p["spec"]["checksum"], p["spec"]["registryRef"]["digest"], p["spec"].get("rbacDigest"),
                                        p["spec"].get("clusterScopedDigest"), p["spec"].get("workloadDigest"))
                for p in doc["clusterPacks"]}

    assert digests(a) == digests(b)
    assert len(digests(a)) == 5


@pytest.mark.slow
def test_golden_plan_for_examples_repo(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    doc = cli.json("dry-run", str(examples), "--state-dir", str(state_dir))
    got = {
        "changes": [[c["kind"], c["name"], c["action"], c.get("upgradeDirection"), c.get("cluster")] for c in doc["changes"]],
        "packs": {p["metadata"]["name"]: {
            "checksum": p["spec"]["checksum"],
            "digest": p["spec"]["registryRef"]["digest"],
            "targetClusters": p["spec"]["targetClusters"],
            "executionOrder": [s["name"] for s in p["spec"]["executionOrder"]],
        } for p in doc["clusterPacks"]},
    }
    assert got == json.loads(GOLDEN.read_text())


def pack_block(stdout: str, pack: str) -> list[str]:
    """The lines of one pack in the table output: its heading and the indented lines under it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {pack} "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("      ")), len(lines))
    return lines[start:end]


@pytest.mark.slow
def test_the_compile_output_lists_kept_hooks(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    out = cli("dry-run", str(examples), "--state-dir", str(state_dir)).stdout
    block = pack_block(out, "cert-manager-lite")
    assert block[1] == "      hooks: post-install Job/cert-manager/cert-manager-lite-startupapicheck"
    notes = [line for line in out.splitlines() if line.startswith(("      hooks:", "      warning:"))]
    assert notes == [block[1]]  # no other pack of examples-repo has hooks or warnings


@pytest.mark.slow
def test_the_compile_output_lists_hooks_by_weight_dropped_test_hooks_and_warnings(
        cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    templates = examples / "packs/cert-manager-lite/chart/templates"
    (templates / "more-hooks.yaml").write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-migrate\n"
        "  namespace: {{ .Release.Namespace }}\n  annotations:\n    helm.sh/hook: pre-install,pre-upgrade\n"
        "    helm.sh/hook-weight: \"-5\"\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n"
        "      containers: [{name: m, image: \"busybox:1.36\"}]\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {{ .Release.Name }}-smoke\n  annotations:\n"
        "    helm.sh/hook: test\nspec:\n  containers: [{name: t, image: \"busybox:1.36\"}]\n")
    (examples / "packs/network-policies/manifests/widget.yaml").write_text(
        "apiVersion: example.com/v1\nkind: ClusterWidget\nmetadata: {name: w}\n")
    out = cli("dry-run", str(examples), "--state-dir", str(state_dir)).stdout
    assert pack_block(out, "cert-manager-lite")[1] == (
        "      hooks: pre-install,pre-upgrade Job/cert-manager/cert-manager-lite-migrate (weight -5), "
        "post-install Job/cert-manager/cert-manager-lite-startupapicheck; dropped: Pod/cert-manager-lite-smoke (test)")
    warning = ("ClusterWidget (example.com/v1): no CRD for it in this pack, another pack or gitopsd.yaml's crds, taken "
               "as cluster-scoped (its name starts with Cluster) and given no namespace; if that is wrong, add its CRD "
               "to a pack or its scope to crds in gitopsd.yaml")
    assert pack_block(out, "network-policies")[1] == f"      warning: {warning}"

    doc = cli.json("dry-run", str(examples), "--state-dir", str(state_dir))
    assert doc["summary"]["packNotes"] == [
        {"pack": "cert-manager-lite", "version": "0.9.1", "hooks": [
            {"object": "Job/cert-manager/cert-manager-lite-migrate", "phases": ["pre-install", "pre-upgrade"],
             "weight": -5, "deletePolicies": ["before-hook-creation"]},
            {"object": "Job/cert-manager/cert-manager-lite-startupapicheck", "phases": ["post-install"],
             "weight": 0, "deletePolicies": ["before-hook-creation"]}],
         "droppedHooks": ["Pod/cert-manager-lite-smoke (test)"], "warnings": []},
        {"pack": "network-policies", "version": "1.1.0", "hooks": [], "droppedHooks": [], "warnings": [warning]},
    ]


@pytest.mark.slow
def test_dry_run_writes_nothing(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    out = cli("dry-run", str(examples), "--state-dir", str(state_dir))
    assert "to create" in out.stdout
    assert cli.json("get", "packs", "--state-dir", str(state_dir))["items"] == []
    assert not list((state_dir / "oci" / "blobs" / "sha256").iterdir())
    assert not (state_dir / "keys").exists()


@pytest.mark.slow
def test_one_bad_pack_does_not_stop_the_others_and_nothing_of_it_is_applied(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    bad = examples / "packs" / "broken"
    (bad / "m").mkdir(parents=True)
    (bad / "packbuild.yaml").write_text(
        "name: broken\nversion: 1.0.0\nbasePackName: broken\ncategory: raw\nrawSource: {path: m}\ntargetClusters: [dev]\n"
    )
    (bad / "m" / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\nkind: Secret\nmetadata: {name: x}\n")
    proc = cli("reconcile", str(examples), "--state-dir", str(state_dir), check=1)
    assert "packs/broken" in proc.stdout and "field 'apiVersion' is missing" in proc.stdout
    assert "6 packs (5 compiled, 0 cached, 1 failed)" in proc.stdout  # every pack tried is counted
    names = [p["metadata"]["name"] for p in cli.json("get", "packs", "--state-dir", str(state_dir))["items"]]
    assert len(names) == 5 and not any(n.startswith("broken") for n in names)
    assert cli("diff", str(examples), "--state-dir", str(state_dir), check=1).returncode == 1  # as reconcile


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: (r / "packs/web-frontend/overlays/prod/kustomization.yaml").write_text(
            "resources:\n  - https://github.com/example/base?ref=v1\n"), "remote base 'https://github.com/example/base?ref=v1' is refused"),
        (lambda r: (r / "packs/network-policies/packbuild.yaml").write_text(
            (r / "packs/network-policies/packbuild.yaml").read_text() + "replicas: 3\n"), "field 'replicas': unknown key in PackBuild"),
        (lambda r: (r / "packs/network-policies/manifests/escape.yaml").symlink_to("/etc/hostname"), "outside the config repo"),
        (lambda r: (r / "packs/network-policies/packbuild.yaml").write_text(
            (r / "packs/network-policies/packbuild.yaml").read_text().replace("path: manifests", "path: ../../../outside")),
         "leaves the config repo"),
        (lambda r: (r / "packs/network-policies/packbuild.yaml").write_text(
            (r / "packs/network-policies/packbuild.yaml").read_text().replace("[prod-eu,", "[mars,")), "cluster 'mars' is not defined"),
    ],
    ids=["kustomize-remote-base", "unknown-key", "symlink-escape", "dotdot-escape", "unknown-cluster"],
)
def test_bad_input_gives_one_clear_line_and_others_still_reconcile(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path, mutate, message: str) -> None:
    mutate(examples)
    proc = cli("reconcile", str(examples), "--state-dir", str(state_dir), check=1)
    error_lines = [line for line in proc.stdout.splitlines() if message in line]
    assert len(error_lines) == 1, proc.stdout
    assert "packs/" in error_lines[0]
    assert "5 packs (4 compiled, 0 cached, 1 failed)" in proc.stdout  # every pack tried is counted


@pytest.mark.slow
def test_immutability_violation_is_refused_and_nothing_overwritten(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    cli("reconcile", str(examples), "--state-dir", str(state_dir))
    before = {p["metadata"]["name"]: p for p in cli.json("get", "packs", "--state-dir", str(state_dir))["items"]}
    path = examples / "packs/network-policies/manifests/default-deny.yaml"
    path.write_text(path.read_text().replace("protocol: UDP", "protocol: TCP"))
    proc = cli("reconcile", str(examples), "--state-dir", str(state_dir), check=1)
    assert "ImmutabilityViolation" in proc.stdout or "immutable" in proc.stdout
    after = {p["metadata"]["name"]: p for p in cli.json("get", "packs", "--state-dir", str(state_dir))["items"]}
    assert after == before


def test_git_work_tree_is_read_at_head(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    git = ["git", "-C", str(examples), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "packs"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    bump(examples, "network-policies", "1.1.0", "9.9.9")  # uncommitted: not desired state
    doc = cli.json("dry-run", str(examples), "--state-dir", str(state_dir))
    assert doc["revision"] == f"main@sha1:{head}"
    assert "git work tree" in doc["source"]
    assert {p["spec"]["version"] for p in doc["clusterPacks"] if p["spec"]["basePackName"] == "network-policies"} == {"1.1.0"}


def test_state_dir_inside_the_repo_is_refused(cli: Cli, examples: pathlib.Path) -> None:
    proc = cli("reconcile", str(examples), "--state-dir", str(examples / ".state"), check=2)
    assert "inside the config repo" in proc.stderr


@pytest.mark.slow
def test_verify_detects_a_tampered_spec(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    cli("reconcile", str(examples), "--state-dir", str(state_dir))
    assert cli("verify", "--state-dir", str(state_dir), check=0).stdout.count("ok ") == 5
    db = sqlite3.connect(state_dir / "store.db")
    body = db.execute("SELECT body FROM objects WHERE name='web-frontend-v1.4.2'").fetchone()[0]
    db.execute("UPDATE objects SET body=? WHERE name='web-frontend-v1.4.2'", (body.replace('"prod-eu"', '"prod-eX"', 1),))
    db.commit()
    db.close()
    proc = cli("verify", "--state-dir", str(state_dir), check=1)
    assert "FAIL web-frontend-v1.4.2: signature does not verify" in proc.stdout
    assert "4 of 5 verified (5 ClusterPacks, 0 status records)" in proc.stdout
