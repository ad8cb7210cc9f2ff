"""Keep the plan up to date by working out only the basePackNames whose inputs changed.

``gitopsd.core.plan`` splits the plan by basePackName: dedupe, collisions between PackBuilds of
one base and prune are per base, and two bases meet only when their packs would own the same
Kubernetes object. ``update`` takes the plan of the previous pass (``Memory``), the change feed of
the store or cluster (``Observed.changed``: the bases with an object written since that pass) and
this pass's inputs, and re-plans:

- the bases whose desired inputs changed (PackBuild, ClusterPack identity, target clusters,
  signature verdict, artifact problem, protection),
- the bases the change feed names,
- the bases whose previous fragment writes (its records name this pass's revision and time),
- and every base linked to one of those through a shared object identity (an index identity ->
  bases), before or after the change: their collisions are decided together.

Every other base keeps its fragment. A missing memory, a feed that cannot tell (``changed`` is
``None``), another policy or another set of broken PackBuild paths re-plans everything: the
result is always ``plan.build(inputs)``, which the tests check step by step.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Collection, Iterable

from gitopsd.core import plan
from gitopsd.model import change

Identity = tuple[str, str, str, str]
Desired = plan.Desired  # for the fields below, where ``plan`` names a field


@dataclasses.dataclass(frozen=True, slots=True)
class Memory:
    """What the previous pass's plan was made of, kept by the process between passes."""

    token: object  # the change feed's position the plan saw (``Observed.token``)
    policy: plan.Policy  # without ``now`` and ``installed_by`` (``_lasting``)
    protected_paths: frozenset[str]
    keys: dict[str, object]  # base -> everything its desired packs bring to the plan (``_keys``)
    identities: dict[str, frozenset[Identity]]  # base -> the objects its desired packs own
    holders: dict[Identity, tuple[str, ...]]  # identity -> the bases owning it (sorted)
    fragments: dict[str, plan.Fragment]
    order: list[str]  # the bases of ``fragments``, sorted
    plan: change.Plan
    shown: bool = True  # ``plan`` is what a pass executed and reported (not only planned after its writes)
    # what ``keys`` were worked out from (the desired tuple itself, verdicts, artifact problems,
    # protected bases) and the desired packs by base: the settle step of the same pass plans again
    # with the same desired packs, and takes both instead of going through every pack again
    made_from: tuple[object, ...] = ()
    desired: dict[str, list[Desired]] = dataclasses.field(default_factory=dict)
    writing: frozenset[str] = frozenset()  # the bases whose fragment writes


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    plan: change.Plan
    memory: Memory
    replanned: int  # bases worked out this pass
    full: bool  # every base was worked out


def _lasting(policy: plan.Policy) -> plan.Policy:
    """The policy without what only the records of this pass's writes show (when, by whom): a
    fragment that writes is planned again every pass anyway."""
    return dataclasses.replace(policy, now="", installed_by="")


def _keys(inputs: plan.Inputs) -> tuple[dict[str, object], dict[str, list[plan.Desired]]]:
    """Per base, everything its desired packs bring to the plan (runs every pass: kept lean)."""
    keys: dict[str, tuple[object, ...]] = {}
    desired: dict[str, list[plan.Desired]] = {}
    verdicts, problems = inputs.verdicts, inputs.artifact_problems
    for d in inputs.desired:
        cp = d.compiled.cluster_pack
        base = d.build.base_pack_name
        key = (d.build, cp.name, cp.checksum, cp.manifest_digest, d.clusters, verdicts.get(cp.name), problems.get(cp.name))
        known = keys.get(base)
        if known is None:
            keys[base], desired[base] = (key,), [d]
        else:
            keys[base] = (*known, key)
            desired[base].append(d)
    for base in inputs.protected_bases:
        keys[base] = (*keys.get(base, ()), PROTECTED)
    return dict(keys), desired


PROTECTED = "protected"  # the last item of a protected base's key


def _identities(desired: list[plan.Desired]) -> frozenset[Identity]:
    return frozenset(i for d in desired for i in d.compiled.identities)


def _holders(identities: dict[str, frozenset[Identity]]) -> dict[Identity, tuple[str, ...]]:
    holders: dict[Identity, list[str]] = defaultdict(list)
    for base in sorted(identities):
        for identity in identities[base]:
            holders[identity].append(base)
    return {identity: tuple(bases) for identity, bases in holders.items()}


def _linked(seeds: Iterable[str], identities: dict[str, frozenset[Identity]],
            holders: dict[Identity, tuple[str, ...]]) -> set[str]:
    """``seeds`` and every base reachable from them through shared object identities."""
    found = set(seeds)
    todo = list(found)
    while todo:
        base = todo.pop()
        for identity in identities.get(base, ()):
            for other in holders.get(identity, ()):
                if other not in found:
                    found.add(other)
                    todo.append(other)
    return found


def _made_from(inputs: plan.Inputs) -> tuple[object, ...]:
    return (inputs.desired, dict(inputs.verdicts), dict(inputs.artifact_problems), inputs.protected_bases)


def _same_desired(memory: Memory, inputs: plan.Inputs) -> bool:
    """The keys of ``memory`` were worked out from these very desired packs (the same tuple), with
    the same verdicts, artifact problems and protected bases."""
    made = memory.made_from
    return (bool(made) and made[0] is inputs.desired and made[1] == inputs.verdicts
            and made[2] == inputs.artifact_problems and made[3] == inputs.protected_bases)


def full(inputs: plan.Inputs) -> Outcome:
    """Every base worked out: what a new process, a resync or ``--full`` does."""
    keys, desired = _keys(inputs)
    identities = {base: _identities(ds) for base, ds in desired.items()}
    fragments = plan.fragments(inputs, None)
    return _outcome(inputs, keys, identities, _holders(identities), fragments, len(fragments), True, desired=desired)


def _rekeyed(inputs: plan.Inputs, memory: Memory,
             touched: Collection[str]) -> tuple[dict[str, object], dict[str, list[plan.Desired]]]:
    """``memory``'s keys and desired packs with those of the ``touched`` bases worked out again."""
    keys, desired = dict(memory.keys), dict(memory.desired)
    for base in touched:
        keys.pop(base, None)
        desired.pop(base, None)
    mine = tuple(d for d in inputs.desired if d.build.base_pack_name in touched)
    more_keys, more_desired = _keys(dataclasses.replace(inputs, desired=mine,
                                                        protected_bases=inputs.protected_bases & frozenset(touched)))
    keys.update(more_keys)
    desired.update(more_desired)
    return keys, desired


def update(inputs: plan.Inputs, memory: Memory | None, touched: Collection[str] | None = None) -> Outcome:
    """The plan of ``inputs``, re-planning only what changed since ``memory`` (see the module).
    ``touched``: the only bases whose desired packs, verdicts or artifact problems may differ from
    those ``memory``'s keys were worked out from (the caller knows; None: any base may)."""
    changed = inputs.observed.changed
    if (memory is None or changed is None or memory.token is None
            or memory.policy != _lasting(inputs.policy)
            or memory.protected_paths != inputs.protected_paths):
        return full(inputs)
    before = memory.keys
    moved: set[str] = set()
    if _same_desired(memory, inputs):
        keys, desired = before, memory.desired
    elif touched is not None and memory.made_from and memory.made_from[3] == inputs.protected_bases:
        keys, desired = _rekeyed(inputs, memory, touched)
        moved = {base for base in touched if before.get(base) != keys.get(base)}
    else:
        keys, desired = _keys(inputs)
        moved = {base for base, key in keys.items() if before.get(base) != key}
        moved.update(base for base in before if base not in keys)
    dirty = set(changed)
    dirty |= moved
    dirty |= memory.writing
    identities, holders = memory.identities, memory.holders
    old_neighbours: set[str] = set()
    reshaped = set()
    if moved:
        identities = dict(identities)
        for base in moved:
            now = _identities(desired.get(base, []))
            if now != memory.identities.get(base, frozenset()):
                reshaped.add(base)
            if now:
                identities[base] = now
            else:
                identities.pop(base, None)
    if reshaped:
        for base in reshaped:  # bases that shared an object with a changed base before the change
            for identity in memory.identities.get(base, ()):
                old_neighbours.update(holders.get(identity, ()))
        holders = dict(holders)
        regrouped = {i for base in reshaped for i in memory.identities.get(base, frozenset()) | identities.get(base, frozenset())}
        for identity in regrouped:
            owners = tuple(sorted(b for b in set(holders.get(identity, ())) | reshaped
                                  if identity in identities.get(b, ())))
            if owners:
                holders[identity] = owners
            else:
                holders.pop(identity, None)
    replan = _linked(dirty | old_neighbours, identities, holders) if dirty else set()
    if not replan:  # the last plan stands as it is
        return _outcome(inputs, keys, identities, holders, memory.fragments, 0, False, memory.order, memory.plan,
                        desired=desired, writing=memory.writing)
    fragments = {b: f for b, f in memory.fragments.items() if b not in replan}
    made = plan.fragments(inputs, replan)
    fragments.update(made)
    writing = (memory.writing - replan) | {base for base, fragment in made.items() if fragment.writes}
    return _outcome(inputs, keys, identities, holders, fragments, len(replan), False,
                    memory.order if fragments.keys() == set(memory.order) else None,
                    desired=desired, writing=frozenset(writing))


def _outcome(inputs: plan.Inputs, keys: dict[str, object], identities: dict[str, frozenset[Identity]],
             holders: dict[Identity, tuple[str, ...]], fragments: dict[str, plan.Fragment], replanned: int,
             full: bool, order: list[str] | None = None, reuse: change.Plan | None = None, *,
             desired: dict[str, list[plan.Desired]], writing: frozenset[str] | None = None) -> Outcome:
    order = order if order is not None else sorted(fragments)
    if reuse is not None and reuse.parts is not None:
        # no base planned again (so the last plan wrote nothing): its parts and changes stand, put together already
        made = reuse.again(inputs.revision, inputs.errors)
    else:
        made = change.Plan.of_parts(inputs.revision, fragments, order, inputs.errors)
    if writing is None:
        writing = frozenset(base for base, fragment in fragments.items() if fragment.writes)
    memory = Memory(token=inputs.observed.token, policy=_lasting(inputs.policy),
                    protected_paths=inputs.protected_paths, keys=keys, identities=identities, holders=holders,
                    fragments=fragments, order=order, plan=made, made_from=_made_from(inputs), desired=desired,
                    writing=writing)
    return Outcome(plan=made, memory=memory, replanned=replanned, full=full)
