"""``gitopsd plan``: run the pass on two revisions of the config repo and compare what they give.

The base revision is planned against an empty in-memory store (``Scratch``) and its plan applied
there: that store then holds what the clusters run at the base revision. The head revision is
planned against it with the real plan code, so creates, supersedes (and their upgrade direction),
uninstalls, collisions, immutability violations and blocked packs are exactly what a reconcile
would decide. Both passes are dry runs sharing the state dir's compile cache, so a pack that did
not change is rendered at most once (and not at all when an earlier run cached it). The objects of
the packs that change come from their artifacts: the fresh ones this run rendered, else the layer
cache (``adapters.layercache``) or the OCI layout, else a render of that one pack.
``core.preview`` builds the report; ``planformat`` prints it; ``cli_plan`` is the command.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import structlog

from gitopsd import errors, ports, reconcile
from gitopsd.adapters import gitrev, layercache
from gitopsd.core import delivery as delivery_core
from gitopsd.core import livediff
from gitopsd.core import preview as preview_core
from gitopsd.delivery import live as live_mod
from gitopsd.delivery import reach as reach_mod
from gitopsd.model import change, delivery, instance, pack
from gitopsd.wiring import compose as wiring
from gitopsd.wiring import settings as wiring_settings

log = structlog.get_logger()


class Scratch:
    """An in-memory management cluster for one plan: ClusterPacks and PackInstances as values."""

    def __init__(self) -> None:
        self.packs: dict[str, instance.ObservedPack] = {}
        self.instances: dict[str, instance.PackInstance] = {}

    def observe(self, namespace: str, *, since: object = None) -> instance.Observed:
        return instance.Observed(packs=dict(self.packs), instances=dict(self.instances))

    def apply(self, namespace: str, changes: Sequence[change.Change], revision: str, now: str) -> int:
        written = 0
        for c in changes:
            if not c.writes:
                continue
            written += 1
            if c.kind is change.ObjectKind.CLUSTER_PACK:
                if c.action is change.Action.UNINSTALL:
                    self.packs.pop(c.name, None)
                elif c.cluster_pack is not None:
                    cp = c.cluster_pack
                    self.packs[cp.name] = instance.ObservedPack(
                        name=cp.name, version=cp.version, base_pack_name=cp.base_pack_name, checksum=cp.checksum,
                        manifest_digest=cp.manifest_digest, signature=cp.signature,
                        spec_json=pack.canonical_json(cp.spec()), created_revision=revision)
            elif c.action is change.Action.UNINSTALL:
                self.instances.pop(c.name, None)
            elif c.pack_instance is not None:
                self.instances[c.name] = c.pack_instance
        return written

    def deliveries(self, namespace: str, names: Collection[str] | None = None) -> dict[str, delivery.Delivery]:
        return {}

    def record_delivery(self, namespace: str, name: str, record: delivery.Delivery, now: str) -> None:
        return None


@dataclasses.dataclass
class Side:
    env: reconcile.Env
    state: reconcile.PassState


@dataclasses.dataclass
class Outcome:
    report: preview_core.Report
    base: Side
    head: Side
    timings: dict[str, float]
    rendered_again: list[str]  # packs rendered only to show their objects (cache hits without stored layers)
    live: livediff.Report | None = None  # with live_reach: the clusters now against the head revision


def _env(tree: object, scratch: Scratch, local: wiring.Local, *, registry_url: str | None, workers: int,
         progress: Callable[[str, dict[str, object]], None] | None) -> reconcile.Env:
    # the ignore below: FixedSource serves one tree: enough of the Source port for a preview
    source: ports.Source = gitrev.FixedSource(tree)  # type: ignore[arg-type]
    return wiring.base_env(local, source=source, cluster=scratch, dry_run=True, registry_url=registry_url,
                           render_workers=workers, progress=progress)


def _keep_layers(side: Side, layers: layercache.LayerCache) -> None:
    for r in side.state.compiled:
        if r.compiled.artifact is not None:
            for blob in r.compiled.artifact.layers:
                layers.put(blob.digest, blob.data)


def _stored_layer(digest: str, layers: layercache.LayerCache, local: wiring.Local) -> bytes | None:
    data = layers.get(digest)
    if data is not None:
        return data
    try:
        data = local.layout.read_blob(digest)
    except (OSError, ValueError):
        return None
    layers.put(digest, data)
    return data


def _objects(side: Side, result: reconcile.CompileResult, layers: layercache.LayerCache, local: wiring.Local,
             rendered_again: list[str]) -> list[dict[str, Any]]:
    """The objects of one compiled pack, from its artifact: in memory, stored by digest, or rendered again."""
    art = result.compiled.artifact
    if art is None:
        cp = result.compiled.cluster_pack
        digests = [d for d in (cp.rbac_digest, cp.cluster_scoped_digest, cp.workload_digest) if d]
        stored = [_stored_layer(d, layers, local) for d in digests]
        if all(data is not None for data in stored):
            return [obj for data in stored if data is not None for obj in delivery_core.objects_of_layer(data)]
        art = reconcile.artifact_of(side.env, side.state, result.build)
        rendered_again.append(cp.base_pack_name)
        for blob in art.layers:
            layers.put(blob.digest, blob.data)
    return [obj for blob in art.layers for obj in delivery_core.objects_of_layer(blob.data)]


def plan(repo: pathlib.Path, local: wiring.Local, settings: wiring_settings.Settings, *, base_ref: str,
         head_ref: str | None, progress: Callable[[str, dict[str, object]], None] | None = None,
         live_reach: reach_mod.Reach | None = None) -> Outcome:
    """The report of what moving the config repo from ``base_ref`` to ``head_ref`` does. Without
    ``head_ref``: the work tree with its uncommitted changes (untracked files too, ``.gitignore``
    respected), or for a bare repository the tip of its HEAD branch. ``settings`` gives the registry
    URL recorded in ClusterPacks, the render workers and the clusters read at once for ``live_reach``."""
    registry_url = settings.registry_url
    timings: dict[str, float] = {}
    started = time.perf_counter()
    git = gitrev.open_repository(repo)
    base_tree = gitrev.revision_tree(git, base_ref, local.trees, flag="--base")
    snapshot = tempfile.TemporaryDirectory(prefix="gitopsd-worktree-")  # the work tree's objects, this plan only
    workers = wiring.resolve_render_workers(settings)
    scratch = Scratch()
    layers = layercache.LayerCache(local.state_dir / "layers.db", read_only=local.read_only)
    try:
        if head_ref is None and not git.is_bare:
            head_tree = gitrev.worktree_tree(git, local.trees, pathlib.Path(snapshot.name) / "objects")
        else:
            head_tree = gitrev.revision_tree(git, head_ref, local.trees, flag="--head")
        t0 = time.perf_counter()
        base_env = _env(base_tree, scratch, local, registry_url=registry_url, workers=workers, progress=progress)
        base = Side(base_env, reconcile.run(base_env))
        assert base.state.plan is not None
        scratch.apply(base.state.config.namespace, base.state.plan.writes, base.state.revision, base.state.now)
        running = dict(scratch.instances)
        timings["base"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        head_env = _env(head_tree, scratch, local, registry_url=registry_url, workers=workers, progress=progress)
        head = Side(head_env, reconcile.run(head_env))
        assert head.state.plan is not None
        timings["head"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        _keep_layers(base, layers)
        _keep_layers(head, layers)
        all_moves = preview_core.moves(running, head.state.plan)
        wanted = preview_core.needed(all_moves)
        sources: dict[str, tuple[Side, reconcile.CompileResult]] = {}
        for side in (base, head):
            for r in side.state.compiled:
                checksum = r.compiled.cluster_pack.checksum
                if checksum in wanted and (checksum not in sources or sources[checksum][1].compiled.artifact is None):
                    sources[checksum] = (side, r)
        rendered_again: list[str] = []
        objects = {checksum: _objects(side, r, layers, local, rendered_again) for checksum, (side, r) in sorted(sources.items())}
        missing = wanted - set(objects)
        if missing:
            raise errors.StalledError(f"no compiled pack has checksum {sorted(missing)[0]}; this is a bug in gitopsd plan",
                                      reason="PlanIncomplete")
        report = preview_core.report(
            base.state.revision, head.state.revision, all_moves,
            base_versions={r.build.base_pack_name: r.compiled.cluster_pack.version for r in base.state.compiled},
            head_versions={r.build.base_pack_name: r.compiled.cluster_pack.version for r in head.state.compiled},
            objects=objects, head_errors=head.state.plan.errors, base_errors=base.state.plan.errors)
        timings["diff"] = time.perf_counter() - t0
        live_report = None
        if live_reach is not None:  # before the work tree's snapshot goes: a pack may be rendered again
            t0 = time.perf_counter()
            namespace = head.state.config.namespace
            delivered, uninstalled = desired_instances(head.state)
            items = live_items(head, local, delivered, uninstalled, local.store.deliveries(namespace), head.state.observed)
            live_report = live_mod.compare(live_reach, head.state.clusters, namespace, items, workers=settings.delivery.workers)
            timings["live"] = time.perf_counter() - t0
    finally:
        layers.close()
        snapshot.cleanup()
    timings["total"] = time.perf_counter() - started
    log.info("plan made", base=base.state.revision, head=head.state.revision, packs_changed=len(report.packs),
             seconds=round(timings["total"], 3))
    return Outcome(report, base, head, timings, rendered_again, live_report)


# ---------------------------------------------------------------- against the live clusters


def _held(records: dict[str, delivery.Delivery]) -> dict[str, dict[str, set[tuple[str, str, str, str]]]]:
    """cluster -> PackInstance -> keys of the objects its last delivery left there."""
    out: dict[str, dict[str, set[tuple[str, str, str, str]]]] = {}
    for name, record in records.items():
        out.setdefault(record.cluster, {})[name] = {e.key for e in record.inventory}
    return out


def live_items(side: Side, local: wiring.Local, instances: dict[str, instance.PackInstance], uninstalled: dict[str, str],
           records: dict[str, delivery.Delivery], observed: instance.Observed | None = None) -> list[livediff.Wanted]:
    """What delivery would make of each PackInstance on its cluster: ``instances`` are the ones a
    delivery would carry out, ``uninstalled`` (name -> basePackName) the ones whose whole inventory
    goes. Objects come from ``side``'s compiled packs (or, for a pack not compiled there, the stored
    layers of the ClusterPack ``observed`` holds); ``records`` are the deliveries made so far."""
    held = _held(records)
    layers = layercache.LayerCache(local.state_dir / "layers.db", read_only=local.read_only)
    by_name = {r.compiled.cluster_pack.name: r for r in side.state.compiled}
    objects: dict[str, tuple[tuple[dict[str, Any], ...] | None, str]] = {}
    rendered_again: list[str] = []
    out = []
    try:
        for name, base in sorted(uninstalled.items()):
            previous = records.get(name)
            if previous is not None and previous.inventory:
                elsewhere = frozenset(k for other, keys in held.get(previous.cluster, {}).items() if other != name
                                      for k in keys)
                out.append(livediff.Wanted(name, previous.cluster, base, "", None, previous.inventory, elsewhere))
        for name, pi in sorted(instances.items()):
            previous = records.get(name)
            kept = previous.inventory if previous is not None else ()
            if pi.cluster_pack not in objects:
                objects[pi.cluster_pack] = _pack_objects(side, by_name.get(pi.cluster_pack), pi, layers, local,
                                                         observed, rendered_again)
            found, problem = objects[pi.cluster_pack]
            result = by_name.get(pi.cluster_pack)
            force = result.build.delivery.force if result is not None else False
            elsewhere = frozenset(k for other, keys in held.get(pi.cluster, {}).items() if other != name for k in keys)
            out.append(livediff.Wanted(name, pi.cluster, pi.base_pack_name, pi.version, found or (), kept, elsewhere,
                                       force, problem))
    finally:
        layers.close()
    return out


def _pack_objects(side: Side, result: reconcile.CompileResult | None, pi: instance.PackInstance,
                  layers: layercache.LayerCache, local: wiring.Local, observed: instance.Observed | None,
                  rendered_again: list[str]) -> tuple[tuple[dict[str, Any], ...] | None, str]:
    if result is not None:
        try:
            return tuple(_objects(side, result, layers, local, rendered_again)), ""
        except errors.GitopsdError as err:
            return None, f"{err.reason}: {err}"
    stored = (observed.packs.get(pi.cluster_pack) if observed is not None else None)
    if stored is not None:
        spec = json.loads(stored.spec_json)
        digests = [spec[f] for f in ("rbacDigest", "clusterScopedDigest", "workloadDigest") if spec.get(f)]
        data = [_stored_layer(d, layers, local) for d in digests]
        if all(d is not None for d in data):
            return tuple(obj for d in data if d is not None for obj in delivery_core.objects_of_layer(d)), ""
    return None, f"the objects of ClusterPack {pi.cluster_pack} are not in this state dir (it does not compile at this revision)"


def desired_instances(state: reconcile.PassState) -> tuple[dict[str, instance.PackInstance], dict[str, str]]:
    """The PackInstances a pass's plan would deliver, as delivery takes them: created and superseded
    ones with their new ClusterPack, unchanged ones as they are; and the uninstalled ones (name ->
    basePackName). Blocked ones are left out (delivery leaves them alone)."""
    assert state.plan is not None
    delivered: dict[str, instance.PackInstance] = {}
    uninstalled: dict[str, str] = {}
    for c in state.plan.changes:
        if c.kind is not change.ObjectKind.PACK_INSTANCE or c.cluster is None:
            continue
        if c.action in (change.Action.CREATE, change.Action.SUPERSEDE) and c.pack_instance is not None:
            delivered[c.name] = c.pack_instance
        elif c.action is change.Action.UNCHANGED:
            pi = state.observed.instances.get(c.name) if state.observed is not None else None
            if pi is not None and pi.state is not instance.InstallState.UNINSTALLED:
                delivered[c.name] = pi
        elif c.action is change.Action.UNINSTALL:
            uninstalled[c.name] = c.base_pack_name
    return delivered, uninstalled


def live(where: reach_mod.Reach, env: reconcile.Env, state: reconcile.PassState, local: wiring.Local, *,
         workers: int = 4) -> livediff.Report:
    """What each cluster ``where`` reaches holds against what delivering ``state``'s plan would make
    of it (``gitopsd diff --live``). Reads and dry runs only."""
    namespace = state.config.namespace
    records = env.cluster.deliveries(namespace)
    delivered, uninstalled = desired_instances(state)
    items = live_items(Side(env, state), local, delivered, uninstalled, records, state.observed)
    started = time.perf_counter()
    report = live_mod.compare(where, state.clusters, namespace, items, workers=workers)
    log.info("live diff made", clusters=len(report.clusters), unreachable=len(report.unreachable),
             seconds=round(time.perf_counter() - started, 3))
    return report
