"""Summarize a pass: per pack what was compiled, what changed and why, and whether it is Ready.

Whether the pass is Ready is decided by ``gitopsd.core.conditions.pass_ready`` (no pack failed,
nothing is blocked, the status record reached Git when one was written); the summary carries that
verdict. The CLI and the daemon's summary log line render this value; they decide nothing.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

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
    packs: tuple[PackLine, ...]
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


def summarize(
    plan: change.Plan,
    *,
    compiled: list[tuple[spec.PackBuild, pack.CompiledPack, bool]],
    writes: int,
    published: int,
    dry_run: bool,
    status_error: str | None = None,
    memo: dict[str, tuple[object, PackLine]] | None = None,
) -> Summary:
    """``memo`` (kept by the caller between passes, by basePackName) holds each pack's line with
    what it was made of: a plan made of parts (``change.Plan.parts``) gives the same part object
    for a base that did not change, and its line is not made again."""
    by_base: Mapping[str, Sequence[change.Change]]
    if plan.parts is not None:
        by_base = {base: part.changes for base, part in plan.parts.items()}
    else:
        grouped: dict[str, list[change.Change]] = defaultdict(list)
        for c in plan.changes:
            grouped[c.base_pack_name].append(c)
        by_base = grouped
    lines = []
    seen_bases = set()
    kept: dict[str, tuple[object, PackLine]] = {}
    for build, cp_compiled, cached in sorted(compiled, key=lambda t: (t[0].base_pack_name, t[0].path)):
        cp = cp_compiled.cluster_pack
        base = build.base_pack_name
        key = (plan.parts.get(base) if plan.parts is not None else None, build, cp_compiled, cached)
        known = memo.get(base) if memo is not None and key[0] is not None and base not in seen_bases else None
        if known is not None and known[0] == key:
            lines.append(known[1])
            kept[base] = known
            seen_bases.add(base)
            continue
        version = cp.version

        def shown(c: change.Change, version: str = version) -> bool:
            return c.version == version or (c.kind is change.ObjectKind.PACK_INSTANCE and c.action is change.Action.UNINSTALL)

        def same_version(c: change.Change, version: str = version) -> bool:
            return c.version == version

        mine = _where(by_base.get(base, ()), shown)
        if base in seen_bases:
            mine = _where(mine, same_version)
        line = PackLine(
            base_pack_name=build.base_pack_name,
            version=cp.version,
            path=build.path,
            category=str(build.category),
            objects=cp_compiled.object_count,
            stages=tuple(str(s) for s in cp.execution_order),
            checksum=cp.checksum,
            cached=cached,
            changes=mine,
            hooks=cp.provenance.hooks,
            dropped_hooks=cp.provenance.dropped_hooks,
            warnings=cp_compiled.warnings,
        )
        lines.append(line)
        if key[0] is not None and base not in seen_bases:
            kept[base] = (key, line)
        seen_bases.add(base)
    if memo is not None:
        memo.clear()
        memo.update(kept)
    for err in plan.errors:
        lines.append(
            PackLine(
                base_pack_name=err.pack, version="", path=err.path, category="", objects=0, stages=(),
                checksum="", cached=False, changes=(), error=err,
            )
        )
    gone = sorted(set(by_base) - seen_bases - {e.pack for e in plan.errors})
    for base in gone:  # packs removed from Git: only uninstalls and prunes
        lines.append(
            PackLine(base_pack_name=base, version="", path="", category="", objects=0, stages=(), checksum="",
                     cached=False, changes=tuple(by_base[base]))
        )
    by_kind_action = plan.counts()  # text made once per pair, not per change
    counts = {f"{kind} {action}": n for (kind, action), n in by_kind_action.items()}
    blocked = any(action is change.Action.BLOCKED for _, action in by_kind_action)
    return Summary(
        revision=plan.revision,
        packs=tuple(lines),
        counts=counts,
        errors=plan.errors,
        writes=writes,
        published=published,
        compiled=sum(1 for _, _, cached in compiled if not cached),
        cached=sum(1 for _, _, cached in compiled if cached),
        dry_run=dry_run,
        ready=conditions.pass_ready(failed=len(plan.errors), blocked=blocked, status_error=status_error),
        has_changes=plan.has_changes,
        status_error=status_error,
    )


def _where(changes: Sequence[change.Change], keep: Callable[[change.Change], bool]) -> Sequence[change.Change]:
    """The changes ``keep`` keeps (a plan's runs stay runs: ``keep`` looks only at kind, action and version)."""
    if isinstance(changes, change.Changes):
        return changes.where(keep)
    return tuple(c for c in changes if keep(c))
