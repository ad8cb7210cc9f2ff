"""Prometheus metrics of the daemon, on a private registry (no process-global state).

``gitopsd.daemon`` feeds it after every pass (``pass_finished`` with the ``PassState``, or
``failed`` with the error's reason); ``gitopsd.httpserver`` serves ``exposition()`` on
``/metrics``. Everything here is derived from the pass's own values; nothing is measured twice.
"""

from __future__ import annotations

import datetime

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from gitopsd import reconcile
from gitopsd.model import change

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# A pass over a handful of cached packs takes well under a second; a cold one with helm charts or a
# slow registry takes tens of seconds.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# From a push to the applied change: webhook (seconds), poll (interval), or resync (minutes).
LATENCY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Result:
    """Values of the ``result`` label of ``gitopsd_reconcile_duration_seconds``."""

    READY = "ready"  # the pass completed and every pack is Ready
    NOT_READY = "not_ready"  # the pass completed; some pack failed or is blocked
    ERROR = "error"  # the pass stopped on an error (see gitopsd_errors_total)


def commit_seconds(commit_time: str) -> float | None:
    """RFC 3339 commit time as Unix seconds; ``None`` when it cannot be read."""
    try:
        when = datetime.datetime.fromisoformat(commit_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconcile_duration = Histogram(
            "gitopsd_reconcile_duration_seconds", "Duration of reconcile passes, by result (ready, not_ready, error).",
            ["result"], buckets=DURATION_BUCKETS, registry=r)
        for result in (Result.READY, Result.NOT_READY, Result.ERROR):
            self.reconcile_duration.labels(result=result)  # exported at 0 before the first pass
        self.commit_to_applied = Histogram(
            "gitopsd_commit_to_applied_seconds", "From the commit time of a revision to the end of the pass that "
            "applied it (passes with writes only).", buckets=LATENCY_BUCKETS, registry=r)
        self.changes = Counter(
            "gitopsd_changes", "Planned changes by object kind and action (unchanged objects are not counted).",
            ["kind", "action"], registry=r)
        self.errors = Counter(
            "gitopsd_errors", "Errors by reason: failed packs and passes stopped by an error.", ["reason"], registry=r)
        self.last_applied = Info(
            "gitopsd_last_applied", "The revision of the last pass that completed.", registry=r)
        self.last_success = Gauge(
            "gitopsd_last_success_timestamp_seconds", "Unix time at which the last pass completed.", registry=r)
        self.packs = Gauge("gitopsd_packs", "Packs in the last completed pass (including failed ones).", registry=r)
        self.skipped = Counter(
            "gitopsd_polls_skipped", "Polls that found the revision already reconciled, so ran no pass.", registry=r)
        self.deliveries = Counter(
            "gitopsd_deliveries", "Deliveries into target clusters by action (deliver, drift, uninstall) and result "
            "(Delivered, Failed, TimedOut, Refused, Unreachable, Pruned).", ["action", "result"], registry=r)
        self.delivery_duration = Histogram(
            "gitopsd_delivery_apply_duration_seconds", "Time a delivery spent applying its stages and waiting for them "
            "to be healthy.", buckets=DURATION_BUCKETS, registry=r)
        self.drifted = Gauge(
            "gitopsd_drifted_objects", "Objects found drifted from what gitopsd applied, at the last drift check of each "
            "target cluster.", ["cluster"], registry=r)

    def pass_finished(self, state: reconcile.PassState, seconds: float, *, now: float) -> None:
        """Record a completed pass; ``now`` is the Unix time at its end."""
        summary = state.summary
        assert summary is not None and state.plan is not None
        self.reconcile_duration.labels(result=Result.READY if summary.ready else Result.NOT_READY).observe(seconds)
        for (kind, action), n in state.plan.counts().items():
            if action is not change.Action.UNCHANGED:
                self.changes.labels(kind=str(kind), action=str(action)).inc(n)
        for err in summary.errors:
            self.errors.labels(reason=err.reason).inc()
        if state.writes and state.tree is not None:
            committed = commit_seconds(state.tree.snapshot.commit_time)
            if committed is not None and now >= committed:
                self.commit_to_applied.observe(now - committed)
        drifted: dict[str, int] = {}
        for job, result in state.deliveries:
            self.deliveries.labels(action=str(job.action), result=str(result.result)).inc()
            if result.stages:
                self.delivery_duration.observe(sum(s.seconds for s in result.stages))
            if str(job.action) == "drift":
                drifted[job.cluster] = drifted.get(job.cluster, 0) + len(result.drifted)
        for cluster, count in drifted.items():
            self.drifted.labels(cluster=cluster).set(count)
        self.last_applied.info({"revision": state.revision})
        self.last_success.set(now)
        self.packs.set(len(summary.packs))

    def failed(self, reason: str, seconds: float | None) -> None:
        """Record a pass that stopped on an error after ``seconds``, or a failed ``head()`` poll (None)."""
        if seconds is not None:
            self.reconcile_duration.labels(result=Result.ERROR).observe(seconds)
        self.errors.labels(reason=reason).inc()

    def poll_skipped(self) -> None:
        self.skipped.inc()

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
