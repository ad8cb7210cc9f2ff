"""Summarize a pass: per pack what was compiled, what changed and why, and whether it is Ready.

Whether the pass is Ready is decided by ``gitopsd.core.conditions.pass_ready`` (no pack failed,
nothing is blocked, the status record reached Git when one was written); the summary carries that
verdict. The CLI and the daemon's summary log line render this value; they decide nothing.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol, overload

from gitopsd.core import conditions
from gitopsd.model import change, pack, spec


@dataclasses.dataclass(frozen=True, slots=True)
class PackLine:
    base_pack_name: str
    version: str
    path: str
    category: str
    objects: int
    stages: tuple[str, ...]
    checksum: str
    cached: bool
    changes: Sequence[change.Change]  # a ``change.Changes`` when the plan was made of parts
    error: change.PackError | None = None
    hooks: tuple[pack.Hook, ...] = ()  # Helm hooks kept in the artifact, in the order Helm runs them
    dropped_hooks: tuple[str, ...] = ()  # test hooks left out
    warnings: tuple[str, ...] = ()  # what the compile guessed or could not make reproducible

    def notes_json(self) -> dict[str, object]:
        return {"pack": self.base_pack_name, "version": self.version, "hooks": [h.to_json() for h in self.hooks],
                "droppedHooks": list(self.dropped_hooks), "warnings": list(self.warnings)}


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    revision: str
    packs: Sequence[PackLine]  # a ``PackLines`` from ``summarize``: each line made when read
    counts: dict[str, int]  # "ClusterPack create" -> n, ...
    errors: tuple[change.PackError, ...]
    writes: int
    published: int
    compiled: int
    cached: int
    dry_run: bool
    ready: bool
    has_changes: bool
    status_error: str | None = None

    def to_json(self, *, notes: bool = True) -> dict[str, object]:
        """The summary for scripts; ``notes``: with ``packNotes``, the hooks and warnings of each pack
        that has some (left out of the one summary log line of a pass, which stays short)."""
        out: dict[str, object] = {
            "revision": self.revision,
            "ready": self.ready,
            "hasChanges": self.has_changes,
            "packs": len(self.packs),
            "compiled": self.compiled,
            "cached": self.cached,
            "failed": len(self.errors),
            "published": self.published,
            "writes": self.writes,
            "changes": dict(sorted(self.counts.items())),
            "statusError": self.status_error,
        }
        if notes:
            out["packNotes"] = [line.notes_json() for line in self.packs
                                if line.hooks or line.dropped_hooks or line.warnings]
        return out


class Packed(Protocol):
    """One pack of a pass as the summary reads it (``passstate.CompileResult``)."""

    @property
    def build(self) -> spec.PackBuild: ...

    @property
    def compiled(self) -> pack.CompiledPack: ...

    @property
    def cached(self) -> bool: ...


class PackLines(Sequence[PackLine]):
    """The lines of a summary, in order: a line per pack (by basePackName, then path), made when first
    read (a daemon's pass reads only how many there are), then the pack errors and the bases removed
    from Git. Equal to any sequence of the same lines."""

    __slots__ = ("_by_base", "_compiled", "_firsts", "_made", "_more", "_order")

    def __init__(self, compiled: Sequence[Packed], order: Sequence[int], firsts: Sequence[bool],
                 made: list[PackLine | None], by_base: Mapping[str, Sequence[change.Change]],
                 more: tuple[PackLine, ...]) -> None:
        self._compiled, self._order, self._firsts, self._made = compiled, order, firsts, made
        self._by_base, self._more = by_base, more

    def __len__(self) -> int:
        return len(self._order) + len(self._more)

    @overload
    def __getitem__(self, index: int) -> PackLine: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[PackLine]: ...

    def __getitem__(self, index: int | slice) -> PackLine | Sequence[PackLine]:
        if isinstance(index, slice):
            return tuple(self)[index]
        count = len(self._order)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index >= count:
            return self._more[index - count]
        line = self._made[index]
        if line is None:
            packed = self._compiled[self._order[index]]
            changes = self._by_base.get(packed.build.base_pack_name, ())
            line = self._made[index] = _line(packed, changes, first=self._firsts[index])
        return line

    def __iter__(self) -> Iterator[PackLine]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"PackLines({list(self)!r})"


@dataclasses.dataclass(slots=True)
class Kept:
    """The pack lines of the last summary and what they were made of, kept by the caller between
    passes: a pack whose ``Packed`` is the same object and whose base's plan part is the same object
    (a plan made of parts, ``change.Plan.parts``, keeps the part of a base that did not change) keeps its line."""

    compiled: Sequence[Packed] = ()
    order: list[int] = dataclasses.field(default_factory=list)  # indexes of ``compiled`` in line order
    firsts: list[bool] = dataclasses.field(default_factory=list)  # the line at that place is its base's first
    made: list[PackLine | None] = dataclasses.field(default_factory=list)  # the lines made so far, by place
    at: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # base -> its places in ``order``
    parts: Mapping[str, change.Part] | None = None  # the plan's parts the lines were made with
    cached: int = 0  # packs of ``compiled`` taken from the compile cache
    # the lines of the bases the plan has and no pack has (removed from Git), for ``parts`` and these errors
    gone: tuple[tuple[change.PackError, ...], tuple[PackLine, ...]] | None = None


def summarize(
    plan: change.Plan,
    *,
    compiled: Sequence[Packed],
    writes: int,
    published: int,
    dry_run: bool,
    status_error: str | None = None,
    kept: Kept | None = None,
) -> Summary:
    """The summary of a pass. ``kept`` (updated here) holds the last summary's pack lines: only the
    lines of the packs or bases that changed since are made again."""
    kept = kept if kept is not None else Kept()
    by_base = _by_base(plan)
    if not _patch(plan, compiled, kept):
        _lines(compiled, kept)
        kept.gone = None
    kept.compiled, kept.parts = compiled, plan.parts
    if kept.gone is None or kept.gone[0] != plan.errors:
        errs = {e.pack for e in plan.errors}
        gone = sorted(base for base in by_base if base not in kept.at and base not in errs)
        kept.gone = (plan.errors, tuple(  # packs removed from Git: only uninstalls and prunes
            PackLine(base_pack_name=base, version="", path="", category="", objects=0, stages=(), checksum="",
                     cached=False, changes=tuple(by_base[base])) for base in gone))
    errors = tuple(PackLine(base_pack_name=err.pack, version="", path=err.path, category="", objects=0, stages=(),
                            checksum="", cached=False, changes=(), error=err) for err in plan.errors)
    lines = PackLines(compiled, kept.order, kept.firsts, kept.made, by_base, (*errors, *kept.gone[1]))
    by_kind_action = plan.counts()  # text made once per pair, not per change
    counts = {f"{kind} {action}": n for (kind, action), n in by_kind_action.items()}
    blocked = any(action is change.Action.BLOCKED for _, action in by_kind_action)
    return Summary(
        revision=plan.revision,
        packs=lines,
        counts=counts,
        errors=plan.errors,
        writes=writes,
        published=published,
        compiled=len(compiled) - kept.cached,
        cached=kept.cached,
        dry_run=dry_run,
        ready=conditions.pass_ready(failed=len(plan.errors), blocked=blocked, status_error=status_error),
        has_changes=plan.has_changes,
        status_error=status_error,
    )


def _by_base(plan: change.Plan) -> Mapping[str, Sequence[change.Change]]:
    if plan.parts is not None:
        return _Changes(plan.parts)
    grouped: dict[str, list[change.Change]] = defaultdict(list)
    for c in plan.changes:
        grouped[c.base_pack_name].append(c)
    return grouped


class _Changes(Mapping[str, Sequence[change.Change]]):
    """The changes of each base of a plan made of parts (read through, not copied)."""

    def __init__(self, parts: Mapping[str, change.Part]) -> None:
        self._parts = parts

    def __getitem__(self, base: str) -> Sequence[change.Change]:
        return self._parts[base].changes

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)


def _lines(compiled: Sequence[Packed], kept: Kept) -> None:
    """Every pack line to be made again, in a new order."""
    kept.order = sorted(range(len(compiled)), key=lambda i: (compiled[i].build.base_pack_name, compiled[i].build.path))
    kept.at, kept.firsts = {}, []
    for position, i in enumerate(kept.order):
        positions = kept.at.setdefault(compiled[i].build.base_pack_name, [])
        kept.firsts.append(not positions)
        positions.append(position)
    kept.made = [None] * len(compiled)
    kept.cached = sum(1 for r in compiled if r.cached)


def _patch(plan: change.Plan, compiled: Sequence[Packed], kept: Kept) -> bool:
    """Forget the lines of the packs that changed since ``kept`` and of the bases whose plan part
    changed (they are made again when read); False when that cannot be told (another number of
    packs, a pack that moved in the order, a plan not made of parts): then every line is."""
    before = kept.compiled
    if plan.parts is None or kept.parts is None or len(before) != len(compiled) or not kept.order:
        return False
    changed = [] if all(map(operator.is_, compiled, before)) else [
        i for i, (now, then) in enumerate(zip(compiled, before, strict=True))
        if now is not then and (now.build is not then.build or now.compiled is not then.compiled or now.cached != then.cached)]
    for i in changed:
        now, then = compiled[i].build, before[i].build
        if now.base_pack_name != then.base_pack_name or now.path != then.path:
            return False  # its place in the order moved
    dirty = {compiled[i].build.base_pack_name for i in changed}
    if plan.parts is not kept.parts:
        parts, earlier = plan.parts, kept.parts
        dirty.update(base for base, part in parts.items() if earlier.get(base) is not part)
        dirty.update(base for base in earlier if base not in parts)
        kept.gone = None
    kept.cached += sum(1 for i in changed if compiled[i].cached) - sum(1 for i in changed if before[i].cached)
    kept.made = list(kept.made)  # the last summary keeps its own
    made = kept.made
    for base in dirty:
        for position in kept.at.get(base, ()):
            made[position] = None
    return True


def _line(packed: Packed, changes: Sequence[change.Change], *, first: bool) -> PackLine:
    """The line of one pack: the changes of its base that show its version (and the uninstalls), all
    of them on the first pack of a base, only its own version's on the others."""
    build, cp_compiled = packed.build, packed.compiled
    cp = cp_compiled.cluster_pack
    version = cp.version

    def shown(c: change.Change) -> bool:
        return c.version == version or (c.kind is change.ObjectKind.PACK_INSTANCE and c.action is change.Action.UNINSTALL)

    def same_version(c: change.Change) -> bool:
        return c.version == version

    mine = _where(changes, shown)
    if not first:
        mine = _where(mine, same_version)
    return PackLine(
        base_pack_name=build.base_pack_name,
        version=cp.version,
        path=build.path,
        category=str(build.category),
        objects=cp_compiled.object_count,
        stages=tuple(str(s) for s in cp.execution_order),
        checksum=cp.checksum,
        cached=packed.cached,
        changes=mine,
        hooks=cp.provenance.hooks,
        dropped_hooks=cp.provenance.dropped_hooks,
        warnings=cp_compiled.warnings,
    )


def _where(changes: Sequence[change.Change], keep: Callable[[change.Change], bool]) -> Sequence[change.Change]:
    """The changes ``keep`` keeps (a plan's runs stay runs: ``keep`` looks only at kind, action and version)."""
    if isinstance(changes, change.Changes):
        return changes.where(keep)
    return tuple(c for c in changes if keep(c))
