"""What one reconcile pass is given (``Env``) and what its steps build (``PassState``).

``gitopsd.reconcile`` runs the steps; ``gitopsd.compiling`` and ``gitopsd.artifacts`` hold the
larger ones; the CLI, the daemon and the wiring build the ``Env`` (``gitopsd.wiring``) once per
command. ``Env.memo`` (``gitopsd.memo``) is what a process keeps between its passes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from gitopsd import memo as memo_
from gitopsd import ports
from gitopsd.core import delivery as delivery_core
from gitopsd.core import parse, plan, summarize
from gitopsd.model import change, delivery, instance, pack, spec


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
    memo: memo_.Memo = dataclasses.field(default_factory=memo_.Memo)
    # A pack whose render failed is not rendered again while its inputs keep their ids (a template
    # that spins would cost the render timeout on every pass): its failure is remembered by cache
    # key, in this process and in the compile cache for FAILURE_TTL seconds. A resync of the daemon
    # sets this to retry them all.
    retry_failed: bool = False
    # renderer child processes (kustomize, helm) the compile step runs at once; 1: one after another
    render_workers: int = dataclasses.field(default_factory=default_render_workers)
    deliverer: ports.Deliverer | None = None  # push delivery into target clusters; None: records only
    resync: bool = True  # a full pass: retry failed deliveries and check drift (the daemon's resync)
    # plan every basePackName, not only those whose inputs changed or the change feed names (resync, --full)
    full_plan: bool = False
    # more passes follow in this process (the daemon): a pass that wrote plans its written bases again
    # at its end, so that the next one plans nothing. A one-shot command has no next pass and skips it
    # (against Kubernetes it would cost a second list of every kind).
    passes_follow: bool = True
    # How long (seconds, counted from its child process's start) this pass waits for one render
    # before it leaves the render running and goes on without that pack (reason ``RenderPending``:
    # the pack keeps what it runs; a later pass takes the result). None: wait for every render
    # (dry-run and diff, which show the whole plan).
    render_wait: float | None = None


CompileResult = memo_.CompileResult


Desired = plan.Desired  # for PassState, where ``plan`` names a field


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """The packs whose inputs moved since the last pass (``gitopsd.reconcile.scope``): the steps after
    ``observe`` work those out and take the last pass's results (``carried``) for the others."""

    carried: memo_.Carried
    visit: tuple[int, ...]  # indexes of ``PassState.compiled``, in order

    def of(self, step: str) -> tuple[int, ...] | None:
        """The packs ``step`` works out: ``visit`` when the last pass kept that step's results, else
        None (every pack)."""
        return self.visit if step in self.carried.done else None


@dataclasses.dataclass
class PassState:
    tree: ports.Tree | None = None
    config: spec.RepoConfig = dataclasses.field(default_factory=spec.RepoConfig)
    clusters: dict[str, spec.Cluster] = dataclasses.field(default_factory=dict)
    builds: list[spec.PackBuild] = dataclasses.field(default_factory=list)
    loaded: memo_.Loaded | None = None  # what the load step took the PackBuilds from (None: no packs/ folder)
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
    scope: Scope | None = None  # None: the steps after observe work out every pack (see ``Scope``)
    carrying: memo_.Carried | None = None  # what they work out, for the next pass
    carried_next: memo_.Carried | None = None  # the same, worked out again after the pass's writes (settle)
    # of the settle step's own run of those steps: the bases whose plan inputs it changed (None: any)
    carried_next_touched: set[str] | None = None
    verdicts: dict[str, plan.Verdict] = dataclasses.field(default_factory=dict)
    # ClusterPack name -> (the ClusterPack ``sign`` made, the bytes it signed): its check reuses them
    signed: dict[str, tuple[pack.ClusterPack, bytes]] = dataclasses.field(default_factory=dict)
    # ClusterPack name -> (reason, detail) of a published artifact that does not verify: an input of the plan
    artifact_problems: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    plan: change.Plan | None = None
    plan_desired: tuple[Desired, ...] | None = None  # the desired packs the plan step planned (settle plans with them)
    published: int = 0
    writes: int = 0
    status_commit: str | None = None
    status_error: str | None = None
    plan_reused: bool = False  # the plan is the last pass's: no base planned again, and that plan wrote nothing
    replanned: int = 0  # basePackNames the plan step worked out (the rest kept their part of the last plan)
    now: str = ""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds of wall time per step
    # CPU seconds per step of the thread that ran the pass (renderer children and render threads not counted)
    cpu_timings: dict[str, float] = dataclasses.field(default_factory=dict)
    summary: summarize.Summary | None = None
    deliveries: list[tuple[delivery_core.Job, delivery.Delivery]] = dataclasses.field(default_factory=list)
    records_only: list[str] = dataclasses.field(default_factory=list)  # clusters with no way to reach them

    # ClusterPack name -> what ``observed`` holds under it, for the ``observed`` it was looked up in
    _stored: tuple[object, dict[str, instance.ObservedPack | None]] = dataclasses.field(
        default_factory=lambda: (None, {}), repr=False, compare=False)

    @property
    def revision(self) -> str:
        return self.tree.snapshot.revision if self.tree else ""

    def stored(self, name: str) -> instance.ObservedPack | None:
        """``observed.packs.get(name)``, looked up once per pass (the steps after ``observe`` each ask
        it for every pack)."""
        assert self.observed is not None
        of, found = self._stored
        if of is not self.observed:
            found = {}
            self._stored = (self.observed, found)
        if name in found:
            return found[name]
        pack_ = found[name] = self.observed.packs.get(name)
        return pack_


Step = Callable[[Env, PassState], None]
