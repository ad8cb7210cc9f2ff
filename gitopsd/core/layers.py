"""Which layer and which execution stage a Kubernetes object belongs to, by its kind.

Layers (design.md §Compile 3): rbac, cluster-scoped, workload. Stages (§Compile 4): rbac, storage,
stateful, stateless; Namespaces and CRDs belong to the first stage, and within a stage objects
follow Helm's install order of kinds. The scope of a custom kind comes from a CRD gitopsd knows,
then a table of well-known cluster-scoped custom kinds, then the rule of ``scope_of``.
"""

from __future__ import annotations

import enum
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

# Helm's install order (pkg/release/util/kind_sorter.go): within a stage, objects are applied in
# this order of kinds, unknown kinds last by name.
HELM_INSTALL_ORDER = (
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
    "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList",
    "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
)
_KIND_RANK = {kind: rank for rank, kind in enumerate(HELM_INSTALL_ORDER)}

# Kinds that must exist before anything that lives in them or uses them: first stage, first applied.
FOUNDATION_KINDS = frozenset({"Namespace", "CustomResourceDefinition"})

# Custom kinds known to be cluster-scoped when no CRD for them is in sight (group/Kind, or group/*
# for every kind of a group): policy engines' policies and constraints, cluster-wide stores.
KNOWN_CLUSTER_CUSTOM_KINDS = frozenset(
    {
        "constraints.gatekeeper.sh/*",
        "mutations.gatekeeper.sh/*",
        "templates.gatekeeper.sh/ConstraintTemplate",
        "expansion.gatekeeper.sh/ExpansionTemplate",
        "kyverno.io/ClusterPolicy",
        "kyverno.io/ClusterCleanupPolicy",
        "policies.kyverno.io/*",
        "wgpolicyk8s.io/ClusterPolicyReport",
        "cert-manager.io/ClusterIssuer",
        "external-secrets.io/ClusterSecretStore",
        "external-secrets.io/ClusterExternalSecret",
        "karpenter.sh/NodePool",
        "karpenter.k8s.aws/EC2NodeClass",
        "cilium.io/CiliumClusterwideNetworkPolicy",
        "snapshot.storage.k8s.io/VolumeSnapshotClass",
        "snapshot.storage.k8s.io/VolumeSnapshotContent",
        "gateway.networking.k8s.io/GatewayClass",
    }
)

# Built-in kinds that are namespaced: the rest of the built-ins is in CLUSTER_SCOPED_KINDS.
BUILTIN_GROUPS = frozenset(
    {
        "", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io",
        "storage.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "events.k8s.io", "node.k8s.io",
        "scheduling.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io",
        "certificates.k8s.io", "flowcontrol.apiserver.k8s.io", "resource.k8s.io", "storagemigration.k8s.io",
    }
)


class Scope(enum.StrEnum):
    CLUSTER = "Cluster"
    NAMESPACED = "Namespaced"
    ASSUMED_CLUSTER = "AssumedCluster"  # by the documented rule, said in a warning
    UNKNOWN = "Unknown"  # treated as namespaced, said in a warning


def scope_of(group: str, kind: str, crd_scopes: dict[str, str]) -> Scope:
    """The scope of ``group/kind``: the built-in tables for Kubernetes' own groups; for custom kinds,
    a CRD gitopsd knows (``crd_scopes``: ``group/Kind`` -> ``Cluster``/``Namespaced``), then the table
    of well-known cluster-scoped custom kinds; else a kind named ``Cluster...`` is assumed
    cluster-scoped, and any other is unknown (treated as namespaced)."""
    if not is_custom(group, kind):
        return Scope.CLUSTER if kind in CLUSTER_SCOPED_KINDS else Scope.NAMESPACED
    found = crd_scopes.get(f"{group}/{kind}")
    if found is not None:
        return Scope.CLUSTER if found == "Cluster" else Scope.NAMESPACED
    if f"{group}/{kind}" in KNOWN_CLUSTER_CUSTOM_KINDS or f"{group}/*" in KNOWN_CLUSTER_CUSTOM_KINDS:
        return Scope.CLUSTER
    if kind.startswith("Cluster") and len(kind) > len("Cluster") and kind[len("Cluster")].isupper():
        return Scope.ASSUMED_CLUSTER
    return Scope.UNKNOWN


def is_custom(group: str, kind: str) -> bool:
    """Whether the scope of ``group/kind`` comes from a CRD, not from Kubernetes' own tables."""
    if kind in CLUSTER_SCOPED_KINDS and (group in BUILTIN_GROUPS or kind not in _CUSTOM_LOOKALIKES):
        return False
    return group not in BUILTIN_GROUPS


_CUSTOM_LOOKALIKES = frozenset({"ClusterIssuer", "GatewayClass", "VolumeSnapshotClass", "VolumeSnapshotContent"})


def kind_rank(kind: str) -> tuple[int, str]:
    """Position of a kind in Helm's install order; unknown kinds after the known ones, by name."""
    return (_KIND_RANK.get(kind, len(HELM_INSTALL_ORDER)), kind)


STORAGE_KINDS = frozenset({"PersistentVolumeClaim", "StorageClass", "PersistentVolume"})
STATEFUL_KINDS = frozenset({"StatefulSet", "DaemonSet", "Job", "CronJob"})

STAGE_ORDER = (Stage.RBAC, Stage.STORAGE, Stage.STATEFUL, Stage.STATELESS)
LAYER_ORDER = (Layer.RBAC, Layer.CLUSTER_SCOPED, Layer.WORKLOAD)
STAGE_RANK = {stage: rank for rank, stage in enumerate(STAGE_ORDER)}
LAYER_RANK = {layer: rank for rank, layer in enumerate(LAYER_ORDER)}


def is_cluster_scoped(kind: str, extra_cluster_kinds: frozenset[str] = frozenset()) -> bool:
    return kind in CLUSTER_SCOPED_KINDS or kind in extra_cluster_kinds


def layer_of(kind: str, extra_cluster_kinds: frozenset[str] = frozenset(), *, cluster_scoped: bool | None = None) -> Layer:
    if kind in RBAC_KINDS:
        return Layer.RBAC
    scoped = is_cluster_scoped(kind, extra_cluster_kinds) if cluster_scoped is None else cluster_scoped
    if scoped:
        return Layer.CLUSTER_SCOPED
    return Layer.WORKLOAD


def stage_of(kind: str) -> Stage:
    """The stage of a kind; Namespaces and CRDs are in the first stage (with rbac) so that they
    are applied before the RBAC objects and workloads that live in them or use them."""
    if kind in RBAC_KINDS or kind in FOUNDATION_KINDS:
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
