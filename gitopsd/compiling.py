"""The compile step of a pass: every PackBuild compiled (or taken from the compile cache), with
renderer child processes overlapping, slow renders left running, and CRD scopes settled.

``gitopsd.reconcile`` runs :func:`compile_packs` as its ``compile`` step; one pack's compile (its
key, the cache, remembered failures) is ``gitopsd.packcompile``. Packs are recorded in path order
with the same results, errors, cache entries and progress lines whether renders overlap or not.

A render still running ``Env.render_wait`` seconds after its child process started is left
running: this pass goes on without that pack (``RenderPending``: it keeps what it runs, nothing
of it is pruned or uninstalled) and the result is taken by a later pass (``memo.Running``), so one
slow pack never holds the others' apply.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable

import structlog

from gitopsd import errors, memo, packcompile, passstate, ports
from gitopsd.core import compile as compile_core
from gitopsd.model import change, pack, spec

log = structlog.get_logger()

Env = passstate.Env
PassState = passstate.PassState
CompileResult = passstate.CompileResult

RENDERS_AHEAD = 2  # renders started per worker beyond the oldest one not yet taken back: bounds their output in memory
PACKS_AHEAD = 8  # packs started per worker and not yet recorded (raw ones are rendered at once): bounds memory too


def compile_packs(env: Env, state: PassState) -> None:
    """Compile every PackBuild, in path order; a failing pack is recorded and the others go on.
    With ``env.render_workers`` above 1, or a bound on waiting (``env.render_wait``), the renderer
    child processes run in threads (``_compile_overlapped``); the results, errors, cache entries and
    progress lines are the same.

    A custom kind's scope may come from a CRD in another pack: the packs are compiled with the
    scopes the last pass settled on (gitopsd.yaml's ``crds`` first), then ``_settle_scopes`` reads
    every pack's CRDs and compiles again only the packs that used a scope that turned out otherwise.

    In the daemon, a pass where nothing the packs are compiled from moved takes the last pass's
    results as they are (``_steady``): no pack is visited."""
    steady = _steady(env, state)
    if steady is not None:
        state.compiled, state.crd_scopes = steady, env.memo.crd_scopes
        if isinstance(env.cache, ports.RetainsEntries) and env.memo.steady is not None:
            env.cache.retain(env.memo.steady.keys)  # nothing looked up: these are the entries in use
        return
    every = sorted(state.builds, key=lambda b: b.path)
    reused, builds = _unchanged(env, state, every)
    packcompile.seed_inputs(env, builds)
    state.crd_scopes = compile_core.known_scopes(state.config.crds, [("", env.memo.crd_scopes)])[0]
    state.renders = {}
    earlier = dict(env.memo.running)
    try:
        if not builds:
            pass
        elif env.render_workers <= 1 and env.render_wait is None:
            for index, build in enumerate(builds):
                try:
                    outcome: CompileResult | errors.GitopsdError | _Left = packcompile.compile_one(env, state, build)
                except errors.GitopsdError as err:
                    outcome = err
                _record(env, state, index, len(builds), build, outcome)
        else:
            _compile_overlapped(env, state, builds, max(1, env.render_workers))
        fresh = state.compiled
        if reused:
            state.compiled = reused if not state.compiled else sorted([*reused, *state.compiled], key=lambda r: r.build.path)
        steady_after = False
        if reused and not builds and not state.unowned and len(reused) == len(env.memo.compiled):
            # every pack is the last pass's, from the same cache entries: so are their CRDs, the scopes
            # they settle on, and the packs compiled again with them
            state.crd_scopes = env.memo.crd_scopes
            steady_after = True
        elif reused and _scopes_hold(env, state, every, builds, fresh):
            state.crd_scopes = env.memo.crd_scopes
        else:
            _settle_scopes(env, state)
        _remember(env, state, every, builds)
        env.memo.steady = _steady_memo(env, state) if steady_after else None
    finally:
        state.renders, state.renders_bytes = None, 0
        for key, running in earlier.items():  # not taken: its pack is gone or its inputs changed
            if env.memo.running.get(key) is running:
                del env.memo.running[key]
    if isinstance(env.cache, ports.Flushing):
        env.cache.flush()


def _pass_inputs(env: Env, state: PassState) -> tuple[object, ...]:
    """What every pack's compile key is made of besides the pack's own files (``packcompile.key``)."""
    return (packcompile.COMPILER, state.config, tuple(state.clusters.values()), env.registry_url)


def _unchanged(env: Env, state: PassState,
               builds: list[spec.PackBuild]) -> tuple[list[CompileResult], list[spec.PackBuild]]:
    """The packs whose compile is the last pass's, from the cache, without working their keys out again:
    the same PackBuild, the same tree ids of the pack's folder (the same tree id of ``packs/``, or of
    the folder itself) and of the renderer's input folders outside it, the same pass-wide inputs, no
    render of it running. And the packs to compile (or look up in the cache) as usual. A pass that
    shows progress per pack, or retries failed renders (a resync), looks every pack up as usual."""
    tree = state.tree
    assert tree is not None
    last = env.memo.compiled_in
    if last is None or env.progress is not None or env.retry_failed or last[1] != _pass_inputs(env, state):
        return [], builds
    packs_id = tree.tree_id("packs")
    moved = last[0] != packs_id
    listing = env.memo.listing  # the load step's, with the tree id of every pack folder
    folder_ids = listing.folders if listing is not None and listing.packs_id == packs_id else {}

    def folder_id(folder: str) -> str:
        known = folder_ids.get(folder.removeprefix("packs/")) if folder.startswith("packs/") else None
        return known[0] if known is not None else tree.tree_id(folder)

    known_packs, running = env.memo.compiled, env.memo.running
    # the result of each pack this step took from the cache last time: given again while it holds the
    # same objects, so that the steps after this one see the same object for a pack that did not change
    earlier, kept = env.memo.reused, {}
    reused: list[CompileResult] = []
    todo: list[spec.PackBuild] = []
    for build in builds:
        known = known_packs.get(build.path)
        hit = None
        if (known is not None and (known.build is build or known.build == build) and known.key not in running
                and not (moved and folder_id(build.folder) != known.folder_id)
                and (not known.elsewhere
                     or all(tree.tree_id(folder) == tree_id for folder, tree_id in known.elsewhere))):
            hit = env.cache.get(known.key)
        if hit is None:
            todo.append(build)
        else:
            assert known is not None
            result = earlier.get(build.path)
            if result is None or result.compiled is not hit or result.build is not build or result.key != known.key \
                    or result.clusters != known.clusters:
                result = CompileResult(build, hit, known.clusters, cached=True, key=known.key)
            reused.append(result)
            kept[build.path] = result
    env.memo.reused = kept
    return reused, todo


def _steady(env: Env, state: PassState) -> list[CompileResult] | None:
    """The last pass's results, as they are, when that pass took every pack from the cache and nothing
    they were compiled from moved since: the same parsed PackBuilds (the load step's ``memo.Loaded``,
    so the same tree id of ``packs/``), the same tree ids of the renderers' input folders outside the
    packs' own, the same pass-wide inputs and shard, no render running. None: compile as usual."""
    last, tree = env.memo.steady, state.tree
    assert tree is not None
    if (last is None or state.loaded is None or last.loaded is not state.loaded or last.pack_filter is not env.pack_filter
            or env.progress is not None or env.retry_failed or env.memo.running
            or last.inputs != _pass_inputs(env, state)
            or any(tree.tree_id(folder) != tree_id for folder, tree_id in last.elsewhere)):
        return None
    return list(last.results)


def _steady_memo(env: Env, state: PassState, results: list[CompileResult] | None = None) -> memo.Steady | None:
    """What ``_steady`` compares the next pass with, after a pass that took every pack from the cache
    (or whose ``results`` are what its next pass takes from it)."""
    if state.loaded is None:
        return None
    elsewhere = {pair for known in env.memo.compiled.values() for pair in known.elsewhere}
    kept = tuple(state.compiled if results is None else results)
    return memo.Steady(loaded=state.loaded, pack_filter=env.pack_filter, inputs=_pass_inputs(env, state),
                       elsewhere=tuple(sorted(elsewhere)), results=kept, keys=frozenset(r.key for r in kept))


def next_results(env: Env, state: PassState, compiled: list[CompileResult]) -> list[CompileResult] | None:
    """After a pass that compiled packs (``compiled``: its compile step's results): the results the
    next pass's compile step gives when nothing moves (every pack from the cache, ``_unchanged``),
    made now and kept for it (``memo.reused``; ``memo.steady`` when every pack compiled). None when
    that cannot be told: a render left running, packs of other shards, a pack the cache does not hold."""
    if env.memo.running or state.unowned:
        return None
    out, made = [], []
    for result in compiled:
        if not result.cached:  # (a cached one is in ``memo.reused`` already: ``_unchanged``, ``_remember``)
            hit = env.cache.get(result.key) if result.key else None
            if hit is None:
                return None
            result = CompileResult(result.build, hit, result.clusters, cached=True, key=result.key)
            made.append(result)
        out.append(result)
    for result in made:
        env.memo.reused[result.build.path] = result
    if len(out) == len(state.builds) == len(env.memo.compiled):
        env.memo.steady = _steady_memo(env, state, out)
    return out


def _remember(env: Env, state: PassState, builds: list[spec.PackBuild], compiled: list[spec.PackBuild]) -> None:
    """Keep how each pack of ``compiled`` (those looked up or compiled as usual) was compiled, for ``_unchanged``."""
    tree = state.tree
    assert tree is not None
    known = env.memo.compiled
    if len(known) > len(builds):
        paths = {b.path for b in builds}
        known = env.memo.compiled = {path: c for path, c in known.items() if path in paths}
    for build in compiled:
        known.pop(build.path, None)
    looked = {b.path for b in compiled}
    for result in state.compiled if looked else ():
        build = result.build
        if build.path not in looked or not result.key:
            continue
        inputs = env.memo.inputs.get(packcompile.inputs_key(build))
        if inputs is None:
            continue
        inside = f"{build.folder}/"
        elsewhere = tuple((folder, tree_id) for folder, tree_id in zip(*inputs, strict=True)
                          if folder != build.folder and not folder.startswith(inside))
        known[build.path] = memo.Compiled(build=build, key=result.key, clusters=result.clusters,
                                          folder_id=tree.tree_id(build.folder), elsewhere=elsewhere)
        if result.cached:  # the cache's own entry: the next pass's ``_unchanged`` gives this result again
            env.memo.reused[build.path] = result
    env.memo.compiled_in = (tree.tree_id("packs"), _pass_inputs(env, state))


def fits(compiled: pack.CompiledPack, known: dict[str, str]) -> bool:
    """Whether ``compiled`` was compiled with the scopes in ``known`` for every kind it took from outside."""
    return all(known.get(kind, "") == scope for kind, scope in compiled.foreign_scopes)


def _scopes_hold(env: Env, state: PassState, every: list[spec.PackBuild], builds: list[spec.PackBuild],
                 fresh: list[CompileResult]) -> bool:
    """The CRD scopes the last pass settled on hold for this one, and every pack fits them: the same
    ``crds`` in gitopsd.yaml, no pack that had a CRD changed or went, no pack compiled (or looked up)
    now has one, and those were compiled with these scopes. Then ``_settle_scopes`` has nothing to do."""
    basis = env.memo.crd_basis
    if basis is None or state.unowned or basis[0] != state.config.crds:
        return False
    crd_paths = basis[1]
    if crd_paths and (not crd_paths.isdisjoint(b.path for b in builds) or not crd_paths <= {b.path for b in every}):
        return False
    known = dict(env.memo.crd_scopes)
    return not any(r.compiled.crds for r in fresh) and all(fits(r.compiled, known) for r in fresh)


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
    env.memo.crd_basis = None if state.unowned else (
        state.config.crds, frozenset(path for path, crds in sources if crds))  # (see ``_scopes_hold``)
    known = dict(scopes)
    settled: list[CompileResult] = []
    for result in state.compiled:
        if fits(result.compiled, known):
            settled.append(result)
            continue
        build = result.build
        try:
            rendered = state.renders.pop(build.path, None) if state.renders is not None else None
            if rendered is None:
                settled.append(packcompile.compile_one(env, state, build, use_cache=False))
            else:
                key, inputs, clusters = packcompile.key(env, state, build)
                try:
                    settled.append(packcompile.end(env, state, packcompile.Started(build, key, inputs, clusters), rendered))
                except errors.GitopsdError as err:
                    packcompile.remember(env, key, err)
                    raise
        except errors.GitopsdError as err:
            _failed(state, build, err)
            continue
        log.info("pack compiled again with the scopes of CRDs elsewhere", pack=build.base_pack_name, path=build.path)
    state.compiled = settled


def _crds_of(env: Env, state: PassState, build: spec.PackBuild) -> tuple[tuple[str, str], ...] | None:
    """The CRDs of a pack of another shard, or None when it does not compile (its shard reports it)."""
    try:
        return packcompile.compile_one(env, state, build).compiled.crds
    except errors.GitopsdError:
        return None


def _failed(state: PassState, build: spec.PackBuild, err: errors.GitopsdError) -> None:
    state.protected_paths.add(build.path)
    state.protected_bases.add(build.base_pack_name)
    state.pack_errors.append(
        change.PackError(path=build.path, pack=build.base_pack_name, reason=err.reason, message=str(err))
    )
    log.warning("pack failed", pack=build.base_pack_name, path=build.path, reason=err.reason, error=str(err))


@dataclasses.dataclass(frozen=True, slots=True)
class _Left:
    """A render still running past ``Env.render_wait``: its pack sits this pass out."""

    key: str
    running: memo.Running


def _left_running(env: Env, state: PassState, build: spec.PackBuild, left: _Left) -> None:
    """The pack keeps what it runs (its path and basePackName are protected from uninstall and
    pruning) and is reported ``RenderPending``; a later pass takes the render's result."""
    env.memo.running[left.key] = left.running
    state.protected_paths.add(build.path)
    state.protected_bases.add(build.base_pack_name)
    seconds = time.monotonic() - left.running.started
    message = (f"{build.path}: still rendering after {seconds:.0f}s; the pack keeps what it runs and a later pass "
               "applies it when the render ends")
    state.pack_errors.append(change.PackError(path=build.path, pack=build.base_pack_name, reason="RenderPending",
                                              message=message))
    log.warning("render left running", pack=build.base_pack_name, path=build.path, seconds=round(seconds, 1))


def _record(env: Env, state: PassState, index: int, total: int, build: spec.PackBuild,
            outcome: CompileResult | errors.GitopsdError | _Left) -> None:
    if isinstance(outcome, _Left):
        _left_running(env, state, build, outcome)
        if env.progress:
            env.progress("pending", {"index": index + 1, "total": total, "path": build.path})
        return
    if isinstance(outcome, errors.GitopsdError):
        err = outcome
        _failed(state, build, err)
        if env.progress:
            env.progress("failed", {"index": index + 1, "total": total, "path": build.path, "error": str(err)})
        return
    state.compiled.append(outcome)
    if env.progress:
        env.progress("compiled", {"index": index + 1, "total": total, "path": build.path, "cached": outcome.cached})


class _Lanes:
    """At most ``workers`` renderer child processes at once, each call in its own thread, started
    in the order they were submitted. A render left running gives its lane back (``leave``)."""

    def __init__(self, workers: int) -> None:
        self._turns = threading.Condition()
        self._free = workers
        self._issued = 0
        self._next = 0

    def submit(self, call: Callable[[], ports.Rendered]) -> _Render:
        render = _Render(call, self, self._issued)
        self._issued += 1
        threading.Thread(target=render.run, name="gitopsd-render", daemon=True).start()
        return render

    def enter(self, ticket: int) -> None:
        with self._turns:
            self._turns.wait_for(lambda: self._next == ticket and self._free > 0)
            self._free -= 1
            self._next += 1
            self._turns.notify_all()

    def leave(self) -> None:
        with self._turns:
            self._free += 1
            self._turns.notify_all()


class _Render:
    """One render call in its lane: a Future, and when its child process started."""

    def __init__(self, call: Callable[[], ports.Rendered], lanes: _Lanes, ticket: int) -> None:
        self.future: concurrent.futures.Future[ports.Rendered] = concurrent.futures.Future()
        self.started: float | None = None
        self._call = call
        self._lanes = lanes
        self._ticket = ticket
        self._lock = threading.Lock()
        self._holds = False

    def run(self) -> None:
        self._lanes.enter(self._ticket)
        with self._lock:
            self._holds = True
        try:
            if not self.future.set_running_or_notify_cancel():
                return  # cancelled before its turn (the step ended early)
            self.started = time.monotonic()
            try:
                result = self._call()
            except BaseException as err:  # noqa: BLE001 - handed to whoever takes the future
                self.future.set_exception(err)
            else:
                self.future.set_result(result)
        finally:
            self.give_back()

    def give_back(self) -> None:
        """Free this render's lane (once), whether it ended or is left running."""
        with self._lock:
            holds, self._holds = self._holds, False
        if holds:
            self._lanes.leave()


@dataclasses.dataclass
class _Slot:
    """One pack between its start and its record, in build order. ``late``: another pack ahead
    in the window has the same cache key, so this one starts at its turn, as one after another
    would (and meets that pack's cache entry)."""

    build: spec.PackBuild
    started: CompileResult | packcompile.Started | Exception | None = None
    future: concurrent.futures.Future[ports.Rendered] | None = None
    render: _Render | None = None
    key: str = ""
    late: bool = False

    def since(self) -> float | None:
        """When this pack's render child started (None while it waits for a lane)."""
        if self.render is not None:
            return self.render.started
        if isinstance(self.started, packcompile.Started) and self.started.running is not None:
            return self.started.running_since
        return None


def _compile_overlapped(env: Env, state: PassState, builds: list[spec.PackBuild], workers: int) -> None:
    """``compile_packs`` with up to ``workers`` renderer child processes at once, while this thread
    goes on with the next packs (raw ones are pure Python here). The Tree, the cache and the
    progress callback are used from this thread only; a render thread only runs the call a
    renderer's ``prepare`` returned. Packs are compiled, cached and recorded in build order, with
    the same results and errors as one after another; a cache hit starts no child process."""
    window: collections.deque[_Slot] = collections.deque()
    upcoming = collections.deque(builds)
    index = 0
    lanes = _Lanes(workers)
    try:
        while window or upcoming:
            futures = [slot.future for slot in window if slot.future is not None]
            head = window[0] if window else None
            head_waits = head is not None and head.future is not None and not head.future.done()
            busy = sum(1 for f in futures if not f.done())
            can_start = bool(upcoming) and len(futures) < RENDERS_AHEAD * workers and len(window) < PACKS_AHEAD * workers
            if can_start and (head is None or head_waits or busy < workers):
                slot = _Slot(upcoming.popleft())
                _begin(env, state, slot, lanes, pending={s.key for s in window if s.key and not s.late})
                window.append(slot)
                continue
            assert head is not None
            window.popleft()
            _record(env, state, index, len(builds), head.build, _take(env, state, head))
            index += 1
    finally:  # after an unexpected error: no new child, wait for the running ones
        for slot in window:
            if slot.future is not None and slot.render is not None:
                slot.future.cancel()
        concurrent.futures.wait([s.future for s in window if s.future is not None and s.render is not None])


def _begin(env: Env, state: PassState, slot: _Slot, lanes: _Lanes, *, pending: set[str]) -> None:
    try:
        slot.key, inputs, clusters = packcompile.key(env, state, slot.build)
        if slot.key in pending:
            slot.late = True
            return
        slot.started = packcompile.start(env, state, slot.build, slot.key, inputs, clusters, use_cache=True, defer=True)
    except Exception as err:  # noqa: BLE001 - recorded (or, when not a GitopsdError, raised) at the pack's turn
        slot.started = err
        return
    if isinstance(slot.started, packcompile.Started):
        if slot.started.running is not None:
            slot.future = slot.started.running
        elif slot.started.finish is not None:
            slot.render = lanes.submit(slot.started.finish)
            slot.future = slot.render.future


def _ended_in_time(env: Env, slot: _Slot) -> bool:
    """Wait for the head's render, at most ``env.render_wait`` seconds after its child started."""
    assert slot.future is not None
    bound = env.render_wait
    if bound is None:
        return True
    while not slot.future.done():
        since = slot.since()
        if since is None:  # its turn for a lane is about to come: every render ahead of it was taken
            concurrent.futures.wait([slot.future], timeout=0.05)
            continue
        left = since + bound - time.monotonic()
        if left <= 0:
            return False
        concurrent.futures.wait([slot.future], timeout=left)
    return True


def _take(env: Env, state: PassState, slot: _Slot) -> CompileResult | errors.GitopsdError | _Left:
    try:
        if slot.late:
            return packcompile.compile_one(env, state, slot.build)
        started = slot.started
        if isinstance(started, Exception):
            raise started
        assert started is not None
        if isinstance(started, CompileResult):
            return started
        if slot.future is not None and not _ended_in_time(env, slot):
            if slot.render is not None:
                slot.render.give_back()  # the packs behind it render meanwhile
            since = slot.since()
            assert since is not None
            return _Left(slot.key, memo.Running(slot.build.path, slot.future, since))
        rendered = slot.future.result() if slot.future is not None else started.rendered
        assert rendered is not None
        return packcompile.end(env, state, started, rendered)
    except errors.GitopsdError as err:
        if slot.key and not slot.late:
            packcompile.remember(env, slot.key, err)
        return err
