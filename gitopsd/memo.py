"""What one process keeps between its passes: the daemon's memory of pure work and of renders.

``gitopsd run`` keeps one ``Memo`` for its whole life, so a pass where nothing changed redoes
nothing; a one-shot command starts with an empty one (and a second pass of ``gitopsd reconcile``,
after a slow render, shares it). Every entry is keyed by what it depends on. The steps of
``gitopsd.reconcile`` and ``gitopsd.compiling`` read and fill it; ``gitopsd.daemon`` settles the
heap between passes and wakes a pass when a render left running ends.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Mapping

from gitopsd import errors, ports
from gitopsd.core import plan, replan, summarize
from gitopsd.model import change, instance, pack, spec


@dataclasses.dataclass(frozen=True, slots=True)
class CompileResult:
    """One pack of a pass, compiled (or taken from the cache). Never changed once made: a step that
    changes a pack's ClusterPack (adopt, sign) puts another result in its place, so that the
    next pass can tell an unchanged pack by the identity of its result."""

    build: spec.PackBuild
    compiled: pack.CompiledPack
    clusters: tuple[str, ...]
    cached: bool
    key: str = ""  # its compile cache key (``packcompile.key``)


@dataclasses.dataclass
class Running:
    """A render left running past the pass that started it (``Env.render_wait``): the next pass
    with the same inputs takes its result (or its failure) instead of rendering again."""

    path: str  # the PackBuild's path
    future: concurrent.futures.Future[ports.Rendered]
    started: float  # time.monotonic() when its child process started


@dataclasses.dataclass(frozen=True, slots=True)
class Listing:
    """What the load step found in ``packs/`` at one tree id of it (``gitopsd.loading``)."""

    packs_id: str
    folders: dict[str, tuple[str, tuple[tuple[str, str], ...]]]  # folder name -> (its tree id, ((PackBuild path, blob id), ...))
    found: tuple[tuple[str, str, str], ...]  # (folder name, PackBuild path, blob id), in listing order
    errors: tuple[change.PackError, ...]  # of the listing itself: submodules, symlinked or misnamed folders


@dataclasses.dataclass(frozen=True, slots=True)
class Loaded:
    """The PackBuilds of one ``Listing``, parsed: kept while the listing is the same."""

    listing: Listing
    builds: tuple[spec.PackBuild, ...]
    errors: tuple[change.PackError, ...]  # PackBuilds that did not parse
    protected_paths: frozenset[str]


@dataclasses.dataclass(frozen=True, slots=True)
class Compiled:
    """How one pack was compiled by the last pass that compiled it or took it from the cache: while its
    PackBuild, the tree ids it was read from and what the pass gives every pack stay the same, the
    compile step takes the cache entry under ``key`` without working the key out again."""

    build: spec.PackBuild
    key: str  # the cache key (``packcompile.key``)
    clusters: tuple[str, ...]
    folder_id: str  # tree id of the pack's folder
    elsewhere: tuple[tuple[str, str], ...]  # (folder, tree id) of the renderer's input folders outside the pack's folder


@dataclasses.dataclass(frozen=True, slots=True)
class Steady:
    """A compile step that took every pack from the cache: what it read, and its results (``compiling._steady``)."""

    loaded: Loaded
    pack_filter: object  # the shard's filter (``Env.pack_filter``) the builds were chosen with
    inputs: tuple[object, ...]  # what every pack's compile key is made of besides its own files
    elsewhere: tuple[tuple[str, str], ...]  # (folder, tree id) of every renderer input folder outside a pack's own
    results: tuple[CompileResult, ...]  # of every pack, in path order
    keys: frozenset[str]  # their compile cache keys


@dataclasses.dataclass(slots=True)
class Carried:
    """What the steps after ``observe`` worked out for every pack in one pass, kept for the next pass
    of the process: it works out again only the packs whose inputs moved (``gitopsd.passstate.Scope``).
    Indexes are positions in the pass's results (path order). A step fills its part and names itself
    in ``done``; a step whose part is missing works every pack out."""

    dry_run: bool
    compiled: list[CompileResult]  # the compile step's results
    parts: Mapping[str, instance.Part]  # what observe found, by base
    names: list[str]  # the ClusterPack name of each result
    bases: list[str]  # the basePackName of each result
    done: set[str] = dataclasses.field(default_factory=set)
    desired: list[CompileResult] = dataclasses.field(default_factory=list)  # after adopt and sign
    verdicts: dict[str, plan.Verdict] = dataclasses.field(default_factory=dict)  # ClusterPack name -> verdict
    published: set[int] = dataclasses.field(default_factory=set)  # results whose ClusterPack exists with their content
    # of those: an artifact found damaged (repaired or not), asked about again by the next pass
    unsound: set[int] = dataclasses.field(default_factory=set)
    moving: set[int] = dataclasses.field(default_factory=set)  # of those: an instance may be about to move to it
    plan_desired: tuple[plan.Desired, ...] = ()  # what the plan step planned with, one per result


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered:
    """What the last deliver step (``gitopsd.reconcile.deliver``) walked, to tell which bases the
    next one must walk again. What it decides for a PackInstance depends only on the instance's
    plan change (in its base's plan part), the instance as observed (in its base's observed part),
    its delivery record, and which clusters are reachable: a base whose two parts are the same
    objects, that had nothing to deliver, and whose records nobody else wrote, has nothing now."""

    plan_parts: Mapping[str, object]  # basePackName -> the plan part walked (identity)
    observed_parts: Mapping[str, object]  # basePackName -> the observed part walked (identity)
    unsettled: frozenset[str]  # the bases that had something to deliver (or an instance it could not read)
    reachable: frozenset[str]  # the clusters delivered to
    others_wrote: object  # ``ports.OthersWrite.others_wrote`` after the step (None: the parts show it)
    walked: int | None = None  # how many bases the step walked (None: every one)


@dataclasses.dataclass
class Memo:
    """Results of pure work kept between passes of one process (the daemon), each keyed by what
    it depends on, so that a pass where nothing changed redoes nothing: parsed PackBuilds by blob
    id, renderer inputs by the tree ids they were read from, signature verdicts by the exact bytes,
    the last plan by basePackName with the inputs of each part (``gitopsd.core.replan``), and each
    status record by the objects it is made of."""

    specs: dict[tuple[str, str], spec.PackBuild | errors.GitopsdError] = dataclasses.field(default_factory=dict)
    inputs: dict[str, tuple[list[str], tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    verdicts: dict[tuple[str, str, str | None], plan.Verdict] = dataclasses.field(default_factory=dict)
    plan: replan.Memory | None = None  # the last plan, by basePackName, and what it was made of
    status_written: bool = False
    summary_lines: summarize.Kept = dataclasses.field(default_factory=summarize.Kept)  # the last summary's pack lines
    # per basePackName: ((parts, inputs, JSON digest), YAML) of its status record (``core.status.records``)
    status_text: dict[str, tuple[tuple[object, object, bytes], bytes]] = dataclasses.field(default_factory=dict)
    failures: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # cache key -> (reason, message)
    crd_scopes: tuple[tuple[str, str], ...] = ()  # the CRD scopes the last pass settled on: this pass's first guess
    # what they were settled from: gitopsd.yaml's crds and the paths of the packs that have CRDs
    crd_basis: tuple[tuple[tuple[str, str], ...], frozenset[str]] | None = None
    running: dict[str, Running] = dataclasses.field(default_factory=dict)  # cache key -> a render still running
    # the load step's: (tree ids of gitopsd.yaml and clusters/, the config, the clusters) and what packs/ held
    settings: tuple[tuple[str, str], spec.RepoConfig, dict[str, spec.Cluster]] | None = None
    listing: Listing | None = None
    loaded: Loaded | None = None
    # the compile step's: what every pack it compiled was compiled with (PackBuild path -> Compiled), the
    # listing and the pass-wide inputs they were compiled in
    compiled: dict[str, Compiled] = dataclasses.field(default_factory=dict)
    compiled_in: tuple[object, ...] | None = None
    # PackBuild path -> the result the compile step last took from the cache for it
    reused: dict[str, CompileResult] = dataclasses.field(default_factory=dict)
    steady: Steady | None = None  # the last compile step's, when it took every pack from the cache
    # ClusterPack name -> (what it is, the observed part of its base) of every pack no instance was about
    # to move to in the last pass's artifact check (``gitopsd.artifacts``)
    settled_artifacts: dict[str, tuple[tuple[object, ...], object]] = dataclasses.field(default_factory=dict)
    carried: Carried | None = None  # what the last pass that ended worked out per pack after observe
    delivered: Delivered | None = None  # what the last deliver step left with nothing to do (``Delivered``)
    # the bases whose delivery records this process wrote since the status records were last made, and
    # ``ports.OthersWrite.others_wrote`` then: the status step makes those bases' records again
    records_written: set[str] = dataclasses.field(default_factory=set)
    status_others: object = None

    def renders_running(self) -> list[concurrent.futures.Future[ports.Rendered]]:
        """The renders a pass left running (done or not) that a later pass has not taken yet."""
        return [r.future for r in self.running.values()]
