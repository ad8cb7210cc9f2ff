"""One reconcile pass, as an ordered list of small steps with one signature.

fetch → load specs → compile (cached by content ids) → observe → adopt published versions → sign → verify → plan → publish →
check artifacts → unpack (delete what uninstalled instances left on their clusters) → apply → deliver
(into reachable target clusters) → write status → summarize. Every step is ``step(env, state) -> None``: it reads what earlier
steps left in ``state`` and adds its own result. Only ``plan`` decides what changes; ``summarize``
alone decides Ready. dry-run, diff and reconcile share every line: ``env.dry_run`` only gates the
side effects (publish, apply, status).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gc
import hashlib
import json
import os
import time
from collections.abc import Callable

import structlog

from gitopsd import __version__, errors, ports
from gitopsd.core import codec, parse, plan, signing, status, summarize, targets, yamlload
from gitopsd.core import compile as compile_core
from gitopsd.core import delivery as delivery_core
from gitopsd.model import change, delivery, instance, pack, spec

log = structlog.get_logger()

COMPILER = f"gitopsd/{__version__}"
LOCAL_REGISTRY = "oci-layout://packs"


@dataclasses.dataclass
class Memo:
    """Results of pure work kept between passes of one process (the daemon), each keyed by what
    it depends on, so that a pass where nothing changed redoes nothing: parsed PackBuilds by blob
    id, renderer inputs by the tree ids they were read from, signature verdicts by the exact bytes,
    the last plan by a fingerprint of all its inputs, and each status record by the objects it is made of."""

    specs: dict[tuple[str, str], spec.PackBuild | errors.GitopsdError] = dataclasses.field(default_factory=dict)
    inputs: dict[str, tuple[list[str], tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    verdicts: dict[tuple[str, str, str | None], plan.Verdict] = dataclasses.field(default_factory=dict)
    plan: tuple[object, change.Plan, instance.Observed] | None = None
    status_written: bool = False
    status_text: dict[str, tuple[object, bytes]] = dataclasses.field(default_factory=dict)  # per basePackName
    failures: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # cache key -> (reason, message)
    crd_scopes: tuple[tuple[str, str], ...] = ()  # the CRD scopes the last pass settled on: this pass's first guess


def default_render_workers() -> int:
    """One renderer child process at a time per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass
class Env:
    """The adapters and options of a pass; built once by the CLI or the daemon."""

    source: ports.Source
    cluster: ports.Cluster
    registry: ports.Registry
    cache: ports.CompileCache
    clock: ports.Clock
    renderers: dict[spec.Category, ports.Renderer]
    schemas: parse.Schemas
    signer: ports.Signer | None = None
    verifier: ports.Verifier | None = None
    status_writer: ports.StatusWriter | None = None
    registry_url: str | None = None  # overrides gitopsd.yaml's registry for ClusterPack URLs
    dry_run: bool = False
    progress: Callable[[str, dict[str, object]], None] | None = None
    pack_filter: Callable[[str], bool] | None = None  # sharding: which basePackNames this replica owns
    memo: Memo = dataclasses.field(default_factory=Memo)
    # A pack whose render failed is not rendered again while its inputs keep their ids (a template
    # that spins would cost the render timeout on every pass): its failure is remembered by cache
    # key, in this process and in the compile cache for FAILURE_TTL seconds. A resync of the daemon
    # sets this to retry them all.
    retry_failed: bool = False
    # renderer child processes (kustomize, helm) the compile step runs at once; 1: one after another
    render_workers: int = dataclasses.field(default_factory=default_render_workers)
    deliverer: ports.Deliverer | None = None  # push delivery into target clusters; None: records only
    resync: bool = True  # a full pass: retry failed deliveries and check drift (the daemon's resync)


@dataclasses.dataclass
class CompileResult:
    build: spec.PackBuild
    compiled: pack.CompiledPack
    clusters: tuple[str, ...]
    cached: bool


@dataclasses.dataclass
class PassState:
    tree: ports.Tree | None = None
    config: spec.RepoConfig = dataclasses.field(default_factory=spec.RepoConfig)
    clusters: dict[str, spec.Cluster] = dataclasses.field(default_factory=dict)
    builds: list[spec.PackBuild] = dataclasses.field(default_factory=list)
    unowned: list[spec.PackBuild] = dataclasses.field(default_factory=list)  # of other shards: read for their CRDs only
    pack_errors: list[change.PackError] = dataclasses.field(default_factory=list)
    protected_paths: set[str] = dataclasses.field(default_factory=set)
    protected_bases: set[str] = dataclasses.field(default_factory=set)
    compiled: list[CompileResult] = dataclasses.field(default_factory=list)
    # (group/Kind, Cluster|Namespaced) of the CRDs known outside any one pack (gitopsd.yaml's crds, the
    # packs' CRDs), given to every compile; settled at the end of the compile step
    crd_scopes: tuple[tuple[str, str], ...] = ()
    renders: dict[str, ports.Rendered] | None = None  # during the compile step: renders kept for a recompile
    renders_bytes: int = 0
    observed: instance.Observed | None = None
    verdicts: dict[str, plan.Verdict] = dataclasses.field(default_factory=dict)
    plan: change.Plan | None = None
    published: int = 0
    writes: int = 0
    status_commit: str | None = None
    status_error: str | None = None
    plan_reused: bool = False
    now: str = ""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    summary: summarize.Summary | None = None
    deliveries: list[tuple[delivery_core.Job, delivery.Delivery]] = dataclasses.field(default_factory=list)
    records_only: list[str] = dataclasses.field(default_factory=list)  # clusters with no way to reach them

    @property
    def revision(self) -> str:
        return self.tree.snapshot.revision if self.tree else ""


Step = Callable[[Env, PassState], None]


def fetch(env: Env, state: PassState) -> None:
    state.tree = env.source.fetch()
    state.now = env.clock.now()


def load_specs(env: Env, state: PassState) -> None:
    tree = state.tree
    assert tree is not None
    for top in ("gitopsd.yaml", "clusters", "packs"):
        if tree.kind(top) is ports.EntryKind.LINK:
            raise errors.SpecError(f"{top} is a symlink; gitopsd reads only real files and folders of the config repo: "
                                   f"replace the link with the {'file' if '.' in top else 'folder'} itself",
                                   path=top, reason="PathEscape")
    if tree.kind("gitopsd.yaml") is ports.EntryKind.FILE:
        state.config = parse.parse_config(yamlload.load_one(tree.read("gitopsd.yaml"), "gitopsd.yaml"), env.schemas)
    if tree.kind("clusters") is ports.EntryKind.DIR:
        for name, kind in tree.listdir("clusters"):
            path = f"clusters/{name}"
            if kind is ports.EntryKind.LINK and name.endswith((".yaml", ".yml")):
                raise errors.SpecError(f"{path} is a symlink; a cluster file must be a regular file in clusters/: "
                                       "replace the link with the file itself", path=path, reason="PathEscape")
            if kind is not ports.EntryKind.FILE or not name.endswith((".yaml", ".yml")):
                continue
            cluster = parse.parse_cluster(yamlload.load_one(tree.read(path), path), env.schemas, file=path)
            if state.config.clusters is not None and cluster.name not in state.config.clusters:
                continue  # not in gitopsd.yaml's allow-list
            if cluster.name in state.clusters:
                raise errors.SpecError(
                    f"cluster {cluster.name!r} is also defined in {state.clusters[cluster.name].path}; keep one",
                    path=path,
                )
            state.clusters[cluster.name] = cluster
    if tree.kind("packs") is not ports.EntryKind.DIR:
        return
    # Only this pass's PackBuilds stay memoized: a daemon does not keep every version it ever parsed.
    earlier, env.memo.specs = env.memo.specs, {}
    listed = tree.listdir("packs")
    for sub in sorted(p for p in getattr(tree, "submodules", ()) if p.startswith("packs/") and p.count("/") == 1):
        name = sub.removeprefix("packs/")
        state.pack_errors.append(change.PackError(
            path=sub, pack=name, reason="Submodule",
            message=f"{sub} is a Git submodule; gitopsd reads only files of the config repo: commit the pack's files "
                    "into the repo instead"))
    for name, kind in listed:
        if kind is ports.EntryKind.LINK and name.isprintable():
            path = f"packs/{name}"
            state.pack_errors.append(change.PackError(
                path=path, pack=name, reason="PathEscape",
                message=f"{path} is a symlink to {tree.readlink(path)!r}; a pack folder must be a real folder in "
                        "packs/: replace the link with the folder itself"))
            continue
        if kind is not ports.EntryKind.DIR:
            continue
        if not name.isprintable() or "/" in name:
            shown = ascii(name)
            state.pack_errors.append(change.PackError(
                path=f"packs/{shown}", pack=shown, reason="InvalidSpec",
                message=f"packs/{shown}: the folder name holds control characters; rename the folder "
                        "(letters, digits, '-', '_' and '.')"))
            continue
        for file_name in ("packbuild.yaml", "packbuild.yml"):
            path = f"packs/{name}/{file_name}"
            if tree.kind(path) is None:
                continue
            try:
                build = _packbuild(env, tree, path, earlier)
            except errors.GitopsdError as err:
                state.protected_paths.add(path)
                state.pack_errors.append(change.PackError(path=path, pack=name, reason=err.reason, message=str(err)))
                continue
            if env.pack_filter is not None and not env.pack_filter(build.base_pack_name):
                state.unowned.append(build)
                continue
            state.builds.append(build)


def _packbuild(env: Env, tree: ports.Tree, path: str,
               earlier: dict[tuple[str, str], spec.PackBuild | errors.GitopsdError]) -> spec.PackBuild:
    key = (path, tree.tree_id(path))
    known = earlier.get(key)
    if known is not None:
        env.memo.specs[key] = known
    else:
        try:
            if tree.kind(path) is not ports.EntryKind.FILE:
                raise errors.SpecError("a PackBuild must be a regular file, not a symlink", path=path, reason="PathEscape")
            known = parse.parse_packbuild(yamlload.load_one(tree.read(path), path), env.schemas, file=path)
        except errors.GitopsdError as err:
            known = err
        env.memo.specs[key] = known
    if isinstance(known, errors.GitopsdError):
        raise known
    return known


def _inputs(env: Env, tree: ports.Tree, build: spec.PackBuild) -> list[str]:
    """The renderer's input folders, reused while every folder it walked keeps its tree id."""
    key = f"{build.path}|{build.source}"
    known = env.memo.inputs.get(key)
    if known is not None and tuple(tree.tree_id(f) for f in known[0]) == known[1]:
        return known[0]
    folders = env.renderers[build.category].inputs(tree, build)
    env.memo.inputs[key] = (folders, tuple(tree.tree_id(f) for f in folders))
    return folders


def cache_key(tree: ports.Tree, build: spec.PackBuild, *, extra: str, folders: list[str]) -> str:
    """The content ids of everything a pack reads. The CRD scopes its compile took from outside the
    pack are the rest of the key: a cached CompiledPack records them (``foreign_scopes``) and counts
    only while they are the scopes this pass knows (``_fits``); otherwise the pack is compiled again."""
    digest = hashlib.sha256()
    digest.update(f"{COMPILER}\n{extra}\n{tree.tree_id(build.path)}\n{tree.tree_id(build.folder)}\n".encode())
    for folder in folders:
        digest.update(f"{folder}={tree.tree_id(folder)}\n".encode())
    return digest.hexdigest()


def _registry_prefix(env: Env, state: PassState, build: spec.PackBuild) -> str:
    return build.registry_url or env.registry_url or state.config.registry or LOCAL_REGISTRY


@dataclasses.dataclass
class _Started:
    """A compile past its cache lookup and every read of the Tree: the render's result, or the call
    that makes it (a renderer child process, which may run in another thread), and what compiling
    and caching the result need."""

    build: spec.PackBuild
    key: str
    inputs: compile_core.Inputs
    clusters: tuple[str, ...]
    rendered: ports.Rendered | None = None
    finish: Callable[[], ports.Rendered] | None = None


def _key(env: Env, state: PassState, build: spec.PackBuild) -> tuple[str, compile_core.Inputs, tuple[str, ...]]:
    tree = state.tree
    assert tree is not None
    clusters = targets.resolve(build, state.clusters)
    folders = _inputs(env, tree, build)
    inputs = compile_core.Inputs(
        namespace=state.config.namespace,
        registry=_registry_prefix(env, state, build),
        target_clusters=clusters,
        revision=state.revision,
        commit_time=tree.snapshot.commit_time,
        tree_id=tree.tree_id(build.folder),
        compiler=COMPILER,
        crd_scopes=state.crd_scopes,
    )
    key = cache_key(tree, build, extra=f"{inputs.namespace}|{inputs.registry}|{','.join(clusters)}", folders=folders)
    return key, inputs, clusters


FAILURE_TTL = 600.0  # seconds a remembered render failure holds for a new process (the default resync interval)


def _remembered(env: Env, key: str) -> errors.GitopsdError | None:
    """The failure of an earlier render of exactly these inputs, unless this pass retries failures."""
    if env.retry_failed:
        return None
    known = env.memo.failures.get(key)
    if known is None:
        lookup = getattr(env.cache, "failure", None)
        known = lookup(key, FAILURE_TTL) if lookup is not None else None
        if known is None:
            return None
        env.memo.failures[key] = known
    reason, message = known
    return errors.StalledError(message, reason=reason)


def _remember(env: Env, key: str, err: errors.GitopsdError) -> None:
    """Remember a render failure that needs a change in Git (not a transient one) by its cache key."""
    if not isinstance(err, errors.StalledError) or env.memo.failures.get(key) == (err.reason, str(err)):
        return  # a missing tool or an outage is not a property of the inputs
    env.memo.failures[key] = (err.reason, str(err))
    store = getattr(env.cache, "remember_failure", None)
    if store is not None:
        store(key, err.reason, str(err))


def _start(env: Env, state: PassState, build: spec.PackBuild, key: str, inputs: compile_core.Inputs,
           clusters: tuple[str, ...], *, use_cache: bool, defer: bool) -> CompileResult | _Started:
    """The cache lookup and the render up to its child process (all of it when ``defer`` is off or
    the renderer cannot split, e.g. raw). Reads the Tree: main thread only."""
    if use_cache:
        hit = env.cache.get(key)
        if hit is not None:
            return CompileResult(build, hit, clusters, cached=True)
        failed = _remembered(env, key)
        if failed is not None:
            raise failed
    assert state.tree is not None
    renderer = env.renderers[build.category]
    started = _Started(build, key, inputs, clusters)
    prepare = getattr(renderer, "prepare", None) if defer else None
    if prepare is None:
        started.rendered = renderer.render(state.tree, build)
    else:
        started.finish = prepare(state.tree, build)
    return started


KEPT_RENDERS_BYTES = 64 * 1024 * 1024  # rendered YAML kept in one compile step for recompiles; past it, render again


def _end(env: Env, state: PassState, started: _Started, rendered: ports.Rendered) -> CompileResult:
    compiled = compile_core.compile_pack(
        started.build, rendered.documents, renderers=rendered.renderers, chart=rendered.chart, inputs=started.inputs,
        dropped_hooks=rendered.dropped_hooks, reproducible=rendered.reproducible,
    )
    if compiled.reproducible:
        # a render that differs each time is never cached: a cached one (from a dry-run, say) would
        # not match the artifact a later pass renders and publishes
        env.cache.put(started.key, compiled)
    settled = dict(state.config.crds)  # gitopsd.yaml's entries win: no pack's CRD changes them
    if state.renders is not None and any(kind not in settled for kind, _ in compiled.foreign_scopes):
        size = sum(len(data) for _, data in rendered.documents)
        if state.renders_bytes + size <= KEPT_RENDERS_BYTES:
            state.renders[started.build.path] = rendered  # a CRD of a later pack may change a scope it used
            state.renders_bytes += size
    return CompileResult(started.build, compiled, started.clusters, cached=False)


def compile_one(env: Env, state: PassState, build: spec.PackBuild, *, use_cache: bool = True) -> CompileResult:
    key, inputs, clusters = _key(env, state, build)
    try:
        started = _start(env, state, build, key, inputs, clusters, use_cache=use_cache, defer=False)
        if isinstance(started, CompileResult):
            return started
        assert started.rendered is not None
        return _end(env, state, started, started.rendered)
    except errors.GitopsdError as err:
        _remember(env, key, err)
        raise


def compile_packs(env: Env, state: PassState) -> None:
    """Compile every PackBuild, in path order; a failing pack is recorded and the others go on.
    With ``env.render_workers`` above 1 the renderer child processes overlap
    (``_compile_overlapped``); the results, errors, cache entries and progress lines are the same.

    A custom kind's scope may come from a CRD in another pack: the packs are compiled with the
    scopes the last pass settled on (gitopsd.yaml's ``crds`` first), then ``_settle_scopes`` reads
    every pack's CRDs and compiles again only the packs that used a scope that turned out otherwise."""
    builds = sorted(state.builds, key=lambda b: b.path)
    state.crd_scopes = compile_core.known_scopes(state.config.crds, [("", env.memo.crd_scopes)])[0]
    state.renders = {}
    try:
        if env.render_workers <= 1:
            for index, build in enumerate(builds):
                try:
                    outcome: CompileResult | errors.GitopsdError = compile_one(env, state, build)
                except errors.GitopsdError as err:
                    outcome = err
                _record(env, state, index, len(builds), build, outcome)
        else:
            _compile_overlapped(env, state, builds, env.render_workers)
        _settle_scopes(env, state)
    finally:
        state.renders, state.renders_bytes = None, 0
    flush = getattr(env.cache, "flush", None)
    if flush is not None:
        flush()


def _fits(compiled: pack.CompiledPack, known: dict[str, str]) -> bool:
    """Whether ``compiled`` was compiled with the scopes in ``known`` for every kind it took from outside."""
    return all(known.get(kind, "") == scope for kind, scope in compiled.foreign_scopes)


def _settle_scopes(env: Env, state: PassState) -> None:
    """The CRD scopes of this pass (gitopsd.yaml's ``crds``, then the packs' CRDs in path order), and
    a compile again of each pack that used another scope for one of its kinds: from its kept render,
    else by rendering it again. A pack's own CRDs do not depend on these scopes, so one round settles
    them. With shards, the packs of other shards are read (from the compile cache, else rendered)
    for their CRDs when a pack here has a custom kind gitopsd.yaml does not settle."""
    sources = [(r.build.path, r.compiled.crds) for r in state.compiled]
    configured = dict(state.config.crds)
    if state.unowned and any(kind not in configured for r in state.compiled for kind, _ in r.compiled.foreign_scopes):
        sources += [(build.path, crds) for build in state.unowned if (crds := _crds_of(env, state, build)) is not None]
        sources.sort(key=lambda source: source[0])
    scopes, disagreements = compile_core.known_scopes(state.config.crds, sources)
    for message in disagreements:
        log.warning("crd scopes disagree", detail=message)
    state.crd_scopes = env.memo.crd_scopes = scopes
    known = dict(scopes)
    settled: list[CompileResult] = []
    for result in state.compiled:
        if _fits(result.compiled, known):
            settled.append(result)
            continue
        build = result.build
        try:
            rendered = state.renders.pop(build.path, None) if state.renders is not None else None
            if rendered is None:
                settled.append(compile_one(env, state, build, use_cache=False))
            else:
                key, inputs, clusters = _key(env, state, build)
                try:
                    settled.append(_end(env, state, _Started(build, key, inputs, clusters), rendered))
                except errors.GitopsdError as err:
                    _remember(env, key, err)
                    raise
        except errors.GitopsdError as err:
            _failed(state, build, err)
            continue
        log.info("pack compiled again with the scopes of CRDs elsewhere", pack=build.base_pack_name, path=build.path)
    state.compiled = settled


def _crds_of(env: Env, state: PassState, build: spec.PackBuild) -> tuple[tuple[str, str], ...] | None:
    """The CRDs of a pack of another shard, or None when it does not compile (its shard reports it)."""
    try:
        return compile_one(env, state, build).compiled.crds
    except errors.GitopsdError:
        return None


def _failed(state: PassState, build: spec.PackBuild, err: errors.GitopsdError) -> None:
    state.protected_paths.add(build.path)
    state.protected_bases.add(build.base_pack_name)
    state.pack_errors.append(
        change.PackError(path=build.path, pack=build.base_pack_name, reason=err.reason, message=str(err))
    )
    log.warning("pack failed", pack=build.base_pack_name, path=build.path, reason=err.reason, error=str(err))


def _record(env: Env, state: PassState, index: int, total: int, build: spec.PackBuild,
            outcome: CompileResult | errors.GitopsdError) -> None:
    if isinstance(outcome, errors.GitopsdError):
        err = outcome
        _failed(state, build, err)
        if env.progress:
            env.progress("failed", {"index": index + 1, "total": total, "path": build.path, "error": str(err)})
        return
    state.compiled.append(outcome)
    if env.progress:
        env.progress("compiled", {"index": index + 1, "total": total, "path": build.path, "cached": outcome.cached})


RENDERS_AHEAD = 2  # renders started per worker beyond the oldest one not yet taken back: bounds their output in memory
PACKS_AHEAD = 8  # packs started per worker and not yet recorded (raw ones are rendered at once): bounds memory too


@dataclasses.dataclass
class _Slot:
    """One pack between its start and its record, in build order. ``late``: another pack ahead
    in the window has the same cache key, so this one starts at its turn, as one after another
    would (and meets that pack's cache entry)."""

    build: spec.PackBuild
    started: CompileResult | _Started | Exception | None = None
    future: concurrent.futures.Future[ports.Rendered] | None = None
    key: str = ""
    late: bool = False


def _compile_overlapped(env: Env, state: PassState, builds: list[spec.PackBuild], workers: int) -> None:
    """``compile_packs`` with up to ``workers`` renderer child processes at once, while this thread
    goes on with the next packs (raw ones are pure Python here). The Tree, the cache and the
    progress callback are used from this thread only; a pool thread only runs the call a
    renderer's ``prepare`` returned. Packs are compiled, cached and recorded in build order, with
    the same results and errors as one after another; a cache hit starts no child process."""
    window: collections.deque[_Slot] = collections.deque()
    upcoming = collections.deque(builds)
    index = 0
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gitopsd-render")
    try:
        while window or upcoming:
            futures = [slot.future for slot in window if slot.future is not None]
            head = window[0] if window else None
            head_waits = head is not None and head.future is not None and not head.future.done()
            busy = sum(1 for f in futures if not f.done())
            can_start = bool(upcoming) and len(futures) < RENDERS_AHEAD * workers and len(window) < PACKS_AHEAD * workers
            if can_start and (head is None or head_waits or busy < workers):
                slot = _Slot(upcoming.popleft())
                _begin(env, state, slot, pool, pending={s.key for s in window if s.key and not s.late})
                window.append(slot)
                continue
            assert head is not None
            window.popleft()
            _record(env, state, index, len(builds), head.build, _take(env, state, head))
            index += 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an unexpected error: no new child, wait for running ones


def _begin(env: Env, state: PassState, slot: _Slot, pool: concurrent.futures.ThreadPoolExecutor, *,
           pending: set[str]) -> None:
    try:
        slot.key, inputs, clusters = _key(env, state, slot.build)
        if slot.key in pending:
            slot.late = True
            return
        slot.started = _start(env, state, slot.build, slot.key, inputs, clusters, use_cache=True, defer=True)
    except Exception as err:  # noqa: BLE001 - recorded (or, when not a GitopsdError, raised) at the pack's turn
        slot.started = err
        return
    if isinstance(slot.started, _Started) and slot.started.finish is not None:
        slot.future = pool.submit(slot.started.finish)


def _take(env: Env, state: PassState, slot: _Slot) -> CompileResult | errors.GitopsdError:
    try:
        if slot.late:
            return compile_one(env, state, slot.build)
        started = slot.started
        if isinstance(started, Exception):
            raise started
        assert started is not None
        if isinstance(started, CompileResult):
            return started
        rendered = slot.future.result() if slot.future is not None else started.rendered
        assert rendered is not None
        return _end(env, state, started, rendered)
    except errors.GitopsdError as err:
        if slot.key is not None and not slot.late:
            _remember(env, slot.key, err)
        return err


def observe(env: Env, state: PassState) -> None:
    state.observed = env.cluster.observe(state.config.namespace)


def adopt_published(env: Env, state: PassState) -> None:
    """The published artifact is the truth for a published version: when a ClusterPack of the same
    name exists and this pass's render of it differs only because the render is not reproducible
    (random values: ``randAlphaNum``, ``genCA``, ...) or only in its artifact's layout (same
    checksum), the published ClusterPack is kept as the desired one, with a warning naming the chart
    for the first case. A real change of the sources still gives an immutability violation."""
    assert state.observed is not None
    for result in state.compiled:
        cp = result.compiled.cluster_pack
        found = state.observed.packs.get(cp.name)
        if found is None or (found.checksum == cp.checksum and found.manifest_digest == cp.manifest_digest):
            continue
        if found.checksum != cp.checksum and result.compiled.reproducible:
            continue
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
        result.compiled = dataclasses.replace(result.compiled, cluster_pack=published, artifact=None, warnings=warnings)


def sign(env: Env, state: PassState) -> None:
    """Sign the ClusterPacks that do not exist yet (existing ones keep their signature)."""
    assert state.observed is not None
    if env.signer is None:
        return
    for result in state.compiled:
        cp = result.compiled.cluster_pack
        if cp.name in state.observed.packs or cp.signature is not None:
            continue
        signed = cp.with_signature(env.signer.sign(signing.payload(cp)))
        result.compiled = dataclasses.replace(result.compiled, cluster_pack=signed)


def verify(env: Env, state: PassState) -> None:
    """A verdict per desired ClusterPack: the signature that delivery would rely on, checked."""
    assert state.observed is not None
    earlier, env.memo.verdicts = env.memo.verdicts, {}  # keep the verdicts of this pass's packs only
    for result in state.compiled:
        cp = result.compiled.cluster_pack
        found = state.observed.packs.get(cp.name)
        memo_key: tuple[str, str, str | None] | None
        if found is not None and found.checksum == cp.checksum:
            memo_key = (cp.name, found.spec_json, found.signature)
            cached = earlier.get(memo_key)
            if cached is not None:
                state.verdicts[cp.name] = env.memo.verdicts[memo_key] = cached
                continue
            data, signature = signing.payload_of_spec_json(found.spec_json), found.signature
        else:
            # Once stored, this spec comes back as the observed one: remember the verdict for it too.
            memo_key = (cp.name, pack.canonical_json(cp.spec()), cp.signature) if cp.signature else None
            data, signature = signing.payload(cp), cp.signature
        if signature is None:
            verdict = plan.Verdict.PENDING if env.dry_run and env.signer is None and found is None else plan.Verdict.MISSING
        elif env.verifier is None:
            verdict = plan.Verdict.OK
        else:
            verdict = plan.Verdict.OK if env.verifier.verify(data, signature) else plan.Verdict.INVALID
        state.verdicts[cp.name] = verdict
        if memo_key is not None:
            env.memo.verdicts[memo_key] = verdict


def make_plan(env: Env, state: PassState) -> None:
    assert state.observed is not None and state.tree is not None
    policy = plan.Policy(
        namespace=state.config.namespace,
        now=state.now,
        installed_by=state.config.installed_by or state.tree.snapshot.author,
        registry_hash=env.schemas.registry_hash,
        require_signatures=env.verifier is not None,
        keep_versions=state.config.keep_versions,
    )
    inputs = plan.Inputs(
        revision=state.revision,
        desired=tuple(plan.Desired(r.build, r.compiled, r.clusters) for r in state.compiled),
        observed=state.observed,
        verdicts=state.verdicts,
        policy=policy,
        errors=tuple(state.pack_errors),
        protected_paths=frozenset(state.protected_paths),
        protected_bases=frozenset(state.protected_bases),
    )
    # The plan is a pure function of its inputs; when they are the same as last time and that plan
    # wrote nothing, ``now`` and the revision cannot show in it: reuse it.
    fingerprint = (
        tuple((d.build, d.cluster_pack.name, d.cluster_pack.checksum, d.cluster_pack.manifest_digest, d.clusters)
              for d in inputs.desired),
        id(state.observed),
        tuple(sorted(state.verdicts.items())),
        dataclasses.replace(policy, now=""),
        inputs.errors,
        inputs.protected_paths,
        inputs.protected_bases,
    )
    last = env.memo.plan
    if last is not None and last[0] == fingerprint and last[2] is state.observed and not last[1].writes:
        state.plan = dataclasses.replace(last[1], revision=state.revision)
        state.plan_reused = True
        return
    state.plan = plan.build(inputs)
    env.memo.plan = (fingerprint, state.plan, state.observed)


def publish(env: Env, state: PassState) -> None:
    """Push the artifact of every ClusterPack the plan creates; a failed push blocks only its pack."""
    assert state.plan is not None
    if env.dry_run:
        return
    by_name = {r.compiled.cluster_pack.name: r for r in state.compiled}
    failed: dict[str, str] = {}
    for c in state.plan.changes:
        if c.kind is not change.ObjectKind.CLUSTER_PACK or c.action is not change.Action.CREATE:
            continue
        result = by_name[c.name]
        cp = result.compiled.cluster_pack
        try:
            art = result.compiled.artifact
            if art is None:
                if env.registry.has(cp.base_pack_name, cp.manifest_digest):
                    continue
                art = compile_one(env, state, result.build, use_cache=False).compiled.artifact
                assert art is not None
                if art.manifest_digest != cp.manifest_digest:
                    raise errors.StalledError(f"recompiling {cp.name} gave another digest; the renderer is not deterministic",
                                              reason="NonDeterministic")
            if env.registry.push(cp.base_pack_name, art):
                state.published += 1
                log.info("artifact pushed", pack=cp.base_pack_name, version=cp.version, digest=cp.manifest_digest)
        except errors.GitopsdError as err:
            failed[c.name] = f"{err.reason}: {err}"
            log.warning("artifact push failed", pack=cp.base_pack_name, reason=err.reason, error=str(err))
    _repair_artifacts(env, state, by_name)
    flush = getattr(env.registry, "flush", None)
    if flush is not None:
        flush()
    if failed:
        state.plan = plan.block_packs(state.plan, failed, reason="ArtifactPublishFailed")


def _repair_artifacts(env: Env, state: PassState, by_name: dict[str, CompileResult]) -> None:
    """Damage to artifacts already published (a tag lost from the index, a blob gone or corrupt) is
    noticed on every pass by a registry that can tell cheaply (``sound``, the OCI layout) and
    repaired from the compile cache or a recompile; what cannot be repaired becomes a pack error."""
    sound = getattr(env.registry, "sound", None)
    repair = getattr(env.registry, "repair", None)
    if sound is None or repair is None:
        return
    assert state.plan is not None
    problems = []
    for c in state.plan.changes:
        if c.kind is not change.ObjectKind.CLUSTER_PACK or c.action is not change.Action.UNCHANGED or c.name not in by_name:
            continue
        result = by_name[c.name]
        cp = result.compiled.cluster_pack
        if sound(cp.base_pack_name, cp.manifest_digest):
            continue
        try:
            art = result.compiled.artifact or compile_one(env, state, result.build, use_cache=False).compiled.artifact
            assert art is not None
            if art.manifest_digest != cp.manifest_digest:
                raise errors.StalledError(f"a recompile gave {art.manifest_digest}, not the published "
                                          f"{cp.manifest_digest}", reason="NonDeterministic")
            repair(cp.base_pack_name, art)
        except errors.GitopsdError as err:
            message = (f"the artifact of {cp.name} ({cp.manifest_digest}) is damaged in the registry and could not be "
                       f"repaired: {err}; run 'gitopsd verify' and restore it")
            problems.append(change.PackError(path=result.build.path, pack=cp.base_pack_name,
                                             reason="ArtifactDamaged", message=message))
            log.warning("artifact damaged", pack=cp.base_pack_name, digest=cp.manifest_digest, error=str(err))
            continue
        state.published += 1
        log.warning("artifact repaired", pack=cp.base_pack_name, version=cp.version, digest=cp.manifest_digest)
    if problems:
        state.plan = dataclasses.replace(state.plan, errors=state.plan.errors + tuple(problems))


def check_artifacts(env: Env, state: PassState) -> None:
    """Verify before apply: every existing ClusterPack an instance is about to point at must be
    served by the registry with exactly its recorded digests; otherwise that delivery is blocked
    (``ArtifactMismatch``, or ``ArtifactUnverified`` when the registry cannot be asked)."""
    assert state.plan is not None
    checker = getattr(env.registry, "verify", None)
    if env.dry_run or checker is None:
        return
    targets = {
        c.pack_instance.cluster_pack
        for c in state.plan.changes
        if c.pack_instance is not None and c.action in (change.Action.CREATE, change.Action.SUPERSEDE)
    }
    fresh = {c.name for c in state.plan.changes if c.kind is change.ObjectKind.CLUSTER_PACK and c.action is change.Action.CREATE}
    by_name = {r.compiled.cluster_pack.name: r.compiled.cluster_pack for r in state.compiled}
    mismatched: dict[str, str] = {}
    unverified: dict[str, str] = {}
    for name in sorted(targets - fresh):  # fresh ones were just uploaded byte for byte and digest-checked
        cp = by_name.get(name)
        if cp is None:
            continue
        layers = {field: digest for field, digest in (
            ("rbacDigest", cp.rbac_digest), ("clusterScopedDigest", cp.cluster_scoped_digest),
            ("workloadDigest", cp.workload_digest)) if digest}
        try:
            problems = checker(cp.base_pack_name, cp.manifest_digest, layers)
        except errors.GitopsdError as err:
            unverified[name] = f"{err.reason}: {err}"
            continue
        if problems:
            mismatched[name] = "; ".join(problems)
            log.warning("artifact mismatch", pack=cp.base_pack_name, version=cp.version, problems=len(problems))
    if mismatched:
        state.plan = plan.block_packs(state.plan, mismatched, reason="ArtifactMismatch")
    if unverified:
        state.plan = plan.block_packs(state.plan, unverified, reason="ArtifactUnverified")


def apply(env: Env, state: PassState) -> None:
    assert state.plan is not None
    if env.dry_run:
        return
    todo = [c for c in state.plan.changes if c.writes or (c.action is change.Action.BLOCKED and c.condition is not None)]
    if not todo:
        return
    state.writes = env.cluster.apply(state.config.namespace, todo, state.revision, state.now)


def _job(env: Env, state: PassState, pi: instance.PackInstance, previous: delivery.Delivery | None,
         action: delivery_core.Action, held: dict[str, set[tuple[str, str, str, str]]]) -> delivery_core.Job | None:
    """The delivery job of PackInstance ``pi``; None when its ClusterPack is not known here."""
    assert state.observed is not None
    found = state.observed.packs.get(pi.cluster_pack)
    created = next((r.compiled.cluster_pack for r in state.compiled if r.compiled.cluster_pack.name == pi.cluster_pack), None)
    if found is not None:
        spec_json, signature = found.spec_json, found.signature
    elif created is not None:
        spec_json, signature = pack.canonical_json(created.spec()), created.signature
    elif action is delivery_core.Action.UNINSTALL and previous is not None:  # only its inventory is needed
        spec_json, signature = pack.canonical_json({"registryRef": {"digest": previous.digest}}), None
    else:
        return None
    build = next((r.build for r in state.compiled if r.compiled.cluster_pack.name == pi.cluster_pack), None)
    settings = build.delivery if build is not None else spec.DeliverySettings()
    options = delivery_core.Options(timeout=settings.timeout, drift=delivery.DriftMode(settings.drift), force=settings.force)
    elsewhere = frozenset(k for name, keys in held.items() if name != pi.name for k in keys)
    return delivery_core.Job(instance=pi.name, cluster=pi.cluster, base_pack_name=pi.base_pack_name, version=pi.version,
                             spec_json=spec_json, signature=signature, previous=previous, options=options,
                             held_elsewhere=elsewhere, action=action,
                             depends_on=build.depends_on if build is not None else ())


def _inventories(records: dict[str, delivery.Delivery]) -> dict[str, dict[str, set[tuple[str, str, str, str]]]]:
    """cluster -> PackInstance -> keys of the objects its delivery holds there."""
    out: dict[str, dict[str, set[tuple[str, str, str, str]]]] = collections.defaultdict(dict)
    for name, record in records.items():
        out[record.cluster][name] = {e.key for e in record.inventory}
    return out


def _keep_deliveries(env: Env, state: PassState, results: list[tuple[delivery_core.Job, delivery.Delivery]]) -> None:
    for job, result in results:
        if not delivery_core.same_record(job.previous, result):
            env.cluster.record_delivery(state.config.namespace, job.instance, result, state.now)
    state.deliveries.extend(results)


def deliver_removals(env: Env, state: PassState) -> None:
    """Before the PackInstances go: delete what their deliveries left on reachable clusters. One
    that cannot be cleaned up yet is held back (``UninstallPending``) and retried next pass."""
    assert state.plan is not None
    if env.dry_run or env.deliverer is None:
        return
    leaving = [c for c in state.plan.changes
               if c.kind is change.ObjectKind.PACK_INSTANCE and c.action is change.Action.UNINSTALL and c.pack_instance]
    if not leaving:
        return
    records = env.cluster.deliveries(state.config.namespace)
    held = _inventories(records)
    jobs = []
    for c in leaving:
        previous = records.get(c.name)
        cluster = state.clusters.get(c.cluster or "")
        if previous is None or not previous.inventory or cluster is None or not env.deliverer.reachable(cluster):
            continue
        assert c.pack_instance is not None
        job = _job(env, state, c.pack_instance, previous, delivery_core.Action.UNINSTALL, held.get(previous.cluster, {}))
        if job is not None:
            jobs.append(job)
    if not jobs:
        return
    results = env.deliverer.run(state.clusters, jobs, state.config.namespace)
    state.deliveries.extend(results)
    pending = {job.instance: result.message for job, result in results if result.result is not delivery.Result.PRUNED}
    for job, result in results:
        if result.result is not delivery.Result.PRUNED:
            env.cluster.record_delivery(state.config.namespace, job.instance, result, state.now)
    if pending:
        state.plan = plan.hold_uninstalls(state.plan, pending)


def deliver(env: Env, state: PassState) -> None:
    """Make every reachable target cluster run what its PackInstances say (push mode)."""
    assert state.plan is not None
    if env.deliverer is None:
        return
    reachable = {name for name, cluster in state.clusters.items() if env.deliverer.reachable(cluster)}
    state.records_only = sorted(set(state.clusters) - reachable)
    if env.dry_run or not reachable:
        return
    records = env.cluster.deliveries(state.config.namespace)
    held = _inventories(records)
    jobs = []
    for c in state.plan.changes:
        if c.kind is not change.ObjectKind.PACK_INSTANCE or c.cluster not in reachable:
            continue
        if c.action in (change.Action.CREATE, change.Action.SUPERSEDE):
            pi = c.pack_instance
        elif c.action is change.Action.UNCHANGED:
            pi = state.observed.instances.get(c.name) if state.observed is not None else None
        else:
            continue
        if pi is None:
            continue
        previous = records.get(c.name)
        action = delivery_core.action_for(previous, pi.manifest_digest, resync=env.resync)
        if action is None:
            continue
        job = _job(env, state, pi, previous, action, held.get(pi.cluster, {}))
        if job is not None:
            jobs.append(job)
    if jobs:
        _keep_deliveries(env, state, env.deliverer.run(state.clusters, jobs, state.config.namespace))


def write_status(env: Env, state: PassState) -> None:
    assert state.plan is not None and state.tree is not None
    if env.dry_run or env.status_writer is None:
        return
    in_place = getattr(env.status_writer, "in_place", None)
    if state.plan_reused and env.memo.status_written and not state.deliveries and (in_place is None or in_place()):
        return  # nothing changed since the records were last written, and the branch still holds them
    shipped = env.cluster.deliveries(state.config.namespace) if env.deliverer is not None else None
    records = status.records(state.plan, [r.compiled for r in state.compiled], state.observed, state.revision,
                             memo=env.memo.status_text, deliveries=shipped)
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
        compiled=[(r.build, r.compiled, r.cached) for r in state.compiled],
        writes=state.writes,
        published=state.published,
        dry_run=env.dry_run,
        status_error=state.status_error,
    )


STEPS: tuple[tuple[str, Step], ...] = (
    ("fetch", fetch),
    ("load", load_specs),
    ("compile", compile_packs),
    ("observe", observe),
    ("adopt", adopt_published),
    ("sign", sign),
    ("verify", verify),
    ("plan", make_plan),
    ("publish", publish),
    ("check", check_artifacts),
    ("unpack", deliver_removals),
    ("apply", apply),
    ("deliver", deliver),
    ("status", write_status),
    ("summarize", summarize_pass),
)


def settle() -> float:
    """Between two passes of one process (the daemon): collect the garbage the last pass left, then
    move every object still alive (memos, caches, the observed state) out of the collector's sight.

    A fleet's state is hundreds of thousands of long-lived objects; without this, every full
    collection during a pass walks all of them again (about half of a no-op pass at 10,000
    PackInstances). Frozen objects are still freed by reference counting when a later pass drops
    them; only a reference cycle among them would outlive its use, and the model has none.
    Returns the seconds it took."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - t0


def run(env: Env) -> PassState:
    """Run one pass. A stalled error in a single pack is recorded, not raised; anything that stops
    the whole pass (source unreachable, store failure, a broken gitopsd.yaml) is raised."""
    state = PassState()
    started = time.perf_counter()
    for name, step in STEPS:
        t0 = time.perf_counter()
        step(env, state)
        state.timings[name] = time.perf_counter() - t0
    state.timings["total"] = time.perf_counter() - started
    return state
