"""The plan: a ChangeSet as data.

``gitopsd.core.plan`` builds it from desired and observed state; dry-run and diff print it; the
apply step executes it. Nothing else decides what changes.
"""

from __future__ import annotations

import dataclasses
import enum

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
class Plan:
    revision: str
    changes: tuple[Change, ...]
    errors: tuple[PackError, ...] = ()
    # the changes that write, worked out once: a pass asks several times and a fleet has a change per
    # instance (the plan's builder passes them when it knows them already)
    writes_known: dataclasses.InitVar[tuple[Change, ...] | None] = None
    _writes: tuple[Change, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self, writes_known: tuple[Change, ...] | None) -> None:
        if writes_known is None:
            writes_known = tuple(c for c in self.changes if c.writes)
        object.__setattr__(self, "_writes", writes_known)

    @property
    def writes(self) -> tuple[Change, ...]:
        return self._writes

    @property
    def has_changes(self) -> bool:
        return bool(self._writes)

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)
