"""OpenAPI v3 documents, as much as kubectl reads: ``/openapi/v3`` and one document per group-version.

``kubectl apply`` (``--validate=strict``, its default) looks up the PATCH operation of each kind
in these documents to see whether the server validates fields itself (the ``fieldValidation``
query parameter); if it cannot tell, it refuses to apply. So each served kind gets its paths with
a PATCH operation tagged ``x-kubernetes-group-version-kind`` and listing ``fieldValidation``, and
a component schema (the CRD's own schema for custom resources). Strategic merge patch is not
advertised, so kubectl's client-side apply computes built-in patches from its compiled-in types.
``/openapi/v2`` is served as an empty protobuf ``Document`` (client-go reads v2 only as
protobuf): kubectl falls back to it to validate kinds v3 does not know, and finding no schema
it skips validation, so an unknown kind fails later with kubectl's usual "ensure CRDs are
installed first", as against a real server.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gitopsd.testing.kubeapi.discovery import KUBERNETES_VERSION
from gitopsd.testing.kubeapi.resources import Registry, ResourceType

JSON = dict[str, Any]

V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _group_versions(registry: Registry) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for rt in registry.all():
        if (rt.group, rt.version) not in seen:
            seen.append((rt.group, rt.version))
    return seen


def document(registry: Registry, group: str, version: str) -> JSON | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: JSON = {}
    schemas: JSON = {}
    for rt in types:
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        name = _schema_name(rt)
        schemas[name] = (
            {**(rt.openapi_schema or {"type": "object"}), "x-kubernetes-group-version-kind": [gvk]}
            if rt.custom
            else {"type": "object", "description": f"{rt.kind} (served by the gitopsd API emulator)"}
        )
        paths[_item_path(rt)] = {"patch": _patch_operation(rt, gvk, name)}
        paths[_item_path(rt).rsplit("/", 1)[0]] = {"get": _list_operation(rt, gvk)}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def index(registry: Registry) -> JSON:
    paths = {}
    for group, version in _group_versions(registry):
        doc = document(registry, group, version)
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()
        paths[_gv_path(group, version)] = {
            "serverRelativeURL": f"/openapi/v3/{_gv_path(group, version)}?hash={digest}"
        }
    return {"paths": paths}


def _schema_name(rt: ResourceType) -> str:
    reverse = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{reverse}.{rt.version}.{rt.kind}"


def _item_path(rt: ResourceType) -> str:
    base = f"/{_gv_path(rt.group, rt.version)}"
    scope = "/namespaces/{namespace}" if rt.namespaced else ""
    return f"{base}{scope}/{rt.plural}/{{name}}"


def _patch_operation(rt: ResourceType, gvk: JSON, schema_name: str) -> JSON:
    body = {"schema": {"type": "object"}}
    reference = {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
    return {
        "operationId": f"patch{rt.kind}",
        "parameters": [
            {"name": name, "in": "query", "schema": {"type": "boolean" if name == "force" else "string"}}
            for name in _QUERY
        ],
        "requestBody": {
            "content": {
                "application/json-patch+json": body,
                "application/merge-patch+json": body,
                "application/apply-patch+yaml": body,
            },
            "required": True,
        },
        "responses": {"200": {"description": "OK", "content": {"application/json": reference}}},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": gvk,
    }


def _list_operation(rt: ResourceType, gvk: JSON) -> JSON:
    return {
        "operationId": f"list{rt.kind}",
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": "list",
        "x-kubernetes-group-version-kind": gvk,
    }
