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

from gitopsd import errors, ports
from gitopsd.core import plan, replan, summarize
from gitopsd.model import spec


@dataclasses.dataclass
class Running:
    """A render left running past the pass that started it (``Env.render_wait``): the next pass
    with the same inputs takes its result (or its failure) instead of rendering again."""

    path: str  # the PackBuild's path
    future: concurrent.futures.Future[ports.Rendered]
    started: float  # time.monotonic() when its child process started


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
    summary_lines: dict[str, tuple[object, summarize.PackLine]] = dataclasses.field(default_factory=dict)  # per basePackName
    status_text: dict[str, tuple[tuple[object, object], bytes]] = dataclasses.field(default_factory=dict)  # per basePackName
    failures: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # cache key -> (reason, message)
    crd_scopes: tuple[tuple[str, str], ...] = ()  # the CRD scopes the last pass settled on: this pass's first guess
    running: dict[str, Running] = dataclasses.field(default_factory=dict)  # cache key -> a render still running

    def renders_running(self) -> list[concurrent.futures.Future[ports.Rendered]]:
        """The renders a pass left running (done or not) that a later pass has not taken yet."""
        return [r.future for r in self.running.values()]
