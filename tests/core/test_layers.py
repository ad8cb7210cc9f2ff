import pytest

from gitopsd.core import layers
from gitopsd.model.pack import Layer, Stage


@pytest.mark.parametrize(
    ("kind", "layer", "stage"),
    [
        ("ServiceAccount", Layer.RBAC, Stage.RBAC),
        ("Role", Layer.RBAC, Stage.RBAC),
        ("ClusterRole", Layer.RBAC, Stage.RBAC),
        ("RoleBinding", Layer.RBAC, Stage.RBAC),
        ("ClusterRoleBinding", Layer.RBAC, Stage.RBAC),
        ("CustomResourceDefinition", Layer.CLUSTER_SCOPED, Stage.RBAC),
        ("MutatingWebhookConfiguration", Layer.CLUSTER_SCOPED, Stage.STATELESS),
        ("ValidatingWebhookConfiguration", Layer.CLUSTER_SCOPED, Stage.STATELESS),
        ("APIService", Layer.CLUSTER_SCOPED, Stage.STATELESS),
        ("PriorityClass", Layer.CLUSTER_SCOPED, Stage.STATELESS),
        ("StorageClass", Layer.CLUSTER_SCOPED, Stage.STORAGE),
        ("IngressClass", Layer.CLUSTER_SCOPED, Stage.STATELESS),
        ("ClusterIssuer", Layer.CLUSTER_SCOPED, Stage.STATELESS),
        ("Namespace", Layer.CLUSTER_SCOPED, Stage.RBAC),
        ("PersistentVolume", Layer.CLUSTER_SCOPED, Stage.STORAGE),
        ("PersistentVolumeClaim", Layer.WORKLOAD, Stage.STORAGE),
        ("StatefulSet", Layer.WORKLOAD, Stage.STATEFUL),
        ("DaemonSet", Layer.WORKLOAD, Stage.STATEFUL),
        ("Job", Layer.WORKLOAD, Stage.STATEFUL),
        ("CronJob", Layer.WORKLOAD, Stage.STATEFUL),
        ("Deployment", Layer.WORKLOAD, Stage.STATELESS),
        ("ConfigMap", Layer.WORKLOAD, Stage.STATELESS),
        ("Secret", Layer.WORKLOAD, Stage.STATELESS),
    ],
    ids=str,
)
def test_kind_maps_to_layer_and_stage(kind: str, layer: Layer, stage: Stage) -> None:
    assert (layers.layer_of(kind), layers.stage_of(kind)) == (layer, stage)


def test_kind_declared_cluster_scoped_by_a_crd_goes_to_the_cluster_scoped_layer() -> None:
    assert layers.layer_of("Widget") is Layer.WORKLOAD
    assert layers.layer_of("Widget", frozenset({"Widget"})) is Layer.CLUSTER_SCOPED


@pytest.mark.parametrize(
    ("kinds", "order"),
    [
        ([], ()),
        (["Deployment"], (Stage.STATELESS,)),
        (["Deployment", "ServiceAccount"], (Stage.RBAC, Stage.STATELESS)),
        (["StatefulSet", "PersistentVolumeClaim"], (Stage.STORAGE, Stage.STATEFUL)),
        (
            ["Deployment", "StatefulSet", "PersistentVolumeClaim", "ClusterRole", "CustomResourceDefinition"],
            (Stage.RBAC, Stage.STORAGE, Stage.STATEFUL, Stage.STATELESS),
        ),
    ],
    ids=["none", "stateless", "rbac-first", "storage-before-stateful", "all-stages"],
)
def test_execution_order_lists_present_stages_in_fixed_order(kinds: list[str], order: tuple[Stage, ...]) -> None:
    assert layers.execution_order(kinds) == order
