"""The plan: a ChangeSet as data.

``gitopsd.core.plan`` builds it from desired and observed state; dry-run and diff print it; the
apply step executes it. Nothing else decides what changes.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import overload

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
class Run:
    """The PackInstances of one pack on ``clusters`` that change alike, kept as one template: a plan
    at a million instances holds one of these per pack instead of one ``Change`` per instance. The
    template's ``name`` and ``cluster`` (and those of its ``pack_instance``) are blank; the change of
    cluster ``c`` is the template named ``{base_pack_name}-{c}`` on ``c`` (``at``)."""

    template: Change
    clusters: tuple[str, ...]

    def at(self, index: int) -> Change:
        t, cluster = self.template, self.clusters[index]
        name = f"{t.base_pack_name}-{cluster}"
        pi = t.pack_instance
        if pi is not None:
            pi = instance.PackInstance(name, pi.namespace, pi.base_pack_name, cluster, pi.cluster_pack, pi.version,
                                       pi.manifest_digest, pi.checksum, pi.priority, pi.source_build_ref, pi.revision,
                                       pi.state, pi.history, pi.conditions, pi.uid, pi.resource_version)
        return Change(t.kind, name, t.action, t.reason, t.base_pack_name, t.version, cluster, t.from_version, t.direction,
                      t.condition, t.cluster_pack, pi)

    def __iter__(self) -> Iterator[Change]:
        return (self.at(i) for i in range(len(self.clusters)))

    def names(self) -> Iterator[str]:
        prefix = self.template.base_pack_name + "-"
        return (prefix + cluster for cluster in self.clusters)


Item = Change | Run


class Changes(Sequence[Change]):
    """Changes in order, each a ``Change`` or a ``Run`` of changes alike: a sequence of ``Change``
    that makes a run's changes when they are read (equal to the tuple of them, item by item)."""

    __slots__ = ("_ends", "_items")

    def __init__(self, items: Iterable[Item] = ()) -> None:
        kept: list[Item] = []
        ends: list[int] = []
        total = 0
        for item in items:
            if isinstance(item, Run):
                if not item.clusters:
                    continue
                total += len(item.clusters)
            else:
                total += 1
            kept.append(item)
            ends.append(total)
        self._items: tuple[Item, ...] = tuple(kept)
        self._ends: tuple[int, ...] = tuple(ends)

    @classmethod
    def joined(cls, parts: Iterable[Changes]) -> Changes:
        """The changes of ``parts``, one after another (their items are kept as they are: no run of them is empty)."""
        items: list[Item] = []
        ends: list[int] = []
        total = 0
        for part in parts:
            if not part._items:
                continue
            items.extend(part._items)
            ends.extend(part._ends if not total else [end + total for end in part._ends])
            total = ends[-1]
        made = cls.__new__(cls)
        made._items, made._ends = tuple(items), tuple(ends)
        return made

    @property
    def items(self) -> tuple[Item, ...]:
        return self._items

    def where(self, keep: Callable[[Change], bool]) -> Changes:
        """The changes ``keep`` keeps; it is asked once per run (of its template): it must look only at
        what the changes of a run share (kind, action, version, ...), never at a name or a cluster."""
        if all(keep(item.template if isinstance(item, Run) else item) for item in self._items):
            return self
        return Changes(item for item in self._items if keep(item.template if isinstance(item, Run) else item))

    def counts(self) -> dict[tuple[ObjectKind, Action], int]:
        out: dict[tuple[ObjectKind, Action], int] = {}
        for item in self._items:
            c, n = (item.template, len(item.clusters)) if isinstance(item, Run) else (item, 1)
            out[(c.kind, c.action)] = out.get((c.kind, c.action), 0) + n
        return out

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __iter__(self) -> Iterator[Change]:
        for item in self._items:
            if isinstance(item, Run):
                yield from item
            else:
                yield item

    @overload
    def __getitem__(self, index: int) -> Change: ...

    @overload
    def __getitem__(self, index: slice) -> list[Change]: ...

    def __getitem__(self, index: int | slice) -> Change | list[Change]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return list(self._between(start, stop))
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("change index out of range")
        at = bisect.bisect_right(self._ends, index)
        item = self._items[at]
        if isinstance(item, Run):
            return item.at(index - (self._ends[at] - len(item.clusters)))
        return item

    def _between(self, start: int, stop: int) -> Iterator[Change]:
        at = bisect.bisect_right(self._ends, start)
        index = start
        while index < stop and at < len(self._items):
            item = self._items[at]
            if isinstance(item, Run):
                first = self._ends[at] - len(item.clusters)
                for i in range(index - first, min(stop, self._ends[at]) - first):
                    yield item.at(i)
            else:
                yield item
            index = self._ends[at]
            at += 1

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Changes) and other._items == self._items:
            return True
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Sequence) else False
        return all(a == b for a, b in zip(self, other, strict=True))

    def __ne__(self, other: object) -> bool:
        same = self.__eq__(other)
        return same if same is NotImplemented else not same

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Changes({list(self)!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """The changes of one basePackName, in order, and the errors only it has: the plan is made of
    them (``gitopsd.core.plan``), and a part that did not change is the same object pass after pass.
    ``changes`` is kept as ``Changes`` (runs of changes alike: a few items per pack, not one per instance)."""

    changes: Sequence[Change]
    errors: tuple[PackError, ...] = ()
    writes: Changes = dataclasses.field(init=False, repr=False, compare=False)
    # what the apply step executes: the writes and the blocked changes with a condition to record
    acts: Changes = dataclasses.field(init=False, repr=False, compare=False)
    counts: tuple[tuple[tuple[ObjectKind, Action], int], ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        changes = self.changes if isinstance(self.changes, Changes) else Changes(self.changes)
        object.__setattr__(self, "changes", changes)
        object.__setattr__(self, "writes", changes.where(_writes))
        object.__setattr__(self, "acts", changes.where(_acts))
        object.__setattr__(self, "counts", tuple(changes.counts().items()))

    @property
    def sequence(self) -> Changes:
        """``changes`` as the ``Changes`` it is."""
        assert isinstance(self.changes, Changes)
        return self.changes


def _writes(c: Change) -> bool:
    return c.writes


def _acts(c: Change) -> bool:
    return c.acts


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    revision: str
    changes: Sequence[Change]  # kept as ``Changes``
    errors: tuple[PackError, ...] = ()
    # the changes that write, worked out once: a pass asks several times and a fleet has a change per
    # instance (the plan's builder passes them when it knows them already)
    writes_known: dataclasses.InitVar[Sequence[Change] | None] = None
    _writes: Changes = dataclasses.field(init=False, repr=False, compare=False)
    # by basePackName, when the plan was made of parts (``of_parts``); ``dataclasses.replace`` drops them
    parts: Mapping[str, Part] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    # the errors of the parts, after the pass-wide ones in ``errors`` (``of_parts``), and ``counts()``
    # once asked: a plan made ``again`` shares both
    _part_errors: tuple[PackError, ...] = dataclasses.field(default=(), init=False, repr=False, compare=False)
    _counts: dict[tuple[ObjectKind, Action], int] | None = dataclasses.field(default=None, init=False, repr=False,
                                                                             compare=False)

    def __post_init__(self, writes_known: Sequence[Change] | None) -> None:
        changes = self.changes if isinstance(self.changes, Changes) else Changes(self.changes)
        object.__setattr__(self, "changes", changes)
        if writes_known is None:
            writes_known = changes.where(_writes)
        object.__setattr__(self, "_writes", writes_known if isinstance(writes_known, Changes) else Changes(writes_known))

    @classmethod
    def of_parts(cls, revision: str, parts: Mapping[str, Part], order: Sequence[str], errors: tuple[PackError, ...],
                 changes: Sequence[Change] | None = None) -> Plan:
        """The plan made of ``parts`` in ``order`` after the pass-wide ``errors`` (``changes``: the
        same changes, already put together)."""
        more: list[PackError] = []
        for base in order:
            if parts[base].errors:
                more.extend(parts[base].errors)
        every = changes if changes is not None else Changes.joined(parts[base].sequence for base in order)
        writes = Changes.joined(parts[base].writes for base in order)
        made = cls(revision=revision, changes=every, errors=(*errors, *more), writes_known=writes)
        object.__setattr__(made, "parts", {base: parts[base] for base in order})
        object.__setattr__(made, "_part_errors", tuple(more))
        return made

    def again(self, revision: str, errors: tuple[PackError, ...]) -> Plan:
        """This plan of parts (``of_parts``) for another revision and other pass-wide errors: the same
        parts, changes and writes, not put together again."""
        assert self.parts is not None
        made = Plan(revision=revision, changes=self.changes, errors=(*errors, *self._part_errors), writes_known=self._writes)
        object.__setattr__(made, "parts", self.parts)
        object.__setattr__(made, "_part_errors", self._part_errors)
        object.__setattr__(made, "_counts", self._counts)
        return made

    @property
    def acts(self) -> Changes:
        """What the apply step executes, in plan order (``Change.acts``)."""
        if self.parts is not None:
            return Changes.joined(part.acts for part in self.parts.values())
        return self.sequence.where(_acts)

    @property
    def sequence(self) -> Changes:
        """``changes`` as the ``Changes`` it is."""
        assert isinstance(self.changes, Changes)
        return self.changes

    @property
    def writes(self) -> Changes:
        return self._writes

    @property
    def has_changes(self) -> bool:
        return bool(self._writes)

    def count(self, action: Action) -> int:
        return sum(n for (_, a), n in self.counts().items() if a is action)

    def counts(self) -> dict[tuple[ObjectKind, Action], int]:
        """How many changes of each kind and action."""
        if self.parts is None:
            return self.sequence.counts()
        if self._counts is None:
            out: dict[tuple[ObjectKind, Action], int] = {}
            for part in self.parts.values():
                for key, n in part.counts:
                    out[key] = out.get(key, 0) + n
            object.__setattr__(self, "_counts", out)
            assert self._counts is not None
        return dict(self._counts)
