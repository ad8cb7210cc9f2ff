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
import enum
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


class Action(enum.StrEnum):
    DELIVER = "deliver"  # apply the ClusterPack the instance wants (new, changed, or retried)
    DRIFT = "drift"  # the cluster runs it: compare with the inventory
    UNINSTALL = "uninstall"  # delete the inventory


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    timeout: float = 300.0  # seconds a stage may take to become healthy
    drift: delivery.DriftMode = delivery.DriftMode.CORRECT
    force: bool = False  # take over fields another field manager owns


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One PackInstance on one cluster."""

    instance: str
    cluster: str
    base_pack_name: str
    version: str
    spec_json: str  # the ClusterPack's spec, canonical JSON: what its signature covers
    signature: str | None
    previous: delivery.Delivery | None
    options: Options = Options()
    held_elsewhere: frozenset[tuple[str, str, str, str]] = frozenset()  # inventory of other instances here
    action: Action = dataclasses.field(default_factory=lambda: Action.DELIVER)
    depends_on: tuple[str, ...] = ()  # basePackNames delivered first on the same cluster

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = json.loads(self.spec_json)
        return spec

    @property
    def digest(self) -> str:
        return str(self.spec["registryRef"]["digest"])


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


def stage_of(it: Item, layer: pack.Layer, *, upgrade: bool = False) -> str | None:
    """The delivery stage of an item from ``layer``; None for a hook that does not run now: on a
    first install only ``*-install`` hooks run, on an upgrade only ``*-upgrade`` ones (as in Helm);
    test, delete and rollback hooks never do."""
    if it.hook:
        phases = set(it.hook) & ({"pre-upgrade", "post-upgrade"} if upgrade else {"pre-install", "post-install"})
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


def stages(layer_objects: Mapping[pack.Layer, Sequence[tuple[Mapping[str, Any], str]]], *, instance: str,
           upgrade: bool = False) -> list[Stage]:
    """The non-empty stages of a delivery, in order; ``layer_objects`` maps each layer to its
    objects, each with the digest of the layer it came from; ``upgrade``: the cluster runs an
    earlier version of the pack (which hooks run)."""
    by_stage: dict[str, list[Item]] = {name: [] for name in STAGES}
    for layer, objects in layer_objects.items():
        for obj, digest in objects:
            it = item(obj, digest=digest, instance=instance)
            name = stage_of(it, layer, upgrade=upgrade)
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


def kept_from_prune(live: Mapping[str, Any], instance: str) -> str | None:
    """Why a live object of ``instance``'s inventory must not be deleted by a prune or an uninstall
    (annotated ``gitopsd.dev/prune: disabled``, or now labelled for another PackInstance); None: delete it."""
    meta = live.get("metadata") or {}
    if (meta.get("annotations") or {}).get(PRUNE_ANNOTATION) == "disabled":
        return f"{PRUNE_ANNOTATION}: disabled"
    owner = (meta.get("labels") or {}).get(INSTANCE_LABEL)
    if owner not in (None, instance):
        return f"now delivered by {owner}"
    return None


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


_RETRIED_ON_RESYNC = (delivery.Result.FAILED, delivery.Result.TIMED_OUT, delivery.Result.REFUSED)


def action_for(previous: delivery.Delivery | None, digest: str, *, resync: bool) -> Action | None:
    """What a pass does for an instance that wants the ClusterPack with manifest ``digest``:
    deliver what the cluster does not run yet (or could not be reached for), retry a failed
    delivery of the same digest only on resync (it needs a change or time), check drift on resync."""
    return action_of((previous.digest, previous.result) if previous is not None else None, digest, resync=resync)


def action_of(last: tuple[str, str] | None, digest: str, *, resync: bool) -> Action | None:
    """``action_for`` from the two fields of the last record it reads: (digest, result)."""
    if last is None or last[0] != digest or last[1] == delivery.Result.UNREACHABLE:
        return Action.DELIVER
    if last[1] in _RETRIED_ON_RESYNC:
        return Action.DELIVER if resync else None
    if last[1] == delivery.Result.DELIVERED and resync:
        return Action.DRIFT
    return None


def same_record(a: delivery.Delivery | None, b: delivery.Delivery) -> bool:
    """Equal but for when they were made: storing ``b`` over ``a`` would change nothing."""
    return a is not None and dataclasses.replace(a, at="") == dataclasses.replace(b, at="")


def provides_and_needs(objects: Iterable[Mapping[str, Any]]) -> tuple[frozenset[tuple[str, ...]], frozenset[tuple[str, ...]]]:
    """What a pack's objects make available on a cluster (Namespaces, custom kinds of its CRDs) and
    what they rely on (the namespaces they live in, the kinds they are)."""
    provides: set[tuple[str, ...]] = set()
    needs: set[tuple[str, ...]] = set()
    for obj in objects:
        meta = obj.get("metadata") or {}
        kind = str(obj.get("kind", ""))
        if kind == "Namespace":
            provides.add(("namespace", str(meta.get("name", ""))))
        elif kind == "CustomResourceDefinition":
            crd = obj.get("spec") or {}
            provides.add(("kind", str(crd.get("group", "")), str((crd.get("names") or {}).get("kind", ""))))
        if meta.get("namespace"):
            needs.add(("namespace", str(meta["namespace"])))
        needs.add(("kind", str(obj.get("apiVersion", "")).rpartition("/")[0], kind))
    return frozenset(provides), frozenset(needs - provides)


def order(names: Sequence[str], provides: Mapping[str, frozenset[tuple[str, ...]]],
          needs: Mapping[str, frozenset[tuple[str, ...]]], depends: Mapping[str, frozenset[str]]) -> list[str]:
    """``names`` (PackInstances of one cluster) so that each comes after those that provide what it
    needs and those it ``dependsOn``; otherwise by name. A cycle is broken in name order."""
    after: dict[str, set[str]] = {n: set() for n in names}
    for n in names:
        for m in names:
            if m != n and (needs.get(n, frozenset()) & provides.get(m, frozenset()) or m in depends.get(n, frozenset())):
                after[n].add(m)
    out: list[str] = []
    left = sorted(names)
    while left:
        ready = [n for n in left if not (after[n] & set(left))]
        pick = ready[0] if ready else left[0]
        out.append(pick)
        left.remove(pick)
    return out


_HAND_EDITORS = ("kubectl", "before-first-apply", "k9s", "Mozilla")


def hand_edit(manager: str) -> bool:
    """Is ``manager`` a person's tool (kubectl edit/patch/apply, a dashboard) rather than a
    controller? A field such a manager took from gitopsd is drift; one a controller owns is not."""
    return manager.startswith(_HAND_EDITORS)
