"""The artifacts of a pass: verified and repaired before the plan, published after it.

``verify_artifacts`` (before ``plan``) looks at the artifacts already published for this pass's
ClusterPacks: damage a registry can notice cheaply (a tag lost from the OCI layout's index, a blob
gone or corrupt) is repaired from the compile cache or a recompile, and the artifact of every
existing ClusterPack a PackInstance may be about to point at is checked byte for byte against
its recorded digests. What it finds is an input of the plan (``PassState.artifact_problems``,
``PassState.pack_errors``): the plan step alone decides what that blocks. ``publish`` (after
``plan``) pushes the artifacts of the ClusterPacks the plan creates.

What is checked when: a resync of the daemon, its first pass and every one-shot command check every
published artifact in use (each blob stat'ed, and hashed again when its size, mtime or inode moved;
a new process hashes them all). The daemon's other passes ask the registry to check again only what
it saw change since the last pass (``RepairsArtifacts.recheck``: the OCI layout watches its
folders; an artifact the layout wrote itself, from the bytes the compile hashed, is sound without
a read back), so an artifact whose blobs were written, truncated, replaced, deleted or chmod'ed, or
whose tag changed in index.json, is checked and repaired by the next pass; a change the watch cannot
see (a write through a hard link or a memory mapping, bit rot) waits for the resync. The artifact of
a ClusterPack an instance is about to move to is read byte for byte on every pass (``_verify``).

Neighbours: ``gitopsd.reconcile`` runs both as steps; ``gitopsd.packcompile`` recompiles a pack
whose artifact is not in the compile cache; the registry adapters implement the optional
``ports.VerifiesArtifacts``/``ports.RepairsArtifacts``/``ports.Flushing``.
"""

from __future__ import annotations

import structlog

from gitopsd import errors, memo, packcompile, passstate, ports
from gitopsd.core import plan
from gitopsd.model import change, instance

log = structlog.get_logger()

Env = passstate.Env
PassState = passstate.PassState
CompileResult = passstate.CompileResult


def verify_artifacts(env: Env, state: PassState) -> None:
    """Repair what can be repaired of the published artifacts of this pass's ClusterPacks, then
    verify the artifact of every existing ClusterPack an instance may be about to point at: a
    mismatch is ``ArtifactMismatch``, a registry that cannot be asked ``ArtifactUnverified``
    (``state.artifact_problems``, which ``plan`` turns into blocked deliveries); an artifact that
    cannot be repaired is a pack error (``ArtifactDamaged``). Nothing of this in a dry run.

    In the daemon's passes with a scope (``PassState.scope``), only the packs it visits are looked
    at again, with those whose artifact the registry saw change, those found damaged last pass
    (repaired or not) and those an instance was about to move to last pass; the others keep the
    last pass's findings."""
    assert state.observed is not None
    if env.dry_run:
        return
    scope = state.scope
    visit = scope.of("artifacts") if scope is not None else None
    carried = scope.carried if scope is not None and visit is not None else None
    published = _published(state, visit, carried)
    unsound: set[int] = set()
    if isinstance(env.registry, ports.RepairsArtifacts):
        unsound = _repair(env, state, env.registry, published, visit, carried)
    moving: set[int] = set()
    if isinstance(env.registry, ports.VerifiesArtifacts):
        moving = _verify(env, state, env.registry, published, visit, carried)
    if state.carrying is not None:
        state.carrying.published, state.carrying.unsound, state.carrying.moving = published, unsound, moving
        state.carrying.done.add("artifacts")


def _published(state: PassState, visit: tuple[int, ...] | None, carried: memo.Carried | None) -> set[int]:
    """The indexes of this pass's ClusterPacks that exist already with the same content (the plan keeps them)."""
    assert state.observed is not None
    compiled = state.compiled
    if visit is None or carried is None:
        out = set()
        for i, result in enumerate(compiled):
            cp = result.compiled.cluster_pack
            found = state.stored(cp.name)
            if found is not None and found.checksum == cp.checksum:
                out.add(i)
        return out
    out = carried.published - set(visit)
    for i in visit:
        cp = compiled[i].compiled.cluster_pack
        found = state.stored(cp.name)
        if found is not None and found.checksum == cp.checksum:
            out.add(i)
    return out


def _repair(env: Env, state: PassState, registry: ports.RepairsArtifacts, published: set[int],
            visit: tuple[int, ...] | None, carried: memo.Carried | None) -> set[int]:
    """Repair the damaged artifacts among ``published``; returns the indexes of those that could not
    be, and of those repaired: the next pass asks the registry about them again (a repaired artifact
    is not yet one the registry found sound, so the change it tells of would not name it)."""
    # A resync (and a one-shot command, and the first pass of a process) checks every artifact in use;
    # the daemon's other passes check those the registry saw change, and the new ones.
    moved = registry.recheck(full=env.resync)
    compiled = state.compiled
    if visit is None or carried is None or moved is None:
        todo = sorted(published)
    else:
        wanted = set(visit) | carried.unsound
        if moved:
            wanted.update(i for i in published
                          if (compiled[i].compiled.cluster_pack.base_pack_name, compiled[i].compiled.cluster_pack.manifest_digest)
                          in moved)
        todo = sorted(wanted & published)
    repaired, again = 0, set()
    for i in todo:
        result = compiled[i]
        cp = result.compiled.cluster_pack
        if registry.sound(cp.base_pack_name, cp.manifest_digest):
            continue
        try:
            art = result.compiled.artifact or packcompile.artifact_of(env, state, result.build)
            if art.manifest_digest != cp.manifest_digest:
                raise errors.StalledError(f"a recompile gave {art.manifest_digest}, not the published "
                                          f"{cp.manifest_digest}", reason="NonDeterministic")
            registry.repair(cp.base_pack_name, art)
        except errors.GitopsdError as err:
            message = (f"the artifact of {cp.name} ({cp.manifest_digest}) is damaged in the registry and could not be "
                       f"repaired: {err}; run 'gitopsd verify' and restore it")
            state.pack_errors.append(change.PackError(path=result.build.path, pack=cp.base_pack_name,
                                                      reason="ArtifactDamaged", message=message))
            log.warning("artifact damaged", pack=cp.base_pack_name, digest=cp.manifest_digest, error=str(err))
            again.add(i)
            continue
        repaired += 1
        again.add(i)
        state.published += 1
        log.warning("artifact repaired", pack=cp.base_pack_name, version=cp.version, digest=cp.manifest_digest)
    if repaired and isinstance(env.registry, ports.Flushing):
        env.registry.flush()
    return again


def _moving(state: PassState, result: CompileResult) -> bool:
    """Whether a PackInstance of ``result`` may be created or superseded to run it this pass: one of
    its clusters has no instance that runs exactly it (the plan's own test for an unchanged one)."""
    assert state.observed is not None
    cp, build = result.compiled.cluster_pack, result.build
    runs_this = (cp.name, cp.manifest_digest, cp.checksum, build.priority, build.path)
    heads = state.observed.part(build.base_pack_name).heads
    if isinstance(heads, instance.Heads):
        same = heads.runs_everywhere(result.clusters)
        if same is not None and same.state is not instance.InstallState.UNINSTALLED and same.runs == runs_this:
            return False
    for cluster in result.clusters:
        head = heads.get(f"{build.base_pack_name}-{cluster}")
        if head is None or head.state is instance.InstallState.UNINSTALLED or head.runs != runs_this:
            return True
    return False


def _verify(env: Env, state: PassState, registry: ports.VerifiesArtifacts, published: set[int],
            visit: tuple[int, ...] | None, carried: memo.Carried | None) -> set[int]:
    """Existing ClusterPacks only: a new one is uploaded byte for byte and digest-checked by ``publish``.
    Returns the indexes of those an instance may be about to move to (each read byte for byte).

    Whether instances move to a ClusterPack is worked out again only when the pack or what its base
    holds changed since the last pass (the store gives a base's part as the same object while
    nothing of it was written); a resync works it out for every pack."""
    assert state.observed is not None
    compiled = state.compiled
    if visit is None or carried is None:
        earlier = {} if env.resync else env.memo.settled_artifacts
        settled: dict[str, tuple[tuple[object, ...], object]] = {}
        todo = sorted(published)
    else:  # the packs visited and those that were moving: the others' entries stand
        earlier = settled = env.memo.settled_artifacts
        todo = sorted((set(visit) | carried.moving) & published)
    moving = []
    for i in todo:
        result = compiled[i]
        cp, build = result.compiled.cluster_pack, result.build
        part = state.observed.part(build.base_pack_name)
        mark = (cp.manifest_digest, cp.checksum, build.priority, build.path, result.clusters)
        known = earlier.get(cp.name)
        if known is not None and known[1] is part and known[0] == mark:
            settled[cp.name] = known
        elif _moving(state, result):
            moving.append(i)
            settled.pop(cp.name, None)
        else:
            settled[cp.name] = (mark, part)
    env.memo.settled_artifacts = settled
    for i in sorted(moving, key=lambda i: compiled[i].compiled.cluster_pack.name):
        cp = compiled[i].compiled.cluster_pack
        layers = {field: digest for field, digest in (
            ("rbacDigest", cp.rbac_digest), ("clusterScopedDigest", cp.cluster_scoped_digest),
            ("workloadDigest", cp.workload_digest)) if digest}
        try:
            problems = registry.verify(cp.base_pack_name, cp.manifest_digest, layers)
        except errors.GitopsdError as err:
            state.artifact_problems[cp.name] = ("ArtifactUnverified", f"{err.reason}: {err}")
            continue
        if problems:
            state.artifact_problems[cp.name] = ("ArtifactMismatch", "; ".join(problems))
            log.warning("artifact mismatch", pack=cp.base_pack_name, version=cp.version, problems=len(problems))
    return set(moving)


def publish(env: Env, state: PassState) -> None:
    """Push the artifact of every ClusterPack the plan creates; a failed push blocks only its pack."""
    assert state.plan is not None
    if env.dry_run:
        return
    by_name: dict[str, CompileResult] = {}  # made on the first create: a pass that creates nothing walks no pack
    failed: dict[str, str] = {}
    for c in state.plan.writes:  # a create writes
        if c.kind is not change.ObjectKind.CLUSTER_PACK or c.action is not change.Action.CREATE:
            continue
        by_name = by_name or {r.compiled.cluster_pack.name: r for r in state.compiled}
        result = by_name[c.name]
        cp = result.compiled.cluster_pack
        try:
            art = result.compiled.artifact
            if art is None:
                if env.registry.has(cp.base_pack_name, cp.manifest_digest):
                    continue
                art = packcompile.artifact_of(env, state, result.build)
                if art.manifest_digest != cp.manifest_digest:
                    raise errors.StalledError(f"recompiling {cp.name} gave another digest; the renderer is not deterministic",
                                              reason="NonDeterministic")
            if env.registry.push(cp.base_pack_name, art):
                state.published += 1
                log.info("artifact pushed", pack=cp.base_pack_name, version=cp.version, digest=cp.manifest_digest)
        except errors.GitopsdError as err:
            failed[c.name] = f"{err.reason}: {err}"
            log.warning("artifact push failed", pack=cp.base_pack_name, reason=err.reason, error=str(err))
    if isinstance(env.registry, ports.Flushing):
        env.registry.flush()
    if failed:  # a write that failed, like a failed apply: the plan stands, its pack waits for the next pass
        state.plan = plan.block_packs(state.plan, failed, reason="ArtifactPublishFailed")
