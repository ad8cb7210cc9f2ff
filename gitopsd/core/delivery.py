"""Delivery, the pure part: from an artifact's layers to ordered stages of objects, inventories,
what to prune, and whether a live object drifted from what was applied.

Stages, in order (design.md, Delivery): ``namespaces`` (Namespaces and CustomResourceDefinitions,
which everything else may need), ``rbac`` (the rbac layer), ``cluster`` (the other cluster-scoped
objects), ``pre-hooks`` (Helm pre-install/pre-upgrade hooks, by weight), then the workload layer in
``executionOrder`` (``storage``, ``stateful``, ``stateless``) and ``post-hooks``. Hooks are not
part of the inventory (Helm does not track them either); everything else is, and an upgrade
prunes what the old inventory has and the new one lacks, in reverse stage order.
``gitopsd.delivery.engine`` runs these against a cluster.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gitopsd.core import layers as layers_core
from gitopsd.model import delivery, pack

INSTANCE_LABEL = "gitopsd.dev/instance"  # the PackInstance whose delivery applied the object
PRUNE_ANNOTATION = "gitopsd.dev/prune"  # "disabled": never deleted by a prune or an uninstall
HOOK_ANNOTATION = "helm.sh/hook"
HOOK_WEIGHT_ANNOTATION = "helm.sh/hook-weight"
HOOK_DELETE_ANNOTATION = "helm.sh/hook-delete-policy"

STAGES = ("namespaces", "rbac", "cluster", "pre-hooks", "storage", "stateful", "stateless", "post-hooks")
_PRE = {"pre-install", "pre-upgrade"}
_POST = {"post-install", "post-upgrade"}
VOLATILE_METADATA = ("resourceVersion", "managedFields", "generation", "creationTimestamp", "uid", "selfLink")


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One object to deliver, as sent to the API server."""

    body: dict[str, Any]
    entry: delivery.Entry
    hook: tuple[str, ...] = ()  # Helm hook phases; empty for an ordinary object
    weight: int = 0
    delete_policy: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Stage:
    name: str
    items: tuple[Item, ...]


def objects_of_layer(data: bytes) -> list[dict[str, Any]]:
    """The objects of one artifact layer: a YAML stream whose documents are canonical JSON."""
    out = []
    for chunk in data.decode("utf-8").split("---\n"):
        text = chunk.strip()
        if text:
            out.append(json.loads(text))
    return out


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def item(obj: Mapping[str, Any], *, digest: str, instance: str) -> Item:
    """The object with the PackInstance label that marks it as delivered by ``instance``."""
    meta = dict(obj.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), INSTANCE_LABEL: instance}
    body = {**obj, "metadata": meta}
    entry = delivery.Entry(str(obj["apiVersion"]), str(obj["kind"]), str(meta.get("namespace") or ""), str(meta["name"]), digest)
    notes = _annotations(obj)
    phases = tuple(p.strip() for p in str(notes.get(HOOK_ANNOTATION, "")).split(",") if p.strip())
    try:
        weight = int(str(notes.get(HOOK_WEIGHT_ANNOTATION, "0")).strip() or 0)
    except ValueError:
        weight = 0
    policy = tuple(p.strip() for p in str(notes.get(HOOK_DELETE_ANNOTATION, "")).split(",") if p.strip())
    return Item(body, entry, phases, weight, policy)


def stage_of(it: Item, layer: pack.Layer) -> str | None:
    """The delivery stage of an item from ``layer``; None for a hook that never runs on install or
    upgrade (test hooks, delete and rollback hooks)."""
    if it.hook:
        phases = set(it.hook)
        if phases & _PRE:
            return "pre-hooks"
        if phases & _POST:
            return "post-hooks"
        return None
    kind = it.entry.kind
    if kind in ("Namespace", "CustomResourceDefinition"):
        return "namespaces"
    if layer is pack.Layer.RBAC:
        return "rbac"
    if layer is pack.Layer.CLUSTER_SCOPED:
        return "cluster"
    return str(layers_core.stage_of(kind)) if layers_core.stage_of(kind) is not pack.Stage.RBAC else "stateless"


def stages(layer_objects: Mapping[pack.Layer, Sequence[tuple[Mapping[str, Any], str]]], *, instance: str) -> list[Stage]:
    """The non-empty stages of a delivery, in order; ``layer_objects`` maps each layer to its
    objects, each with the digest of the layer it came from."""
    by_stage: dict[str, list[Item]] = {name: [] for name in STAGES}
    for layer, objects in layer_objects.items():
        for obj, digest in objects:
            it = item(obj, digest=digest, instance=instance)
            name = stage_of(it, layer)
            if name is not None:
                by_stage[name].append(it)
    for name in ("pre-hooks", "post-hooks"):
        by_stage[name].sort(key=lambda it: (it.weight, it.entry.kind, it.entry.name))
    return [Stage(name, tuple(items)) for name, items in by_stage.items() if items]


def inventory(planned: Iterable[Stage]) -> tuple[delivery.Entry, ...]:
    """What a delivery leaves on the cluster: every item that is not a hook."""
    return tuple(it.entry for stage in planned for it in stage.items if not it.hook)


def _rank(entry: delivery.Entry) -> int:
    if entry.kind in ("Namespace", "CustomResourceDefinition"):
        return 0
    if entry.kind in layers_core.RBAC_KINDS:
        return 1
    if not entry.namespace:
        return 2
    return 4 + list(pack.Stage).index(layers_core.stage_of(entry.kind))


def to_prune(old: Iterable[delivery.Entry], new: Iterable[delivery.Entry],
             held_elsewhere: Iterable[tuple[str, str, str, str]] = ()) -> list[delivery.Entry]:
    """Entries of ``old`` that ``new`` lacks and no other PackInstance on the cluster holds now,
    in the order to delete them: workloads first, Namespaces and CRDs last."""
    keep = {e.key for e in new} | set(held_elsewhere)
    gone = [e for e in old if e.key not in keep]
    return sorted(gone, key=lambda e: (-_rank(e), e.kind, e.namespace, e.name))


def comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object without what the server changes by itself (status, resourceVersion, managedFields,
    timestamps): two of these are equal when nobody changed what was applied."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in VOLATILE_METADATA}
    return {**{k: v for k, v in obj.items() if k not in ("status", "metadata")}, "metadata": meta}


def drifted(live: Mapping[str, Any] | None, after_apply: Mapping[str, Any]) -> bool:
    """Does the live object differ from what applying the desired object would leave (a dry run)?
    A missing object has drifted; fields another manager owns are kept by the dry run, so they
    are never drift."""
    return live is None or comparable(live) != comparable(after_apply)
