"""The Kubernetes API emulator, checked with the unmodified ``kubernetes`` client and real kubectl.

Each test pins one behaviour of kube-apiserver that gitopsd relies on; no mocks anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic, watch
from kubernetes.client.exceptions import ApiException

from gitopsd.testing import kubeapi

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(60)

GROUP = "infrastructure.ontai.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PACKS = "infrastructureclusterpacks"
INSTANCES = "packinstances"
NS = "seam-system"
APPLY = "application/apply-patch+yaml"


def crd_manifest(
    kind: str, plural: str, *, schema: dict[str, Any] | None = None, status: bool = True
) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    }
    if status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [version],
        },
    }


PACK_SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["version"],
            "properties": {
                "version": {"type": "string", "pattern": r"^v?\d+\.\d+\.\d+$"},
                "basePackName": {"type": "string"},
                "priority": {"type": "integer", "minimum": 0},
                "targetClusters": {"type": "array", "items": {"type": "string"}},
                "layers": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}
PACK_CRD = crd_manifest("InfrastructureClusterPack", PACKS, schema=PACK_SCHEMA)
INSTANCE_CRD = crd_manifest("PackInstance", INSTANCES)


def pack(name: str, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "InfrastructureClusterPack",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"version": "1.0.0", **spec},
    }


def instance(name: str, namespace: str = NS, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "PackInstance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        "data": data,
    }


def status_of(error: ApiException) -> dict[str, Any]:
    body = json.loads(error.body)
    assert body["kind"] == "Status" and body["code"] == error.status
    return body


@pytest.fixture
def crds(emulator: kubeapi.Emulator) -> None:
    """The two gitopsd CRDs and the seam-system namespace, seeded without requests."""
    emulator.create_object(PACK_CRD)
    emulator.create_object(INSTANCE_CRD)
    emulator.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})


def control(emulator: kubeapi.Emulator, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        emulator.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


# -- discovery --------------------------------------------------------------------------------

BUILTINS = [
    ("", "v1", "namespaces", "Namespace", False),
    ("", "v1", "events", "Event", True),
    ("", "v1", "configmaps", "ConfigMap", True),
    ("", "v1", "secrets", "Secret", True),
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "services", "Service", True),
    ("events.k8s.io", "v1", "events", "Event", True),
    ("coordination.k8s.io", "v1", "leases", "Lease", True),
    ("apps", "v1", "deployments", "Deployment", True),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
]


@pytest.mark.parametrize(
    ("group", "version", "plural", "kind", "namespaced"),
    BUILTINS,
    ids=[f"{g or 'core'}/{p}" for g, _, p, _, _ in BUILTINS],
)
def test_discovery_lists_builtin_resource(
    api_client: client.ApiClient, group: str, version: str, plural: str, kind: str, namespaced: bool
) -> None:
    resources = dynamic.DynamicClient(api_client).resources
    found = resources.get(api_version=f"{group}/{version}" if group else version, kind=kind)
    assert (found.name, found.namespaced) == (plural, namespaced)
    assert set(found.verbs) >= {
        "create",
        "get",
        "list",
        "watch",
        "update",
        "patch",
        "delete",
        "deletecollection",
    }


def test_discovery_documents_have_the_real_shapes(api_client: client.ApiClient) -> None:
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    groups = {g.name: g for g in client.ApisApi(api_client).get_api_versions().groups}
    assert groups["apps"].preferred_version.group_version == "apps/v1"
    core = client.CoreV1Api(api_client).get_api_resources()
    names = {r.name: r for r in core.resources}
    assert names["namespaces"].short_names == ["ns"] and "namespaces/status" in names
    assert names["services/status"].verbs == ["get", "patch", "update"]
    assert client.VersionApi(api_client).get_code().git_version.startswith("v1.32")


def test_created_crd_is_served_with_status_subresource_and_deleting_it_stops_serving(
    api_client: client.ApiClient, custom: client.CustomObjectsApi
) -> None:
    extensions = client.ApiextensionsV1Api(api_client)
    created = extensions.create_custom_resource_definition(PACK_CRD)
    assert [c.type for c in created.status.conditions] == ["NamesAccepted", "Established"]
    resources = {r.name: r for r in custom.get_api_resources(GROUP, VERSION).resources}
    assert resources[PACKS].kind == "InfrastructureClusterPack" and resources[PACKS].namespaced
    assert f"{PACKS}/status" in resources
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PACKS, pack("a", "default"))

    extensions.delete_custom_resource_definition(f"{PACKS}.{GROUP}")

    with pytest.raises(ApiException) as gone:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", PACKS)
    assert gone.value.status == 404
    with pytest.raises(ApiException):
        custom.get_api_resources(GROUP, VERSION)
    assert GROUP not in {g.name for g in client.ApisApi(api_client).get_api_versions().groups}


def test_openapi_v3_publishes_patch_operations_for_each_kind(emulator: kubeapi.Emulator, crds: None) -> None:
    index = control(emulator, "GET", "/openapi/v3")
    url = index["paths"][f"apis/{GROUP}/{VERSION}"]["serverRelativeURL"]
    document = control(emulator, "GET", url)
    operation = document["paths"][f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PACKS}/{{name}}"][
        "patch"
    ]
    assert operation["x-kubernetes-group-version-kind"] == {
        "group": GROUP,
        "version": VERSION,
        "kind": "InfrastructureClusterPack",
    }
    assert "fieldValidation" in {p["name"] for p in operation["parameters"]}


# -- create -----------------------------------------------------------------------------------


def test_create_returns_201_with_system_metadata(custom: client.CustomObjectsApi, crds: None) -> None:
    body, code, _ = custom.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, NS, PACKS, pack("cilium-v1.0.0", status={"x": 1})
    )
    metadata = body["metadata"]
    assert code == 201
    assert metadata["uid"] and metadata["creationTimestamp"].endswith("Z")
    assert metadata["generation"] == 1
    assert isinstance(metadata["resourceVersion"], str) and int(metadata["resourceVersion"]) > 0
    assert "status" not in body  # the status subresource owns status: dropped on create


def test_create_existing_name_is_409_already_exists(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", configmap("dup"))
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map("default", configmap("dup"))
    status = status_of(error.value)
    assert (error.value.status, status["reason"], status["details"]["name"]) == (409, "AlreadyExists", "dup")
    assert status["message"] == 'configmaps "dup" already exists'


def test_generate_name_gets_a_random_suffix(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map("default", {"metadata": {"generateName": "pack-"}})
    other = core.create_namespaced_config_map("default", {"metadata": {"generateName": "pack-"}})
    assert created.metadata.name.startswith("pack-") and len(created.metadata.name) == len("pack-") + 5
    assert created.metadata.name != other.metadata.name


def test_create_in_missing_namespace_is_404_until_the_namespace_exists(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map("team-a", configmap("c"))
    assert error.value.status == 404 and status_of(error.value)["message"] == 'namespaces "team-a" not found'
    core.create_namespace({"metadata": {"name": "team-a"}})
    assert core.create_namespaced_config_map("team-a", configmap("c")).metadata.namespace == "team-a"


@pytest.mark.parametrize(
    ("name", "labels", "field"),
    [
        ("Bad_Name", {}, "metadata.name"),
        ("ok", {"version": "v1.2.3+build"}, "metadata.labels"),
    ],
    ids=["uppercase-name", "plus-in-label-value"],
)
def test_invalid_metadata_is_422(
    core: client.CoreV1Api, name: str, labels: dict[str, str], field: str
) -> None:
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map("default", configmap(name, labels))
    status = status_of(error.value)
    assert (error.value.status, status["reason"]) == (422, "Invalid")
    assert status["details"]["causes"][0]["field"] == field


def test_every_write_bumps_one_global_resource_version(
    emulator: kubeapi.Emulator, core: client.CoreV1Api, custom: client.CustomObjectsApi, crds: None
) -> None:
    versions = [
        int(core.create_namespaced_config_map("default", configmap("a")).metadata.resource_version),
        int(
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, PACKS, pack("p"))["metadata"][
                "resourceVersion"
            ]
        ),
        int(core.patch_namespaced_config_map("a", "default", {"data": {"k": "v"}}).metadata.resource_version),
        int(
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, NS, PACKS, "p", {"status": {"phase": "Ready"}}
            )["metadata"]["resourceVersion"]
        ),
        int(
            custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "p")["metadata"][
                "resourceVersion"
            ]
        ),
    ]
    deleted = core.delete_namespaced_config_map("a", "default")
    assert (deleted["kind"], deleted["status"], deleted["details"]["name"]) == (
        "Status",
        "Success",
        "a",
    )  # built-ins answer with a Status
    assert versions == list(range(versions[0], versions[0] + 5))
    assert (
        core.list_namespaced_config_map("default").metadata.resource_version
        == str(versions[-1] + 1)
        == str(emulator.resource_version)
    )


# -- get and list -----------------------------------------------------------------------------


def test_get_missing_object_is_404_with_a_status(custom: client.CustomObjectsApi, crds: None) -> None:
    with pytest.raises(ApiException) as error:
        custom.get_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "nope")
    status = status_of(error.value)
    assert (error.value.status, status["reason"]) == (404, "NotFound")
    assert status["message"] == f'{PACKS}.{GROUP} "nope" not found'
    assert status["details"] == {"name": "nope", "group": GROUP, "kind": PACKS}


LABELLED = {
    "web": {"app": "web", "tier": "front"},
    "api": {"app": "api", "tier": "back"},
    "db": {"app": "db"},
    "plain": {},
}
SELECTORS = [
    ("app=web", ["web"]),
    ("app==api", ["api"]),
    ("app!=web", ["api", "db", "plain"]),
    ("app in (web,db)", ["db", "web"]),
    ("app notin (web)", ["api", "db", "plain"]),
    ("tier", ["api", "web"]),
    ("!tier", ["db", "plain"]),
    ("app,tier=back", ["api"]),
    ("app in (web, api),tier!=front", ["api"]),
]


@pytest.mark.parametrize(("selector", "expected"), SELECTORS, ids=[s for s, _ in SELECTORS])
def test_label_selector(
    emulator: kubeapi.Emulator, core: client.CoreV1Api, selector: str, expected: list[str]
) -> None:
    for name, labels in LABELLED.items():
        emulator.create_object(
            {**configmap(name, labels), "metadata": {"name": name, "namespace": "default", "labels": labels}}
        )
    listed = core.list_namespaced_config_map("default", label_selector=selector)
    assert sorted(i.metadata.name for i in listed.items) == expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=a", [("default", "a"), ("other", "a")]),
        ("metadata.namespace=other", [("other", "a"), ("other", "b")]),
        ("metadata.name!=a", [("other", "b")]),
        ("metadata.namespace=other,metadata.name=b", [("other", "b")]),
    ],
    ids=["name", "namespace", "not-name", "both"],
)
def test_field_selector_across_namespaces(
    emulator: kubeapi.Emulator, core: client.CoreV1Api, selector: str, expected: list[tuple[str, str]]
) -> None:
    emulator.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    for namespace, name in [("default", "a"), ("other", "a"), ("other", "b")]:
        emulator.create_object(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}
        )
    listed = core.list_config_map_for_all_namespaces(field_selector=selector)
    assert [(i.metadata.namespace, i.metadata.name) for i in listed.items] == expected


def test_unsupported_field_selector_is_400(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as error:
        core.list_namespaced_config_map("default", field_selector="data.key=x")
    assert error.value.status == 400 and "field label not supported" in status_of(error.value)["message"]


def test_list_custom_objects_across_all_namespaces(
    emulator: kubeapi.Emulator, custom: client.CustomObjectsApi, crds: None
) -> None:
    emulator.create_object(pack("a", "default"))
    emulator.create_object(pack("b", NS))
    listed = custom.list_cluster_custom_object(GROUP, VERSION, PACKS)
    assert listed["kind"] == "InfrastructureClusterPackList"
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("default", "a"),
        (NS, "b"),
    ]
    assert listed["metadata"]["resourceVersion"] == str(emulator.resource_version)
    assert all(i["kind"] == "InfrastructureClusterPack" for i in listed["items"])


def test_paging_with_limit_and_continue_serves_one_consistent_snapshot(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    for index in range(5):
        emulator.create_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm-{index}", "namespace": "default"},
            }
        )
    first = core.list_namespaced_config_map("default", limit=2)
    assert [i.metadata.name for i in first.items] == ["cm-0", "cm-1"]
    assert first.metadata.remaining_item_count == 3
    core.delete_namespaced_config_map("cm-3", "default")  # after the snapshot: still listed
    core.create_namespaced_config_map("default", configmap("cm-9"))  # after the snapshot: not listed
    second = core.list_namespaced_config_map("default", limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_config_map("default", limit=2, _continue=second.metadata._continue)
    assert [i.metadata.name for i in second.items + third.items] == ["cm-2", "cm-3", "cm-4"]
    assert third.metadata._continue is None
    assert {first.metadata.resource_version, second.metadata.resource_version} == {
        first.metadata.resource_version
    }


def test_continue_token_from_before_a_compaction_is_410(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    for index in range(3):
        core.create_namespaced_config_map("default", configmap(f"cm-{index}"))
    first = core.list_namespaced_config_map("default", limit=1)
    core.create_namespaced_config_map("default", configmap("later"))
    emulator.compact()
    with pytest.raises(ApiException) as error:
        core.list_namespaced_config_map("default", limit=1, _continue=first.metadata._continue)
    assert (error.value.status, status_of(error.value)["reason"]) == (410, "Expired")


def test_exact_list_reads_the_past_until_it_is_compacted(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    created = core.create_namespaced_config_map("default", configmap("a", k="1"))
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "2"}})
    then = core.list_namespaced_config_map(
        "default", resource_version=created.metadata.resource_version, resource_version_match="Exact"
    )
    assert [i.data for i in then.items] == [{"k": "1"}]
    emulator.compact()
    with pytest.raises(ApiException) as error:
        core.list_namespaced_config_map(
            "default", resource_version=created.metadata.resource_version, resource_version_match="Exact"
        )
    assert error.value.status == 410


def test_list_at_a_future_resource_version_is_504_too_large(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as error:
        core.list_namespaced_config_map(
            "default", resource_version="999999", resource_version_match="NotOlderThan"
        )
    assert error.value.status == 504
    assert status_of(error.value)["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


# -- update and the status subresource --------------------------------------------------------


def test_update_with_a_stale_resource_version_is_409_conflict(core: client.CoreV1Api) -> None:
    stale = core.create_namespaced_config_map("default", configmap("c", k="1"))
    fresh = core.read_namespaced_config_map("c", "default")
    fresh.data = {"k": "2"}
    core.replace_namespaced_config_map("c", "default", fresh)
    stale.data = {"k": "3"}
    with pytest.raises(ApiException) as error:
        core.replace_namespaced_config_map("c", "default", stale)
    status = status_of(error.value)
    assert (error.value.status, status["reason"]) == (409, "Conflict")
    assert "the object has been modified" in status["message"]


def test_replacing_a_missing_object_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as error:
        core.replace_namespaced_config_map("ghost", "default", configmap("ghost"))
    assert error.value.status == 404


def test_generation_moves_only_when_the_spec_changes(custom: client.CustomObjectsApi, crds: None) -> None:
    def generation_after(change: dict[str, Any], status: bool = False) -> int:
        patch = (
            custom.patch_namespaced_custom_object_status if status else custom.patch_namespaced_custom_object
        )
        return patch(GROUP, VERSION, NS, PACKS, "p", change)["metadata"]["generation"]

    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PACKS, pack("p"))
    assert generation_after({"metadata": {"labels": {"a": "b"}}}) == 1
    assert generation_after({"status": {"phase": "Ready"}}, status=True) == 1
    assert generation_after({"spec": {"version": "1.0.1"}}) == 2
    assert generation_after({"metadata": {"annotations": {"x": "y"}}}) == 2


def test_status_subresource_separates_spec_and_status_writes(
    custom: client.CustomObjectsApi, crds: None
) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PACKS, pack("p"))
    main = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PACKS, "p", {"status": {"phase": "Sneaky"}, "spec": {"priority": 2}}
    )
    assert "status" not in main and main["spec"]["priority"] == 2

    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PACKS, "p", {"status": {"phase": "Ready"}, "spec": {"priority": 9}}
    )
    assert status["status"] == {"phase": "Ready"} and status["spec"]["priority"] == 2

    current = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "p")
    current["status"] = {"phase": "Overwritten"}
    current["spec"]["priority"] = 3
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "p", current)
    assert replaced["status"] == {"phase": "Ready"} and replaced["spec"]["priority"] == 3

    replaced["status"] = {"phase": "Done"}
    replaced["spec"]["priority"] = 4
    final = custom.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PACKS, "p", replaced)
    assert final["status"] == {"phase": "Done"} and final["spec"]["priority"] == 3
    assert created["metadata"]["uid"] == final["metadata"]["uid"]


def test_custom_resources_are_pruned_and_validated_against_the_crd_schema(
    custom: client.CustomObjectsApi, crds: None
) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PACKS, pack("p", unknownField="x", layers={"rbac": "sha256:1"})
    )
    assert created["spec"] == {"version": "1.0.0", "layers": {"rbac": "sha256:1"}}
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, PACKS, pack("q", version="latest", priority=-1)
        )
    fields = {c["field"] for c in status_of(error.value)["details"]["causes"]}
    assert (error.value.status, fields) == (422, {"spec.version", "spec.priority"})
    with pytest.raises(ApiException) as strict:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, PACKS, pack("r", extra=1), field_validation="Strict"
        )
    assert strict.value.status == 400 and 'unknown field "spec.extra"' in status_of(strict.value)["message"]


# -- patch ------------------------------------------------------------------------------------


def test_merge_patch_sets_and_removes_fields(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", configmap("c", a="1", b="2"))
    patched = core.patch_namespaced_config_map(
        "c", "default", {"data": {"a": None, "c": "3"}}, _content_type="application/merge-patch+json"
    )
    assert patched.data == {"b": "2", "c": "3"}


def test_json_patch_applies_operations_and_a_failed_test_is_422(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", configmap("c", a="1"))
    operations = [
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "add", "path": "/data/b", "value": "2"},
        {"op": "remove", "path": "/data/a"},
    ]
    assert core.patch_namespaced_config_map(
        "c", "default", operations, _content_type="application/json-patch+json"
    ).data == {"b": "2"}
    with pytest.raises(ApiException) as error:
        core.patch_namespaced_config_map(
            "c",
            "default",
            [{"op": "test", "path": "/data/b", "value": "9"}],
            _content_type="application/json-patch+json",
        )
    assert error.value.status == 422


def test_strategic_merge_patch_merges_keyed_lists_of_builtins(api_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_client)
    containers = [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]
    apps.create_namespaced_deployment("default", deployment("d", containers))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}}
    patched = apps.patch_namespaced_deployment(
        "d", "default", patch, _content_type="application/strategic-merge-patch+json"
    )
    assert [(c.name, c.image) for c in patched.spec.template.spec.containers] == [("a", "a:1"), ("b", "b:2")]


def test_strategic_merge_patch_on_a_custom_resource_is_415(
    custom: client.CustomObjectsApi, crds: None
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PACKS, pack("p"))
    with pytest.raises(ApiException) as error:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PACKS,
            "p",
            {"spec": {"priority": 1}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert (error.value.status, status_of(error.value)["reason"]) == (415, "UnsupportedMediaType")


def test_patch_that_changes_nothing_keeps_the_resource_version(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    created = core.create_namespaced_config_map("default", configmap("c", a="1"))
    again = core.patch_namespaced_config_map("c", "default", {"data": {"a": "1"}})
    assert again.metadata.resource_version == created.metadata.resource_version
    assert emulator.resource_version == int(created.metadata.resource_version)


def deployment(name: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}},
        },
    }


# -- server-side apply ------------------------------------------------------------------------


def apply_pack(
    custom: client.CustomObjectsApi, body: dict[str, Any], manager: str, *, force: bool | None = None
) -> dict[str, Any]:
    return custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PACKS,
        body["metadata"]["name"],
        body,
        field_manager=manager,
        force=force,
        _content_type=APPLY,
    )


def last_code(emulator: kubeapi.Emulator) -> int:
    return emulator.requests()[-1].code


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"]): e["fieldsV1"] for e in obj["metadata"]["managedFields"]}


def test_apply_creates_with_201_and_records_managed_fields(
    emulator: kubeapi.Emulator, custom: client.CustomObjectsApi, crds: None
) -> None:
    returned = apply_pack(custom, pack("p", basePackName="cilium", targetClusters=["a"]), "gitopsd")
    # The generated client maps only 200 for PATCH, so an apply that creates (201) returns None.
    assert returned is None and last_code(emulator) == 201
    created = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "p")
    assert created["metadata"]["generation"] == 1
    assert managers(created) == {
        ("gitopsd", "Apply"): {"f:spec": {"f:basePackName": {}, "f:targetClusters": {}, "f:version": {}}},
    }
    entry = created["metadata"]["managedFields"][0]
    assert (entry["apiVersion"], entry["fieldsType"]) == (API_VERSION, "FieldsV1")


def test_apply_that_changes_nothing_is_not_a_write(
    emulator: kubeapi.Emulator, custom: client.CustomObjectsApi, crds: None
) -> None:
    apply_pack(custom, pack("p", priority=1), "gitopsd")
    first = apply_pack(custom, pack("p", priority=1), "gitopsd")
    again = apply_pack(custom, pack("p", priority=1), "gitopsd")
    assert last_code(emulator) == 200
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert again["metadata"]["managedFields"] == first["metadata"]["managedFields"]
    assert emulator.resource_version == int(first["metadata"]["resourceVersion"])


def test_apply_conflicts_with_another_manager_unless_forced(
    custom: client.CustomObjectsApi, crds: None
) -> None:
    apply_pack(custom, pack("p", priority=1, basePackName="cilium"), "gitopsd")
    apply_pack(custom, pack("p", priority=1), "helper")  # same value: shared ownership, no conflict

    with pytest.raises(ApiException) as error:
        apply_pack(custom, pack("p", version="2.0.0", priority=5), "helper")
    status = status_of(error.value)
    assert (error.value.status, status["reason"]) == (409, "Conflict")
    assert {(c["field"], c["message"]) for c in status["details"]["causes"]} == {
        (".spec.priority", 'conflict with "gitopsd"'),
        (".spec.version", 'conflict with "gitopsd"'),
    }
    assert status["message"].startswith('Apply failed with 2 conflicts: conflicts with "gitopsd":')

    forced = apply_pack(custom, pack("p", version="2.0.0", priority=5), "helper", force=True)
    assert forced["spec"] == {"version": "2.0.0", "priority": 5, "basePackName": "cilium"}
    owners = managers(forced)
    assert owners[("gitopsd", "Apply")] == {"f:spec": {"f:basePackName": {}}}
    assert owners[("helper", "Apply")] == {"f:spec": {"f:priority": {}, "f:version": {}}}


def test_apply_conflicts_with_fields_an_update_manager_changed(
    custom: client.CustomObjectsApi, crds: None
) -> None:
    apply_pack(custom, pack("p", priority=1), "gitopsd")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PACKS, "p", {"spec": {"priority": 2}}, field_manager="kubectl-edit"
    )
    with pytest.raises(ApiException) as error:
        apply_pack(custom, pack("p", priority=1), "gitopsd")
    message = status_of(error.value)["message"]
    assert message.startswith(
        'Apply failed with 1 conflict: conflict with "kubectl-edit" using infrastructure.ontai.dev/v1alpha1 at '
    )
    assert message.endswith(": .spec.priority")


def test_apply_removes_fields_its_manager_stopped_applying_unless_shared(
    custom: client.CustomObjectsApi, crds: None
) -> None:
    apply_pack(
        custom, pack("p", priority=1, basePackName="cilium", layers={"rbac": "a", "workload": "b"}), "gitopsd"
    )
    apply_pack(custom, pack("p", basePackName="cilium"), "other")
    trimmed = apply_pack(custom, pack("p", layers={"rbac": "a"}), "gitopsd")
    assert trimmed["spec"] == {"version": "1.0.0", "basePackName": "cilium", "layers": {"rbac": "a"}}


def test_apply_merges_keyed_lists_by_key(api_client: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_client)
    first = deployment("d", [{"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]}])
    apps.patch_namespaced_deployment("d", "default", first, field_manager="one", _content_type=APPLY)
    sidecar = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:1"}]}}},
    }
    merged = apps.patch_namespaced_deployment(
        "d", "default", sidecar, field_manager="two", _content_type=APPLY
    )
    assert [c.name for c in merged.spec.template.spec.containers] == ["a", "b"]
    again = apps.patch_namespaced_deployment("d", "default", first, field_manager="one", _content_type=APPLY)
    assert (
        again.metadata.resource_version == merged.metadata.resource_version
    )  # protocol TCP defaulted, same key
    fields = {e.manager: e.fields_v1 for e in again.metadata.managed_fields}
    container = fields["one"]["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"a"}']
    assert container["."] == {} and 'k:{"containerPort":80,"protocol":"TCP"}' in container["f:ports"]


def test_apply_to_the_status_subresource_owns_only_status(
    custom: client.CustomObjectsApi, crds: None
) -> None:
    apply_pack(custom, pack("p"), "gitopsd")
    body = {
        "apiVersion": API_VERSION,
        "kind": "InfrastructureClusterPack",
        "metadata": {"name": "p", "namespace": NS},
        "status": {"signed": True},
        "spec": {"priority": 7},
    }
    result = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PACKS, "p", body, field_manager="gitopsd-status", _content_type=APPLY
    )
    assert result["status"] == {"signed": True} and "priority" not in result["spec"]
    entry = next(e for e in result["metadata"]["managedFields"] if e["manager"] == "gitopsd-status")
    assert (entry["subresource"], entry["fieldsV1"]) == ("status", {"f:status": {"f:signed": {}}})


@pytest.mark.parametrize(
    ("body", "params", "fragment"),
    [
        (pack("p"), {}, "fieldManager is required"),
        ({"metadata": {"name": "p"}, "spec": {}}, {"field_manager": "x"}, "apiVersion and kind"),
        (pack("other"), {"field_manager": "x"}, "does not match the name on the URL"),
    ],
    ids=["no-field-manager", "no-kind", "name-mismatch"],
)
def test_invalid_apply_requests_are_400(
    custom: client.CustomObjectsApi, crds: None, body: dict[str, Any], params: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ApiException) as error:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PACKS, "p", body, _content_type=APPLY, **params
        )
    assert error.value.status == 400 and fragment in status_of(error.value)["message"]


def test_dry_run_apply_reports_the_result_without_writing(
    emulator: kubeapi.Emulator, custom: client.CustomObjectsApi, crds: None
) -> None:
    emulator.create_object(pack("p"))
    before = emulator.resource_version
    result = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PACKS,
        "p",
        pack("p", priority=3),
        field_manager="x",
        dry_run="All",
        _content_type=APPLY,
    )
    assert result["spec"] == {"version": "1.0.0", "priority": 3}
    assert (
        emulator.resource_version == before and "priority" not in emulator.get_object(PACKS, "p", NS)["spec"]
    )
    assert emulator.write_count() == 0 and emulator.requests()[-1].dry_run


# -- delete -----------------------------------------------------------------------------------


def test_delete_returns_the_object_and_finalizers_defer_it(
    emulator: kubeapi.Emulator, custom: client.CustomObjectsApi, crds: None
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PACKS, pack("plain"))
    deleted = custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "plain")
    assert deleted["metadata"]["name"] == "plain" and emulator.get_object(PACKS, "plain", NS) is None

    guarded = pack("guarded")
    guarded["metadata"]["finalizers"] = ["ontai.dev/cleanup"]
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PACKS, guarded)
    pending = custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "guarded")
    assert pending["metadata"]["deletionTimestamp"] and pending["metadata"]["generation"] == 2
    assert emulator.get_object(PACKS, "guarded", NS) is not None
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PACKS, "guarded", {"metadata": {"finalizers": None}}
    )
    assert emulator.get_object(PACKS, "guarded", NS) is None


def test_delete_collection_with_a_label_selector(emulator: kubeapi.Emulator, core: client.CoreV1Api) -> None:
    for name, labels in LABELLED.items():
        core.create_namespaced_config_map("default", configmap(name, labels))
    core.delete_collection_namespaced_config_map("default", label_selector="tier")
    assert sorted(o["metadata"]["name"] for o in emulator.list_objects("configmaps", "default")) == [
        "db",
        "plain",
    ]


def test_deleting_a_namespace_terminates_it_then_removes_its_content(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", configmap("c"))
    terminating = core.delete_namespace("doomed")
    assert terminating["status"]["phase"] == "Terminating" and terminating["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map("doomed", configmap("d"))
    assert error.value.status == 403
    emulator.finalize_namespaces()
    assert (
        emulator.get_object("namespaces", "doomed") is None
        and emulator.list_objects("configmaps", "doomed") == []
    )


# -- watch ------------------------------------------------------------------------------------


def collect(stream: Any, count: int, stopper: watch.Watch) -> list[tuple[str, str]]:
    events = []
    for event in stream:
        events.append((event["type"], event["raw_object"]["metadata"].get("name", "")))
        if len(events) == count:
            stopper.stop()
    return events


def test_watch_replays_history_from_a_resource_version(core: client.CoreV1Api) -> None:
    start = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", configmap("a"))
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "v"}})
    core.delete_namespaced_config_map("a", "default")
    watcher = watch.Watch()
    events = collect(
        watcher.stream(core.list_namespaced_config_map, "default", resource_version=start), 3, watcher
    )
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_watch_without_resource_version_starts_with_the_current_state_and_follows(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_config_map("default", configmap("old"))
    watcher = watch.Watch()
    stream = watcher.stream(core.list_namespaced_config_map, "default")
    first = next(stream)
    threading.Timer(0.1, core.create_namespaced_config_map, ("default", configmap("new"))).start()
    second = next(stream)
    watcher.stop()
    assert [(e["type"], e["object"].metadata.name) for e in (first, second)] == [
        ("ADDED", "old"),
        ("ADDED", "new"),
    ]
    assert isinstance(first["object"], client.V1ConfigMap)


def test_watch_honours_timeout_seconds(core: client.CoreV1Api) -> None:
    started = time.monotonic()
    events = list(
        watch.Watch().stream(
            core.list_namespaced_config_map, "default", resource_version="1", timeout_seconds=1
        )
    )
    assert events == [] and 0.9 <= time.monotonic() - started < 3


def test_watch_filters_by_label_selector_and_namespace(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    emulator.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    start = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("other", configmap("elsewhere", {"app": "web"}))
    core.create_namespaced_config_map("default", configmap("a", {"app": "web"}))
    core.create_namespaced_config_map("default", configmap("b", {"app": "db"}))
    core.patch_namespaced_config_map(
        "a", "default", {"metadata": {"labels": {"app": "api"}}}
    )  # leaves the selector
    core.patch_namespaced_config_map("b", "default", {"metadata": {"labels": {"app": "web"}}})  # enters it
    watcher = watch.Watch()
    stream = watcher.stream(
        core.list_namespaced_config_map, "default", label_selector="app=web", resource_version=start
    )
    assert collect(stream, 3, watcher) == [("ADDED", "a"), ("DELETED", "a"), ("ADDED", "b")]


def test_watch_sends_bookmarks_when_allowed(core: client.CoreV1Api) -> None:
    current = core.list_namespaced_config_map("default").metadata.resource_version
    watcher = watch.Watch()
    stream = watcher.stream(
        core.list_namespaced_config_map,
        "default",
        resource_version=current,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    event = next(stream)
    watcher.stop()
    assert event["type"] == "BOOKMARK" and event["raw_object"]["metadata"]["resourceVersion"] == current


def test_watch_with_send_initial_events_ends_them_with_a_bookmark(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", configmap("cilium-prod"))
    watcher = watch.Watch()
    stream = watcher.stream(
        core.list_namespaced_config_map,
        "default",
        send_initial_events=True,
        allow_watch_bookmarks=True,
        resource_version_match="NotOlderThan",
    )
    added, bookmark = next(stream), next(stream)
    watcher.stop()
    assert (added["type"], added["object"].metadata.name) == ("ADDED", "cilium-prod")
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["raw_object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def raw_watch_lines(core: client.CoreV1Api, **params: Any) -> list[dict[str, Any]]:
    response = core.list_namespaced_config_map("default", watch=True, _preload_content=False, **params)
    try:
        assert response.status == 200 and response.headers.get("Transfer-Encoding") == "chunked"
        return [json.loads(line) for line in response.read().decode().splitlines() if line]
    finally:
        response.release_conn()


def test_watch_from_a_compacted_resource_version_is_an_error_event_410(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    old = core.create_namespaced_config_map("default", configmap("a")).metadata.resource_version
    core.create_namespaced_config_map("default", configmap("b"))
    emulator.compact()
    [event] = raw_watch_lines(core, resource_version=old, timeout_seconds=5)
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    with pytest.raises(ApiException) as error:
        list(
            watch.Watch().stream(
                core.list_namespaced_config_map, "default", resource_version=old, timeout_seconds=5
            )
        )
    assert error.value.status == 410


def test_history_window_is_bounded_by_the_history_setting(tmp_path: Path) -> None:
    with kubeapi.Emulator(history=3, namespaces=["default"]) as emu:
        before = str(emu.resource_version)
        first = emu.create_object(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}}
        )
        for name in "bcd":
            emu.create_object(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}
            )
        with client.ApiClient(client.Configuration(host=emu.url)) as api:
            core = client.CoreV1Api(api)
            [event] = raw_watch_lines(core, resource_version=before, timeout_seconds=5)
            recent = raw_watch_lines(
                core, resource_version=first["metadata"]["resourceVersion"], timeout_seconds=1
            )
    assert event["object"]["code"] == 410  # "a" fell out of the 3-change window
    assert [e["object"]["metadata"]["name"] for e in recent] == ["b", "c", "d"]


def test_watch_ends_when_its_crd_is_deleted(
    emulator: kubeapi.Emulator, custom: client.CustomObjectsApi, crds: None
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, INSTANCES, instance("i"))
    start = str(emulator.resource_version)
    threading.Timer(
        0.2, emulator.delete_object, ("customresourcedefinitions", f"{INSTANCES}.{GROUP}")
    ).start()
    events = list(
        watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NS,
            INSTANCES,
            resource_version=start,
            timeout_seconds=10,
        )
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("DELETED", "i")]


# -- events and leases ------------------------------------------------------------------------


def test_events_are_one_store_seen_through_both_event_apis(
    api_client: client.ApiClient, core: client.CoreV1Api
) -> None:
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "pack.1"},
            "involvedObject": {"kind": "InfrastructureClusterPack", "name": "p", "namespace": "default"},
            "reason": "PackCollisionDetected",
            "message": "collides with q",
            "type": "Warning",
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "reportingComponent": "gitopsd",
            "reportingInstance": "gitopsd-0",
            "action": "Reconcile",
        },
    )
    modern = client.EventsV1Api(api_client).read_namespaced_event("pack.1", "default")
    assert (modern.note, modern.regarding.name, modern.reporting_controller) == (
        "collides with q",
        "p",
        "gitopsd",
    )
    listed = core.list_namespaced_event(
        "default", field_selector="involvedObject.name=p,reason=PackCollisionDetected"
    )
    assert [e.message for e in listed.items] == ["collides with q"]


def test_lease_optimistic_concurrency_lets_one_of_two_contenders_win(api_client: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api_client)
    leases.create_namespaced_lease(
        "default",
        {"metadata": {"name": "gitopsd-leader"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}},
    )
    seen_by_b = leases.read_namespaced_lease("gitopsd-leader", "default")
    seen_by_c = leases.read_namespaced_lease("gitopsd-leader", "default")
    seen_by_b.spec.holder_identity = "b"
    seen_by_c.spec.holder_identity = "c"
    won = leases.replace_namespaced_lease("gitopsd-leader", "default", seen_by_b)
    with pytest.raises(ApiException) as lost:
        leases.replace_namespaced_lease("gitopsd-leader", "default", seen_by_c)
    assert won.spec.holder_identity == "b" and lost.value.status == 409
    assert leases.read_namespaced_lease("gitopsd-leader", "default").spec.holder_identity == "b"


def test_concurrent_writers_with_optimistic_concurrency_lose_no_update(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map("default", configmap("counter", n="0"))
    conflicts = []

    def increment(times: int) -> None:
        done = 0
        while done < times:
            current = core.read_namespaced_config_map("counter", "default")
            current.data["n"] = str(int(current.data["n"]) + 1)
            try:
                core.replace_namespaced_config_map("counter", "default", current)
                done += 1
            except ApiException as error:
                assert error.status == 409
                conflicts.append(error.status)

    workers = [threading.Thread(target=increment, args=(10,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert core.read_namespaced_config_map("counter", "default").data["n"] == "40"
    assert len(conflicts) > 0  # the writers did race


def test_reading_and_replacing_unchanged_objects_is_not_a_write(
    emulator: kubeapi.Emulator, api_client: client.ApiClient
) -> None:
    core, leases = client.CoreV1Api(api_client), client.CoordinationV1Api(api_client)
    core.create_namespaced_config_map("default", configmap("c", k="v"))
    renewed = datetime.now(UTC)
    leases.create_namespaced_lease(
        "default", {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "renewTime": renewed}}
    )
    before = emulator.resource_version
    # The client sends datetimes as "+00:00"; the server stores them as Go does ("Z").
    core.replace_namespaced_config_map("c", "default", core.read_namespaced_config_map("c", "default"))
    leases.replace_namespaced_lease("l", "default", leases.read_namespaced_lease("l", "default"))
    assert emulator.resource_version == before
    stored = emulator.get_object("leases", "l", "default")
    assert stored["spec"]["renewTime"] == renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert stored["metadata"]["managedFields"][0]["time"].endswith("Z")


# -- fault injection --------------------------------------------------------------------------


def test_internal_error_fault_fires_the_given_number_of_times(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    rule = emulator.faults.add(kubeapi.InternalError(), verb="create", resource="configmaps", times=2)
    codes = []
    for index in range(3):
        try:
            core.create_namespaced_config_map("default", configmap(f"c{index}"))
            codes.append(201)
        except ApiException as error:
            codes.append(error.status)
            assert status_of(error)["reason"] == "InternalError"
    assert codes == [500, 500, 201] and rule.fired == 2 and emulator.faults.rules() == []
    assert [r.fault for r in emulator.requests(verb="create")] == ["InternalError", "InternalError", ""]


def test_conflict_storm_fails_the_next_writes_then_clears(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    core.create_namespaced_config_map("default", configmap("c"))
    emulator.faults.add(kubeapi.Conflict(), verb="write", times=3)
    outcomes = []
    for attempt in range(4):
        try:
            core.patch_namespaced_config_map("c", "default", {"data": {"n": str(attempt)}})
            outcomes.append("ok")
        except ApiException as error:
            outcomes.append(status_of(error)["reason"])
    assert outcomes == ["Conflict", "Conflict", "Conflict", "ok"]


def test_throttling_fault_is_429_with_retry_after(emulator: kubeapi.Emulator, core: client.CoreV1Api) -> None:
    emulator.faults.add(kubeapi.TooManyRequests(retry_after=7), verb="create", times=1)
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map("default", configmap("c"))
    assert error.value.status == 429 and error.value.headers["Retry-After"] == "7"
    assert status_of(error.value)["details"]["retryAfterSeconds"] == 7


def test_the_client_honours_retry_after_on_reads(emulator: kubeapi.Emulator, core: client.CoreV1Api) -> None:
    emulator.faults.add(kubeapi.TooManyRequests(retry_after=1), verb="list", times=1)
    started = time.monotonic()
    core.list_namespaced_config_map("default")  # urllib3 waits Retry-After and retries the GET
    assert time.monotonic() - started >= 1
    assert [(r.verb, r.code) for r in emulator.requests()] == [("list", 429), ("list", 200)]


def test_delay_fault_slows_matching_requests_only(emulator: kubeapi.Emulator, core: client.CoreV1Api) -> None:
    emulator.faults.add(kubeapi.Delay(0.3), verb="get", name="slow")
    core.create_namespaced_config_map("default", configmap("slow"))
    core.create_namespaced_config_map("default", configmap("fast"))
    started = time.monotonic()
    core.read_namespaced_config_map("fast", "default")
    fast = time.monotonic() - started
    core.read_namespaced_config_map("slow", "default")
    slow = time.monotonic() - started - fast
    assert fast < 0.2 <= 0.3 <= slow


def test_probabilistic_faults_are_reproducible_with_a_seed(tmp_path: Path) -> None:
    def outcomes(seed: int) -> list[int]:
        with kubeapi.Emulator(seed=seed) as emu:
            emu.faults.add(kubeapi.ServiceUnavailable(), verb="get", probability=0.5)
            with client.ApiClient(client.Configuration(host=emu.url)) as api:
                results = []
                for _ in range(16):
                    try:
                        client.CoreV1Api(api).read_namespace("default")
                        results.append(200)
                    except ApiException as error:
                        results.append(error.status)
                return results

    first = outcomes(7)
    assert first == outcomes(7) and {200, 503} == set(first)


def test_dropped_watch_ends_after_n_events(emulator: kubeapi.Emulator, core: client.CoreV1Api) -> None:
    start = core.list_namespaced_config_map("default").metadata.resource_version
    for name in "abc":
        core.create_namespaced_config_map("default", configmap(name))
    emulator.faults.add(kubeapi.DropWatch(after_events=2), verb="watch", times=1)
    events = raw_watch_lines(core, resource_version=start, timeout_seconds=5)
    assert [e["object"]["metadata"]["name"] for e in events] == ["a", "b"]


def test_watch_stream_resumes_after_a_dropped_watch_without_losing_events(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    start = core.list_namespaced_config_map("default").metadata.resource_version
    for name in "abc":
        core.create_namespaced_config_map("default", configmap(name))
    emulator.faults.add(kubeapi.DropWatch(after_events=1), verb="watch", times=1)
    watcher = watch.Watch()
    events = collect(
        watcher.stream(core.list_namespaced_config_map, "default", resource_version=start), 3, watcher
    )
    assert events == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]
    watches = emulator.requests(verb="watch")
    assert [w.fault for w in watches] == ["DropWatch", ""]
    assert f"resourceVersion={int(start) + 1}" in watches[1].query  # resumed after the last event seen


def test_abruptly_dropped_watch_breaks_the_connection(
    emulator: kubeapi.Emulator, core: client.CoreV1Api
) -> None:
    start = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", configmap("a"))
    emulator.faults.add(kubeapi.DropWatch(after_events=1, abrupt=True), verb="watch", times=1)
    response = core.list_namespaced_config_map(
        "default", watch=True, resource_version=start, timeout_seconds=5, _preload_content=False
    )
    with pytest.raises(Exception) as broken:
        response.read()
    response.release_conn()
    assert "IncompleteRead" in repr(broken.value) or "ProtocolError" in repr(broken.value)


def test_watch_gone_fault_sends_a_410_error_event(emulator: kubeapi.Emulator, core: client.CoreV1Api) -> None:
    emulator.faults.add(kubeapi.WatchGone(), verb="watch", resource="configmaps")
    [event] = raw_watch_lines(core, resource_version="1", timeout_seconds=5)
    assert (event["type"], event["object"]["code"]) == ("ERROR", 410)


def test_faults_can_be_removed_and_cleared(emulator: kubeapi.Emulator, core: client.CoreV1Api) -> None:
    rule = emulator.faults.add(kubeapi.InternalError(), verb="list")
    emulator.faults.add(kubeapi.InternalError(), verb="get")
    emulator.faults.remove(rule)
    core.list_namespaced_config_map("default")
    with pytest.raises(ApiException):
        core.read_namespace("default")
    emulator.faults.clear()
    assert core.read_namespace("default").metadata.name == "default"


def test_faults_and_request_log_over_http(emulator: kubeapi.Emulator, core: client.CoreV1Api) -> None:
    added = control(
        emulator,
        "POST",
        "/__emulator/faults",
        {"effect": "error", "code": 503, "reason": "ServiceUnavailable", "verb": "list", "times": 1},
    )
    with pytest.raises(ApiException) as error:
        core.list_namespaced_config_map("default")
    assert error.value.status == 503 and added["id"] >= 1
    core.create_namespaced_config_map("default", configmap("c"))
    served = control(emulator, "GET", "/__emulator/requests")
    assert served["counts"] == {"list configmaps": 1, "create configmaps": 1} and served["writes"] == 1
    assert [(r["verb"], r["resource"], r["code"]) for r in served["requests"]] == [
        ("list", "configmaps", 503),
        ("create", "configmaps", 201),
    ]
    control(emulator, "POST", "/__emulator/reset")
    assert control(emulator, "GET", "/__emulator/requests")["requests"] == []


# -- request log ------------------------------------------------------------------------------


def test_request_log_counts_verbs_and_subresources(
    emulator: kubeapi.Emulator, custom: client.CustomObjectsApi, crds: None
) -> None:
    apply_pack(custom, pack("p"), "gitopsd")
    custom.list_namespaced_custom_object(GROUP, VERSION, NS, PACKS)
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PACKS, "p", {"status": {"signed": True}})
    custom.get_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "p")
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PACKS, "p")
    assert emulator.request_counts() == {
        f"apply {PACKS}": 1,
        f"list {PACKS}": 1,
        f"patch {PACKS}/status": 1,
        f"get {PACKS}": 1,
        f"delete {PACKS}": 1,
    }
    assert emulator.write_count() == 3
    [status_write] = emulator.requests(resource=f"{PACKS}/status")
    assert (status_write.verb, status_write.namespace, status_write.name, status_write.code) == (
        "patch",
        NS,
        "p",
        200,
    )
    emulator.reset_requests()
    assert emulator.requests() == [] and emulator.write_count() == 0


# -- kubectl ----------------------------------------------------------------------------------

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata:
  name: seam-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: gitopsd
  namespace: seam-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: gitopsd
rules:
- apiGroups: ["infrastructure.ontai.dev"]
  resources: ["*"]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: gitopsd
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: gitopsd}
subjects:
- {kind: ServiceAccount, name: gitopsd, namespace: seam-system}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: gitopsd
  namespace: seam-system
spec:
  selector: {matchLabels: {app: gitopsd}}
  template:
    metadata: {labels: {app: gitopsd}}
    spec:
      serviceAccountName: gitopsd
      containers:
      - name: gitopsd
        image: ghcr.io/ontai/gitopsd:0.1.0
        ports: [{containerPort: 8080, name: metrics}]
---
apiVersion: v1
kind: Service
metadata:
  name: gitopsd
  namespace: seam-system
spec:
  selector: {app: gitopsd}
  ports: [{port: 8080, targetPort: metrics, name: metrics}]
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: gitopsd-leader
  namespace: seam-system
spec:
  holderIdentity: gitopsd-0
  leaseDurationSeconds: 15
---
apiVersion: infrastructure.ontai.dev/v1alpha1
kind: InfrastructureClusterPack
metadata:
  name: cilium-v1.0.0
  namespace: seam-system
spec:
  version: 1.0.0
  basePackName: cilium
"""

CLUSTERPACK_CRD_YAML = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: infrastructureclusterpacks.infrastructure.ontai.dev
spec:
  group: infrastructure.ontai.dev
  scope: Namespaced
  names:
    kind: InfrastructureClusterPack
    plural: infrastructureclusterpacks
    singular: infrastructureclusterpack
    shortNames: [icp]
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - {name: Version, type: string, jsonPath: .spec.version}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              version: {type: string}
              basePackName: {type: string}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""


def test_kubectl_server_side_apply_get_and_delete(
    emulator: kubeapi.Emulator, kubectl: Kubectl, tmp_path: Path
) -> None:
    crd_file, app_dir = tmp_path / "clusterpack-crd.yaml", tmp_path / "app"
    crd_file.write_text(CLUSTERPACK_CRD_YAML)
    app_dir.mkdir()
    (app_dir / "00-packinstance-crd.yaml").write_text(yaml.safe_dump(INSTANCE_CRD))
    (app_dir / "10-all.yaml").write_text(MANIFESTS)

    kubectl("apply", "--server-side", "-f", str(crd_file))
    kubectl("wait", "--for=condition=Established", f"crd/{PACKS}.{GROUP}", "--timeout=10s")
    applied = kubectl("apply", "--server-side", "-f", str(app_dir))
    assert applied.stdout.count("serverside-applied") == 9
    kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        stdin=yaml.safe_dump(instance("cilium-prod", clusterPack="cilium-v1.0.0")),
    )

    emulator.reset_requests()
    kubectl("apply", "--server-side", "-f", str(app_dir))  # a second apply is nine no-op writes
    assert [r.code for r in emulator.requests(verb="apply")] == [200] * 9
    assert emulator.write_count() == 9 and emulator.request_counts()["apply deployments"] == 1

    listed = json.loads(kubectl("get", PACKS, "-A", "-o", "json").stdout)
    assert [(i["metadata"]["namespace"], i["metadata"]["name"], i["spec"]) for i in listed["items"]] == [
        (NS, "cilium-v1.0.0", {"version": "1.0.0", "basePackName": "cilium"})
    ]
    crds = kubectl("get", "crd").stdout.splitlines()
    assert crds[0].split() == ["NAME", "CREATED", "AT"]
    assert sorted(line.split()[0] for line in crds[1:]) == [f"{PACKS}.{GROUP}", f"{INSTANCES}.{GROUP}"]
    table = kubectl("get", PACKS, "-n", NS).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION"] and table[1].split() == ["cilium-v1.0.0", "1.0.0"]
    assert kubectl("get", "deploy,svc,sa,lease", "-n", NS, "-o", "name").stdout.split() == [
        "deployment.apps/gitopsd",
        "service/gitopsd",
        "serviceaccount/gitopsd",
        "lease.coordination.k8s.io/gitopsd-leader",
    ]
    service = json.loads(kubectl("get", "svc", "gitopsd", "-n", NS, "-o", "json").stdout)
    assert service["spec"]["clusterIP"] and service["spec"]["ports"][0]["protocol"] == "TCP"

    deleted = kubectl("delete", "-f", str(app_dir))
    assert deleted.stdout.count(" deleted") == 9
    kubectl("delete", "-f", str(crd_file))
    assert GROUP not in kubectl("api-resources").stdout
    emulator.finalize_namespaces()
    assert NS not in kubectl("get", "namespaces", "-o", "name").stdout
    assert emulator.list_objects("deployments") == [] and emulator.list_objects("leases", NS) == []


def test_kubectl_reports_apply_conflicts_and_forces_them(
    emulator: kubeapi.Emulator, kubectl: Kubectl, tmp_path: Path, crds: None
) -> None:
    emulator.create_object(pack("p") | {"metadata": {"name": "p", "namespace": NS}})
    manifest = tmp_path / "p.yaml"
    manifest.write_text(yaml.safe_dump(pack("p", priority=1)))
    kubectl("apply", "--server-side", "--field-manager=gitopsd", "-f", str(manifest))
    manifest.write_text(yaml.safe_dump(pack("p", priority=2)))
    refused = kubectl("apply", "--server-side", "--field-manager=human", "-f", str(manifest), check=False)
    assert refused.returncode == 1
    assert 'Apply failed with 1 conflict: conflict with "gitopsd": .spec.priority' in refused.stderr
    kubectl("apply", "--server-side", "--field-manager=human", "--force-conflicts", "-f", str(manifest))
    assert emulator.get_object(PACKS, "p", NS)["spec"]["priority"] == 2


def test_kubectl_patch_label_and_client_side_apply(
    emulator: kubeapi.Emulator, kubectl: Kubectl, tmp_path: Path, crds: None
) -> None:
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(yaml.safe_dump(configmap("settings", a="1")))
    assert "created" in kubectl("apply", "-f", str(manifest)).stdout
    manifest.write_text(yaml.safe_dump(configmap("settings", a="2")))
    assert "configured" in kubectl("apply", "-f", str(manifest)).stdout
    kubectl("label", "configmap", "settings", "team=infra")
    kubectl("patch", "configmap", "settings", "--type=merge", "-p", '{"data":{"b":"3"}}')
    settings = emulator.get_object("configmaps", "settings", "default")
    assert settings["data"] == {"a": "2", "b": "3"} and settings["metadata"]["labels"] == {"team": "infra"}
    assert kubectl("get", "cm", "-l", "team in (infra)", "-o", "name").stdout.strip() == "configmap/settings"

    emulator.create_object(pack("p"))
    refused = kubectl("patch", PACKS, "p", "-n", NS, "-p", '{"spec":{"priority":1}}', check=False)
    assert (
        refused.returncode == 1
        and "application/strategic-merge-patch+json is not supported" in refused.stderr
    )
    kubectl(
        "patch",
        PACKS,
        "p",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Ready"}}',
    )
    assert emulator.get_object(PACKS, "p", NS)["status"] == {"phase": "Ready"}


def test_kubectl_diff_and_server_dry_run_change_nothing(
    emulator: kubeapi.Emulator, kubectl: Kubectl, crds: None
) -> None:
    live = yaml.safe_dump(pack("p", basePackName="cilium"))
    kubectl("apply", "--server-side", "-f", "-", stdin=live)
    before = emulator.resource_version
    assert kubectl("diff", "--server-side", "-f", "-", stdin=live).returncode == 0
    changed = kubectl("diff", "--server-side", "-f", "-", stdin=live.replace("1.0.0", "1.1.0"), check=False)
    assert changed.returncode == 1 and "+  version: 1.1.0" in changed.stdout
    dry = kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=live.replace("1.0.0", "1.1.0")
    )
    assert "(server dry run)" in dry.stdout
    assert (
        emulator.resource_version == before
        and emulator.get_object(PACKS, "p", NS)["spec"]["version"] == "1.0.0"
    )


def test_kubectl_apply_of_a_custom_resource_without_its_crd_fails_like_a_real_cluster(
    kubectl: Kubectl,
) -> None:
    refused = kubectl(
        "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(pack("p", "default")), check=False
    )
    assert refused.returncode == 1
    assert 'no matches for kind "InfrastructureClusterPack"' in refused.stderr
    assert "ensure CRDs are installed first" in refused.stderr


def test_kubectl_get_watch_prints_rows_as_objects_change(
    emulator: kubeapi.Emulator, kubeconfig: Path, tmp_path: Path
) -> None:
    emulator.create_object(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first", "namespace": "default"}}
    )
    command = [
        "kubectl",
        "--kubeconfig",
        str(kubeconfig),
        "--cache-dir",
        str(tmp_path / "cache"),
        "get",
        "configmaps",
        "--watch",
        "--request-timeout=20s",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    try:
        assert process.stdout is not None
        header, first = process.stdout.readline().split(), process.stdout.readline().split()
        emulator.create_object(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "second", "namespace": "default"}}
        )
        second = process.stdout.readline().split()
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert header == ["NAME", "CREATED", "AT"]
    assert (first[0], second[0]) == ("first", "second")
    assert [r.verb for r in emulator.requests(resource="configmaps")] == ["list", "watch"]


# -- standalone process and lifecycle ---------------------------------------------------------


def test_standalone_process_serves_kubectl_until_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gitopsd.testing.kubeapi", "--port", "0", "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        result = subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                str(kubeconfig),
                "--cache-dir",
                str(tmp_path / "cache"),
                "get",
                "namespaces",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={**env, "HOME": str(tmp_path)},
        )
        assert result.stdout.split() == [f"namespace/{n}" for n in sorted(kubeapi.DEFAULT_NAMESPACES)]
        with urllib.request.urlopen(url + "/__emulator/requests", timeout=5) as response:
            assert json.load(response)["counts"] == {"list namespaces": 1}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_stopping_ends_open_watches_and_joins_threads() -> None:
    emu = kubeapi.Emulator().start()
    url = emu.url
    with client.ApiClient(client.Configuration(host=url)) as api:
        response = client.CoreV1Api(api).list_namespaced_config_map(
            "default", watch=True, resource_version="1", _preload_content=False
        )
        started = time.monotonic()
        emu.stop()
        assert response.read() == b""  # the stream ended cleanly
        response.release_conn()
    assert time.monotonic() - started < 5
    assert not [t for t in threading.enumerate() if t.name.startswith("kubeapi-emulator")]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/version", timeout=1)
