"""What each target cluster holds against what delivery would make of it, as data.

``gitopsd diff --live`` (and ``gitopsd plan --live``) read every object a PackInstance would
deliver from its target cluster and ask the API server what a server-side apply would leave
(a dry run, field manager ``gitopsd``). This module holds the pure part: which objects to look at
(``desired``: the delivery items, hooks left out as delivery's drift check leaves them), which
inventory objects a delivery would prune (``prune_candidates`` then ``prunable`` once the live
object is read), the per-object verdict (``compare``: a unified YAML diff through ``core.objdiff``,
server-set fields out, Secret values masked) and the report with its JSON shape.
``gitopsd.delivery.live`` talks to the clusters; ``gitopsd.planformat`` prints the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gitopsd.core import delivery as delivery_core
from gitopsd.core import objdiff
from gitopsd.model import delivery

LABELS = ("live", "desired")  # the two sides of an object's diff: the cluster now, after a delivery


@dataclasses.dataclass(frozen=True, slots=True)
class Wanted:
    """One PackInstance on one cluster as delivery would make it: its objects (``None``: it is
    being uninstalled) and the inventory its last delivery left there."""

    instance: str
    cluster: str
    base_pack_name: str
    version: str  # "" when uninstalled
    objects: tuple[Mapping[str, Any], ...] | None
    kept: tuple[delivery.Entry, ...] = ()  # the inventory of its last delivery (what a prune starts from)
    held_elsewhere: frozenset[tuple[str, str, str, str]] = frozenset()
    force: bool = False  # the pack takes over fields other managers own (PackBuild delivery.force)
    problem: str = ""  # why its objects could not be read (nothing is compared then)


def desired(wanted: Wanted) -> list[delivery_core.Item]:
    """The items delivery would apply, in subject order; Helm hooks left out (they run once)."""
    items = [delivery_core.item(obj, digest="", instance=wanted.instance) for obj in wanted.objects or ()]
    return sorted((it for it in items if not it.hook), key=lambda it: it.entry.subject)


def prune_candidates(wanted: Wanted) -> list[delivery.Entry]:
    """Inventory entries a delivery of ``wanted`` would prune, before the cluster is read."""
    new = [it.entry for it in desired(wanted)]
    return delivery_core.to_prune(wanted.kept, new, wanted.held_elsewhere)


def prunable(live: Mapping[str, Any] | None, instance: str) -> bool:
    """Would delivery delete this live object? Not when it is gone, annotated
    ``gitopsd.dev/prune: disabled`` or labelled for another PackInstance (the rule delivery prunes by)."""
    return live is not None and delivery_core.kept_from_prune(live, instance) is None


def compare(live: Mapping[str, Any], after: Mapping[str, Any], subject: str) -> objdiff.Changed | None:
    """The diff from the live object to what applying the desired one leaves (a dry run's answer);
    None when they agree once server-set fields are left out. Secret values are masked."""
    left, right = delivery_core.comparable(live), delivery_core.comparable(after)
    if left == right:
        return None
    left, right = objdiff.comparable(left), objdiff.comparable(right)
    shown_left, shown_right = objdiff.masked_pair(left, right)
    assert shown_left is not None and shown_right is not None
    return objdiff.Changed(subject, objdiff.unified(shown_left, shown_right, subject, labels=LABELS))


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    subject: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class PackLive:
    """One PackInstance on one cluster: what a delivery would change there."""

    instance: str
    base_pack_name: str
    version: str
    changed: tuple[objdiff.Changed, ...] = ()  # live objects a delivery would change (drift)
    missing: tuple[str, ...] = ()  # objects the cluster lacks
    prune: tuple[str, ...] = ()  # inventory objects a delivery would delete
    refused: tuple[Refused, ...] = ()  # objects the API server refuses (a delivery would fail on them)
    in_sync: int = 0  # objects that match
    problem: str = ""

    @property
    def has_changes(self) -> bool:
        return bool(self.changed or self.missing or self.prune or self.refused or self.problem)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "instance": self.instance, "basePackName": self.base_pack_name, "version": self.version or None,
            "changed": [{"object": c.subject, "diff": list(c.diff)} for c in self.changed],
            "missing": list(self.missing), "prune": list(self.prune),
            "refused": [{"object": r.subject, "message": r.message} for r in self.refused], "inSync": self.in_sync}
        if self.problem:
            out["problem"] = self.problem
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterLive:
    cluster: str
    packs: tuple[PackLive, ...] = ()
    error: str = ""  # the cluster could not be reached or read: nothing of it is compared

    @property
    def has_changes(self) -> bool:
        return any(p.has_changes for p in self.packs)

    def to_json(self) -> dict[str, object]:
        return {"cluster": self.cluster, "reachable": not self.error, "error": self.error or None,
                "packs": [p.to_json() for p in self.packs if p.has_changes],
                "packsInSync": sum(1 for p in self.packs if not p.has_changes)}


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """Every reachable cluster's verdict, the unreachable ones, and the records-only clusters."""

    clusters: tuple[ClusterLive, ...]
    records_only: tuple[str, ...] = ()

    @property
    def unreachable(self) -> tuple[ClusterLive, ...]:
        return tuple(c for c in self.clusters if c.error)

    @property
    def has_changes(self) -> bool:
        return any(c.has_changes for c in self.clusters)

    def counts(self) -> dict[str, int]:
        packs = [p for c in self.clusters for p in c.packs]
        return {"changed": sum(len(p.changed) for p in packs), "missing": sum(len(p.missing) for p in packs),
                "prune": sum(len(p.prune) for p in packs), "refused": sum(len(p.refused) for p in packs),
                "inSync": sum(p.in_sync for p in packs)}

    def to_json(self) -> dict[str, object]:
        return {"summary": {"clusters": len(self.clusters), "unreachable": len(self.unreachable),
                            "objects": self.counts()},
                "clusters": [c.to_json() for c in self.clusters], "recordsOnly": list(self.records_only)}


def by_cluster(items: Iterable[Wanted]) -> dict[str, list[Wanted]]:
    out: dict[str, list[Wanted]] = {}
    for w in sorted(items, key=lambda w: (w.cluster, w.base_pack_name, w.instance)):
        out.setdefault(w.cluster, []).append(w)
    return out


def pack_live(wanted: Wanted, changed: Sequence[objdiff.Changed], missing: Sequence[str], prune: Sequence[str],
              refused: Sequence[Refused], in_sync: int) -> PackLive:
    return PackLive(wanted.instance, wanted.base_pack_name, wanted.version,
                    tuple(sorted(changed, key=lambda c: c.subject)), tuple(sorted(missing)), tuple(prune),
                    tuple(sorted(refused, key=lambda r: r.subject)), in_sync, wanted.problem)
