"""Compiling one pack: its cache key, the compile cache, remembered render failures, and the
render split around its child process.

``gitopsd.compiling`` (the compile step) schedules these for every pack of a pass; the artifact
repair of ``gitopsd.artifacts`` and ``gitopsd.preview`` compile one pack again with
:func:`compile_one`. Everything here reads the Tree, so it runs in the pass's thread; only the
call a renderer's ``prepare`` returns (a child process) may run in another.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
from collections.abc import Callable

from gitopsd import __version__, errors, passstate, ports
from gitopsd.core import compile as compile_core
from gitopsd.core import targets
from gitopsd.model import pack, spec

COMPILER = f"gitopsd/{__version__}"
LOCAL_REGISTRY = "oci-layout://packs"
FAILURE_TTL = 600.0  # seconds a remembered render failure holds for a new process (the default resync interval)
KEPT_RENDERS_BYTES = 64 * 1024 * 1024  # rendered YAML kept in one compile step for recompiles; past it, render again

Env = passstate.Env
PassState = passstate.PassState
CompileResult = passstate.CompileResult


@dataclasses.dataclass
class Started:
    """A compile past its cache lookup and every read of the Tree: the render's result, or the call
    that makes it (a renderer child process, which may run in another thread), or the render an
    earlier pass left running; and what compiling and caching the result need."""

    build: spec.PackBuild
    key: str
    inputs: compile_core.Inputs
    clusters: tuple[str, ...]
    rendered: ports.Rendered | None = None
    finish: Callable[[], ports.Rendered] | None = None
    running: concurrent.futures.Future[ports.Rendered] | None = None  # left running by an earlier pass
    running_since: float = 0.0  # time.monotonic() when that render's child started


def inputs_key(build: spec.PackBuild) -> str:
    """What the renderer input folders of ``build`` are kept under (``memo.inputs``)."""
    return f"{build.path}|{build.source}"


def _persisted_inputs_key(memo_key: str) -> str:
    return hashlib.sha256(f"{COMPILER}|{memo_key}".encode()).hexdigest()


def _inputs(env: Env, tree: ports.Tree, build: spec.PackBuild) -> list[str]:
    """The renderer's input folders, reused while every folder it walked keeps its tree id."""
    key = inputs_key(build)
    known = env.memo.inputs.get(key)
    if known is not None and tuple(tree.tree_id(f) for f in known[0]) == known[1]:
        return known[0]
    folders = env.renderers[build.category].inputs(tree, build)
    ids = tuple(tree.tree_id(f) for f in folders)
    env.memo.inputs[key] = (folders, ids)
    if isinstance(env.cache, ports.RemembersInputs):
        env.cache.remember_input_folders(_persisted_inputs_key(key), json.dumps([folders, ids]))
    return folders


def seed_inputs(env: Env, builds: list[spec.PackBuild]) -> None:
    """Take the renderer input folders a cache across processes holds for the packs this process
    has not walked yet (all of them, in a new process), in one lookup. They count exactly as this
    process's own (``_inputs``): while every folder keeps the tree id it was read from."""
    if not isinstance(env.cache, ports.RemembersInputs):
        return
    wanted = {_persisted_inputs_key(key): key for key in map(inputs_key, builds) if key not in env.memo.inputs}
    if not wanted:
        return
    for persisted, text in env.cache.input_folders(list(wanted)).items():
        try:
            folders, ids = json.loads(text)
            if all(isinstance(f, str) for f in folders) and all(isinstance(i, str) or i is None for i in ids) \
                    and len(folders) == len(ids):
                env.memo.inputs[wanted[persisted]] = (list(folders), tuple(ids))
        except (ValueError, TypeError):
            continue  # a damaged entry: the renderer walks the folders again


def cache_key(tree: ports.Tree, build: spec.PackBuild, *, extra: str, folders: list[str]) -> str:
    """The content ids of everything a pack reads. The CRD scopes its compile took from outside the
    pack are the rest of the key: a cached CompiledPack records them (``foreign_scopes``) and counts
    only while they are the scopes this pass knows (``compiling.fits``); otherwise the pack is compiled again."""
    digest = hashlib.sha256()
    digest.update(f"{COMPILER}\n{extra}\n{tree.tree_id(build.path)}\n{tree.tree_id(build.folder)}\n".encode())
    for folder in folders:
        digest.update(f"{folder}={tree.tree_id(folder)}\n".encode())
    return digest.hexdigest()


def registry_prefix(env: Env, state: PassState, build: spec.PackBuild) -> str:
    return build.registry_url or env.registry_url or state.config.registry or LOCAL_REGISTRY


def key(env: Env, state: PassState, build: spec.PackBuild) -> tuple[str, compile_core.Inputs, tuple[str, ...]]:
    """The cache key of ``build`` in this pass, the compile's inputs and the pack's target clusters."""
    tree = state.tree
    assert tree is not None
    clusters = targets.resolve(build, state.clusters)
    folders = _inputs(env, tree, build)
    inputs = compile_core.Inputs(
        namespace=state.config.namespace,
        registry=registry_prefix(env, state, build),
        target_clusters=clusters,
        revision=state.revision,
        commit_time=tree.snapshot.commit_time,
        tree_id=tree.tree_id(build.folder),
        compiler=COMPILER,
        crd_scopes=state.crd_scopes,
    )
    found = cache_key(tree, build, extra=f"{inputs.namespace}|{inputs.registry}|{','.join(clusters)}", folders=folders)
    return found, inputs, clusters


def remembered(env: Env, key: str) -> errors.GitopsdError | None:
    """The failure of an earlier render of exactly these inputs, unless this pass retries failures."""
    if env.retry_failed:
        return None
    known = env.memo.failures.get(key)
    if known is None:
        known = env.cache.failure(key, FAILURE_TTL) if isinstance(env.cache, ports.RemembersFailures) else None
        if known is None:
            return None
        env.memo.failures[key] = known
    reason, message = known
    return errors.StalledError(message, reason=reason)


def remember(env: Env, key: str, err: errors.GitopsdError) -> None:
    """Remember a render failure that needs a change in Git (not a transient one) by its cache key."""
    if not isinstance(err, errors.StalledError) or env.memo.failures.get(key) == (err.reason, str(err)):
        return  # a missing tool or an outage is not a property of the inputs
    env.memo.failures[key] = (err.reason, str(err))
    if isinstance(env.cache, ports.RemembersFailures):
        env.cache.remember_failure(key, err.reason, str(err))


def start(env: Env, state: PassState, build: spec.PackBuild, key: str, inputs: compile_core.Inputs,
          clusters: tuple[str, ...], *, use_cache: bool, defer: bool) -> CompileResult | Started:
    """The cache lookup and the render up to its child process (all of it when ``defer`` is off or
    the renderer cannot split, e.g. raw). A render of these inputs that an earlier pass left
    running is taken over, not started again. Reads the Tree: main thread only."""
    if use_cache:
        hit = env.cache.get(key)
        if hit is not None:
            return CompileResult(build, hit, clusters, cached=True, key=key)
        failed = remembered(env, key)
        if failed is not None:
            raise failed
        running = env.memo.running.pop(key, None)
        if running is not None:
            return Started(build, key, inputs, clusters, running=running.future, running_since=running.started)
    assert state.tree is not None
    renderer = env.renderers[build.category]
    started = Started(build, key, inputs, clusters)
    if defer and isinstance(renderer, ports.Preparing):
        started.finish = renderer.prepare(state.tree, build)
    else:
        started.rendered = renderer.render(state.tree, build)
    return started


def end(env: Env, state: PassState, started: Started, rendered: ports.Rendered, *, store: bool = True) -> CompileResult:
    """Compile a rendered pack and cache it (``store``); its render is kept when a CRD elsewhere may change a scope it used."""
    compiled = compile_core.compile_pack(
        started.build, rendered.documents, renderers=rendered.renderers, chart=rendered.chart, inputs=started.inputs,
        dropped_hooks=rendered.dropped_hooks, reproducible=rendered.reproducible,
    )
    if compiled.reproducible and store:
        # a render that differs each time is never cached: a cached one (from a dry-run, say) would
        # not match the artifact a later pass renders and publishes
        env.cache.put(started.key, compiled)
        env.memo.steady = None  # the entry may replace one the last pass's results hold: they are looked up again
    settled = dict(state.config.crds)  # gitopsd.yaml's entries win: no pack's CRD changes them
    if state.renders is not None and any(kind not in settled for kind, _ in compiled.foreign_scopes):
        size = sum(len(data) for _, data in rendered.documents)
        if state.renders_bytes + size <= KEPT_RENDERS_BYTES:
            state.renders[started.build.path] = rendered  # a CRD of a later pack may change a scope it used
            state.renders_bytes += size
    return CompileResult(started.build, compiled, started.clusters, cached=False, key=started.key)


def compile_one(env: Env, state: PassState, build: spec.PackBuild, *, use_cache: bool = True,
                store: bool = True) -> CompileResult:
    """Compile ``build`` now, in this thread (waiting for a render an earlier pass left running);
    ``store``: keep the result in the compile cache."""
    found, inputs, clusters = key(env, state, build)
    try:
        started = start(env, state, build, found, inputs, clusters, use_cache=use_cache, defer=False)
        if isinstance(started, CompileResult):
            return started
        rendered = started.running.result() if started.running is not None else started.rendered
        assert rendered is not None
        return end(env, state, started, rendered, store=store)
    except errors.GitopsdError as err:
        remember(env, found, err)
        raise


def artifact_of(env: Env, state: PassState, build: spec.PackBuild) -> pack.Artifact:
    """The artifact of ``build``, compiled again now (the compile cache keeps packs without their
    artifact). The cache entry is left as it is: it holds the compile that was published."""
    art = compile_one(env, state, build, use_cache=False, store=False).compiled.artifact
    assert art is not None
    return art
