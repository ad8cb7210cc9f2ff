"""Read what each target cluster holds against what delivery would make of it; write nothing.

For every object a PackInstance would deliver: a get, and when the object exists, a server-side
apply dry run (``dryRun=All``, field manager ``gitopsd``) whose answer is what a delivery would
leave. A conflict with a person's edit (kubectl, a dashboard) is dry-run again with force, as
delivery's drift correction takes such fields back; a conflict with a controller is not drift.
Objects of the last delivery's inventory that a delivery would prune are read to tell which of
them it would really delete. Clusters are read concurrently; one that cannot be reached or read
is reported with its reason and the others are still compared. The only requests sent are GET
(discovery, objects) and dry-run PATCH. ``core.livediff`` makes the verdicts; ``reach`` connects.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence

import structlog

from gitopsd import errors
from gitopsd.core import delivery as delivery_core
from gitopsd.core import livediff, objdiff
from gitopsd.delivery import reach as reach_mod
from gitopsd.delivery import target as target_mod
from gitopsd.model import spec

log = structlog.get_logger()


def _dry_run(target: target_mod.Target, body: Mapping[str, object], force: bool) -> dict[str, object] | None:
    """What applying ``body`` would leave; None when fields it sets belong to a controller now."""
    try:
        return target.apply(body, force=force, dry_run=True)
    except target_mod.ApiRefusal as err:
        managers = err.conflicting_managers()
        if err.status != 409 or not managers:
            raise
        if not all(delivery_core.hand_edit(m) for m in managers):
            return None  # another controller's fields (an HPA's replicas): delivery leaves them, not drift
        return target.apply(body, force=True, dry_run=True)  # a person's edit: delivery takes it back


def pack(target: target_mod.Target, wanted: livediff.Wanted) -> livediff.PackLive:
    """One PackInstance on one connected cluster. Connection failures propagate (the cluster's)."""
    changed: list[objdiff.Changed] = []
    missing: list[str] = []
    refused: list[livediff.Refused] = []
    in_sync = 0
    if not wanted.problem:
        for it in livediff.desired(wanted):
            e = it.entry
            try:
                live = target.get(e.api_version, e.kind, e.namespace, e.name)
            except target_mod.UnknownKind:
                live = None  # its CustomResourceDefinition is not there yet: neither is the object
            if live is None:
                missing.append(e.subject)
                continue
            try:
                after = _dry_run(target, it.body, wanted.force)
            except target_mod.ApiRefusal as err:
                refused.append(livediff.Refused(e.subject, f"{err.reason}: {err}"))
                continue
            found = livediff.compare(live, after, e.subject) if after is not None else None
            if found is None:
                in_sync += 1
            else:
                changed.append(found)
    prune = []
    for e in livediff.prune_candidates(wanted):
        try:
            live = target.get(e.api_version, e.kind, e.namespace, e.name)
        except target_mod.UnknownKind:
            continue
        if livediff.prunable(live, wanted.instance):
            prune.append(e.subject)
    return livediff.pack_live(wanted, changed, missing, prune, refused, in_sync)


def cluster(where: reach_mod.Reach, found: spec.Cluster, namespace: str,
            wanted: Sequence[livediff.Wanted]) -> livediff.ClusterLive:
    """Every PackInstance of one cluster; an unreachable or unreadable cluster is one error."""
    try:
        target = where.connect(found, namespace)
    except errors.GitopsdError as err:
        return livediff.ClusterLive(found.name, error=f"{err.reason}: {err}")
    assert target is not None  # only reachable clusters are asked
    try:
        return livediff.ClusterLive(found.name, tuple(pack(target, w) for w in wanted))
    except errors.GitopsdError as err:  # ClusterUnreachable, ClusterUnauthorized, a 5xx after retries
        log.warning("live diff failed", cluster=found.name, reason=err.reason, error=str(err))
        return livediff.ClusterLive(found.name, error=f"{err.reason}: {' '.join(str(err).split())}")
    finally:
        target.close()


def compare(where: reach_mod.Reach, clusters: Mapping[str, spec.Cluster], namespace: str,
            wanted: Sequence[livediff.Wanted], *, workers: int = 4) -> livediff.Report:
    """The report over every cluster ``where`` reaches; the others are records-only."""
    reachable = {name for name, c in clusters.items() if where.where(c, namespace) is not None}
    grouped = livediff.by_cluster(w for w in wanted if w.cluster in reachable)
    for name in reachable:
        grouped.setdefault(name, [])
    results: list[livediff.ClusterLive] = []
    if grouped:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(grouped))),
                                                   thread_name_prefix="gitopsd-live") as pool:
            futures = [pool.submit(cluster, where, clusters[name], namespace, items) for name, items in sorted(grouped.items())]
            results = [f.result() for f in futures]
    return livediff.Report(tuple(results), tuple(sorted(set(clusters) - reachable)))
