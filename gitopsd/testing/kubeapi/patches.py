"""The three non-apply patch formats the API server accepts.

* JSON merge patch (RFC 7386, ``application/merge-patch+json``),
* JSON patch (RFC 6902, ``application/json-patch+json``),
* strategic merge patch (``application/strategic-merge-patch+json``, built-in types only): a merge
  patch whose lists of known keyed items (containers by ``name``, ...) merge by key, with the
  ``$patch``/``$retainKeys``/``$setElementOrder`` directives.

Pure functions on JSON values; ``operations`` calls them and maps :class:`PatchError` to 422.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from gitopsd.testing.kubeapi import schema

JSON = Any


class PatchError(ValueError):
    """A patch that cannot be applied to the document."""


def merge_patch(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- RFC 6902 ---------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit():
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise PatchError(f"array index {index} out of bounds")
    return index


def _parent(doc: JSON, parts: list[str]) -> JSON:
    node = doc
    for token in parts[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"missing path element {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise PatchError(f"cannot descend into {token!r}")
    return node


def _get(doc: JSON, path: str) -> JSON:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, token = _parent(doc, parts), parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"path {path!r} does not exist")
        return parent[token]
    if isinstance(parent, list):
        return parent[_index(parent, token, for_add=False)]
    raise PatchError(f"path {path!r} does not exist")


def _add(doc: JSON, path: str, value: JSON) -> JSON:
    parts = _pointer(path)
    if not parts:
        return value
    parent, token = _parent(doc, parts), parts[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, for_add=True), value)
    else:
        raise PatchError(f"cannot add at {path!r}")
    return doc


def _remove(doc: JSON, path: str) -> JSON:
    parts = _pointer(path)
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent, token = _parent(doc, parts), parts[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"unable to remove nonexistent key: {token}: missing value")
        del parent[token]
    elif isinstance(parent, list):
        del parent[_index(parent, token, for_add=False)]
    else:
        raise PatchError(f"cannot remove {path!r}")
    return doc


def json_patch(doc: JSON, operations: JSON) -> JSON:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for operation in operations:
        if not isinstance(operation, Mapping) or "op" not in operation or "path" not in operation:
            raise PatchError(f"invalid operation {operation!r}")
        op, path = operation["op"], operation["path"]
        match op:
            case "add":
                doc = _add(doc, path, copy.deepcopy(operation.get("value")))
            case "remove":
                doc = _remove(doc, path)
            case "replace":
                _get(doc, path)
                doc = (
                    _add(_remove(doc, path), path, copy.deepcopy(operation.get("value")))
                    if path
                    else copy.deepcopy(operation.get("value"))
                )
            case "move":
                value = _get(doc, operation["from"])
                doc = _add(_remove(doc, operation["from"]), path, value)
            case "copy":
                doc = _add(doc, path, copy.deepcopy(_get(doc, operation["from"])))
            case "test":
                if _get(doc, path) != operation.get("value"):
                    raise PatchError(f"testing value {path} failed")
            case _:
                raise PatchError(f"unexpected kind: {op}")
    return doc


# -- strategic merge patch ---------------------------------------------------------------------


def strategic_merge_patch(target: JSON, patch: JSON, shape: schema.Shape) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        child = shape.field(key)
        if isinstance(value, list) and child.list_type == "map":
            result[key] = _merge_keyed_list(result.get(key), value, child)
        elif isinstance(value, list) and child.list_type == "set":
            existing = result.get(key) or []
            result[key] = existing + [v for v in value if v not in existing]
        else:
            merged = (
                strategic_merge_patch(result.get(key), value, child)
                if isinstance(value, dict)
                else copy.deepcopy(value)
            )
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_keyed_list(live: JSON, patch: list[Any], shape: schema.Shape) -> list[Any]:
    items = [copy.deepcopy(item) for item in (live or [])]
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [p for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    for entry in patch:
        if not isinstance(entry, dict):
            items.append(copy.deepcopy(entry))
            continue
        key = schema.item_key(entry, shape)
        position = next(
            (
                i
                for i, item in enumerate(items)
                if isinstance(item, dict) and schema.item_key(item, shape) == key
            ),
            None,
        )
        if entry.get("$patch") == "delete":
            if position is not None:
                del items[position]
        elif position is None:
            items.append(strategic_merge_patch({}, entry, shape.item()))
        else:
            items[position] = strategic_merge_patch(items[position], entry, shape.item())
    return items
