"""Server-side apply and field ownership, after sigs.k8s.io/structured-merge-diff.

An object's fields are a set of paths in the ``fieldsV1`` vocabulary (``f:spec``, ``f:replicas``,
``k:{"name":"web"}`` for an item of a keyed list, ``v:"x"`` for an item of a set). Each writer
("manager") owns a set of paths, kept in ``metadata.managedFields``:

* ``apply`` merges an applied configuration into the live object, reports conflicts with fields
  other managers own and that the apply would change, moves ownership when forced, and removes
  fields the manager stopped applying that nobody else owns;
* ``track_update`` gives an updater (create, PUT, non-apply PATCH) the fields it changed and takes
  them away from everyone else, as the server does for ``operation: Update``.

Pure functions on JSON values; ``operations`` decides scope (main resource vs ``/status``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gitopsd.testing.kubeapi import errors, schema

Path = tuple[str, ...]
Scope = Callable[[Path], bool]
JSON = dict[str, Any]

UNTRACKED_METADATA = frozenset(
    {
        "name",
        "namespace",
        "generateName",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    }
)


class _Item:
    """The value recorded for a list item's own path (``.`` in fieldsV1): its existence."""

    def __repr__(self) -> str:
        return "ITEM"


ITEM = _Item()


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``metadata.managedFields`` entry."""

    manager: str
    operation: str  # "Apply" or "Update"
    api_version: str
    time: str
    fields: frozenset[Path]
    subresource: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def describe(self) -> str:
        """How conflict messages name this manager: ``"kubectl"`` or ``"x" using v1 at <time>``."""
        text = json.dumps(self.manager)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource)}"
        if self.operation == "Update":
            text += f" using {self.api_version}" + (f" at {self.time}" if self.time else "")
        return text

    def to_json(self) -> JSON:
        entry: JSON = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.fields),
        }
        if self.subresource:
            entry["subresource"] = self.subresource
        return entry

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> Entry:
        return cls(
            manager=str(entry.get("manager", "")),
            operation=str(entry.get("operation", "Update")),
            api_version=str(entry.get("apiVersion", "")),
            time=str(entry.get("time", "")),
            fields=from_fields_v1(entry.get("fieldsV1") or {}),
            subresource=str(entry.get("subresource", "")),
        )


def decode(obj: Mapping[str, Any] | None) -> list[Entry]:
    if not obj:
        return []
    return [Entry.from_json(e) for e in obj.get("metadata", {}).get("managedFields") or [] if e]


def encode(entries: Iterable[Entry]) -> list[JSON]:
    return [entry.to_json() for entry in entries if entry.fields]


# -- fieldsV1 ---------------------------------------------------------------------------------


def to_fields_v1(paths: Iterable[Path]) -> JSON:
    tree: JSON = {}
    members: list[JSON] = []
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
        members.append(node)
    for node in members:
        if node:
            node["."] = {}
    return _sorted_tree(tree)


def _sorted_tree(node: JSON) -> JSON:
    return {key: _sorted_tree(node[key]) for key in sorted(node)}


def from_fields_v1(tree: Mapping[str, Any], prefix: Path = ()) -> frozenset[Path]:
    paths: set[Path] = set()
    for element, child in tree.items():
        if element == ".":
            paths.add(prefix)
            continue
        path = (*prefix, element)
        if child:
            paths |= from_fields_v1(child, path)
        else:
            paths.add(path)
    return frozenset(paths)


def pretty(path: Path) -> str:
    """``.spec.containers[name="web"].image``, the form conflict messages use."""
    text = ""
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            text += f".{rest}"
        elif kind == "k":
            keys = json.loads(rest)
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif kind == "v":
            text += f"[={rest}]"
        else:
            text += f"[{rest}]"
    return text


# -- walking values ---------------------------------------------------------------------------


def trackable(obj: Mapping[str, Any]) -> JSON:
    """The part of an object whose fields are owned: no apiVersion/kind, no system metadata."""
    result = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in UNTRACKED_METADATA}
    if metadata:
        result["metadata"] = metadata
    return result


def leaves(value: Any, shape: schema.Shape, prefix: Path = ()) -> dict[Path, Any]:
    """Every owned path of a value with what it holds (``ITEM`` for an item of a keyed list)."""
    out: dict[Path, Any] = {}
    _walk(value, shape, prefix, out)
    return out


def _walk(value: Any, shape: schema.Shape, path: Path, out: dict[Path, Any]) -> None:
    if isinstance(value, dict) and value and not shape.map_atomic:
        for key, child in value.items():
            _walk(child, shape.field(key), (*path, f"f:{key}"), out)
    elif isinstance(value, list) and value and shape.list_type in ("map", "set"):
        for item in value:
            element = _element(item, shape)
            if shape.list_type == "map" and isinstance(item, dict):
                out[(*path, element)] = ITEM
                _walk(item, shape.item(), (*path, element), out)
            else:
                out[(*path, element)] = item
    elif path:
        out[path] = value


def _element(item: Any, shape: schema.Shape) -> str:
    if shape.list_type == "map" and isinstance(item, dict):
        return schema.item_key(item, shape)
    return "v:" + json.dumps(item, sort_keys=True, separators=(",", ":"))


def _same(left: Any, right: Any) -> bool:
    if left is ITEM or right is ITEM:
        return left is right
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)


def changed_paths(old: Mapping[Path, Any], new: Mapping[Path, Any]) -> set[Path]:
    """Paths added, modified or removed between two ``leaves`` maps."""
    changed = {path for path, value in new.items() if path not in old or not _same(old[path], value)}
    return changed | (old.keys() - new.keys())


def scoped_leaves(obj: Mapping[str, Any] | None, shape: schema.Shape, scope: Scope) -> dict[Path, Any]:
    if not obj:
        return {}
    return {p: v for p, v in leaves(trackable(obj), shape).items() if scope(p)}


def _related(left: Path, right: Path) -> bool:
    shorter = min(len(left), len(right))
    return left[:shorter] == right[:shorter]


# -- merge and removal ------------------------------------------------------------------------


def merge(live: Any, config: Any, shape: schema.Shape) -> Any:
    """The applied configuration laid over the live value."""
    if isinstance(config, dict) and isinstance(live, dict) and not shape.map_atomic:
        merged = copy.deepcopy(live)
        for key, value in config.items():
            merged[key] = (
                merge(live.get(key), value, shape.field(key)) if key in live else copy.deepcopy(value)
            )
        return merged
    if isinstance(config, list) and isinstance(live, list) and shape.list_type == "map":
        merged_items = copy.deepcopy(live)
        for item in config:
            position = _find_item(merged_items, _element(item, shape), shape)
            if position is None:
                merged_items.append(copy.deepcopy(item))
            else:
                merged_items[position] = merge(merged_items[position], item, shape.item())
        return merged_items
    if isinstance(config, list) and isinstance(live, list) and shape.list_type == "set":
        return copy.deepcopy(live) + [copy.deepcopy(v) for v in config if v not in live]
    return copy.deepcopy(config)


def _find_item(items: list[Any], element: str, shape: schema.Shape) -> int | None:
    return next((i for i, item in enumerate(items) if _element(item, shape) == element), None)


def remove_path(obj: JSON, path: Path, shape: schema.Shape) -> None:
    """Delete the node at ``path`` (no-op when absent)."""
    trail: list[tuple[Any, Any]] = []  # (container, key-or-index) from the root down
    node: Any = obj
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f" and isinstance(node, dict) and rest in node:
            trail.append((node, rest))
            node, shape = node[rest], shape.field(rest)
        elif kind in ("k", "v") and isinstance(node, list):
            position = _find_item(node, element, shape)
            if position is None:
                return
            trail.append((node, position))
            node, shape = node[position], shape.item()
        else:
            return
    if not trail:
        return
    container, key = trail.pop()
    del container[key]
    # Empty label/annotation maps are dropped like Go's omitempty; other emptied maps stay.
    if not container and len(trail) == 2 and trail[0][1] == "metadata":
        parent, parent_key = trail[1]
        del parent[parent_key]


def _is_key_field(path: Path) -> bool:
    """A key field of a keyed-list item (``k:{"name":"a"}`` / ``f:name``): never removed alone."""
    if len(path) < 2 or not path[-2].startswith("k:") or not path[-1].startswith("f:"):
        return False
    return path[-1][2:] in json.loads(path[-2][2:])


# -- apply and update -------------------------------------------------------------------------


def apply(
    live: JSON | None,
    config: JSON,
    *,
    manager: str,
    api_version: str,
    subresource: str,
    shape: schema.Shape,
    scope: Scope,
    force: bool,
    now: str,
) -> tuple[JSON, list[Entry]]:
    """Merge ``config`` (already limited to ``scope``) into ``live`` for ``manager``.

    Returns the merged object (its ``managedFields`` not yet set) and the new entries.
    Raises a 409 :class:`errors.ApiError` listing conflicts unless ``force``.
    """
    entries = decode(live)
    key = (manager, "Apply", subresource)
    previous = next((e for e in entries if e.key == key), None)
    others = [e for e in entries if e.key != key]
    applied = frozenset(p for p in leaves(trackable(config), shape) if scope(p))

    merged = merge(live or {}, config, shape)
    stale = (previous.fields if previous else frozenset()) - applied
    kept_by = [q for e in others for q in e.fields] + list(applied)
    for path in sorted(stale, key=len, reverse=True):
        if not _is_key_field(path) and not any(_related(path, q) for q in kept_by):
            remove_path(merged, path, shape)

    changed = changed_paths(scoped_leaves(live, shape, scope), scoped_leaves(merged, shape, scope))
    conflicts = [
        (entry, owned)
        for entry in others
        for owned in sorted(entry.fields)
        if any(_related(owned, path) for path in changed)
    ]
    if conflicts and not force:
        raise errors.apply_conflicts([(e.describe(), pretty(p)) for e, p in conflicts])
    lost = {(e.key, p) for e, p in conflicts}
    others = [replace(e, fields=frozenset(p for p in e.fields if (e.key, p) not in lost)) for e in others]

    unchanged = previous is not None and previous.fields == applied and not changed
    mine = (
        previous
        if unchanged and previous
        else Entry(manager, "Apply", api_version, now, applied, subresource)
    )
    new_entries = _ordered(entries, others, mine)
    return merged, new_entries


def track_update(
    old: JSON | None,
    new: JSON,
    *,
    manager: str,
    api_version: str,
    subresource: str,
    shape: schema.Shape,
    scope: Scope,
    now: str,
) -> list[Entry]:
    """The entries after ``manager`` replaced ``old`` by ``new`` with an ``Update`` operation."""
    entries = decode(old)
    old_leaves = scoped_leaves(old, shape, scope)
    new_leaves = scoped_leaves(new, shape, scope)
    changed = changed_paths(old_leaves, new_leaves)
    if not changed:
        return entries
    removed = old_leaves.keys() - new_leaves.keys()

    def keeps(path: Path) -> bool:
        return path not in changed and not any(path[: len(r)] == r for r in removed)

    key = (manager, "Update", subresource)
    previous = next((e for e in entries if e.key == key), None)
    others = [replace(e, fields=frozenset(p for p in e.fields if keeps(p))) for e in entries if e.key != key]
    fields = frozenset(p for p in (previous.fields if previous else frozenset()) if keeps(p)) | (
        changed - removed
    )
    mine = Entry(manager, "Update", api_version, now, frozenset(fields), subresource)
    return _ordered(entries, others, mine)


def _ordered(original: list[Entry], others: list[Entry], mine: Entry) -> list[Entry]:
    """Keep the entries' order, the changed manager's entry in its old place or last."""
    by_key = {e.key: e for e in others}
    by_key[mine.key] = mine
    keys = [e.key for e in original if e.key in by_key]
    if mine.key not in keys:
        keys.append(mine.key)
    return [by_key[k] for k in keys if by_key[k].fields]


def manager_from_user_agent(user_agent: str) -> str:
    """The default manager name: the user agent up to its first ``/`` (``kubectl``, ...)."""
    return (user_agent or "unknown").split("/", 1)[0][:128]
