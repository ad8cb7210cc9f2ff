"""The delivery engine against a real target cluster: verify before apply. A ClusterPack whose
artifact bytes or signature do not check out is refused with nothing applied."""

from __future__ import annotations

import dataclasses
import pathlib
import uuid

import pytest

from gitopsd.core import compile as compile_core
from gitopsd.core import delivery as delivery_core
from gitopsd.core import signing
from gitopsd.delivery import engine, reach
from gitopsd.model import pack, spec
from gitopsd.wiring import compose as wiring

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


class Artifacts:
    """An artifact source serving what the test put in, byte for byte."""

    def __init__(self, art: pack.Artifact) -> None:
        self.manifest = art.manifest
        self.blobs = {b.digest: b.data for b in art.blobs}

    def pull(self, repository: str, digest: str) -> tuple[bytes, dict[str, bytes]]:
        return self.manifest, dict(self.blobs)


@pytest.fixture
def compiled() -> tuple[pack.CompiledPack, str]:
    ns = f"e-{uuid.uuid4().hex[:8]}"
    build = spec.PackBuild(path="packs/e/packbuild.yaml", name="e", version="1.0.0", base_pack_name="e",
                           targets=(spec.ClusterTarget(name="a"),), category=spec.Category.RAW, source=spec.RawSource("packs/e/m"))
    docs = (f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
            f"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c, namespace: {ns}}}\ndata: {{v: '1'}}\n")
    result = compile_core.compile_pack(build, (("m.yaml", docs.encode()),), renderers=(), chart=None,
                                       inputs=compile_core.Inputs("seam-system", "reg/packs", ("a",), "main@sha1:1",
                                                                  "2026-01-01T00:00:00Z", "t", "gitopsd/test"))
    return result, ns


def job_of(cp: pack.ClusterPack, signature: str | None) -> delivery_core.Job:
    return delivery_core.Job(instance="e-a", cluster="a", base_pack_name=cp.base_pack_name, version=cp.version,
                             spec_json=pack.canonical_json(cp.spec()), signature=signature, previous=None,
                             options=delivery_core.Options(timeout=30))


def configmap_exists(target: object, ns: str) -> bool:
    return target.get("v1", "ConfigMap", ns, "c") is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize("tamper", ["layer-bytes", "manifest-bytes", "signature", "unsigned"])
def test_a_tampered_artifact_or_signature_is_refused_and_nothing_applied(
        tamper: str, compiled: tuple[pack.CompiledPack, str], target_kubeconfigs: dict[str, pathlib.Path],
        tmp_path: pathlib.Path) -> None:
    result, ns = compiled
    signer, verifier = wiring.signing(tmp_path / "state", None, None, create=True)
    assert signer is not None and result.artifact is not None
    cp = result.cluster_pack
    signature: str | None = signer.sign(signing.payload(cp))
    artifacts = Artifacts(result.artifact)
    workload = result.artifact.layer_digest(pack.Layer.WORKLOAD)
    if tamper == "layer-bytes":  # the ConfigMap's value changed in the stored layer
        artifacts.blobs[workload] = artifacts.blobs[workload].replace(b'"v":"1"', b'"v":"2"')  # type: ignore[index]
    elif tamper == "manifest-bytes":
        artifacts.manifest = artifacts.manifest.replace(b'"schemaVersion":2', b'"schemaVersion":2 ')
    elif tamper == "signature":
        other, _ = wiring.signing(tmp_path / "other", None, None, create=True)
        signature = other.sign(signing.payload(cp))  # type: ignore[union-attr]
    else:
        signature = None
    where = reach.Reach(files={"a": target_kubeconfigs["a"]})
    target = where.connect(spec.Cluster(name="a", labels=(), path="clusters/a.yaml"), "seam-system")
    assert target is not None
    try:
        refused = engine.Engine(artifacts, verifier).deliver(job_of(cp, signature), target)
        assert refused.result.value == "Refused"
        expected = {"layer-bytes": "ArtifactMismatch", "manifest-bytes": "ArtifactMismatch", "signature": "SignatureInvalid",
                    "unsigned": "ArtifactRefused"}[tamper]
        assert refused.message.startswith(f"{expected}: ") and "nothing" in refused.message
        assert (refused.stages, refused.inventory) == ((), ())
        assert target.get("v1", "Namespace", "", ns) is None and not configmap_exists(target, ns)
        assert set(target.requests) <= {"discovery", "get"}  # not a single write was sent

        sound = engine.Engine(Artifacts(result.artifact), verifier).deliver(job_of(cp, signer.sign(signing.payload(cp))), target)
        assert sound.result.value == "Delivered" and configmap_exists(target, ns)
        assert dataclasses.replace(sound, at="").inventory == tuple(
            delivery_core.inventory(delivery_core.stages(engine.Engine(Artifacts(result.artifact), None).objects(
                job_of(cp, "x")), instance="e-a")))
    finally:
        target.delete("v1", "Namespace", "", ns)
        target.close()


class LaggingDiscovery:
    """Stands in front of a real target: discovery does not list ``group``'s kinds until it has
    been asked ``lag`` times, as an API server a moment behind its Established condition."""

    def __init__(self, target: object, group: str, lag: int) -> None:
        self.target, self.group, self.lag = target, group, lag
        self.asked = 0
        real = target._discover  # type: ignore[attr-defined]

        def discover(api_version: str) -> None:
            if api_version.startswith(self.group + "/"):
                self.asked += 1
                if self.asked <= self.lag:
                    return
            real(api_version)

        target._discover = discover  # type: ignore[attr-defined]


def test_a_custom_resource_waits_until_discovery_serves_the_kind_its_crd_just_defined(
        target_kubeconfigs: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    ns = f"w-{uuid.uuid4().hex[:8]}"
    group = f"{ns}.example.com"
    docs = (f"---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: gadgets.{group}}}\n"
            f"spec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: gadgets, singular: gadget, kind: Gadget}}\n"
            "  versions:\n  - name: v1\n    served: true\n    storage: true\n"
            "    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n"
            f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
            f"---\napiVersion: {group}/v1\nkind: Gadget\nmetadata: {{name: g, namespace: {ns}}}\nspec: {{size: 3}}\n")
    build = spec.PackBuild(path="packs/w/packbuild.yaml", name="w", version="1.0.0", base_pack_name="e",
                           targets=(spec.ClusterTarget(name="a"),), category=spec.Category.RAW, source=spec.RawSource("packs/w/m"))
    result = compile_core.compile_pack(build, (("m.yaml", docs.encode()),), renderers=(), chart=None,
                                       inputs=compile_core.Inputs("seam-system", "reg/packs", ("a",), "main@sha1:1",
                                                                  "2026-01-01T00:00:00Z", "t", "gitopsd/test"))
    assert result.artifact is not None
    where = reach.Reach(files={"a": target_kubeconfigs["a"]})
    target = where.connect(spec.Cluster(name="a", labels=(), path="clusters/a.yaml"), "seam-system")
    assert target is not None
    signer, verifier = wiring.signing(tmp_path / "state", None, None, create=True)
    assert signer is not None
    cp = result.cluster_pack
    lagging = LaggingDiscovery(target, group, lag=3)
    try:
        done = engine.Engine(Artifacts(result.artifact), verifier).deliver(job_of(cp, signer.sign(signing.payload(cp))),
                                                                           target)
        assert done.result.value == "Delivered", done.message
        assert lagging.asked > 3  # discovery was asked again until it served the kind
        assert target.get(f"{group}/v1", "Gadget", ns, "g") is not None
    finally:
        target.delete("v1", "Namespace", "", ns)
        target.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", f"gadgets.{group}")
        target.close()
