"""Server-side printing: ``Table`` and ``PartialObjectMetadata`` responses.

``kubectl get`` asks for ``application/json;as=Table;g=meta.k8s.io;v=v1`` and prints the columns
the server chose: Name plus the CRD's ``additionalPrinterColumns`` (or Age) for custom resources,
Name and Created At for built-ins (the generic table convertor). ``handler`` picks the form from
the ``Accept`` header.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gitopsd.testing.kubeapi.resources import ResourceType

JSON = dict[str, Any]

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
_CREATED_COLUMN = {
    "name": "Created At",
    "type": "date",
    "format": "",
    "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
    "priority": 0,
}
_AGE_COLUMN = {
    "name": "Age",
    "type": "date",
    "jsonPath": ".metadata.creationTimestamp",
    "description": "",
    "priority": 0,
}


def wanted_form(accept: str) -> str:
    """``Table``, ``PartialObjectMetadata`` or ``""`` (plain objects) from an Accept header."""
    for clause in accept.split(","):
        params = dict(p.strip().partition("=")[::2] for p in clause.split(";")[1:])
        if params.get("g") == "meta.k8s.io" and params.get("as") in (
            "Table",
            "PartialObjectMetadata",
            "PartialObjectMetadataList",
        ):
            return params["as"].removesuffix("List")
        if clause.strip().startswith("application/json") and "as" not in params:
            return ""
    return ""


def _columns(rt: ResourceType) -> list[JSON]:
    if not rt.custom:
        return [_NAME_COLUMN, _CREATED_COLUMN]
    printer = list(rt.printer_columns) or [_AGE_COLUMN]
    return [_NAME_COLUMN] + [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in printer
    ]


def _lookup(obj: JSON, json_path: str) -> Any:
    node: Any = obj
    for part in json_path.strip(".").split("."):
        name, _, index = part.partition("[")
        node = node.get(name) if isinstance(node, dict) else None
        if index and isinstance(node, list):
            position = int(index.rstrip("]"))
            node = node[position] if position < len(node) else None
    return node


def human_age(timestamp: str, now: datetime) -> str:
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cells(rt: ResourceType, obj: JSON, now: datetime) -> list[Any]:
    metadata = obj.get("metadata") or {}
    if not rt.custom:
        return [metadata.get("name"), metadata.get("creationTimestamp")]
    cells: list[Any] = [metadata.get("name")]
    for column in rt.printer_columns or [_AGE_COLUMN]:
        value = _lookup(obj, str(column.get("jsonPath", "")))
        cells.append(human_age(value, now) if column.get("type") == "date" and value else value)
    return cells


def partial(obj: JSON) -> JSON:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata") or {},
    }


def table(rt: ResourceType, body: JSON, include_object: str, now: datetime, *, columns: bool = True) -> JSON:
    """A ``Table`` for a list response or a single object (a watch sends the columns once)."""
    items = body["items"] if body.get("kind", "").endswith("List") and "items" in body else [body]
    rows = []
    for obj in items:
        row: JSON = {"cells": _cells(rt, obj, now)}
        if include_object == "Object":
            row["object"] = {"apiVersion": rt.api_version, "kind": rt.kind, **obj}
        elif include_object != "None":
            row["object"] = partial(obj)
        rows.append(row)
    metadata = (
        {
            k: v
            for k, v in (body.get("metadata") or {}).items()
            if k in ("resourceVersion", "continue", "remainingItemCount")
        }
        if "items" in body
        else {"resourceVersion": body.get("metadata", {}).get("resourceVersion", "")}
    )
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": _columns(rt) if columns else [],
        "rows": rows,
    }


def partial_metadata(body: JSON) -> JSON:
    if "items" in body:
        return {
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": body.get("metadata") or {},
            "items": [partial(obj) for obj in body["items"]],
        }
    return partial(body)
