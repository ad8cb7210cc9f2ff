"""``gitopsd plan REPO --base REF``: two revisions of a real Git config repo compared object by object,
run as a user runs it (a subprocess per command)."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from tests.conftest import Cli
from tests.gitutil import git

DEPLOYMENT_DIFF_CERT = [
    "--- base/Deployment/cert-manager/cert-manager-lite-controller",
    "+++ head/Deployment/cert-manager/cert-manager-lite-controller",
    "@@ -8,7 +8,7 @@",
    "   name: cert-manager-lite-controller",
    "   namespace: cert-manager",
    " spec:",
    "-  replicas: 2",
    "+  replicas: 3",
    "   selector:",
    "     matchLabels:",
    "       app.kubernetes.io/name: cert-manager-lite",
]
DEPLOYMENT_DIFF_WEB = [
    "--- base/Deployment/web/web",
    "+++ head/Deployment/web/web",
    "@@ -6,7 +6,7 @@",
    "   name: web",
    "   namespace: web",
    " spec:",
    "-  replicas: 3",
    "+  replicas: 4",
    "   selector:",
    "     matchLabels:",
    "       app: web",
]


def edit(repo: pathlib.Path, path: str, old: str, new: str) -> None:
    target = repo / path
    text = target.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {path}"
    target.write_text(text.replace(old, new))


def commit(repo: pathlib.Path, message: str) -> None:
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)


@pytest.fixture
def repo(examples: pathlib.Path) -> pathlib.Path:
    """examples-repo as a Git work tree with one commit."""
    git("init", "-q", "-b", "main", cwd=examples)
    commit(examples, "examples")
    return examples


@pytest.fixture
def changed(repo: pathlib.Path) -> pathlib.Path:
    """A second commit: a chart values change, a kustomize patch change and a removed raw object,
    each pack with a new version."""
    edit(repo, "packs/cert-manager-lite/packbuild.yaml", "replicaCount: 2", "replicaCount: 3")
    edit(repo, "packs/cert-manager-lite/packbuild.yaml", "\nversion: 0.9.1", "\nversion: 0.9.2")
    edit(repo, "packs/web-frontend/overlays/prod/kustomization.yaml", "value: 3", "value: 4")
    edit(repo, "packs/web-frontend/packbuild.yaml", "version: v1.4.2", "version: v1.4.3")
    policies = repo / "packs/network-policies/manifests/default-deny.yaml"
    policies.write_text(policies.read_text().split("---\n")[0])  # allow-dns goes
    edit(repo, "packs/network-policies/packbuild.yaml", "version: 1.1.0", "version: 1.2.0")
    commit(repo, "values, patch, a removed policy")
    return repo


def plan(cli: Cli, repo: pathlib.Path, state: pathlib.Path, *args: str, check: int = 1):  # type: ignore[no-untyped-def]
    return cli("plan", str(repo), "--state-dir", str(state), *args, check=check)


@pytest.mark.slow
def test_plan_shows_each_changed_object_per_cluster_with_its_diff(cli: Cli, changed: pathlib.Path, state_dir: pathlib.Path) -> None:
    doc = json.loads(plan(cli, changed, state_dir, "--base", "HEAD~1", "-o", "json").stdout)
    assert doc["kind"] == "RevisionPlan"
    assert re.fullmatch(r"HEAD~1@sha1:[0-9a-f]{40}", doc["base"]) and re.fullmatch(r"main@sha1:[0-9a-f]{40}", doc["head"])
    assert doc["summary"] == {"packsChanged": 3, "packsUnchanged": 2, "instances": {"supersede": 9},
                              "objects": {"added": 0, "removed": 1, "changed": 2}, "errors": 0}
    assert doc["rollouts"] == [] and doc["baseErrors"] == []
    packs = {p["basePackName"]: p for p in doc["packs"]}
    assert list(packs) == ["cert-manager-lite", "network-policies", "web-frontend"]

    def cluster(name: str, instance: str, old: str, new: str, objects: dict) -> dict:
        return {"cluster": name, "instance": f"{instance}-{name}", "action": "supersede", "version": new,
                "fromVersion": old, "direction": "Upgrade", "reason": f"upgrade {old} -> {new}", "objects": objects}

    cert = {"added": [], "removed": [], "changed": [{"object": "Deployment/cert-manager/cert-manager-lite-controller",
                                                     "diff": DEPLOYMENT_DIFF_CERT}]}
    assert packs["cert-manager-lite"] == {
        "basePackName": "cert-manager-lite", "baseVersion": "0.9.1", "headVersion": "0.9.2",
        "objects": {"added": 0, "removed": 0, "changed": 1},
        "clusters": [cluster(c, "cert-manager-lite", "0.9.1", "0.9.2", cert) for c in ("prod-eu", "prod-us", "staging")],
        "errors": []}
    pruned = {"added": [], "removed": ["NetworkPolicy/web/allow-dns"], "changed": []}
    assert packs["network-policies"]["clusters"] == [
        cluster(c, "network-policies", "1.1.0", "1.2.0", pruned) for c in ("dev", "prod-eu", "prod-us", "staging")]
    web = {"added": [], "removed": [], "changed": [{"object": "Deployment/web/web", "diff": DEPLOYMENT_DIFF_WEB}]}
    assert packs["web-frontend"]["clusters"] == [cluster(c, "web-frontend", "1.4.2", "1.4.3", web) for c in ("prod-eu", "prod-us")]


@pytest.mark.slow
def test_plan_table_groups_clusters_and_prints_the_diff(cli: Cli, changed: pathlib.Path, state_dir: pathlib.Path) -> None:
    out = plan(cli, changed, state_dir, "--base", "HEAD~1").stdout.splitlines()
    assert "\033[" not in "\n".join(out)  # not a TTY: no colour
    start = out.index("  network-policies 1.1.0 → 1.2.0")
    assert out[start:start + 2] == [
        "  network-policies 1.1.0 → 1.2.0",
        "      supersede dev, prod-eu, prod-us, staging: Upgrade 1.1.0 → 1.2.0  objects +0 -1 ~0",
    ]
    assert out[start + 2] == "          - NetworkPolicy/web/allow-dns (pruned)"
    web = out.index("  web-frontend 1.4.2 → 1.4.3")
    assert out[web + 1:web + 3] == ["      supersede prod-eu, prod-us: Upgrade 1.4.2 → 1.4.3  objects +0 -0 ~1",
                                    "          ~ Deployment/web/web"]
    assert [line.strip() for line in out[web + 3:web + 12]] == [line.strip() for line in DEPLOYMENT_DIFF_WEB[2:]]
    assert out[-2] == "3 pack(s) changed, 2 unchanged; instances: 9 supersede; objects: 0 added, 1 removed, 2 changed"


@pytest.mark.slow
def test_second_plan_renders_nothing_again_and_gives_the_same_report(cli: Cli, changed: pathlib.Path,
                                                                     state_dir: pathlib.Path) -> None:
    first = json.loads(plan(cli, changed, state_dir, "--base", "HEAD~1", "-o", "json").stdout)
    second = json.loads(plan(cli, changed, state_dir, "--base", "HEAD~1", "-o", "json").stdout)
    first.pop("timings"), second.pop("timings")
    assert second == first
    table = plan(cli, changed, state_dir, "--base", "HEAD~1").stdout
    assert "rendered again" not in table  # the objects of cached packs came from the layer cache


@pytest.mark.slow
def test_same_revision_exits_0(cli: Cli, repo: pathlib.Path, state_dir: pathlib.Path) -> None:
    out = plan(cli, repo, state_dir, "--base", "HEAD", "--head", "main", check=0).stdout.splitlines()
    assert out[-2] == "no changes; 5 pack(s) unchanged"
    doc = json.loads(plan(cli, repo, state_dir, "--base", "main", "-o", "json", check=0).stdout)
    assert (doc["packs"], doc["summary"]["packsUnchanged"]) == ([], 5)


@pytest.mark.parametrize(("args", "message"), [
    (("--base", "no-such-branch"), r"error: --base no-such-branch: no such revision in .*; give a branch, tag or commit "
                                   r"the repository has \(fetch it first, e.g. git fetch origin main\) \(reason UnknownRevision\)"),
    (("--base", "HEAD", "--head", "v9"), r"error: --head v9: no such revision in .*"),
], ids=["unknown-base", "unknown-head"])
def test_unknown_revision_exits_2_with_one_line(cli: Cli, repo: pathlib.Path, state_dir: pathlib.Path,
                                                args: tuple[str, ...], message: str) -> None:
    proc = plan(cli, repo, state_dir, *args, check=2)
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and re.fullmatch(message, proc.stderr.strip())


def test_a_folder_that_is_not_a_git_repository_exits_2(cli: Cli, examples: pathlib.Path, state_dir: pathlib.Path) -> None:
    proc = plan(cli, examples, state_dir, "--base", "HEAD~1", check=2)
    assert proc.stderr.strip() == (f"error: {examples} is not a Git repository; gitopsd plan compares two revisions of a "
                                   "Git work tree or bare repository: give the path of a clone (reason NotARepository)")


@pytest.mark.slow
def test_new_pack_removed_pack_and_a_manifest_edit_without_a_version_bump(cli: Cli, repo: pathlib.Path,
                                                                          state_dir: pathlib.Path) -> None:
    (repo / "packs/extra/manifests").mkdir(parents=True)
    (repo / "packs/extra/packbuild.yaml").write_text(
        "name: extra\nversion: 0.1.0\nbasePackName: extra\ncategory: raw\nrawSource: {path: manifests}\n"
        "targetClusters: [dev]\n")
    (repo / "packs/extra/manifests/cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: web}\ndata: {a: '1'}\n")
    git("rm", "-r", "-q", "packs/observability", cwd=repo)
    edit(repo, "packs/platform-base/manifests/scheduling.yaml", "value: ", "value: 1")  # same version: immutable
    commit(repo, "add extra, remove observability, edit platform-base in place")
    doc = json.loads(plan(cli, repo, state_dir, "--base", "HEAD~1", "-o", "json").stdout)
    packs = {p["basePackName"]: p for p in doc["packs"]}
    assert list(packs) == ["extra", "observability", "platform-base"]
    assert packs["extra"]["clusters"] == [{
        "cluster": "dev", "instance": "extra-dev", "action": "create", "version": "0.1.0", "fromVersion": None,
        "direction": "Initial", "reason": "initial install",
        "objects": {"added": ["ConfigMap/web/extra"], "removed": [], "changed": []}}]
    gone = packs["observability"]
    assert (gone["baseVersion"], gone["headVersion"]) == ("2.3.0", None)
    assert [(c["cluster"], c["action"], c["version"], c["fromVersion"]) for c in gone["clusters"]] == [
        ("prod-eu", "uninstall", None, "2.3.0"), ("prod-us", "uninstall", None, "2.3.0")]
    assert gone["clusters"][0]["objects"]["removed"] == gone["clusters"][1]["objects"]["removed"]
    assert len(gone["clusters"][0]["objects"]["removed"]) == 9
    blocked = packs["platform-base"]["clusters"]
    assert {(c["action"], c["reason"]) for c in blocked} == {("blocked", "ImmutabilityViolation")}
    assert {c["objects"]["changed"] == [] and c["version"] == c["fromVersion"] for c in blocked} == {True}


SECRET_BASE = """apiVersion: v1
kind: Secret
metadata: {name: db, namespace: web}
type: Opaque
data: {password: b2xkLXBhc3N3b3Jk, user: YWRtaW4=}
stringData: {token: old-token-value}
"""
SECRET_HEAD = """apiVersion: v1
kind: Secret
metadata: {name: db, namespace: web}
type: Opaque
data: {password: bmV3LXBhc3N3b3Jk, user: YWRtaW4=, apiKey: c2VjcmV0LWtleQ==}
stringData: {token: new-token-value}
"""
SECRET_VALUES = ("b2xkLXBhc3N3b3Jk", "bmV3LXBhc3N3b3Jk", "YWRtaW4=", "c2VjcmV0LWtleQ==", "old-token-value", "new-token-value",
                 "old-password", "new-password", "secret-key")


@pytest.mark.slow
def test_secret_values_are_never_printed_only_which_keys_changed(cli: Cli, repo: pathlib.Path, state_dir: pathlib.Path) -> None:
    (repo / "packs/creds/manifests").mkdir(parents=True)
    (repo / "packs/creds/packbuild.yaml").write_text(
        "name: creds\nversion: 1.0.0\nbasePackName: creds\ncategory: raw\nrawSource: {path: manifests}\ntargetClusters: [dev]\n")
    (repo / "packs/creds/manifests/secret.yaml").write_text(SECRET_BASE)
    commit(repo, "creds")
    (repo / "packs/creds/manifests/secret.yaml").write_text(SECRET_HEAD)
    edit(repo, "packs/creds/packbuild.yaml", "version: 1.0.0", "version: 1.0.1")
    commit(repo, "rotate creds")
    doc = json.loads(plan(cli, repo, state_dir, "--base", "HEAD~1", "-o", "json").stdout)
    (creds,) = doc["packs"]
    assert creds["clusters"][0]["objects"]["changed"] == [{"object": "Secret/web/db", "diff": [
        "--- base/Secret/web/db",
        "+++ head/Secret/web/db",
        "@@ -1,11 +1,12 @@",
        " apiVersion: v1",
        " data:",
        "-  password: (hidden)",
        "+  apiKey: (hidden, changed)",
        "+  password: (hidden, changed)",
        "   user: (hidden)",
        " kind: Secret",
        " metadata:",
        "   name: db",
        "   namespace: web",
        " stringData:",
        "-  token: (hidden)",
        "+  token: (hidden, changed)",
        " type: Opaque",
    ]}]
    outputs = [plan(cli, repo, state_dir, "--base", "HEAD~1", *fmt).stdout for fmt in ((), ("-o", "json"), ("-o", "markdown"))]
    # and a Secret that only appears (the base revision lacks it) shows no value either
    outputs.append(plan(cli, repo, state_dir, "--base", "HEAD~2", "-o", "json").stdout)
    for text in outputs:
        assert "Secret/web/db" in text
        assert [v for v in SECRET_VALUES if v in text] == []


@pytest.mark.slow
def test_markdown_is_a_summary_table_then_one_collapsible_block_per_pack(cli: Cli, changed: pathlib.Path,
                                                                         state_dir: pathlib.Path) -> None:
    text = plan(cli, changed, state_dir, "--base", "HEAD~1", "-o", "markdown", "--max-diff-lines", "5").stdout
    lines = text.splitlines()
    assert re.fullmatch(r"### gitopsd plan: <code>HEAD~1@sha1:[0-9a-f]{12}</code> → <code>main@sha1:[0-9a-f]{12}</code>", lines[0])
    assert lines[2:10] == [
        "3 pack(s) changed, 2 unchanged; instances: 9 supersede; objects: 0 added, 1 removed, 2 changed",
        "",
        "| pack | version | clusters | added | removed | changed |",
        "|---|---|---|---:|---:|---:|",
        "| cert-manager-lite | 0.9.1 → 0.9.2 | supersede prod-eu, prod-us, staging | 0 | 0 | 1 |",
        "| network-policies | 1.1.0 → 1.2.0 | supersede dev, prod-eu, prod-us, staging | 0 | 1 | 0 |",
        "| web-frontend | 1.4.2 → 1.4.3 | supersede prod-eu, prod-us | 0 | 0 | 1 |",
        "",
    ]
    blocks = re.findall(r"<details>\n<summary>(.*?)</summary>\n(.*?)</details>\n", text, flags=re.S)
    assert [summary for summary, _ in blocks] == [
        "<b>cert-manager-lite</b> 0.9.1 → 0.9.2: +0 -0 ~1",
        "<b>network-policies</b> 1.1.0 → 1.2.0: +0 -1 ~0",
        "<b>web-frontend</b> 1.4.2 → 1.4.3: +0 -0 ~1",
    ]
    assert text.count("<details>") == text.count("</details>") == 3
    web = blocks[2][1]
    assert web == ("\n**prod-eu, prod-us**: supersede, Upgrade 1.4.2 → 1.4.3\n\n- changed <code>Deployment/web/web</code>\n\n"
                   "```diff\n" + "\n".join(DEPLOYMENT_DIFF_WEB[:5]) + "\n```\n(6 more line(s) of this diff cut)\n\n")
    assert blocks[1][1] == ("\n**dev, prod-eu, prod-us, staging**: supersede, Upgrade 1.1.0 → 1.2.0\n\n"
                            "- removed (pruned) <code>NetworkPolicy/web/allow-dns</code>\n\n")


@pytest.mark.slow
def test_a_pack_that_would_own_another_packs_object_is_blocked_with_both_named(cli: Cli, repo: pathlib.Path,
                                                                              state_dir: pathlib.Path) -> None:
    (repo / "packs/dup/m").mkdir(parents=True)
    (repo / "packs/dup/packbuild.yaml").write_text(
        "name: dup\nversion: 0.1.0\nbasePackName: dup\ncategory: raw\nrawSource: {path: m}\ntargetClusters: [prod-eu]\n")
    (repo / "packs/dup/m/svc.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: web}\nspec: {ports: [{port: 80}]}\n")
    commit(repo, "a second owner of Service/web/web")
    doc = json.loads(plan(cli, repo, state_dir, "--base", "HEAD~1", "-o", "json").stdout)
    assert doc["summary"]["instances"] == {"blocked": 1}
    (dup,) = doc["packs"]
    assert (dup["basePackName"], dup["baseVersion"], dup["headVersion"]) == ("dup", None, "0.1.0")
    assert dup["clusters"] == [{
        "cluster": "prod-eu", "instance": "dup-prod-eu", "action": "blocked", "version": None, "fromVersion": None,
        "direction": None, "reason": "PackCollisionDetected",
        "message": "dup-v0.1.0 (packs/dup/packbuild.yaml, priority 0) collides with web-frontend-v1.4.2 "
                   "(packs/web-frontend/packbuild.yaml, priority 10) on cluster prod-eu: both own Service/web/web; "
                   "web-frontend-v1.4.2 wins (higher priority). Raise 'priority' or remove the overlap.",
        "objects": {"added": [], "removed": [], "changed": []}}]
    table = plan(cli, repo, state_dir, "--base", "HEAD~1").stdout.splitlines()
    assert table[2].startswith("      blocked   prod-eu: PackCollisionDetected: dup-v0.1.0 (packs/dup/packbuild.yaml")


def raw_pack(repo: pathlib.Path, name: str) -> None:
    (repo / f"packs/{name}/manifests").mkdir(parents=True)
    (repo / f"packs/{name}/packbuild.yaml").write_text(
        f"name: {name}\nversion: 0.1.0\nbasePackName: {name}\ncategory: raw\nrawSource: {{path: manifests}}\n"
        "targetClusters: [dev]\n")
    (repo / f"packs/{name}/manifests/cm.yaml").write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: web}}\ndata: {{a: '1'}}\n")


@pytest.mark.slow
def test_without_head_the_uncommitted_work_tree_is_planned_untracked_files_included(
        cli: Cli, repo: pathlib.Path, state_dir: pathlib.Path) -> None:
    (repo / ".gitignore").write_text("packs/scratch/\n")
    commit(repo, "ignore packs/scratch")
    policies = repo / "packs/network-policies/manifests/default-deny.yaml"
    policies.write_text(policies.read_text().split("---\n")[0])  # an uncommitted change: allow-dns goes
    edit(repo, "packs/network-policies/packbuild.yaml", "version: 1.1.0", "version: 1.2.0")
    raw_pack(repo, "extra")  # untracked: git status shows it
    raw_pack(repo, "scratch")  # ignored: git status does not
    index = (repo / ".git/index").read_bytes()
    status = git("status", "--porcelain", cwd=repo).stdout
    objects = git("count-objects", "-v", cwd=repo).stdout

    doc = json.loads(plan(cli, repo, state_dir, "--base", "HEAD", "-o", "json").stdout)

    assert re.fullmatch(r"main\+worktree@sha1:[0-9a-f]{40}", doc["head"]), doc["head"]
    packs = {p["basePackName"]: p for p in doc["packs"]}
    assert list(packs) == ["extra", "network-policies"]
    assert [c["objects"] for c in packs["extra"]["clusters"]] == [
        {"added": ["ConfigMap/web/extra"], "removed": [], "changed": []}]
    assert {(c["action"], c["version"], tuple(c["objects"]["removed"])) for c in packs["network-policies"]["clusters"]} == {
        ("supersede", "1.2.0", ("NetworkPolicy/web/allow-dns",))}
    # the repository is as it was: index, status, no object written into it
    assert (repo / ".git/index").read_bytes() == index
    assert git("status", "--porcelain", cwd=repo).stdout == status
    assert git("count-objects", "-v", cwd=repo).stdout == objects
    table = plan(cli, repo, state_dir, "--base", "HEAD").stdout
    assert re.search(r"work tree \(uncommitted changes on main [0-9a-f]{12}\)", table.splitlines()[0]), table.splitlines()[0]
    committed = json.loads(plan(cli, repo, state_dir, "--base", "HEAD", "--head", "HEAD", "-o", "json", check=0).stdout)
    assert committed["packs"] == []  # --head HEAD leaves the work tree out


@pytest.mark.slow
def test_without_head_a_bare_repository_is_planned_at_its_branch_tip(cli: Cli, changed: pathlib.Path,
                                                                      state_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    bare = tmp_path / "config.git"
    git("clone", "-q", "--bare", str(changed), str(bare), cwd=tmp_path)
    raw_pack(changed, "extra")  # in the clone's work tree only: not in the bare repository

    doc = json.loads(plan(cli, bare, state_dir, "--base", "HEAD~1", "-o", "json").stdout)

    assert re.fullmatch(r"main@sha1:[0-9a-f]{40}", doc["head"])
    assert [p["basePackName"] for p in doc["packs"]] == ["cert-manager-lite", "network-policies", "web-frontend"]
