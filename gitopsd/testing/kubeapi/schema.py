"""Just enough of an object's schema to merge, own and prune fields as the API server does.

A :class:`Shape` wraps an OpenAPI v3 node and answers the questions that server-side apply and
strategic merge patch ask: is this list atomic, a set, or a map keyed by some fields; is this map
atomic. Custom resources take their shape from the CRD's ``openAPIV3Schema`` (which is also used to
prune unknown fields and to validate, like the apiextensions server does); built-in kinds use the
small hand-written schemas below, which carry only the list/map markers of the real Go types.
Anything a schema does not describe is "deduced": maps granular, lists atomic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

Node = Mapping[str, Any]


class Shape:
    """The merge semantics of one node of an object."""

    __slots__ = ("_node",)

    def __init__(self, node: Node | None = None) -> None:
        self._node: Node = node or {}

    def field(self, name: str) -> Shape:
        properties = self._node.get("properties") or {}
        if name in properties:
            return Shape(properties[name])
        additional = self._node.get("additionalProperties")
        if isinstance(additional, Mapping):
            return Shape(additional)
        return DEDUCED

    def item(self) -> Shape:
        items = self._node.get("items")
        return Shape(items) if isinstance(items, Mapping) else DEDUCED

    @property
    def list_type(self) -> str:
        return str(self._node.get("x-kubernetes-list-type", "atomic"))

    @property
    def list_keys(self) -> tuple[str, ...]:
        return tuple(self._node.get("x-kubernetes-list-map-keys", ()))

    @property
    def default(self) -> Any:
        return self._node.get("default")

    @property
    def map_atomic(self) -> bool:
        return self._node.get("x-kubernetes-map-type") == "atomic"


DEDUCED = Shape()


def item_key(item: Mapping[str, Any], shape: Shape) -> str:
    """The fieldsV1 path element of an item of the keyed list ``shape``: ``k:{"name":"web"}``.

    A missing key field counts as its schema default (``protocol: TCP``), as in structured-merge-diff.
    """
    keys: dict[str, Any] = {}
    for name in shape.list_keys:
        value = item.get(name, shape.item().field(name).default)
        if value is not None:
            keys[name] = value
    return "k:" + json.dumps(keys, sort_keys=True, separators=(",", ":"))


def _keyed(keys: list[str], items: Node | None = None) -> Node:
    node: dict[str, Any] = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": keys,
    }
    if items is not None:
        node["items"] = items
    return node


_ATOMIC_MAP: Node = {"x-kubernetes-map-type": "atomic"}
_SET: Node = {"type": "array", "x-kubernetes-list-type": "set"}

METADATA: Node = {
    "properties": {
        "labels": {},
        "annotations": {},
        "finalizers": _SET,
        "ownerReferences": _keyed(["uid"]),
    }
}

_PROTOCOL_DEFAULT: Node = {"properties": {"protocol": {"type": "string", "default": "TCP"}}}

_CONTAINER: Node = {
    "properties": {
        "ports": _keyed(["containerPort", "protocol"], _PROTOCOL_DEFAULT),
        "env": _keyed(["name"]),
        "volumeMounts": _keyed(["mountPath"]),
        "volumeDevices": _keyed(["devicePath"]),
        "resizePolicy": _keyed(["resourceName"]),
    }
}

_POD_SPEC: Node = {
    "properties": {
        "containers": _keyed(["name"], _CONTAINER),
        "initContainers": _keyed(["name"], _CONTAINER),
        "ephemeralContainers": _keyed(["name"], _CONTAINER),
        "volumes": _keyed(["name"]),
        "imagePullSecrets": _keyed(["name"]),
        "hostAliases": _keyed(["ip"]),
        "nodeSelector": _ATOMIC_MAP,
    }
}

_CONDITIONS = _keyed(["type"])

BUILTIN_SCHEMAS: dict[str, Node] = {
    "Deployment": {
        "properties": {
            "spec": {
                "properties": {
                    "selector": _ATOMIC_MAP,
                    "template": {"properties": {"spec": _POD_SPEC}},
                }
            },
            "status": {"properties": {"conditions": _CONDITIONS}},
        }
    },
    "Service": {
        "properties": {
            "spec": {
                "properties": {
                    "ports": _keyed(["port", "protocol"], _PROTOCOL_DEFAULT),
                    "selector": _ATOMIC_MAP,
                    "clusterIPs": {"type": "array"},
                }
            },
            "status": {"properties": {"conditions": _CONDITIONS}},
        }
    },
    "ServiceAccount": {"properties": {"secrets": _keyed(["name"]), "imagePullSecrets": {"type": "array"}}},
    "CustomResourceDefinition": {
        "properties": {
            "spec": {
                "properties": {
                    "versions": {"type": "array", "items": {"properties": {"schema": _ATOMIC_MAP}}}
                }
            },
            "status": {"properties": {"conditions": _CONDITIONS}},
        }
    },
    "Namespace": {"properties": {"status": {"properties": {"conditions": _CONDITIONS}}}},
}


def root_shape(schema: Node | None) -> Shape:
    """The shape of a whole object: its schema, with ``metadata`` always described."""
    properties = dict((schema or {}).get("properties") or {})
    properties["metadata"] = METADATA
    return Shape({**(schema or {}), "properties": properties})


# -- structural schema: pruning and validation (custom resources) ------------------------------


def prune(value: Any, node: Node, *, dropped: list[str] | None = None, path: str = "") -> Any:
    """Drop fields the schema does not know, as the apiextensions server does on every write.

    The dotted paths of dropped fields are appended to ``dropped`` when given.
    """
    if (
        node.get("x-kubernetes-preserve-unknown-fields")
        and not node.get("properties")
        and not node.get("items")
    ):
        return value
    if isinstance(value, dict):
        properties = node.get("properties") or {}
        additional = node.get("additionalProperties")
        keep_meta = not path or node.get("x-kubernetes-embedded-resource")
        pruned = {}
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else key
            if keep_meta and key in ("apiVersion", "kind", "metadata"):
                pruned[key] = child
            elif key in properties:
                pruned[key] = prune(child, properties[key], dropped=dropped, path=child_path)
            elif isinstance(additional, Mapping):
                pruned[key] = prune(child, additional, dropped=dropped, path=child_path)
            elif additional is True or node.get("x-kubernetes-preserve-unknown-fields"):
                pruned[key] = child
            elif dropped is not None:
                dropped.append(child_path)
        return pruned
    if isinstance(value, list) and isinstance(node.get("items"), Mapping):
        return [
            prune(item, node["items"], dropped=dropped, path=f"{path}[{i}]") for i, item in enumerate(value)
        ]
    return value


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def _type_ok(value: Any, node: Node) -> bool:
    expected = node.get("type")
    if node.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    if not expected:
        return True
    if expected in ("integer", "number") and isinstance(value, bool):
        return False
    if expected == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(expected, (object,)))


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def validate(value: Any, node: Node, path: str = "") -> list[tuple[str, str]]:
    """``(field, message)`` for each violation of ``type``, ``required``, ``enum``, ``pattern``
    and the numeric/length bounds, worded like the apiextensions validator."""
    if value is None:
        return (
            []
            if node.get("nullable") or not node.get("type")
            else [(path, f'Invalid value: "null": {path} in body must be of type {node.get("type")}: "null"')]
        )
    if not _type_ok(value, node):
        kind = (
            type(value).__name__.replace("dict", "object").replace("list", "array").replace("str", "string")
        )
        return [
            (path, f'Invalid value: "{kind}": {path} in body must be of type {node.get("type")}: "{kind}"')
        ]
    errors: list[tuple[str, str]] = []
    if "enum" in node and value not in node["enum"]:
        supported = ", ".join(_show(v) for v in node["enum"])
        errors.append((path, f"Unsupported value: {_show(value)}: supported values: {supported}"))
    if isinstance(value, str):
        if "pattern" in node and not re.search(node["pattern"], value):
            errors.append(
                (path, f"Invalid value: {_show(value)}: {path} in body should match '{node['pattern']}'")
            )
        if "maxLength" in node and len(value) > node["maxLength"]:
            errors.append((path, f"Too long: may not be more than {node['maxLength']} bytes"))
        if "minLength" in node and len(value) < node["minLength"]:
            errors.append(
                (
                    path,
                    f"Invalid value: {_show(value)}: {path} in body should be at least {node['minLength']} chars long",
                )
            )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in node and value < node["minimum"]:
            errors.append(
                (
                    path,
                    f"Invalid value: {value}: {path} in body should be greater than or equal to {node['minimum']}",
                )
            )
        if "maximum" in node and value > node["maximum"]:
            errors.append(
                (
                    path,
                    f"Invalid value: {value}: {path} in body should be less than or equal to {node['maximum']}",
                )
            )
    if isinstance(value, dict):
        errors += _validate_object(value, node, path)
    if isinstance(value, list):
        if "maxItems" in node and len(value) > node["maxItems"]:
            errors.append((path, f"Too many: {len(value)}: must have at most {node['maxItems']} items"))
        if "minItems" in node and len(value) < node["minItems"]:
            errors.append(
                (
                    path,
                    f"Invalid value: {len(value)}: {path} in body should have at least {node['minItems']} items",
                )
            )
        if isinstance(node.get("items"), Mapping):
            for index, item in enumerate(value):
                errors += validate(item, node["items"], f"{path}[{index}]")
    return errors


def _validate_object(value: Mapping[str, Any], node: Node, path: str) -> list[tuple[str, str]]:
    errors = [(_join(path, name), "Required value") for name in node.get("required", ()) if name not in value]
    properties = node.get("properties") or {}
    additional = node.get("additionalProperties")
    for key, child in value.items():
        if not path and key in ("apiVersion", "kind", "metadata"):
            continue
        if key in properties:
            errors += validate(child, properties[key], _join(path, key))
        elif isinstance(additional, Mapping):
            errors += validate(child, additional, _join(path, key))
    return errors


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
