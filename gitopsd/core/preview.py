"""What a change of the config repo does to every cluster, pack by pack, down to the objects.

``gitopsd plan`` runs the pass on two revisions: the base one against an empty store (what the
clusters run once the base is applied), then the head one against that store, so the real plan
(``core.plan``) says which PackInstances are created, superseded (with their upgrade direction),
uninstalled or blocked (collisions, immutability violations), and why. This module turns that plan
and the objects of the ClusterPacks involved into a ``Report``: per pack and per target cluster,
the version change and the objects added, removed (pruned) and changed (``core.objdiff``).
Pure: ``gitopsd.preview`` runs the passes and reads the objects; ``gitopsd.planformat`` prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from gitopsd.core import objdiff
from gitopsd.model import change, instance

WITHOUT = ""  # the checksum of "no pack at all" (an instance that does not exist on that side)


@dataclasses.dataclass(frozen=True, slots=True)
class Runs:
    """What a PackInstance points at: a ClusterPack version and the checksum of its objects."""

    cluster_pack: str
    version: str
    checksum: str

    @classmethod
    def of(cls, pi: instance.PackInstance) -> Runs:
        return cls(pi.cluster_pack, pi.version, pi.checksum)


@dataclasses.dataclass(frozen=True, slots=True)
class Move:
    """One PackInstance from the base revision to the head revision."""

    name: str
    base_pack_name: str
    cluster: str
    before: Runs | None
    after: Runs | None
    change: change.Change | None  # the head plan's change of this instance (None: it had none)

    @property
    def checksums(self) -> tuple[str, str]:
        return (self.before.checksum if self.before else WITHOUT, self.after.checksum if self.after else WITHOUT)


def moves(base: Mapping[str, instance.PackInstance], head_plan: change.Plan) -> list[Move]:
    """Every PackInstance of either revision, with what it runs before and after the head's plan:
    created and superseded instances run the head's ClusterPack, blocked and unchanged ones keep
    what they ran, uninstalled ones run nothing."""
    out = []
    seen = set()
    for c in head_plan.changes:
        if c.kind is not change.ObjectKind.PACK_INSTANCE or c.cluster is None:
            continue
        seen.add(c.name)
        was = base.get(c.name)
        before = Runs.of(was) if was is not None and was.state is not instance.InstallState.UNINSTALLED else None
        if c.action in (change.Action.CREATE, change.Action.SUPERSEDE) and c.pack_instance is not None:
            after: Runs | None = Runs.of(c.pack_instance)
        elif c.action is change.Action.UNINSTALL:
            after = None
        else:
            after = before
        out.append(Move(c.name, c.base_pack_name, c.cluster, before, after, c))
    for name, pi in base.items():
        if name not in seen and pi.state is not instance.InstallState.UNINSTALLED:
            out.append(Move(name, pi.base_pack_name, pi.cluster, Runs.of(pi), Runs.of(pi), None))
    return sorted(out, key=lambda m: (m.base_pack_name, m.cluster))


def needed(all_moves: Iterable[Move]) -> set[str]:
    """Checksums whose objects the report needs: both sides of every instance whose objects change."""
    out: set[str] = set()
    for m in all_moves:
        before, after = m.checksums
        if before != after:
            out |= {before, after}
    return out - {WITHOUT}


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterChange:
    cluster: str
    instance: str
    action: str  # create / supersede / unchanged / uninstall / blocked
    version: str | None  # what the cluster runs after the change (None: nothing)
    from_version: str | None  # what it ran at the base revision
    direction: str | None  # Initial / Upgrade / Rollback / Redeploy
    reason: str
    message: str  # the condition's message of a blocked instance
    objects: objdiff.ObjectDiff

    @property
    def changed(self) -> bool:
        return self.action != str(change.Action.UNCHANGED) or not self.objects.empty

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"cluster": self.cluster, "instance": self.instance, "action": self.action,
                                  "version": self.version, "fromVersion": self.from_version,
                                  "direction": self.direction, "reason": self.reason}
        if self.message:
            out["message"] = self.message
        return {**out, "objects": self.objects.to_json()}


@dataclasses.dataclass(frozen=True, slots=True)
class PackChange:
    base_pack_name: str
    base_version: str | None  # None: not in the base revision
    head_version: str | None  # None: removed at the head revision
    clusters: tuple[ClusterChange, ...]
    errors: tuple[change.PackError, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.errors) or self.base_version != self.head_version or any(c.changed for c in self.clusters)

    @property
    def counts(self) -> dict[str, int]:
        """Distinct objects added, removed and changed on at least one cluster of the pack."""
        return {"added": len({s for c in self.clusters for s in c.objects.added}),
                "removed": len({s for c in self.clusters for s in c.objects.removed}),
                "changed": len({o.subject for c in self.clusters for o in c.objects.changed})}

    def to_json(self) -> dict[str, object]:
        return {"basePackName": self.base_pack_name, "baseVersion": self.base_version, "headVersion": self.head_version,
                "objects": self.counts, "clusters": [c.to_json() for c in self.clusters],
                "errors": [e.to_json() for e in self.errors]}


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    base: str  # revisions, main@sha1:<hex>
    head: str
    packs: tuple[PackChange, ...]  # packs with a change, in name order
    unchanged: int  # packs without any
    errors: tuple[change.PackError, ...] = ()  # of the base revision (the head's are on their packs)

    @property
    def has_changes(self) -> bool:
        return bool(self.packs)

    def to_json(self) -> dict[str, object]:
        return {
            "apiVersion": "gitopsd.dev/v1alpha1",
            "kind": "RevisionPlan",
            "base": self.base,
            "head": self.head,
            "summary": {"packsChanged": len(self.packs), "packsUnchanged": self.unchanged,
                        "instances": _count_actions(self.packs),
                        "objects": {k: sum(p.counts[k] for p in self.packs) for k in ("added", "removed", "changed")},
                        "errors": sum(len(p.errors) for p in self.packs)},
            "packs": [p.to_json() for p in self.packs],
            "baseErrors": [e.to_json() for e in self.errors],
            "rollouts": [],  # partitions of target clusters, once rollouts exist
        }


def _count_actions(packs: Iterable[PackChange]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in packs:
        for c in p.clusters:
            if c.action != str(change.Action.UNCHANGED):
                out[c.action] = out.get(c.action, 0) + 1
    return dict(sorted(out.items()))


def _cluster_change(m: Move, diff: objdiff.ObjectDiff) -> ClusterChange:
    c = m.change
    action = str(c.action) if c is not None else str(change.Action.UNCHANGED)
    direction = str(c.direction) if c is not None and c.direction is not None else None
    message = c.condition.message if c is not None and c.condition is not None and c.action is change.Action.BLOCKED else ""
    return ClusterChange(
        cluster=m.cluster, instance=m.name, action=action,
        version=m.after.version if m.after else None, from_version=m.before.version if m.before else None,
        direction=direction, reason=c.reason if c is not None else "runs " + (m.after.version if m.after else "nothing"),
        message=message, objects=diff)


def report(base_revision: str, head_revision: str, all_moves: Iterable[Move], *,
           base_versions: Mapping[str, str], head_versions: Mapping[str, str],
           objects: Mapping[str, list[dict[str, Any]]], head_errors: Iterable[change.PackError] = (),
           base_errors: Iterable[change.PackError] = ()) -> Report:
    """The report: ``objects`` holds the objects of every checksum ``needed`` names. The diff of one
    pair of checksums is made once and shared by every cluster that moves the same way."""
    diffs: dict[tuple[str, str], objdiff.ObjectDiff] = {}
    by_pack: dict[str, list[ClusterChange]] = {}
    for m in all_moves:
        pair = m.checksums
        if pair[0] == pair[1]:
            diff = objdiff.ObjectDiff()
        else:
            diff = diffs.get(pair) or diffs.setdefault(pair, objdiff.compare(
                objects.get(pair[0], []), objects.get(pair[1], []), labels=("base", "head")))
        by_pack.setdefault(m.base_pack_name, []).append(_cluster_change(m, diff))
    errors: dict[str, list[change.PackError]] = {}
    for e in head_errors:
        errors.setdefault(e.pack, []).append(e)
    names = sorted(set(by_pack) | set(errors) | set(base_versions) | set(head_versions))
    packs = [PackChange(name, base_versions.get(name), head_versions.get(name), tuple(by_pack.get(name, ())),
                        tuple(errors.get(name, ()))) for name in names]
    changed = tuple(p for p in packs if p.changed)
    return Report(base_revision, head_revision, changed, len(packs) - len(changed), tuple(base_errors))
