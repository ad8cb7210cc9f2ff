"""The compiled pack: its objects, its OCI artifact and its ClusterPack record.

A ClusterPack is immutable and content-addressed: ``checksum`` is computed over the canonical form
of its objects and the three layer digests plus the manifest digest identify the artifact bytes.
``ClusterPack.spec()`` is the JSON object that is stored, signed and validated against
``schemas/clusterpack.schema.json``.
"""

from __future__ import annotations

import dataclasses
import enum
import json

GROUP = "infrastructure.ontai.dev"
API_VERSION = f"{GROUP}/v1alpha1"
CLUSTER_PACK_KIND = "InfrastructureClusterPack"
SIGNATURE_ANNOTATION = "ontai.dev/pack-signature"


class Layer(enum.StrEnum):
    RBAC = "rbac"
    CLUSTER_SCOPED = "cluster-scoped"
    WORKLOAD = "workload"

    @property
    def media_type(self) -> str:
        return f"application/vnd.ontai.pack.{self.value}.v1+yaml"


class Stage(enum.StrEnum):
    RBAC = "rbac"
    STORAGE = "storage"
    STATEFUL = "stateful"
    STATELESS = "stateless"


@dataclasses.dataclass(frozen=True, slots=True)
class Manifest:
    """One rendered Kubernetes object, kept as canonical JSON (sorted keys, compact)."""

    api_version: str
    kind: str
    name: str
    namespace: str | None
    canonical: str
    source: str  # file (or template) it came from, for error messages
    layer: Layer
    stage: Stage

    @property
    def subject(self) -> str:
        """``Kind/namespace/name`` (``Kind/name`` when cluster-scoped), Flux's object subject."""
        if self.namespace:
            return f"{self.kind}/{self.namespace}/{self.name}"
        return f"{self.kind}/{self.name}"

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes two objects "the same object" on a cluster: group, kind, namespace, name."""
        return (self.group, self.kind, self.namespace or "", self.name)


@dataclasses.dataclass(frozen=True, slots=True)
class Blob:
    media_type: str
    digest: str  # sha256:<hex>
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclasses.dataclass(frozen=True, slots=True)
class Artifact:
    """An OCI image manifest, its config blob and its layers, all as bytes."""

    manifest: bytes
    manifest_digest: str
    config: Blob
    layers: tuple[Blob, ...]
    tag: str

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)

    def layer_digest(self, layer: Layer) -> str | None:
        for blob in self.layers:
            if blob.media_type == layer.media_type:
                return blob.digest
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class ChartInfo:
    name: str
    version: str
    url: str
    helm_version: str


HOOK_PHASES = ("pre-install", "pre-upgrade", "post-install", "post-upgrade", "pre-delete", "post-delete",
               "pre-rollback", "post-rollback")


@dataclasses.dataclass(frozen=True, slots=True)
class Hook:
    """A Helm hook kept in the artifact: the object (``Kind/namespace/name``), the phases Helm runs it
    in (``helm.sh/hook``), its weight (``helm.sh/hook-weight``) and delete policies
    (``helm.sh/hook-delete-policy``, Helm's default ``before-hook-creation`` when unset). The object
    itself keeps these annotations, so delivery reads the same marks from the artifact."""

    subject: str
    phases: tuple[str, ...]
    weight: int
    delete_policies: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"object": self.subject, "phases": list(self.phases), "weight": self.weight,
                "deletePolicies": list(self.delete_policies)}


@dataclasses.dataclass(frozen=True, slots=True)
class Provenance:
    commit: str  # revision, e.g. main@sha1:<hex> or dir@sha256:<hex>
    path: str  # repo path of the PackBuild
    tree: str  # tree id of the pack folder
    commit_time: str  # RFC 3339, UTC
    compiler: str  # gitopsd/<version>
    renderers: tuple[tuple[str, str], ...]
    hooks: tuple[Hook, ...] = ()  # Helm hooks kept, in the order Helm runs them
    dropped_hooks: tuple[str, ...] = ()  # test hooks left out, as "Kind/name (test)"
    reproducible: bool = True  # False: two renders of the same inputs differed (random values)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "commit": self.commit,
            "path": self.path,
            "tree": self.tree,
            "commitTime": self.commit_time,
            "compiler": self.compiler,
            "renderers": dict(self.renderers),
        }
        if self.hooks:
            out["hooks"] = [hook.to_json() for hook in self.hooks]
        if self.dropped_hooks:
            out["droppedHooks"] = list(self.dropped_hooks)
        if not self.reproducible:
            out["reproducible"] = False
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterPack:
    """The compiled, immutable record of one pack version."""

    name: str
    namespace: str
    version: str
    base_pack_name: str
    target_clusters: tuple[str, ...]
    registry_url: str
    manifest_digest: str
    checksum: str
    rbac_digest: str | None
    cluster_scoped_digest: str | None
    workload_digest: str | None
    source_build_ref: str
    execution_order: tuple[Stage, ...]
    provenance: Provenance
    chart: ChartInfo | None = None
    signature: str | None = None

    def spec(self) -> dict[str, object]:
        spec: dict[str, object] = {
            "version": self.version,
            "registryRef": {"url": self.registry_url, "digest": self.manifest_digest},
            "checksum": self.checksum,
            "basePackName": self.base_pack_name,
            "targetClusters": list(self.target_clusters),
            "sourceBuildRef": self.source_build_ref,
            "executionOrder": [{"name": str(stage)} for stage in self.execution_order],
            "provenance": self.provenance.to_json(),
        }
        for key, digest in (
            ("rbacDigest", self.rbac_digest),
            ("clusterScopedDigest", self.cluster_scoped_digest),
            ("workloadDigest", self.workload_digest),
        ):
            if digest:
                spec[key] = digest
        if self.chart is not None:
            spec["chartName"] = self.chart.name
            spec["chartVersion"] = self.chart.version
            spec["chartURL"] = self.chart.url
            spec["helmVersion"] = self.chart.helm_version
        return spec

    def to_object(self) -> dict[str, object]:
        """The full Kubernetes-shaped object (apiVersion, kind, metadata, spec, status)."""
        metadata: dict[str, object] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "gitopsd",
                "ontai.dev/base-pack": self.base_pack_name,
            },
        }
        status: dict[str, object] = {"signed": self.signature is not None}
        if self.signature is not None:
            metadata["annotations"] = {SIGNATURE_ANNOTATION: self.signature}
            status["packSignature"] = self.signature
        return {
            "apiVersion": API_VERSION,
            "kind": CLUSTER_PACK_KIND,
            "metadata": metadata,
            "spec": self.spec(),
            "status": status,
        }

    def with_signature(self, signature: str | None) -> ClusterPack:
        return dataclasses.replace(self, signature=signature)


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledPack:
    """What compiling one PackBuild yields: the ClusterPack, its artifact and its objects' identities.

    ``artifact`` is ``None`` when the result came from the compile cache (its blobs were published
    when it was first compiled).
    """

    cluster_pack: ClusterPack
    identities: tuple[tuple[str, str, str, str], ...]
    subjects: tuple[str, ...]
    secret_subjects: tuple[str, ...]
    artifact: Artifact | None
    object_count: int
    reproducible: bool = True  # False: the renderer gave different objects for the same inputs
    warnings: tuple[str, ...] = ()  # one line each, shown with the pack (unknown scopes, ...)
    # (group/Kind, Cluster|Namespaced) of the CRDs among the pack's objects: what it tells other packs
    crds: tuple[tuple[str, str], ...] = ()
    # (group/Kind, scope) of each custom kind among the objects whose CRD is not in the pack, with the
    # scope the compile was given for it from outside (another pack, gitopsd.yaml), "" when none: a
    # compiled pack holds only while these are still the scopes gitopsd knows
    foreign_scopes: tuple[tuple[str, str], ...] = ()

    def without_artifact(self) -> CompiledPack:
        return dataclasses.replace(self, artifact=None)


def canonical_json(value: object) -> str:
    """Sorted-key compact JSON, UTF-8 kept as is: the canonical text form of an object."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
