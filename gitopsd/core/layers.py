"""Which layer and which execution stage a Kubernetes object belongs to, by its kind.

Layers (design.md §Compile 3): rbac, cluster-scoped, workload. Stages (§Compile 4): rbac, storage,
stateful, stateless. A CustomResourceDefinition in the same pack tells us the scope of its kind.
"""

from __future__ import annotations

from collections.abc import Iterable

from gitopsd.model.pack import Layer, Stage

RBAC_KINDS = frozenset({"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"})

CLUSTER_SCOPED_KINDS = frozenset(
    {
        "APIService",
        "CSIDriver",
        "CSINode",
        "CertificateSigningRequest",
        "ClusterIssuer",
        "ClusterRole",
        "ClusterRoleBinding",
        "ComponentStatus",
        "CustomResourceDefinition",
        "FlowSchema",
        "GatewayClass",
        "IngressClass",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "MutatingWebhookConfiguration",
        "Namespace",
        "Node",
        "PersistentVolume",
        "PodSecurityPolicy",
        "PriorityClass",
        "PriorityLevelConfiguration",
        "RuntimeClass",
        "StorageClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
        "VolumeAttachment",
        "VolumeSnapshotClass",
        "VolumeSnapshotContent",
    }
)

STORAGE_KINDS = frozenset({"PersistentVolumeClaim", "StorageClass", "PersistentVolume"})
STATEFUL_KINDS = frozenset({"StatefulSet", "DaemonSet", "Job", "CronJob"})

STAGE_ORDER = (Stage.RBAC, Stage.STORAGE, Stage.STATEFUL, Stage.STATELESS)
LAYER_ORDER = (Layer.RBAC, Layer.CLUSTER_SCOPED, Layer.WORKLOAD)
STAGE_RANK = {stage: rank for rank, stage in enumerate(STAGE_ORDER)}
LAYER_RANK = {layer: rank for rank, layer in enumerate(LAYER_ORDER)}


def is_cluster_scoped(kind: str, extra_cluster_kinds: frozenset[str] = frozenset()) -> bool:
    return kind in CLUSTER_SCOPED_KINDS or kind in extra_cluster_kinds


def layer_of(kind: str, extra_cluster_kinds: frozenset[str] = frozenset()) -> Layer:
    if kind in RBAC_KINDS:
        return Layer.RBAC
    if is_cluster_scoped(kind, extra_cluster_kinds):
        return Layer.CLUSTER_SCOPED
    return Layer.WORKLOAD


def stage_of(kind: str) -> Stage:
    if kind in RBAC_KINDS:
        return Stage.RBAC
    if kind in STORAGE_KINDS:
        return Stage.STORAGE
    if kind in STATEFUL_KINDS:
        return Stage.STATEFUL
    return Stage.STATELESS


def execution_order(kinds: Iterable[str]) -> tuple[Stage, ...]:
    """The stages present, in the fixed order rbac, storage, stateful, stateless."""
    present = {stage_of(kind) for kind in kinds}
    return tuple(stage for stage in STAGE_ORDER if stage in present)
