"""Delivery jobs of one pass, carried out cluster by cluster (``ports.Deliverer``).

Clusters are delivered concurrently, at most ``workers`` at once; the jobs of one cluster run one
after another (their order: uninstalls, then deliveries, then drift checks). An unreachable
cluster, a kubeconfig that cannot be used or a failing object affects only the jobs of that
cluster (or that PackInstance): every job gets a result.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Sequence

import structlog

from gitopsd import errors
from gitopsd.core import conditions
from gitopsd.core import delivery as delivery_core
from gitopsd.delivery import engine as engine_mod
from gitopsd.delivery import reach as reach_mod
from gitopsd.model import delivery, spec

log = structlog.get_logger()

UNREACHABLE = "ClusterUnreachable"  # the reason of a failed connection (target.Target)
_ORDER = {delivery_core.Action.UNINSTALL: 0, delivery_core.Action.DELIVER: 1, delivery_core.Action.DRIFT: 2}


class Runner:
    def __init__(self, reach: reach_mod.Reach, engine: engine_mod.Engine, *, workers: int = 4) -> None:
        self.reach = reach
        self.engine = engine
        self.workers = max(1, workers)

    def reachable(self, cluster: spec.Cluster) -> bool:
        return self.reach.where(cluster) is not None

    def run(self, clusters: dict[str, spec.Cluster], jobs: Sequence[delivery_core.Job],
            namespace: str) -> list[tuple[delivery_core.Job, delivery.Delivery]]:
        by_cluster: dict[str, list[delivery_core.Job]] = collections.defaultdict(list)
        for job in jobs:
            by_cluster[job.cluster].append(job)
        if not by_cluster:
            return []
        out: list[tuple[delivery_core.Job, delivery.Delivery]] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.workers, len(by_cluster)),
                                                   thread_name_prefix="gitopsd-deliver") as pool:
            futures = [pool.submit(self._cluster, clusters[name], todo, namespace)
                       for name, todo in sorted(by_cluster.items())]
            for future in futures:
                out.extend(future.result())
        return out

    def _cluster(self, cluster: spec.Cluster, jobs: list[delivery_core.Job],
                 namespace: str) -> list[tuple[delivery_core.Job, delivery.Delivery]]:
        try:
            target = self.reach.connect(cluster, namespace)
        except errors.GitopsdError as err:
            log.warning("cluster unreachable", cluster=cluster.name, reason=err.reason, error=str(err))
            return [(job, self._failed(job, delivery.Result.UNREACHABLE, f"{err.reason}: {err}", err.reason)) for job in jobs]
        if target is None:
            return []
        jobs = self._ordered(jobs)
        results = []
        try:
            for job in jobs:
                results.append((job, self._one(job, target)))
                last = results[-1][1]
                if last.reason == UNREACHABLE:  # no connection: the others would wait for the same timeout
                    results += [(j, self._failed(j, delivery.Result.UNREACHABLE, last.message, UNREACHABLE))
                                for j in jobs[len(results):]]
                    break
        finally:
            target.close()
        return results

    def _ordered(self, jobs: list[delivery_core.Job]) -> list[delivery_core.Job]:
        """Uninstalls first, then deliveries in dependency order (what provides a Namespace or a
        custom kind before what lives in it or is of it; ``dependsOn``), then drift checks."""
        delivering = {j.instance: j for j in jobs if j.action is delivery_core.Action.DELIVER}
        provides, needs = {}, {}
        for name, job in delivering.items():
            try:
                objects = [obj for layer in self.engine.objects(job).values() for obj, _ in layer]
            except errors.GitopsdError:
                objects = []  # refused: it applies nothing, so it needs and provides nothing
            provides[name], needs[name] = delivery_core.provides_and_needs(objects)
        by_base = {j.base_pack_name: j.instance for j in delivering.values()}
        depends = {name: frozenset(by_base[b] for b in job.depends_on if b in by_base) for name, job in delivering.items()}
        ranked = {name: i for i, name in enumerate(delivery_core.order(list(delivering), provides, needs, depends))}
        return sorted(jobs, key=lambda j: (_ORDER[j.action], ranked.get(j.instance, 0), j.instance))

    def _one(self, job: delivery_core.Job, target: engine_mod.target_mod.Target) -> delivery.Delivery:
        try:
            if job.action is delivery_core.Action.UNINSTALL:
                return self.engine.uninstall(job, target)
            if job.action is delivery_core.Action.DRIFT:
                return self.engine.check_drift(job, target)
            return self.engine.deliver(job, target)
        except errors.TransientError as err:
            return self._failed(job, delivery.Result.UNREACHABLE, f"{err.reason}: {err}", err.reason)
        except errors.GitopsdError as err:
            return self._failed(job, delivery.Result.FAILED, f"{err.reason}: {err}", err.reason)

    def _failed(self, job: delivery_core.Job, result: delivery.Result, message: str, reason: str) -> delivery.Delivery:
        kept = job.previous.inventory if job.previous is not None else ()
        return conditions.decide_delivery(delivery.Delivery(
            cluster=job.cluster, result=result, digest=job.digest, version=job.version,
            message=" ".join(message.split())[:1000], inventory=kept, drift_mode=job.options.drift, at=self.engine.now(),
            reason=reason))
