"""The plan: a ChangeSet as data.

``gitopsd.core.plan`` builds it from desired and observed state; dry-run and diff print it; the
apply step executes it. Nothing else decides what changes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from gitopsd.model import instance, pack


class Action(enum.StrEnum):
    CREATE = "create"
    SUPERSEDE = "supersede"
    UNCHANGED = "unchanged"
    UNINSTALL = "uninstall"
    BLOCKED = "blocked"


class ObjectKind(enum.StrEnum):
    CLUSTER_PACK = "ClusterPack"
    PACK_INSTANCE = "PackInstance"


@dataclasses.dataclass(frozen=True, slots=True)
class PackError:
    """A pack that could not be compiled or planned; it never stops the others."""

    path: str
    pack: str
    reason: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "pack": self.pack, "reason": self.reason, "message": self.message}


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    kind: ObjectKind
    name: str
    action: Action
    reason: str
    base_pack_name: str
    version: str
    cluster: str | None = None
    from_version: str | None = None
    direction: instance.Direction | None = None
    condition: instance.Condition | None = None
    cluster_pack: pack.ClusterPack | None = None  # desired ClusterPack (ClusterPack changes)
    pack_instance: instance.PackInstance | None = None  # desired PackInstance (instance changes)

    @property
    def writes(self) -> bool:
        action = self.action
        return action is Action.CREATE or action is Action.SUPERSEDE or action is Action.UNINSTALL

    @property
    def acts(self) -> bool:
        """The apply step executes it: a write, or a blocked change whose condition it records."""
        return self.writes or (self.action is Action.BLOCKED and self.condition is not None)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": str(self.kind),
            "name": self.name,
            "action": str(self.action),
            "reason": self.reason,
            "basePackName": self.base_pack_name,
            "version": self.version,
        }
        if self.cluster is not None:
            out["cluster"] = self.cluster
        if self.from_version is not None:
            out["upgradeFromVersion"] = self.from_version
        if self.direction is not None:
            out["upgradeDirection"] = str(self.direction)
        if self.condition is not None:
            out["condition"] = self.condition.to_json()
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """The changes of one basePackName, in order, and the errors only it has: the plan is made of
    them (``gitopsd.core.plan``), and a part that did not change is the same object pass after pass."""

    changes: tuple[Change, ...]
    errors: tuple[PackError, ...] = ()
    writes: tuple[Change, ...] = dataclasses.field(init=False, repr=False, compare=False)
    # what the apply step executes: the writes and the blocked changes with a condition to record
    acts: tuple[Change, ...] = dataclasses.field(init=False, repr=False, compare=False)
    counts: tuple[tuple[tuple[ObjectKind, Action], int], ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "writes", tuple(c for c in self.changes if c.writes))
        object.__setattr__(self, "acts", tuple(c for c in self.changes if c.acts))
        counts: dict[tuple[ObjectKind, Action], int] = {}
        for c in self.changes:
            counts[(c.kind, c.action)] = counts.get((c.kind, c.action), 0) + 1
        object.__setattr__(self, "counts", tuple(counts.items()))


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    revision: str
    changes: tuple[Change, ...]
    errors: tuple[PackError, ...] = ()
    # the changes that write, worked out once: a pass asks several times and a fleet has a change per
    # instance (the plan's builder passes them when it knows them already)
    writes_known: dataclasses.InitVar[tuple[Change, ...] | None] = None
    _writes: tuple[Change, ...] = dataclasses.field(init=False, repr=False, compare=False)
    # by basePackName, when the plan was made of parts (``of_parts``); ``dataclasses.replace`` drops them
    parts: Mapping[str, Part] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self, writes_known: tuple[Change, ...] | None) -> None:
        if writes_known is None:
            writes_known = tuple(c for c in self.changes if c.writes)
        object.__setattr__(self, "_writes", writes_known)

    @classmethod
    def of_parts(cls, revision: str, parts: Mapping[str, Part], order: Sequence[str], errors: tuple[PackError, ...],
                 changes: tuple[Change, ...] | None = None) -> Plan:
        """The plan made of ``parts`` in ``order`` after the pass-wide ``errors`` (``changes``: the
        same changes, already put together)."""
        writes: list[Change] = []
        every: list[Change] = []
        more = list(errors)
        for base in order:
            part = parts[base]
            if changes is None:
                every.extend(part.changes)
            if part.writes:
                writes.extend(part.writes)
            if part.errors:
                more.extend(part.errors)
        made = cls(revision=revision, changes=changes if changes is not None else tuple(every), errors=tuple(more),
                   writes_known=tuple(writes))
        object.__setattr__(made, "parts", {base: parts[base] for base in order})
        return made

    @property
    def acts(self) -> list[Change]:
        """What the apply step executes, in plan order (``Change.acts``)."""
        if self.parts is not None:
            return [c for part in self.parts.values() if part.acts for c in part.acts]
        return [c for c in self.changes if c.acts]

    @property
    def writes(self) -> tuple[Change, ...]:
        return self._writes

    @property
    def has_changes(self) -> bool:
        return bool(self._writes)

    def count(self, action: Action) -> int:
        return sum(n for (_, a), n in self.counts().items() if a is action)

    def counts(self) -> dict[tuple[ObjectKind, Action], int]:
        """How many changes of each kind and action."""
        out: dict[tuple[ObjectKind, Action], int] = {}
        if self.parts is None:
            for c in self.changes:
                out[(c.kind, c.action)] = out.get((c.kind, c.action), 0) + 1
            return out
        for part in self.parts.values():
            for key, n in part.counts:
                out[key] = out.get(key, 0) + n
        return out
