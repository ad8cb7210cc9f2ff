"""Build the ChangeSet: the only place that decides what changes (design.md §Reconcile).

Inputs are values: the desired packs (compiled and signed), what was observed, the signature
verdicts and the policy. The output is a ``change.Plan``: per ClusterPack create / unchanged /
blocked / uninstall (pruned), per PackInstance create / supersede (Upgrade, Rollback, Redeploy) /
unchanged / uninstall / blocked, each with a reason. Collisions are resolved deterministically:
higher priority wins, a tie goes to the one installed first, then to the PackBuild path.
The conditions a change carries are made by ``gitopsd.core.conditions``.

The plan is made of one part per basePackName (``fragments``), put together in base order
(``assemble``): dedupe, collisions between PackBuilds of one base, uninstalls and prune are per
base, and bases meet only where their packs would own the same object. An instance that keeps
running what it runs is judged from its ``instance.Head``; only an instance that changes is read
whole. ``gitopsd.core.replan`` re-plans only the bases whose inputs changed.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping

from gitopsd.core import conditions as cond
from gitopsd.core import semver
from gitopsd.model import change, instance, pack, spec
from gitopsd.model.change import Action, ObjectKind
from gitopsd.model.instance import Condition, Direction, InstallState

MAX_HISTORY = 50


class Verdict(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    INVALID = "invalid"
    PENDING = "pending"  # dry-run without a key: it would be signed at apply


@dataclasses.dataclass(frozen=True, slots=True)
class Desired:
    build: spec.PackBuild
    compiled: pack.CompiledPack
    clusters: tuple[str, ...]

    @property
    def cluster_pack(self) -> pack.ClusterPack:
        return self.compiled.cluster_pack


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    namespace: str
    now: str
    installed_by: str
    registry_hash: str
    require_signatures: bool = True
    keep_versions: int = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Inputs:
    revision: str
    desired: tuple[Desired, ...]
    observed: instance.Observed
    verdicts: Mapping[str, Verdict]
    policy: Policy
    errors: tuple[change.PackError, ...] = ()
    protected_paths: frozenset[str] = frozenset()  # PackBuild files that exist but failed
    protected_bases: frozenset[str] = frozenset()
    # ClusterPack name -> (reason, detail) of a published artifact that does not verify
    artifact_problems: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


Fragment = change.Part  # the plan of one basePackName


def build(inputs: Inputs) -> change.Plan:
    """The whole plan, every basePackName worked out (``gitopsd.core.replan`` keeps it up to date
    by working out only the bases whose inputs changed; both give the same plan)."""
    return assemble(inputs, fragments(inputs, None))


def assemble(inputs: Inputs, parts: Mapping[str, Fragment], order: list[str] | None = None) -> change.Plan:
    """The plan made of ``parts`` in basePackName order (``order``, when the caller has it sorted)."""
    return change.Plan.of_parts(inputs.revision, parts, order if order is not None else sorted(parts), inputs.errors)


def bases(inputs: Inputs) -> set[str]:
    """Every basePackName the plan has something to say about."""
    return {d.build.base_pack_name for d in inputs.desired} | set(inputs.observed.parts)


def fragments(inputs: Inputs, only: Collection[str] | None) -> dict[str, Fragment]:
    """The fragment of each base in ``only`` (``None``: every base) that has any change or error.

    Bases interact only through objects two of their packs would both own: ``only`` must hold
    every base linked to one of its bases that way (``gitopsd.core.replan`` closes it)."""
    wanted = bases(inputs) if only is None else set(only)
    by_base: dict[str, list[Desired]] = defaultdict(list)
    for d in inputs.desired:
        if d.build.base_pack_name in wanted:
            by_base[d.build.base_pack_name].append(d)
    changes: dict[str, list[change.Change | _Open]] = defaultdict(list)
    errors: dict[str, list[change.PackError]] = defaultdict(list)
    desired: list[Desired] = []
    poisoned = set()
    for base in sorted(by_base):
        deduped = by_base[base] = _dedupe_names(by_base[base], errors[base])
        desired.extend(deduped)
        for d in deduped:
            c = _cluster_pack_change(d, inputs.observed.part(base))
            if c.action is Action.BLOCKED:
                poisoned.add(d.cluster_pack.name)
            changes[base].append(c)

    assignments, blocked = _assign(desired, inputs.observed)
    # This loop runs for every PackInstance of the bases planned: what depends only on the pack is
    # worked out once per pack, and an instance that runs it already costs one lookup. Instances of
    # one pack that change alike (unchanged, or installed for the first time) are kept as one run
    # (``change.Run``): a plan holds a few items per pack, not one Change per instance.
    facts: dict[int, tuple[pack.ClusterPack, change.Change | None, tuple[object, ...], change.Change]] = {}
    shared: dict[tuple[object, ...], tuple[instance.InstallRecord, tuple[Condition, ...]]] = {}
    firsts: dict[int, change.Change] = {}  # id(Desired) -> the template of its first installs
    present: dict[str, int] = defaultdict(int)  # base -> its assigned instances that exist
    uninstalled = InstallState.UNINSTALLED
    last: Desired | None = None
    for base, cluster, d in assignments.in_order():
        if d is not last:  # the clusters of one pack come one after another (the keys sort by base first)
            last, known = d, facts.get(id(d))
            if known is None:
                cp = d.cluster_pack
                known = facts[id(d)] = (cp, _pack_block(d, inputs, poisoned),
                                        (cp.name, cp.manifest_digest, cp.checksum, d.build.priority, d.build.path),
                                        change.Change(ObjectKind.PACK_INSTANCE, "", Action.UNCHANGED, f"runs {cp.version}",
                                                      base, cp.version))
            cp, block, runs_this, same = known
            part = inputs.observed.part(base)
            head_of, items = part.heads.get, changes[base]
        head = head_of(f"{base}-{cluster}")
        if head is not None:
            present[base] += 1
        if block is None and head is not None and head.state is not uninstalled and head.runs == runs_this:
            template = same
        elif block is None and head is None:
            first = firsts.get(id(d))
            if first is None:
                first = firsts[id(d)] = _instance_change(d, cp, "", "", None, inputs, None, shared)
            template = first
        else:  # only an instance that changes is read whole
            name = f"{base}-{cluster}"
            items.append(_instance_change(d, cp, name, cluster, part.instances.get(name) if head is not None else None,
                                          inputs, block, shared))
            continue
        tail = items[-1] if items else None
        if isinstance(tail, _Open) and tail.template is template:
            tail.clusters.append(cluster)
        else:
            items.append(_Open(template, [cluster]))
    blocked_names = set()
    for c in blocked:
        blocked_names.add(c.name)
        changes[c.base_pack_name].append(c)

    out = {}
    clusters_seen: dict[tuple[str, ...], tuple[str, ...]] = {}
    for base in sorted(wanted):
        part = inputs.observed.part(base)
        mine = [item.closed(clusters_seen) if isinstance(item, _Open) else item for item in changes.get(base, [])]
        # every instance of the base is assigned (a fleet that only changes): none to uninstall
        if base not in inputs.protected_bases and present.get(base, 0) != len(part.heads):
            protected_paths, prefix = inputs.protected_paths, base + "-"
            for name in sorted(part.heads):
                head = part.heads[name]
                if (head.state is InstallState.UNINSTALLED or head.source_build_ref in protected_paths
                        or (name.startswith(prefix) and (base, name[len(prefix):]) in assignments)
                        or name in blocked_names or _assigned(name, assignments)):
                    continue
                obs = part.instances.get(name)
                if obs is not None:
                    mine.append(_uninstall(obs, inputs))
        mine.extend(_prune(base, by_base.get(base, []), part, inputs, mine))
        if inputs.artifact_problems:
            mine = list(_block_artifacts(list(change.Changes(mine)), inputs.artifact_problems))
        if mine or errors.get(base):
            out[base] = Fragment(changes=change.Changes(mine), errors=tuple(errors.get(base, ())))
    return out


class _Open:
    """A run being made: the template of its changes and the clusters so far."""

    __slots__ = ("clusters", "template")

    def __init__(self, template: change.Change, clusters: list[str]) -> None:
        self.template, self.clusters = template, clusters

    def closed(self, seen: dict[tuple[str, ...], tuple[str, ...]]) -> change.Run:
        clusters = tuple(self.clusters)
        return change.Run(self.template, seen.setdefault(clusters, clusters))  # most packs share their cluster list


def _assigned(name: str, assignments: _Assignments) -> bool:
    """Whether PackInstance ``name`` is ``{base}-{cluster}`` of an assigned (base, cluster)."""
    cut = name.find("-")
    while cut > 0:
        if (name[:cut], name[cut + 1:]) in assignments:
            return True
        cut = name.find("-", cut + 1)
    return False


def _block_artifacts(changes: list[change.Change], problems: Mapping[str, tuple[str, str]]) -> list[change.Change]:
    """A published artifact that does not verify blocks every delivery that would point at it."""
    for reason in ("ArtifactMismatch", "ArtifactUnverified"):
        failed = {name: detail for name, (why, detail) in problems.items() if why == reason}
        if failed:
            changes = _blocked(changes, failed, reason)
    return changes


def _dedupe_names(desired: list[Desired], errors: list[change.PackError]) -> list[Desired]:
    by_name: dict[str, Desired] = {}
    for d in sorted(desired, key=lambda d: d.build.path):
        first = by_name.get(d.cluster_pack.name)
        if first is None:
            by_name[d.cluster_pack.name] = d
            continue
        errors.append(
            change.PackError(
                path=d.build.path,
                pack=d.build.base_pack_name,
                reason="DuplicatePackVersion",
                message=(
                    f"{d.build.path}: ClusterPack {d.cluster_pack.name} is also built by {first.build.path}; "
                    "give one of them another version or basePackName"
                ),
            )
        )
    return list(by_name.values())


def _cluster_pack_change(d: Desired, observed: instance.Part) -> change.Change:
    cp = d.cluster_pack
    found = observed.packs.get(cp.name)
    make = functools.partial(change.Change, kind=ObjectKind.CLUSTER_PACK, name=cp.name, base_pack_name=cp.base_pack_name,
                             version=cp.version)
    if found is None:
        return make(action=Action.CREATE, reason="new pack version", cluster_pack=cp)
    if found.checksum == cp.checksum and found.manifest_digest == cp.manifest_digest:
        return make(action=Action.UNCHANGED, reason="same checksum")
    condition = cond.immutability_violation(
        f"ClusterPack {cp.name} exists with checksum {found.checksum} but {d.build.path} now gives "
        f"{cp.checksum}; published versions are immutable: bump 'version' in {d.build.path}",
    )
    return make(action=Action.BLOCKED, reason=condition.reason, condition=condition)


def _rank(d: Desired, cluster: str, observed: instance.Observed) -> tuple[object, ...]:
    """Sort key of a contender on one cluster: priority first, then install order, then path."""
    base = d.build.base_pack_name
    head = observed.part(base).heads.get(f"{base}-{cluster}")
    installed = head is not None and head.state is not InstallState.UNINSTALLED
    installed_this = installed and head is not None and head.cluster_pack == d.cluster_pack.name
    installed_at = head.installed_at if installed and head is not None else "~"  # "~" sorts after any time
    return (-d.build.priority, not installed_this, installed_at, d.build.path)


class _Assignments:
    """Which PackBuild runs, per (basePackName, cluster): kept per pack where a base has one
    PackBuild (it wins on each of its clusters but those in ``dropped``), per cluster only for the
    bases with more than one (``winners``). Bounded by packs, not by instances, in a fleet."""

    __slots__ = ("_sets", "dropped", "single", "winners")

    def __init__(self) -> None:
        self.single: dict[str, Desired] = {}
        self.winners: dict[tuple[str, str], Desired] = {}
        self.dropped: set[tuple[str, str]] = set()
        self._sets: dict[int, tuple[tuple[str, ...], frozenset[str]]] = {}

    def _clusters(self, d: Desired) -> frozenset[str]:
        known = self._sets.get(id(d.clusters))
        if known is None:  # one per tuple: the packs of a fleet share their cluster tuples
            known = self._sets[id(d.clusters)] = (d.clusters, frozenset(d.clusters))
        return known[1]

    def __contains__(self, key: tuple[str, str]) -> bool:
        d = self.single.get(key[0])
        if d is not None:
            return key[1] in self._clusters(d) and key not in self.dropped
        return key in self.winners

    def items(self) -> Iterator[tuple[tuple[str, str], Desired]]:
        """Every assignment, in no particular order."""
        for base, d in self.single.items():
            for cluster in d.clusters:
                if (base, cluster) not in self.dropped:
                    yield (base, cluster), d
        yield from self.winners.items()

    def in_order(self) -> Iterator[tuple[str, str, Desired]]:
        """(base, cluster, PackBuild) sorted by base, then cluster."""
        several: dict[str, list[str]] = defaultdict(list)
        for base, cluster in self.winners:
            several[base].append(cluster)
        for base in sorted(self.single.keys() | several.keys()):
            d = self.single.get(base)
            if d is not None:
                for cluster in sorted(set(d.clusters)):
                    if (base, cluster) not in self.dropped:
                        yield base, cluster, d
            else:
                for cluster in sorted(several[base]):
                    yield base, cluster, self.winners[(base, cluster)]

    def drop(self, base: str, cluster: str) -> None:
        if base in self.single:
            self.dropped.add((base, cluster))
        else:
            del self.winners[(base, cluster)]


def _assign(desired: list[Desired], observed: instance.Observed) -> tuple[_Assignments, list[change.Change]]:
    """Pick, per cluster, one PackBuild per basePackName and refuse packs whose objects overlap."""
    assigned = _Assignments()
    by_base: dict[str, list[Desired]] = defaultdict(list)
    for d in desired:
        by_base[d.build.base_pack_name].append(d)
    winners = assigned.winners
    contended: dict[tuple[str, str], list[Desired]] = {}
    for base, group in by_base.items():
        if len(group) == 1:
            assigned.single[base] = group[0]
            continue
        for d in group:
            for cluster in d.clusters:
                key = (base, cluster)
                first = winners.setdefault(key, d)
                if first is not d:
                    contended.setdefault(key, [first]).append(d)
    blocked: list[change.Change] = []
    for key, ds in sorted(contended.items()):
        ds.sort(key=lambda d: _rank(d, key[1], observed))
        winners[key] = ds[0]
        for loser in ds[1:]:
            blocked.append(_collision(loser, key[1], ds[0], "both build basePackName " + key[0]))

    # Only packs sharing an object with another pack can collide: find them once, across clusters,
    # and sort only those per cluster (the rest can never be blocked for an overlap).
    packs = {id(d): d for d in assigned.single.values() if d.clusters}
    packs.update((id(d), d) for d in winners.values())
    every = [identity for d in packs.values() for identity in d.compiled.identities]
    if len(set(every)) == len(every):
        return assigned, blocked  # no object is built by two packs: nothing to check per cluster
    holders: dict[tuple[str, str, str, str], list[Desired]] = defaultdict(list)
    for d in packs.values():
        for identity in d.compiled.identities:
            holders[identity].append(d)
    suspects = {id(d) for group in holders.values() if len(group) > 1 for d in group}
    by_cluster: dict[str, list[Desired]] = defaultdict(list)
    for (_, cluster), d in assigned.items():
        if id(d) in suspects:
            by_cluster[cluster].append(d)
    for cluster, group in sorted(by_cluster.items()):
        group.sort(key=lambda d: _rank(d, cluster, observed))
        owners: dict[tuple[str, str, str, str], Desired] = {}
        for d in group:
            clash = next((owners[i] for i in d.compiled.identities if i in owners), None)
            if clash is None:
                for identity in d.compiled.identities:
                    owners[identity] = d
                continue
            shared = sorted(set(d.compiled.identities) & set(clash.compiled.identities))
            subject = "/".join(part for part in shared[0][1:] if part)
            assigned.drop(d.build.base_pack_name, cluster)
            blocked.append(_collision(d, cluster, clash, f"both own {subject}"))
    return assigned, blocked


def _collision(loser: Desired, cluster: str, winner: Desired, what: str) -> change.Change:
    lp, wp = loser.cluster_pack, winner.cluster_pack
    why = (
        "higher priority"
        if winner.build.priority != loser.build.priority
        else "same priority, installed first or first by path"
    )
    message = (
        f"{lp.name} ({loser.build.path}, priority {loser.build.priority}) collides with {wp.name} "
        f"({winner.build.path}, priority {winner.build.priority}) on cluster {cluster}: {what}; "
        f"{wp.name} wins ({why}). Raise 'priority' or remove the overlap."
    )
    condition = cond.pack_collision(message)
    return change.Change(
        kind=ObjectKind.PACK_INSTANCE,
        name=f"{lp.base_pack_name}-{cluster}",
        action=Action.BLOCKED,
        reason=condition.reason,
        base_pack_name=lp.base_pack_name,
        version=lp.version,
        cluster=cluster,
        condition=condition,
    )


def _record(d: Desired, inputs: Inputs, state: InstallState, direction: Direction,
            from_version: str | None) -> instance.InstallRecord:
    cp = d.cluster_pack
    return instance.InstallRecord(
        state=state,
        pack_id=cp.base_pack_name,
        pack_version=cp.version,
        cluster_pack=cp.name,
        priority=d.build.priority,
        license=d.build.license,
        registry_version_hash=inputs.policy.registry_hash,
        installed_at=inputs.policy.now,
        installed_by=inputs.policy.installed_by,
        artifact=f"{cp.registry_url}@{cp.manifest_digest}",
        revision=inputs.revision,
        upgrade_from_version=from_version,
        direction=direction,
    )


def _pack_block(d: Desired, inputs: Inputs, poisoned: set[str]) -> change.Change | None:
    """Why no instance of this pack may be written, as a template Change (name and cluster unset), or None."""
    cp = d.cluster_pack
    make = functools.partial(change.Change, kind=ObjectKind.PACK_INSTANCE, name="", base_pack_name=cp.base_pack_name,
                             version=cp.version)
    if cp.name in poisoned:
        condition = cond.pack_changed_in_place(cp.name)
        return make(action=Action.BLOCKED, reason=condition.reason, condition=condition)
    verdict = inputs.verdicts.get(cp.name, Verdict.MISSING)
    if inputs.policy.require_signatures and verdict in (Verdict.MISSING, Verdict.INVALID):
        word = "no signature" if verdict is Verdict.MISSING else "a signature that does not verify against the trusted keys"
        condition = cond.signature_invalid(f"ClusterPack {cp.name} has {word}; delivery blocked")
        return make(action=Action.BLOCKED, reason=condition.reason, condition=condition)
    return None


def _instance_change(d: Desired, cp: pack.ClusterPack, name: str, cluster: str, obs: instance.PackInstance | None,
                     inputs: Inputs, block: change.Change | None,
                     shared: dict[tuple[object, ...], tuple[instance.InstallRecord, tuple[Condition, ...]]]) -> change.Change:
    """The change of instance ``name`` (``obs`` as observed), which does not run this pack as it is yet
    (``build`` handles those that do).

    The install record and the condition do not depend on the cluster: instances of one pack that
    move the same way share them (``shared``), which keeps a first install of 10,000 packs on 100
    clusters within memory."""
    if block is not None:
        return dataclasses.replace(block, name=name, cluster=cluster)
    live = obs is not None and obs.state is not InstallState.UNINSTALLED
    if not live or obs is None:
        direction, from_version, state, action = Direction.INITIAL, None, InstallState.INSTALLED, Action.CREATE
        reason = "initial install"
    else:
        from_version = obs.version
        order = semver.compare(cp.version, obs.version)
        direction = Direction.UPGRADE if order > 0 else Direction.ROLLBACK if order < 0 else Direction.REDEPLOY
        state, action = InstallState.UPGRADED, Action.SUPERSEDE
        reason = f"{direction.lower()} {obs.version} -> {cp.version}" if order else f"redeploy {cp.version} (spec changed)"
    key = (id(d), state, direction, from_version)
    made = shared.get(key)
    if made is None:
        made = shared[key] = (
            _record(d, inputs, state, direction, from_version),
            (cond.applied(direction, cp.name, inputs.revision),),
        )
    record, conditions = made
    history = ((obs.history if obs is not None else ()) + (record,))[-MAX_HISTORY:]
    desired_instance = instance.PackInstance(
        name=name,
        namespace=inputs.policy.namespace,
        base_pack_name=cp.base_pack_name,
        cluster=cluster,
        cluster_pack=cp.name,
        version=cp.version,
        manifest_digest=cp.manifest_digest,
        checksum=cp.checksum,
        priority=d.build.priority,
        source_build_ref=d.build.path,
        revision=inputs.revision,
        state=InstallState.INSTALLED,
        history=history,
        conditions=conditions,
        uid=obs.uid if obs is not None else None,
        resource_version=obs.resource_version if obs is not None else None,
    )
    return change.Change(
        kind=ObjectKind.PACK_INSTANCE,
        name=name,
        action=action,
        reason=reason,
        base_pack_name=cp.base_pack_name,
        version=cp.version,
        cluster=cluster,
        from_version=from_version,
        direction=direction,
        pack_instance=desired_instance,
    )


def _uninstall(obs: instance.PackInstance, inputs: Inputs) -> change.Change:
    last = obs.history[-1] if obs.history else None
    record = instance.InstallRecord(
        state=InstallState.UNINSTALLED,
        pack_id=obs.base_pack_name,
        pack_version=obs.version,
        cluster_pack=obs.cluster_pack,
        priority=obs.priority,
        license=last.license if last else None,
        registry_version_hash=inputs.policy.registry_hash,
        installed_at=inputs.policy.now,
        installed_by=inputs.policy.installed_by,
        artifact=last.artifact if last else "",
        revision=inputs.revision,
        upgrade_from_version=None,
        direction=None,
    )
    gone = dataclasses.replace(
        obs,
        state=InstallState.UNINSTALLED,
        revision=inputs.revision,
        history=(*obs.history, record)[-MAX_HISTORY:],
        conditions=(cond.uninstalled(inputs.revision),),
    )
    return change.Change(
        kind=ObjectKind.PACK_INSTANCE,
        name=obs.name,
        action=Action.UNINSTALL,
        reason="pack no longer targets this cluster" if obs.base_pack_name else "removed from Git",
        base_pack_name=obs.base_pack_name,
        version=obs.version,
        cluster=obs.cluster,
        pack_instance=gone,
    )


def _prune(base: str, desired: list[Desired], observed: instance.Part, inputs: Inputs,
           changes: list[change.Item]) -> list[change.Change]:
    """Old ClusterPacks of ``base`` beyond ``keep_versions``, not desired and not in use."""
    packs = list(observed.packs.values())
    # The versions this pass creates count too, and an instance this pass moves to another version
    # no longer holds its old one: prune in the same pass, not one pass late.
    created = sum(1 for d in desired if d.cluster_pack.name not in observed.packs)
    if base in inputs.protected_bases or len(packs) + created <= inputs.policy.keep_versions:
        return []
    in_use: set[str] = set()
    moved: set[str] = set()
    for item in changes:
        c = item.template if isinstance(item, change.Run) else item
        if c.pack_instance is not None and c.action is not Action.UNINSTALL:
            in_use.add(c.pack_instance.cluster_pack)
        if c.kind is ObjectKind.PACK_INSTANCE and (c.action is Action.UNINSTALL or (
                c.pack_instance is not None and c.action in (Action.CREATE, Action.SUPERSEDE))):
            moved.update(item.names() if isinstance(item, change.Run) else (c.name,))
    in_use |= {
        head.cluster_pack
        for name, head in observed.heads.items()
        if head.state is not InstallState.UNINSTALLED and name not in moved
    }
    packs.sort(key=lambda p: semver.parse(p.version).key() if _is_semver(p.version) else (), reverse=True)
    keep = {d.cluster_pack.name for d in desired}
    pruned = []
    for p in packs:
        if p.name in keep or p.name in in_use:
            continue
        if len(keep) < inputs.policy.keep_versions:
            keep.add(p.name)
            continue
        pruned.append(
            change.Change(
                kind=ObjectKind.CLUSTER_PACK,
                name=p.name,
                action=Action.UNINSTALL,
                reason=f"pruned: more than {inputs.policy.keep_versions} versions of {base} kept",
                base_pack_name=base,
                version=p.version,
            )
        )
    return pruned


def _is_semver(text: str) -> bool:
    try:
        semver.parse(text)
    except ValueError:
        return False
    return True


def block_packs(current: change.Plan, failed: Mapping[str, str], *, reason: str) -> change.Plan:
    """The plan with every write that depends on a ClusterPack in ``failed`` turned into BLOCKED."""
    return dataclasses.replace(current, changes=tuple(_blocked(current.changes, failed, reason)))


def _blocked(changes: Iterable[change.Change], failed: Mapping[str, str], reason: str) -> list[change.Change]:
    out = []
    for c in changes:
        target = c.name if c.kind is ObjectKind.CLUSTER_PACK else (c.pack_instance.cluster_pack if c.pack_instance else None)
        if target is not None and target in failed and c.action in (Action.CREATE, Action.SUPERSEDE):
            message = f"{target}: {failed[target]}; the next pass retries"
            out.append(
                dataclasses.replace(
                    c,
                    action=Action.BLOCKED,
                    reason=reason,
                    condition=cond.not_ready(reason, message),
                    cluster_pack=None,
                    pack_instance=None,
                )
            )
        else:
            out.append(c)
    return out


def hold_uninstalls(current: change.Plan, held: Mapping[str, str]) -> change.Plan:
    """The plan with the uninstall of each PackInstance in ``held`` (name -> why) turned into
    BLOCKED ``UninstallPending``: its objects are still on its cluster, so the instance (and the
    inventory it records) stays until a later pass has deleted them."""
    out = []
    for c in current.changes:
        if c.kind is ObjectKind.PACK_INSTANCE and c.action is Action.UNINSTALL and c.name in held:
            message = f"{c.name}: its objects on cluster {c.cluster} could not be deleted yet: {held[c.name]}"
            condition = cond.uninstall_pending(message)
            out.append(dataclasses.replace(c, action=Action.BLOCKED, reason=condition.reason, condition=condition,
                                           pack_instance=None))
        else:
            out.append(c)
    return dataclasses.replace(current, changes=tuple(out))
