"""Compile: canonical checksum, layers, artifact determinism, and bad manifests."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gitopsd import errors
from gitopsd.core import compile as compile_core
from gitopsd.model import pack, spec

BUILD = spec.PackBuild(
    path="packs/demo/packbuild.yaml",
    name="demo",
    version="1.0.0",
    base_pack_name="demo",
    targets=(spec.ClusterTarget(name="a"),),
    category=spec.Category.RAW,
    source=spec.RawSource("packs/demo/manifests"),
    namespace="apps",
)
INPUTS = compile_core.Inputs(
    namespace="seam-system",
    registry="registry.example.com/packs",
    target_clusters=("a",),
    revision="main@sha1:" + "1" * 40,
    commit_time="2026-01-01T00:00:00Z",
    tree_id="sha1:" + "2" * 40,
    compiler="gitopsd/test",
)

DEPLOY = b"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
"""
DEPLOY_REFORMATTED = b"""# same object, other formatting and key order
kind: Deployment
spec: {replicas: 2}
metadata: {labels: {"app": "web"}, name: web}
apiVersion: "apps/v1"
"""
SA = b"""apiVersion: v1
kind: ServiceAccount
metadata: {name: runner}
"""
CRD = b"""apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec: {group: example.com, scope: Cluster, names: {kind: Widget, plural: widgets}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: one}
"""
PVC = b"""apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {resources: {requests: {storage: 1Gi}}}
"""


def compile_docs(*docs: tuple[str, bytes], build: spec.PackBuild = BUILD) -> pack.CompiledPack:
    return compile_core.compile_pack(build, tuple(docs), renderers=(("raw", "1"),), chart=None, inputs=INPUTS)


def test_reformatting_yaml_keeps_the_checksum_and_digests() -> None:
    a = compile_docs(("m/a.yaml", DEPLOY))
    b = compile_docs(("m/a.yaml", DEPLOY_REFORMATTED))
    assert a.cluster_pack.checksum == b.cluster_pack.checksum
    assert a.artifact is not None and b.artifact is not None
    assert a.artifact.manifest_digest == b.artifact.manifest_digest


def test_reordering_files_keeps_the_checksum() -> None:
    a = compile_docs(("m/1.yaml", DEPLOY), ("m/2.yaml", SA))
    b = compile_docs(("m/1.yaml", SA), ("m/2.yaml", DEPLOY))
    assert a.cluster_pack.checksum == b.cluster_pack.checksum
    assert a.cluster_pack.manifest_digest == b.cluster_pack.manifest_digest


@pytest.mark.parametrize(
    "changed",
    [
        DEPLOY.replace(b"replicas: 2", b"replicas: 3"),
        DEPLOY.replace(b"name: web", b"name: web2"),
        DEPLOY.replace(b"app: web}", b"app: web, tier: front}"),
        DEPLOY + b"---\n" + SA,
    ],
    ids=["value", "name", "label", "extra-object"],
)
def test_any_content_change_changes_the_checksum(changed: bytes) -> None:
    assert compile_docs(("m/a.yaml", DEPLOY)).cluster_pack.checksum != compile_docs(("m/a.yaml", changed)).cluster_pack.checksum


def test_objects_split_into_layers_and_stages() -> None:
    c = compile_docs(("m/a.yaml", DEPLOY), ("m/b.yaml", SA), ("m/c.yaml", CRD), ("m/d.yaml", PVC))
    cp = c.cluster_pack
    assert cp.execution_order == (pack.Stage.RBAC, pack.Stage.STORAGE, pack.Stage.STATELESS)
    assert c.artifact is not None
    by_type = {b.media_type: b.data.decode() for b in c.artifact.layers}
    assert set(by_type) == {layer.media_type for layer in pack.Layer}
    assert '"kind":"ServiceAccount"' in by_type[pack.Layer.RBAC.media_type]
    cluster_scoped = by_type[pack.Layer.CLUSTER_SCOPED.media_type]
    assert '"kind":"CustomResourceDefinition"' in cluster_scoped and '"kind":"Widget"' in cluster_scoped
    workload = by_type[pack.Layer.WORKLOAD.media_type]
    assert workload.index("PersistentVolumeClaim") < workload.index("Deployment")  # storage before stateless
    assert (cp.rbac_digest, cp.cluster_scoped_digest, cp.workload_digest) == tuple(b.digest for b in c.artifact.layers)


def test_cluster_scoped_layer_is_absent_when_empty() -> None:
    c = compile_docs(("m/a.yaml", DEPLOY))
    assert c.cluster_pack.cluster_scoped_digest is None
    assert c.artifact is not None and len(c.artifact.layers) == 2


def test_namespaced_objects_get_the_pack_namespace_and_cluster_scoped_ones_none() -> None:
    c = compile_docs(("m/a.yaml", DEPLOY), ("m/c.yaml", CRD))
    assert "Deployment/apps/web" in c.subjects
    assert "Widget/one" in c.subjects


def test_artifact_manifest_is_an_oci_manifest_with_digests_of_its_blobs() -> None:
    c = compile_docs(("m/a.yaml", DEPLOY), ("m/b.yaml", SA))
    art = c.artifact
    assert art is not None
    doc = json.loads(art.manifest)
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert doc["config"]["digest"] == art.config.digest
    assert [layer["digest"] for layer in doc["layers"]] == [b.digest for b in art.layers]
    assert [layer["size"] for layer in doc["layers"]] == [b.size for b in art.layers]
    assert c.cluster_pack.manifest_digest == art.manifest_digest
    assert c.cluster_pack.registry_url == "registry.example.com/packs/demo:1.0.0"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"kind: ConfigMap\nmetadata: {name: a}\n", "field 'apiVersion' is missing"),
        (b"apiVersion: v1\nmetadata: {name: a}\n", "field 'kind' is missing"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "field 'metadata.name' is missing"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n", "not a valid Kubernetes name"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: {x: 'a b'}}\n", "not a valid label value"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: {x: 1}}\n", "not a valid label value"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: 1}\ndata: {k: 2}\n", "duplicate key 'data'"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a\n", "invalid YAML"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n", "defined twice"),
        (b"\xff\xfe not utf-8", "not valid UTF-8"),
        (b"# only a comment\n", "rendered no Kubernetes objects"),
    ],
    ids=["no-apiVersion", "no-kind", "no-name", "bad-name", "bad-label", "numeric-label", "duplicate-key",
         "broken-yaml", "not-a-mapping", "duplicate-object", "not-utf8", "empty"],
)
def test_bad_manifests_give_one_line_errors_naming_the_file(doc: bytes, message: str) -> None:
    with pytest.raises(errors.GitopsdError) as caught:
        compile_docs(("packs/demo/manifests/bad.yaml", doc))
    text = str(caught.value)
    assert message in text
    assert "packs/demo" in text
    assert "\n" not in text


def test_alias_bomb_is_refused_quickly() -> None:
    bomb = b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 10)}]\n".encode()
    doc = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n" + b"".join(b"  " + line + b"\n" for line in bomb.splitlines())
    with pytest.raises(errors.SpecError, match="YAML aliases"):
        compile_docs(("m/bomb.yaml", doc))


def test_list_kind_is_flattened() -> None:
    doc = b"apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n"
    assert compile_docs(("m/l.yaml", doc)).object_count == 2


def test_timestamps_stay_strings() -> None:
    doc = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {since: 2024-01-01}\n"
    c = compile_docs(("m/t.yaml", doc))
    assert c.artifact is not None
    assert b'"since":"2024-01-01"' in c.artifact.layers[-1].data


def layer_objects(c: pack.CompiledPack) -> dict[str, list[str]]:
    assert c.artifact is not None
    out = {}
    for blob in c.artifact.layers:
        docs = [json.loads(d) for d in blob.data.decode().split("---\n") if d.strip()]
        out[blob.media_type.split(".")[-2]] = [
            f"{d['kind']}/{d['metadata'].get('namespace', '-')}/{d['metadata']['name']}" for d in docs]
    return out


SCOPES = {
    "crd-in-this-pack": (
        b"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.example.com}\n"
        b"spec: {group: example.com, scope: Cluster, names: {kind: Gadget, plural: gadgets}}\n---\n"
        b"apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n",
        {"cluster-scoped": ["CustomResourceDefinition/-/gadgets.example.com", "Gadget/-/g"], "rbac": [], "workload": []}, ()),
    "well-known-policy-engine-kinds": (
        b"apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: p}\n---\n"
        b"apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sRequiredLabels\nmetadata: {name: c}\n",
        {"cluster-scoped": ["ClusterPolicy/-/p", "K8sRequiredLabels/-/c"], "rbac": [], "workload": []}, ()),
    "unknown-kind-is-namespaced-with-a-warning": (
        b"apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
        {"rbac": [], "workload": ["Widget/apps/w"]},
        ("Widget (example.com/v1): no CRD for it in this pack, another pack or gitopsd.yaml's crds, so its scope is "
         "unknown; taken as namespaced and given namespace apps; add its CRD to a pack or its scope to crds in "
         "gitopsd.yaml, or set metadata.namespace",)),
    "unknown-cluster-named-kind-with-a-warning": (
        b"apiVersion: example.com/v1\nkind: ClusterWidget\nmetadata: {name: w}\n",
        {"cluster-scoped": ["ClusterWidget/-/w"], "rbac": [], "workload": []},
        ("ClusterWidget (example.com/v1): no CRD for it in this pack, another pack or gitopsd.yaml's crds, taken as "
         "cluster-scoped (its name starts with Cluster) and given no namespace; if that is wrong, add its CRD to a "
         "pack or its scope to crds in gitopsd.yaml",)),
    "typed-lists-expanded": (
        b"apiVersion: v1\nkind: ConfigMapList\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n"
        b"- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n",
        {"rbac": [], "workload": ["Secret/apps/b", "ConfigMap/apps/a"]}, ()),
}


@pytest.mark.parametrize(("doc", "expected", "warnings"), SCOPES.values(), ids=SCOPES.keys())
def test_scope_and_layer_of_custom_kinds_and_lists(doc: bytes, expected: dict[str, list[str]], warnings: tuple[str, ...]) -> None:
    c = compile_docs(("m/x.yaml", doc))
    assert (layer_objects(c), c.warnings) == (expected, warnings)


def test_crd_scopes_known_from_other_packs_decide_the_scope() -> None:
    inputs = dataclasses.replace(INPUTS, crd_scopes=(("example.com/Gadget", "Cluster"),))
    c = compile_core.compile_pack(BUILD, (("m/g.yaml", b"apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n"),),
                                  renderers=(("raw", "1"),), chart=None, inputs=inputs)
    assert (layer_objects(c), c.warnings) == ({"cluster-scoped": ["Gadget/-/g"], "rbac": [], "workload": []}, ())
    assert (c.crds, c.foreign_scopes) == ((), (("example.com/Gadget", "Cluster"),))


def test_a_pack_tells_its_crds_and_the_outside_scopes_it_used() -> None:
    inputs = dataclasses.replace(INPUTS, crd_scopes=(("example.com/Gadget", "Namespaced"), ("kyverno.io/Policy", "Cluster")))
    doc = (b"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.example.com}\n"
           b"spec: {group: example.com, scope: Cluster, names: {kind: Gadget, plural: gadgets}}\n---\n"
           b"apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n---\n"
           b"apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata: {name: p}\n---\n"
           b"apiVersion: example.org/v1\nkind: Widget\nmetadata: {name: w}\n---\n"
           b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    c = compile_core.compile_pack(BUILD, (("m/x.yaml", doc),), renderers=(("raw", "1"),), chart=None, inputs=inputs)
    # its own CRD wins over the scope given from outside, and is not an outside scope it used
    assert (c.crds, c.foreign_scopes) == (
        (("example.com/Gadget", "Cluster"),),
        (("example.org/Widget", ""), ("kyverno.io/ClusterPolicy", "")),
    )


KNOWN = {
    "config-first-then-packs-by-order": (
        (("kyverno.io/ClusterPolicy", "Cluster"),),
        [("packs/a/packbuild.yaml", (("example.com/Gadget", "Cluster"),)),
         ("packs/b/packbuild.yaml", (("example.com/Widget", "Namespaced"),))],
        ((("example.com/Gadget", "Cluster"), ("example.com/Widget", "Namespaced"), ("kyverno.io/ClusterPolicy", "Cluster")), ()),
    ),
    "disagreements-keep-the-first-and-are-said": (
        (("kyverno.io/ClusterPolicy", "Cluster"),),
        [("packs/a/packbuild.yaml", (("kyverno.io/ClusterPolicy", "Namespaced"), ("example.com/Gadget", "Cluster"))),
         ("packs/b/packbuild.yaml", (("example.com/Gadget", "Namespaced"),))],
        ((("example.com/Gadget", "Cluster"), ("kyverno.io/ClusterPolicy", "Cluster")), (
            "kyverno.io/ClusterPolicy: the CRD in packs/a/packbuild.yaml says Namespaced, gitopsd.yaml crds says "
            "Cluster; Cluster is used; make them agree",
            "example.com/Gadget: the CRD in packs/b/packbuild.yaml says Namespaced, packs/a/packbuild.yaml says "
            "Cluster; Cluster is used; make them agree")),
    ),
}


@pytest.mark.parametrize(("configured", "packs", "expected"), KNOWN.values(), ids=KNOWN.keys())
def test_known_scopes_come_from_gitopsd_yaml_then_packs(configured, packs, expected) -> None:
    assert compile_core.known_scopes(configured, packs) == expected


def test_namespace_comes_first_and_kinds_follow_helms_install_order() -> None:
    docs = b"".join(b"---\napiVersion: %s\nkind: %s\nmetadata: {name: x}\n" % pair for pair in [
        (b"apps/v1", b"Deployment"), (b"v1", b"Service"), (b"rbac.authorization.k8s.io/v1", b"RoleBinding"),
        (b"rbac.authorization.k8s.io/v1", b"Role"), (b"v1", b"ServiceAccount"), (b"v1", b"Namespace"),
        (b"v1", b"ConfigMap"), (b"v1", b"Secret"), (b"scheduling.k8s.io/v1", b"PriorityClass"),
        (b"batch/v1", b"Job"), (b"v1", b"PersistentVolumeClaim")])
    c = compile_docs(("m/all.yaml", docs))
    assert layer_objects(c) == {
        "rbac": ["ServiceAccount/apps/x", "Role/apps/x", "RoleBinding/apps/x"],
        "cluster-scoped": ["Namespace/-/x", "PriorityClass/-/x"],
        "workload": ["PersistentVolumeClaim/apps/x", "Job/apps/x", "Secret/apps/x", "ConfigMap/apps/x",
                     "Service/apps/x", "Deployment/apps/x"],
    }
    assert [str(s) for s in c.cluster_pack.execution_order] == ["rbac", "storage", "stateful", "stateless"]


HELM_BUILD = dataclasses.replace(BUILD, category=spec.Category.HELM,
                                 source=spec.HelmSource(chart="packs/demo/chart", version=None, values_file=None,
                                                        values_json="{}", namespace=None))


def test_helm_hooks_are_kept_and_listed_in_provenance_by_weight() -> None:
    hooks = (b"apiVersion: batch/v1\nkind: Job\nmetadata: {name: certs, annotations: {helm.sh/hook: 'pre-install,pre-upgrade', "
             b"helm.sh/hook-weight: '-5', helm.sh/hook-delete-policy: hook-succeeded}}\n---\n"
             b"apiVersion: v1\nkind: Secret\nmetadata: {name: seed, annotations: {helm.sh/hook: pre-install}}\n---\n"
             b"apiVersion: batch/v1\nkind: Job\nmetadata: {name: bucket, annotations: {helm.sh/hook: post-install, helm.sh/hook-weight: '1'}}\n")
    c = compile_core.compile_pack(HELM_BUILD, (("t/h.yaml", hooks), ("t/d.yaml", DEPLOY)), renderers=(("helm", "v3"),),
                                  chart=None, inputs=INPUTS, dropped_hooks=("Pod/smoke (test)",))
    prov = c.cluster_pack.spec()["provenance"]
    assert (prov["hooks"], prov["droppedHooks"], c.object_count) == ([
        {"object": "Job/apps/certs", "phases": ["pre-install", "pre-upgrade"], "weight": -5, "deletePolicies": ["hook-succeeded"]},
        {"object": "Secret/apps/seed", "phases": ["pre-install"], "weight": 0, "deletePolicies": ["before-hook-creation"]},
        {"object": "Job/apps/bucket", "phases": ["post-install"], "weight": 1, "deletePolicies": ["before-hook-creation"]},
    ], ["Pod/smoke (test)"], 4)
