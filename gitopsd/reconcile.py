"""One reconcile pass, as an ordered list of small steps with one signature.

fetch → load specs (``gitopsd.loading``) → compile (cached by content ids; ``gitopsd.compiling``) → observe →
scope (which packs moved since the last pass: the next steps visit only those) → adopt
published versions → sign → verify signatures → verify artifacts (``gitopsd.artifacts``) → plan →
publish → unpack (delete what uninstalled instances left on their clusters) → apply → settle (plan
the written bases again, for the next pass) → deliver (into reachable target clusters) → write
status → summarize. Every step is ``step(env, state) -> None``:
it reads what earlier steps left in ``state`` (``gitopsd.passstate``) and adds its own result. Only
``plan`` decides what changes (the signature verdicts and the artifact checks are its inputs);
``summarize`` alone decides Ready. dry-run, diff and reconcile share every line: ``env.dry_run``
only gates the side effects (publish, apply, status).
"""

from __future__ import annotations

import collections
import collections.abc
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import operator
import time

import structlog

from gitopsd import artifacts, compiling, errors, loading, packcompile, passstate, ports
from gitopsd import memo as memo_
from gitopsd.core import codec, plan, replan, signing, status, summarize
from gitopsd.core import delivery as delivery_core
from gitopsd.model import change, delivery, instance, pack, spec

log = structlog.get_logger()

Env = passstate.Env
PassState = passstate.PassState
CompileResult = passstate.CompileResult
Step = passstate.Step
compile_one = packcompile.compile_one  # compile one pack again, now (bench/)
artifact_of = packcompile.artifact_of  # the artifact of one pack, compiled again now (``gitopsd.preview``)
load_specs = loading.load_specs


def fetch(env: Env, state: PassState) -> None:
    state.tree = env.source.fetch()
    state.now = env.clock.now()


def observe(env: Env, state: PassState) -> None:
    """What the store or cluster holds, with its change feed since the plan of the last pass."""
    last = env.memo.plan
    since = last.token if last is not None and not env.full_plan else None
    state.observed = env.cluster.observe(state.config.namespace, since=since)


MOVED_LIMIT = 64  # bases whose part of the store moved since the last pass, above which a pass visits every pack


def scope(env: Env, state: PassState) -> None:
    """Which packs the steps after this one work out again (``PassState.scope``). Their result for a
    pack depends only on its compile result, on what the store holds in the parts its ClusterPack's
    name can be found in (the base itself, or a base its name starts with followed by ``-``), and on
    what the process is given once (signer, trusted keys, registry). So a pass of the daemon visits
    only the packs whose compile result is another object than the last pass's, or that one of
    those parts moved under (the store and the watch cache give a part as the same object while
    nothing of it was written), and takes the last pass's results for the others. Every pack is
    visited on a process's first pass, a resync, ``--full``, a pass after one that did not end, and
    when packs were added, removed or renamed since, or more than ``MOVED_LIMIT`` bases moved."""
    assert state.observed is not None
    last, env.memo.carried = env.memo.carried, None  # until this pass ends (``summarize_pass``)
    compiled, parts = state.compiled, state.observed.parts
    state.carrying = carrying = memo_.Carried(dry_run=env.dry_run, compiled=compiled, parts=parts, names=[], bases=[])
    visit = _moved(env, last, compiled, parts)
    if visit is None or last is None:
        carrying.names = [r.compiled.cluster_pack.name for r in compiled]
        carrying.bases = [r.build.base_pack_name for r in compiled]
        return
    carrying.names, carrying.bases = last.names, last.bases
    changed = [i for i in visit if compiled[i] is not last.compiled[i]]
    if changed:
        carrying.names, carrying.bases = list(last.names), list(last.bases)
        for i in changed:
            carrying.names[i] = compiled[i].compiled.cluster_pack.name
            carrying.bases[i] = compiled[i].build.base_pack_name
    state.scope = passstate.Scope(last, visit)


def _moved(env: Env, last: memo_.Carried | None, compiled: list[CompileResult],
           parts: collections.abc.Mapping[str, instance.Part]) -> tuple[int, ...] | None:
    """The indexes of the packs to work out again since ``last`` (see ``scope``); None: every pack."""
    if (last is None or env.resync or env.full_plan or last.dry_run != env.dry_run
            or len(last.compiled) != len(compiled)):
        return None
    before = last.compiled
    visit: set[int] = set()
    if not all(map(operator.is_, compiled, before)):
        visit.update(i for i, (now, then) in enumerate(zip(compiled, before, strict=True)) if now is not then)
        if any(compiled[i].build.path != before[i].build.path for i in visit):
            return None  # a pack added, removed or renamed: the positions moved
    if parts is not last.parts:
        moved = {base for base, part in parts.items() if last.parts.get(base) is not part}
        moved.update(base for base in last.parts if base not in parts)
        if len(moved) > MOVED_LIMIT:
            return None
        if moved:
            prefixes = tuple(f"{base}-" for base in moved)
            visit.update(i for i, name in enumerate(last.names) if name.startswith(prefixes))
            visit.update(i for i, base in enumerate(last.bases) if base in moved)
    if visit:
        # the packs whose ClusterPack has the name of one visited (before or after): one verdict per name
        shared = {last.names[i] for i in visit} | {compiled[i].compiled.cluster_pack.name for i in visit}
        visit.update(i for i, name in enumerate(last.names) if name in shared)
    return tuple(sorted(visit))


def _visits(state: PassState, step: str) -> tuple[int, ...] | None:
    """The indexes of ``state.compiled`` that ``step`` works out (None: every one)."""
    return state.scope.of(step) if state.scope is not None else None


def adopt_published(env: Env, state: PassState) -> None:
    """The published artifact is the truth for a published version: when a ClusterPack of the same
    name exists and this pass's render of it differs only because the render is not reproducible
    (random values: ``randAlphaNum``, ``genCA``, ...) or only in its artifact's layout (same
    checksum), the published ClusterPack is kept as the desired one, with a warning naming the chart
    for the first case. A real change of the sources still gives an immutability violation."""
    assert state.observed is not None
    visit = _visits(state, "sign")  # the last pass's results are kept after sign
    if visit is None:
        state.compiled = [_adopted(state, result) for result in state.compiled]
        return
    assert state.scope is not None
    compiled, state.compiled = state.compiled, list(state.scope.carried.desired)
    for i in visit:
        state.compiled[i] = _adopted(state, compiled[i])


def _adopted(state: PassState, result: CompileResult) -> CompileResult:
    cp = result.compiled.cluster_pack
    found = state.stored(cp.name)
    if found is None or (found.checksum == cp.checksum and found.manifest_digest == cp.manifest_digest):
        return result
    if found.checksum != cp.checksum and result.compiled.reproducible:
        return result
    raw = {"name": cp.name, "namespace": cp.namespace, "spec": json.loads(found.spec_json), "signature": found.signature}
    published = codec.cluster_pack_from_json(raw)
    warnings = result.compiled.warnings
    if not result.compiled.reproducible:
        chart = cp.chart.name if cp.chart is not None else result.build.base_pack_name
        warnings = (*warnings, (
            f"chart {chart} renders differently each time (random values such as randAlphaNum or genCA); "
            f"the published {cp.name} is kept; set the generated values (passwords, keys, certificates) in "
            f"helmSource.values of {result.build.path} to make the render reproducible"))
        log.warning("render not reproducible", pack=cp.base_pack_name, version=cp.version, chart=chart)
    compiled = dataclasses.replace(result.compiled, cluster_pack=published, artifact=None, warnings=warnings)
    return dataclasses.replace(result, compiled=compiled)


def sign(env: Env, state: PassState) -> None:
    """Sign the ClusterPacks that do not exist yet (existing ones keep their signature)."""
    assert state.observed is not None
    visit = _visits(state, "sign")
    if env.signer is not None:
        compiled = state.compiled
        for i in range(len(compiled)) if visit is None else visit:
            result = compiled[i]
            cp = result.compiled.cluster_pack
            if cp.signature is not None or state.stored(cp.name) is not None:
                continue
            data = signing.payload(cp)
            signed = cp.with_signature(env.signer.sign(data))
            compiled[i] = dataclasses.replace(result, compiled=dataclasses.replace(result.compiled, cluster_pack=signed))
            state.signed[cp.name] = (signed, data)
    if state.carrying is not None:
        state.carrying.desired = state.compiled
        state.carrying.done.add("sign")


def _verified_key(key_set: str, spec_json: str, signature: str) -> str:
    """What a passed check of a stored ClusterPack's signature depends on: the signed bytes (a
    function of its spec JSON and of this version's encoding, ``signing.payload_of_spec_json``),
    the signature and the trusted key set."""
    text = f"{packcompile.COMPILER}\0{key_set}\0{signature}\0{spec_json}"
    return hashlib.sha256(text.encode()).hexdigest()


def verify_signatures(env: Env, state: PassState) -> None:
    """A verdict per desired ClusterPack: the signature that delivery would rely on, checked. A
    stored ClusterPack whose check passed before (this process: ``env.memo.verdicts``; an earlier
    one: ``ports.RemembersVerdicts``, for the same spec, signature and trusted keys) is not checked again."""
    assert state.observed is not None
    visit = _visits(state, "signatures")
    if visit is None:
        earlier, env.memo.verdicts = env.memo.verdicts, {}  # keep the verdicts of this pass's packs only
        todo: collections.abc.Iterable[CompileResult] = state.compiled
    else:  # the last pass's verdicts, and the visited packs' worked out again
        assert state.scope is not None
        earlier, carried = env.memo.verdicts, state.scope.carried
        state.verdicts = dict(carried.verdicts)
        for i in visit:
            state.verdicts.pop(carried.names[i], None)
        todo = [state.compiled[i] for i in visit]
    key_set = (env.verifier.key_set() if isinstance(env.cache, ports.RemembersVerdicts)
               and isinstance(env.verifier, ports.NamesKeys) else None)
    # stored ClusterPacks this process has not checked (all of them, in a new process): their passed
    # checks are asked of the cache across processes in one lookup, after this loop
    unchecked: list[tuple[str, instance.ObservedPack, tuple[str, str, str | None]]] = []
    for result in todo:
        cp = result.compiled.cluster_pack
        found = state.stored(cp.name)
        memo_key: tuple[str, str, str | None] | None
        if found is not None and found.checksum == cp.checksum:
            memo_key = (cp.name, found.spec_json, found.signature)
            cached = earlier.get(memo_key)
            if cached is not None:
                state.verdicts[cp.name] = env.memo.verdicts[memo_key] = cached
                continue
            if key_set is not None and found.signature and env.verifier is not None:
                unchecked.append((cp.name, found, memo_key))
                continue
            data, signature = signing.payload_of_spec_json(found.spec_json), found.signature
        else:
            # Once stored, this spec comes back as the observed one: remember the verdict for it too.
            memo_key = (cp.name, pack.canonical_json(cp.spec()), cp.signature) if cp.signature else None
            made = state.signed.get(cp.name)
            data = made[1] if made is not None and made[0] is cp else signing.payload(cp)  # the bytes sign signed
            signature = cp.signature
        if signature is None:
            verdict = plan.Verdict.PENDING if env.dry_run and env.signer is None and found is None else plan.Verdict.MISSING
        elif env.verifier is None:
            verdict = plan.Verdict.OK
        else:
            verdict = plan.Verdict.OK if env.verifier.verify(data, signature) else plan.Verdict.INVALID
        state.verdicts[cp.name] = verdict
        if memo_key is not None:
            env.memo.verdicts[memo_key] = verdict
    if unchecked:
        _check_stored(env, state, unchecked)
    if state.carrying is not None:
        state.carrying.verdicts = state.verdicts
        state.carrying.done.add("signatures")


def _check_stored(env: Env, state: PassState,
                  unchecked: list[tuple[str, instance.ObservedPack, tuple[str, str, str | None]]]) -> None:
    """The verdicts of stored ClusterPacks this process has not checked: a check that passed before for
    the same spec, signature and trusted keys (``ports.RemembersVerdicts``) holds; the others are
    checked now, and those that pass are remembered."""
    assert isinstance(env.cache, ports.RemembersVerdicts) and isinstance(env.verifier, ports.NamesKeys)
    key_set = env.verifier.key_set()
    keys = [_verified_key(key_set, found.spec_json, found.signature or "") for _, found, _ in unchecked]
    persisted = env.cache.verified(keys)
    passed: list[str] = []
    for (name, found, memo_key), verified_key in zip(unchecked, keys, strict=True):
        if verified_key in persisted:
            verdict = plan.Verdict.OK
        elif env.verifier.verify(signing.payload_of_spec_json(found.spec_json), found.signature or ""):
            passed.append(verified_key)
            verdict = plan.Verdict.OK
        else:
            verdict = plan.Verdict.INVALID
        state.verdicts[name] = env.memo.verdicts[memo_key] = verdict
    if passed:
        env.cache.remember_verified(passed)


def _plan_inputs(env: Env, state: PassState, observed: instance.Observed,
                 desired: tuple[plan.Desired, ...] | None = None) -> plan.Inputs:
    assert state.tree is not None
    policy = plan.Policy(
        namespace=state.config.namespace,
        now=state.now,
        installed_by=state.config.installed_by or state.tree.snapshot.author,
        registry_hash=env.schemas.registry_hash,
        require_signatures=env.verifier is not None,
        keep_versions=state.config.keep_versions,
    )
    return plan.Inputs(
        revision=state.revision,
        desired=desired if desired is not None else tuple(plan.Desired(r.build, r.compiled, r.clusters) for r in state.compiled),
        observed=observed,
        verdicts=state.verdicts,
        policy=policy,
        errors=tuple(state.pack_errors),
        protected_paths=frozenset(state.protected_paths),
        protected_bases=frozenset(state.protected_bases),
        artifact_problems=state.artifact_problems,
    )


def make_plan(env: Env, state: PassState) -> None:
    """The plan: what changes, from the desired packs, what is observed, the signature verdicts,
    the pack errors and the artifact checks of this pass. Only the basePackNames whose inputs
    changed since the last pass, or that the store's change feed names, are planned again
    (``gitopsd.core.replan``); a resync plans every one."""
    assert state.observed is not None
    desired, touched = _scoped_desired(env, state)
    inputs = _plan_inputs(env, state, state.observed, desired)
    state.plan_desired = inputs.desired
    if state.carrying is not None:
        state.carrying.plan_desired = inputs.desired
        state.carrying.done.add("plan")
    last = env.memo.plan
    outcome = replan.full(inputs) if env.full_plan else replan.update(inputs, last, touched)
    state.plan = outcome.plan
    state.plan_reused = (last is not None and last.shown and not outcome.full and outcome.replanned == 0
                         and not last.plan.writes and outcome.plan.errors == last.plan.errors)
    state.replanned = outcome.replanned
    env.memo.plan = outcome.memory


def _scoped_desired(env: Env, state: PassState) -> tuple[tuple[plan.Desired, ...] | None, set[str] | None]:
    """With a scope: the desired packs of the plan (the last pass's, with the visited packs' own) and
    the only bases whose desired packs, verdicts or artifact problems may have changed since the last
    pass (those of the visited packs, and of the packs an instance was or is about to move to:
    their artifact is checked every pass). (None, None) without one."""
    scope = state.scope
    visit = scope.of("plan") if scope is not None and not env.full_plan else None
    if (visit is None or scope is None or state.carrying is None
            or ("artifacts" in scope.carried.done) != ("artifacts" in state.carrying.done)):
        return None, None
    carried, now = scope.carried, state.carrying
    desired: tuple[plan.Desired, ...] = carried.plan_desired
    if visit:
        patched = list(desired)
        for i in visit:
            r = state.compiled[i]
            patched[i] = plan.Desired(r.build, r.compiled, r.clusters)
        desired = tuple(patched)
    touched = {carried.bases[i] for i in visit} | {now.bases[i] for i in visit}
    # (a pack not visited moves now exactly when it moved in the last pass: its part and result are the same)
    touched.update(now.bases[i] for i in now.moving)
    return desired, touched


def settle_plan(env: Env, state: PassState) -> None:
    """After the pass wrote: plan its written bases again against what the store holds now, so the
    next pass, when nothing else changed, plans nothing. The pass that writes pays for planning its
    own result; the plan of this pass (``state.plan``) stays what was applied.

    The steps between scope and plan run again first, for the packs this pass compiled or wrote
    (``_settle_packs``): the plan is then made of what the next pass starts from, and that pass,
    when nothing else changed, visits no pack."""
    if env.dry_run or not env.passes_follow or not state.writes or env.memo.plan is None:
        return
    observed = env.cluster.observe(state.config.namespace, since=env.memo.plan.token)
    after = _settle_packs(env, state, observed)
    if after is None:
        # the desired packs of the plan step (the same tuple): replan takes the keys it worked out then
        inputs, touched = _plan_inputs(env, state, observed, state.plan_desired), None
    else:
        assert after.carrying is not None
        inputs = _plan_inputs(env, after, observed, after.carrying.plan_desired)
        touched = after.carried_next_touched
    settled = replan.update(inputs, env.memo.plan, touched).memory
    env.memo.plan = dataclasses.replace(settled, shown=False)


def _settle_packs(env: Env, state: PassState, observed: instance.Observed) -> PassState | None:
    """The steps between scope and plan again, for the packs this pass compiled or wrote, against
    what the store holds now; what the next pass takes from this one (``state.carried_next``). What
    they find (a repair, a damaged artifact) is logged and counted; a damaged artifact is reported by
    the next pass, which looks at it again. None when the next pass's compile results cannot be told."""
    carrying = state.carrying
    if carrying is None or not {"sign", "signatures", "plan"} <= carrying.done:
        return None
    compiled = compiling.next_results(env, state, carrying.compiled)
    if compiled is None:
        return None
    after = PassState(tree=state.tree, config=state.config, clusters=state.clusters, builds=state.builds,
                      loaded=state.loaded, compiled=compiled, observed=observed, now=state.now,
                      pack_errors=[e for e in state.pack_errors if e.reason != "ArtifactDamaged"],
                      protected_paths=state.protected_paths, protected_bases=state.protected_bases)
    env.memo.carried = carrying
    quiet = dataclasses.replace(env, resync=False, full_plan=False)  # (a full pass checked everything already)
    for step in (scope, adopt_published, sign, verify_signatures, artifacts.verify_artifacts):
        step(quiet, after)
    env.memo.carried = None  # until this pass ends (``summarize_pass``)
    assert after.carrying is not None
    desired, after.carried_next_touched = _scoped_desired(quiet, after)
    after.carrying.plan_desired = desired if desired is not None else tuple(
        plan.Desired(r.build, r.compiled, r.clusters) for r in after.compiled)
    after.carrying.done.add("plan")
    state.carried_next = after.carrying
    state.published += after.published
    return after


def apply(env: Env, state: PassState) -> None:
    assert state.plan is not None
    if env.dry_run:
        return
    todo = state.plan.acts
    if not todo:
        return
    state.writes = env.cluster.apply(state.config.namespace, todo, state.revision, state.now)


def _job(env: Env, state: PassState, pi: instance.PackInstance, previous: delivery.Delivery | None,
         action: delivery_core.Action, held: dict[str, set[tuple[str, str, str, str]]],
         compiled: collections.abc.Mapping[str, memo_.CompileResult]) -> delivery_core.Job | None:
    """The delivery job of PackInstance ``pi``; None when its ClusterPack is not known here.
    ``held``: what each instance on its cluster holds (read only when ``previous`` holds anything);
    ``compiled``: this pass's results by ClusterPack name."""
    assert state.observed is not None
    found = state.observed.packs.get(pi.cluster_pack)
    mine = compiled.get(pi.cluster_pack)
    if found is not None:
        spec_json, signature = found.spec_json, found.signature
    elif mine is not None:
        created = mine.compiled.cluster_pack
        spec_json, signature = pack.canonical_json(created.spec()), created.signature
    elif action is delivery_core.Action.UNINSTALL and previous is not None:  # only its inventory is needed
        spec_json, signature = pack.canonical_json({"registryRef": {"digest": previous.digest}}), None
    else:
        return None
    build = mine.build if mine is not None else None
    settings = build.delivery if build is not None else spec.DeliverySettings()
    options = delivery_core.Options(timeout=settings.timeout, drift=delivery.DriftMode(settings.drift), force=settings.force)
    # (only what it may prune matters: the objects of its last delivery another instance holds too)
    prunable = {e.key for e in previous.inventory} if previous is not None else set()
    elsewhere = frozenset(k for name, keys in held.items() if name != pi.name for k in keys & prunable)
    return delivery_core.Job(instance=pi.name, cluster=pi.cluster, base_pack_name=pi.base_pack_name, version=pi.version,
                             spec_json=spec_json, signature=signature, previous=previous, options=options,
                             held_elsewhere=elsewhere, action=action,
                             depends_on=build.depends_on if build is not None else ())


def _by_pack(state: PassState) -> dict[str, memo_.CompileResult]:
    """This pass's compile results by ClusterPack name (the first, as a walk in order finds it)."""
    out: dict[str, memo_.CompileResult] = {}
    for r in state.compiled:
        out.setdefault(r.compiled.cluster_pack.name, r)
    return out


def _inventories(records: dict[str, delivery.Delivery]) -> dict[str, dict[str, set[tuple[str, str, str, str]]]]:
    """cluster -> PackInstance -> keys of the objects its delivery holds there."""
    out: dict[str, dict[str, set[tuple[str, str, str, str]]]] = collections.defaultdict(dict)
    for name, record in records.items():
        out[record.cluster][name] = {e.key for e in record.inventory}
    return out


def _keep_deliveries(env: Env, state: PassState, results: list[tuple[delivery_core.Job, delivery.Delivery]]) -> None:
    env.memo.records_written.update(job.base_pack_name for job, _ in results)
    try:
        for job, result in results:
            if not delivery_core.same_record(job.previous, result):
                env.cluster.record_delivery(state.config.namespace, job.instance, result, state.now)
    finally:
        _flush_events(env, state)
    state.deliveries.extend(results)


def _flush_events(env: Env, state: PassState) -> None:
    """The Events of the delivery records just kept, one per pack and result (where the cluster groups them)."""
    if isinstance(env.cluster, ports.GroupsEvents):
        env.cluster.flush_events(state.now)


def _states(env: Env, namespace: str, names: collections.abc.Collection[str] | None) -> dict[str, tuple[str, str]]:
    """(digest, result) of the delivery records of ``names`` (None: all)."""
    if isinstance(env.cluster, ports.ReadsDeliveryFields):
        return env.cluster.delivery_states(namespace, names)
    return {name: (r.digest, str(r.result)) for name, r in env.cluster.deliveries(namespace, names).items()}


def _holdings(env: Env, namespace: str, previous: collections.abc.Iterable[delivery.Delivery | None]
              ) -> dict[str, dict[str, set[tuple[str, str, str, str]]]]:
    """cluster -> PackInstance -> which objects of the ``previous`` deliveries' inventories (what a
    job may prune) its delivery holds there: a prune keeps them."""
    keys: dict[str, set[tuple[str, str, str, str]]] = {}
    for record in previous:
        if record is not None and record.inventory:
            keys.setdefault(record.cluster, set()).update(e.key for e in record.inventory)
    if not keys:
        return {}
    if isinstance(env.cluster, ports.ReadsDeliveryFields):
        return env.cluster.delivery_holdings(namespace, keys)
    return {cluster: {name: held & keys[cluster] for name, held in by_name.items() if held & keys[cluster]}
            for cluster, by_name in _inventories(env.cluster.deliveries(namespace)).items() if cluster in keys}


def _others_wrote(env: Env) -> object:
    return env.cluster.others_wrote() if isinstance(env.cluster, ports.OthersWrite) else None


def deliver_removals(env: Env, state: PassState) -> None:
    """Before the PackInstances go: delete what their deliveries left on reachable clusters. One
    that cannot be cleaned up yet is held back (``UninstallPending``) and retried next pass."""
    assert state.plan is not None
    if env.dry_run or env.deliverer is None:
        return
    leaving = [c for c in state.plan.writes
               if c.kind is change.ObjectKind.PACK_INSTANCE and c.action is change.Action.UNINSTALL and c.pack_instance]
    if not leaving:
        return
    namespace = state.config.namespace
    records = env.cluster.deliveries(namespace, [c.name for c in leaving])
    todo = []
    for c in leaving:
        previous = records.get(c.name)
        cluster = state.clusters.get(c.cluster or "")
        if previous is None or not previous.inventory or cluster is None or not env.deliverer.reachable(cluster):
            continue
        assert c.pack_instance is not None
        todo.append((c.pack_instance, previous))
    if not todo:
        return
    held = _holdings(env, namespace, (previous for _, previous in todo))
    compiled = _by_pack(state)
    jobs = [job for pi, previous in todo if (job := _job(env, state, pi, previous, delivery_core.Action.UNINSTALL,
                                                         held.get(previous.cluster, {}), compiled)) is not None]
    if not jobs:
        return
    results = env.deliverer.run(state.clusters, jobs, namespace)
    state.deliveries.extend(results)
    pending = {job.instance: result.message for job, result in results if result.result is not delivery.Result.PRUNED}
    env.memo.records_written.update(job.base_pack_name for job, _ in results)
    try:
        for job, result in results:
            if result.result is not delivery.Result.PRUNED:
                env.cluster.record_delivery(namespace, job.instance, result, state.now)
    finally:
        _flush_events(env, state)
    # (the plan that holds them back has no parts: the deliver step walks every base, these too)
    if pending:
        state.plan = plan.hold_uninstalls(state.plan, pending)


def deliver(env: Env, state: PassState) -> None:
    """Make every reachable target cluster run what its PackInstances say (push mode)."""
    assert state.plan is not None
    if env.deliverer is None:
        return
    reachable = frozenset(name for name, cluster in state.clusters.items() if env.deliverer.reachable(cluster))
    state.records_only = sorted(set(state.clusters) - reachable)
    if env.dry_run:
        return
    last, env.memo.delivered = env.memo.delivered, None  # until this step ends
    if not reachable:
        return
    jobs, walked = delivery_jobs(env, state, reachable, last)
    if jobs:
        _keep_deliveries(env, state, env.deliverer.run(state.clusters, jobs, state.config.namespace))
    env.memo.delivered = walked


def delivery_jobs(env: Env, state: PassState, reachable: frozenset[str],
                  last: memo_.Delivered | None) -> tuple[list[delivery_core.Job], memo_.Delivered | None]:
    """The jobs of the deliver step (reads only), and what the next one takes from this one.

    Only the bases that may have something to deliver are walked (``memo.Delivered``): those whose
    plan part or observed part moved since ``last``, and those that had something to deliver then.
    Every base is walked without ``last`` (a process's first pass, after a pass whose deliver step
    did not end), on a resync, with ``--full``, when the reachable clusters changed, and when
    another process wrote to the store."""
    assert state.plan is not None and state.observed is not None
    namespace = state.config.namespace
    others = _others_wrote(env)
    plan_parts = state.plan.parts
    observed_parts = state.observed.parts
    walk: collections.abc.Sequence[change.Change]
    if (plan_parts is None or last is None or env.resync or env.full_plan or last.reachable != reachable
            or last.others_wrote != others):
        walk, states = state.plan.changes, _states(env, namespace, None)
        bases = None
    else:
        if plan_parts is last.plan_parts and observed_parts is last.observed_parts:
            bases = [base for base in plan_parts if base in last.unsettled]
        else:
            bases = [base for base, part in plan_parts.items()
                     if base in last.unsettled or last.plan_parts.get(base) is not part
                     or last.observed_parts.get(base) is not observed_parts.get(base)]
        walk = [c for base in bases for c in plan_parts[base].sequence]
        states = _states(env, namespace, [c.name for c in walk if c.kind is change.ObjectKind.PACK_INSTANCE])
    todo = []
    unsettled: set[str] = set()
    for c in walk:
        if c.kind is not change.ObjectKind.PACK_INSTANCE or c.cluster not in reachable:
            continue
        pi: instance.PackInstance | None
        if c.action in (change.Action.CREATE, change.Action.SUPERSEDE):
            pi = c.pack_instance
            digest = pi.manifest_digest if pi is not None else None
        elif c.action is change.Action.UNCHANGED:
            # what it runs is in its head; the whole object is read only when there is a job
            head = state.observed.part(c.base_pack_name).heads.get(c.name)
            pi = None if head is not None else state.observed.instances.get(c.name)
            digest = head.runs[1] if head is not None else pi.manifest_digest if pi is not None else None
        else:
            continue
        if digest is None:
            unsettled.add(c.base_pack_name)
            continue
        action = delivery_core.action_of(states.get(c.name), digest, resync=env.resync)
        if action is None:
            continue
        unsettled.add(c.base_pack_name)
        if pi is None:
            pi = state.observed.instances.get(c.name)
        if pi is not None:
            todo.append((pi, action))
    jobs = []
    if todo:
        records = env.cluster.deliveries(namespace, [pi.name for pi, _ in todo])  # whole, for the jobs only
        held = _holdings(env, namespace, records.values())
        compiled = _by_pack(state)
        jobs = [job for pi, action in todo
                if (job := _job(env, state, pi, records.get(pi.name), action, held.get(pi.cluster, {}), compiled))
                is not None]
    walked = None if plan_parts is None else memo_.Delivered(
        plan_parts=plan_parts, observed_parts=observed_parts, unsettled=frozenset(unsettled), reachable=reachable,
        others_wrote=others, walked=None if bases is None else len(bases))
    return jobs, walked


def write_status(env: Env, state: PassState) -> None:
    assert state.plan is not None and state.tree is not None
    if env.dry_run or env.status_writer is None:
        return
    in_place = not isinstance(env.status_writer, ports.InPlace) or env.status_writer.in_place()
    if state.plan_reused and env.memo.status_written and not state.deliveries and in_place:
        return  # nothing changed since the records were last written, and the branch still holds them
    shipped = delivered = others = None
    if env.deliverer is not None:
        shipped = functools.partial(env.cluster.deliveries, state.config.namespace)
        others = _others_wrote(env)  # (after another process's writes, every record is made again)
        delivered = set(env.memo.records_written) if env.memo.status_others == others else None
    # the records say what the store holds after the pass's writes: an instance the plan did not write
    # but the apply step did (a blocked change's condition) is read as it is now
    observed = env.cluster.observe(state.config.namespace) if state.writes else state.observed
    records = status.records(state.plan, [r.compiled for r in state.compiled], observed, state.revision,
                             memo=env.memo.status_text, deliveries=shipped, delivered=delivered)
    if env.deliverer is not None:
        if delivered is None:
            env.memo.records_written.clear()
        else:
            env.memo.records_written -= delivered
        env.memo.status_others = others
    message = status.commit_message(state.plan, state.revision)
    try:
        state.status_commit = env.status_writer.write(records, message)
    except errors.GitopsdError as err:
        # The cluster side is applied; only the record is late. Report it and let the next pass retry.
        env.memo.status_written = False
        state.status_error = f"{err.reason}: {err}"
        log.warning("status write failed", reason=err.reason, error=str(err))
        return
    env.memo.status_written = True


def summarize_pass(env: Env, state: PassState) -> None:
    assert state.plan is not None
    state.summary = summarize.summarize(
        state.plan,
        compiled=state.compiled,
        writes=state.writes,
        published=state.published,
        dry_run=env.dry_run,
        status_error=state.status_error,
        kept=env.memo.summary_lines,
    )
    # the pass ended: the next one takes its results (``scope``), as they are after its writes when it wrote
    env.memo.carried = state.carried_next if state.carried_next is not None else state.carrying


STEPS: tuple[tuple[str, Step], ...] = (
    ("fetch", fetch),
    ("load", load_specs),
    ("compile", compiling.compile_packs),
    ("observe", observe),
    ("scope", scope),
    ("adopt", adopt_published),
    ("sign", sign),
    ("signatures", verify_signatures),
    ("artifacts", artifacts.verify_artifacts),
    ("plan", make_plan),
    ("publish", artifacts.publish),
    ("unpack", deliver_removals),
    ("apply", apply),
    ("settle", settle_plan),
    ("deliver", deliver),
    ("status", write_status),
    ("summarize", summarize_pass),
)


def run(env: Env) -> PassState:
    """Run one pass. A stalled error in a single pack is recorded, not raised; anything that stops
    the whole pass (source unreachable, store failure, a broken gitopsd.yaml) is raised."""
    state = PassState()
    started, cpu_started = time.perf_counter(), time.thread_time()
    for name, step in STEPS:
        t0, cpu0 = time.perf_counter(), time.thread_time()
        step(env, state)
        state.timings[name] = time.perf_counter() - t0
        state.cpu_timings[name] = time.thread_time() - cpu0
    state.timings["total"] = time.perf_counter() - started
    state.cpu_timings["total"] = time.thread_time() - cpu_started
    return state


def run_applying_slow_renders_last(env: Env) -> PassState:
    """A one-shot pass (``gitopsd reconcile``, ``gitopsd run --once``): one pass applies every pack
    whose render ended within ``env.render_wait``; when renders were left running, wait for them to
    end (each is bounded by the renderer's own timeout), then one more pass applies those packs (or
    reports their failure). The second pass is the one returned; the first one's writes stand."""
    state = run(env)
    running = env.memo.renders_running()
    if not running:
        return state
    log.info("waiting for renders left running", renders=len(running), summary="other packs applied")
    concurrent.futures.wait(running)
    wait, env.render_wait = env.render_wait, None
    try:
        return run(env)
    finally:
        env.render_wait = wait
