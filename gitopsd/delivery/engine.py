"""The delivery engine: make one target cluster run what one PackInstance says.

For a PackInstance whose ClusterPack the cluster does not run yet (or whose last delivery failed):

1. verify before apply: the ClusterPack's signature against the trusted keys, then the artifact
   fetched by digest (manifest and every blob recomputed, layer digests as the ClusterPack says);
   any mismatch refuses the delivery with nothing applied (``Refused``);
2. apply stage by stage (``gitopsd.core.delivery.STAGES``) with server-side apply, field manager
   ``gitopsd``; each stage waits until its objects are healthy (``gitopsd.core.health``) for at
   most the pack's timeout; a refused object or a stage that fails or times out stops the later
   stages and says which objects and why;
3. once every stage is healthy, prune what the previous inventory has and the new one lacks
   (never an object another PackInstance holds, one labelled for another instance, or one
   annotated ``gitopsd.dev/prune: disabled``).

For one the cluster runs already, a drift check (on resync): each inventory object is read and
compared with a server-side apply dry run of what was applied; ``correct`` re-applies drifted
objects, ``warn`` reports them. Uninstall deletes the whole inventory in reverse stage order.

Everything here runs against ``gitopsd.delivery.target.Target``; the result is a
``model.delivery.Delivery`` that the caller stores on the PackInstance, with the conditions
``gitopsd.core.conditions.of_delivery`` decides from how it ended (every record made here goes
through ``conditions.decide_delivery``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog

from gitopsd import errors, ports
from gitopsd.core import artifact as artifact_core
from gitopsd.core import conditions, health, signing
from gitopsd.core import delivery as delivery_core
from gitopsd.delivery import target as target_mod
from gitopsd.model import delivery, pack

log = structlog.get_logger()

Job = delivery_core.Job
PARSED_KEPT = 256  # artifacts whose checked objects are kept between passes
Options = delivery_core.Options


class ArtifactSource(Protocol):
    def pull(self, repository: str, digest: str) -> tuple[bytes, dict[str, bytes]]:
        """The manifest bytes and every blob it names, as stored (not yet checked)."""


class Refused(errors.GitopsdError):
    reason = "ArtifactRefused"


class Engine:
    def __init__(self, artifacts: ArtifactSource, verifier: ports.Verifier | None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], str] = lambda: "") -> None:
        self.artifacts = artifacts
        self.verifier = verifier
        self.clock = clock
        self.sleep = sleep
        self.now = now
        self._parsed: dict[str, dict[pack.Layer, list[tuple[dict[str, Any], str]]]] = {}  # by manifest digest

    # -- verify and read ---------------------------------------------------------------------

    def objects(self, job: Job) -> dict[pack.Layer, list[tuple[dict[str, Any], str]]]:
        """The artifact's objects by layer, each with its layer digest, after every check passed."""
        digest = job.digest
        if job.signature is None:
            raise Refused(f"ClusterPack {job.base_pack_name} {job.version} is not signed; nothing is delivered unsigned")
        if self.verifier is not None and not self.verifier.verify(signing.payload_of_spec_json(job.spec_json), job.signature):
            raise Refused(f"the signature of ClusterPack {job.base_pack_name} {job.version} does not verify against the "
                          "trusted keys; nothing applied", reason="SignatureInvalid")
        cached = self._parsed.get(digest)  # bytes already checked against this digest (every job's signature is checked)
        if cached is not None:
            return cached
        manifest, blobs = self.artifacts.pull(job.base_pack_name, digest)
        if artifact_core.digest_of(manifest) != digest:
            raise Refused(f"artifact {job.base_pack_name}@{digest}: the manifest has digest {artifact_core.digest_of(manifest)}; "
                          "nothing applied", reason="ArtifactMismatch")
        try:
            descriptors = json.loads(manifest)["layers"]
        except (ValueError, KeyError, TypeError) as err:
            raise Refused(f"artifact {job.base_pack_name}@{digest}: not a pack manifest ({err})",
                          reason="ArtifactMismatch") from err
        expected = {layer: job.spec.get(field) for layer, field in (
            (pack.Layer.RBAC, "rbacDigest"), (pack.Layer.CLUSTER_SCOPED, "clusterScopedDigest"),
            (pack.Layer.WORKLOAD, "workloadDigest"))}
        by_layer: dict[pack.Layer, list[tuple[dict[str, Any], str]]] = {}
        for descriptor in descriptors:
            layer = next((lay for lay in pack.Layer if lay.media_type == descriptor.get("mediaType")), None)
            blob_digest = str(descriptor.get("digest"))
            data = blobs.get(blob_digest)
            if layer is None:
                continue
            if data is None or artifact_core.digest_of(data) != blob_digest:
                raise Refused(f"artifact {job.base_pack_name}@{digest}: layer {layer} {blob_digest} is missing or does not "
                              "match its digest; nothing applied", reason="ArtifactMismatch")
            if expected.get(layer) and expected[layer] != blob_digest:
                raise Refused(f"artifact {job.base_pack_name}@{digest}: layer {layer} is {blob_digest}, the ClusterPack says "
                              f"{expected[layer]}; nothing applied", reason="ArtifactMismatch")
            by_layer[layer] = [(obj, blob_digest) for obj in delivery_core.objects_of_layer(data)]
        if len(self._parsed) >= PARSED_KEPT:  # a long-running daemon keeps a bounded number of artifacts read
            self._parsed.pop(next(iter(self._parsed)))
        self._parsed[digest] = by_layer
        return by_layer

    # -- deliver -----------------------------------------------------------------------------

    def deliver(self, job: Job, target: target_mod.Target) -> delivery.Delivery:
        previous = job.previous
        kept = previous.inventory if previous is not None else ()
        try:
            planned = delivery_core.stages(self.objects(job), instance=job.instance, upgrade=bool(kept))
        except Refused as err:
            log.warning("delivery refused", instance=job.instance, cluster=job.cluster, reason=err.reason, error=str(err))
            return self._record(job, delivery.Result.REFUSED, f"{err.reason}: {err}", kept, (), "", reason=err.reason)
        except errors.GitopsdError as err:
            return self._record(job, delivery.Result.FAILED, f"{err.reason}: {err}", kept, (), "", reason=err.reason)
        runs: list[delivery.StageRun] = []
        applied: list[delivery.Entry] = []
        try:
            created = self._create_namespaces(planned, target, job.instance)
        except errors.GitopsdError as err:
            result = delivery.Result.UNREACHABLE if isinstance(err, errors.TransientError) else delivery.Result.FAILED
            return self._record(job, result, f"namespaces: {err}", kept, (), "", reason=err.reason)
        for stage in planned:
            started = self.clock()
            try:
                self._apply_stage(stage, target, job, applied)
                unhealthy = self._wait_healthy(stage, target, job.options.timeout)
                if unhealthy is None:
                    unhealthy = self._wait_served(stage, target, job.options.timeout)
            except errors.TransientError as err:
                runs.append(delivery.StageRun(stage.name, len(stage.items), self.clock() - started, False, str(err)))
                return self._record(job, delivery.Result.UNREACHABLE, f"stage {stage.name}: {err}",
                                    _union(kept, applied), runs, stage.name, reason=err.reason)
            except errors.GitopsdError as err:
                runs.append(delivery.StageRun(stage.name, len(stage.items), self.clock() - started, False, str(err)))
                return self._record(job, delivery.Result.FAILED, f"stage {stage.name}: {err}", _union(kept, applied), runs,
                                    stage.name, reason=err.reason)
            seconds = self.clock() - started
            if unhealthy is not None:
                result, waited = unhealthy
                runs.append(delivery.StageRun(stage.name, len(stage.items), seconds, False, waited))
                return self._record(job, result, f"stage {stage.name}: {waited}", _union(kept, applied), runs, stage.name,
                                    reason="HealthCheckFailed" if result is delivery.Result.FAILED else "HealthCheckTimeout")
            runs.append(delivery.StageRun(stage.name, len(stage.items), seconds, True))
        inventory = delivery_core.inventory(planned)
        try:
            pruned = self._prune(target, delivery_core.to_prune(kept, inventory, job.held_elsewhere), job.instance)
        except errors.GitopsdError as err:
            return self._record(job, delivery.Result.FAILED, f"prune: {err}", _union(kept, inventory), runs, "prune",
                                reason=err.reason)
        message = f"{job.base_pack_name} {job.version} delivered in {len(runs)} stages"
        if created:
            message += f"; created namespace {', '.join(created)}"
        if pruned:
            message += f"; pruned {', '.join(pruned)}"
        log.info("delivered", instance=job.instance, cluster=job.cluster, version=job.version, stages=len(runs),
                 pruned=len(pruned))
        return self._record(job, delivery.Result.DELIVERED, message, inventory, runs, runs[-1].name if runs else "")

    def _create_namespaces(self, planned: list[delivery_core.Stage], target: target_mod.Target, instance: str) -> list[str]:
        """Create the namespaces the pack's objects live in that neither exist nor come with the
        pack (as ``helm install --create-namespace`` does). They are not in the inventory: an
        uninstall leaves them, with whatever else lives in them."""
        own = {it.entry.name for stage in planned for it in stage.items if it.entry.kind == "Namespace"}
        wanted = sorted({it.entry.namespace for stage in planned for it in stage.items
                         if it.entry.namespace and it.entry.namespace not in own})
        created = []
        for name in wanted:
            if target.get("v1", "Namespace", "", name) is None:
                target.apply({"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": name, "labels": {delivery_core.INSTANCE_LABEL: instance}}})
                created.append(name)
        return created

    def _apply_stage(self, stage: delivery_core.Stage, target: target_mod.Target, job: Job,
                     applied: list[delivery.Entry]) -> None:
        for it in stage.items:
            if it.hook and ("before-hook-creation" in it.delete_policy or not it.delete_policy):
                e = it.entry
                if target.delete(e.api_version, e.kind, e.namespace, e.name):
                    self._wait_gone(target, e, job.options.timeout)
            target.apply(it.body, force=job.options.force)
            if not it.hook:
                applied.append(it.entry)

    def _wait_healthy(self, stage: delivery_core.Stage, target: target_mod.Target,
                      timeout: float) -> tuple[delivery.Result, str] | None:
        """None when every item of the stage is healthy; otherwise the result and why: FAILED when an
        object failed for good (``failed: ...``), TIMED_OUT when time ran out (``timed out ...``)."""
        deadline = self.clock() + timeout
        pending = list(stage.items)
        delay = 0.2
        while True:
            waiting = []
            for it in pending:
                e = it.entry
                live = target.get(e.api_version, e.kind, e.namespace, e.name)
                if live is None:
                    waiting.append((it, "not found"))
                    continue
                verdict = self._health(live, target)
                if verdict.status is health.Status.FAILED:
                    return delivery.Result.FAILED, f"failed: {e.subject}: {verdict.message}"
                if not verdict.healthy:
                    waiting.append((it, verdict.message))
            if not waiting:
                for it in stage.items:
                    if it.hook and "hook-succeeded" in it.delete_policy:
                        target.delete(it.entry.api_version, it.entry.kind, it.entry.namespace, it.entry.name)
                return None
            if self.clock() >= deadline:
                shown = "; ".join(f"{it.entry.subject}: {why}" for it, why in waiting[:5])
                more = f" (and {len(waiting) - 5} more)" if len(waiting) > 5 else ""
                return delivery.Result.TIMED_OUT, f"timed out after {timeout:g}s waiting for {shown}{more}"
            pending = [it for it, _ in waiting]
            self.sleep(min(delay, max(0.0, deadline - self.clock())))
            delay = min(delay * 1.5, 2.0)

    def _wait_served(self, stage: delivery_core.Stage, target: target_mod.Target,
                     timeout: float) -> tuple[delivery.Result, str] | None:
        """Once the stage's CustomResourceDefinitions are Established, wait until discovery serves
        their kinds: the API server lists them a moment later, and a later stage's custom resource
        applied before then would be refused as an unknown kind."""
        wanted = [(f"{spec.get('group')}/{version.get('name')}", str((spec.get("names") or {}).get("kind", "")))
                  for it in stage.items if it.entry.kind == "CustomResourceDefinition"
                  for spec in [it.body.get("spec") or {}]
                  for version in spec.get("versions") or () if isinstance(version, dict) and version.get("served")]
        if not wanted:
            return None
        deadline = self.clock() + timeout
        delay = 0.05
        while True:
            wanted = [(api_version, kind) for api_version, kind in wanted if not target.served(api_version, kind)]
            if not wanted:
                return None
            if self.clock() >= deadline:
                shown = ", ".join(f"{kind} in {api_version}" for api_version, kind in wanted[:5])
                return delivery.Result.TIMED_OUT, f"timed out after {timeout:g}s waiting for discovery to serve {shown}"
            self.sleep(min(delay, max(0.0, deadline - self.clock())))
            delay = min(delay * 2, 1.0)

    def _health(self, live: Mapping[str, Any], target: target_mod.Target) -> health.Health:
        verdict = health.of(live)
        if live.get("kind") == "PersistentVolumeClaim" and not verdict.healthy:
            # A claim whose class binds on first use stays Pending until a Pod uses it, which a
            # later stage creates: it is as healthy as it can be before then.
            name = (live.get("spec") or {}).get("storageClassName")
            cls = target.get("storage.k8s.io/v1", "StorageClass", "", name) if name else None
            if cls is not None and cls.get("volumeBindingMode") == "WaitForFirstConsumer":
                return health.CURRENT
        return verdict

    def _wait_gone(self, target: target_mod.Target, e: delivery.Entry, timeout: float) -> None:
        deadline = self.clock() + timeout
        while target.get(e.api_version, e.kind, e.namespace, e.name) is not None and self.clock() < deadline:
            self.sleep(0.2)

    # -- prune and uninstall -----------------------------------------------------------------

    def _prune(self, target: target_mod.Target, entries: Iterable[delivery.Entry], instance: str) -> list[str]:
        pruned = []
        for e in entries:
            try:
                live = target.get(e.api_version, e.kind, e.namespace, e.name)
            except target_mod.UnknownKind:
                continue  # its CRD is gone already: so is the object
            if live is None:
                continue
            kept = delivery_core.kept_from_prune(live, instance)
            if kept is not None:
                log.info("prune skipped", subject=e.subject, why=kept)
                continue
            if target.delete(e.api_version, e.kind, e.namespace, e.name):
                pruned.append(e.subject)
        return pruned

    def uninstall(self, job: Job, target: target_mod.Target) -> delivery.Delivery:
        """Delete the whole inventory of ``job.previous``, in reverse stage order."""
        previous = job.previous
        inventory = previous.inventory if previous is not None else ()
        gone = self._prune(target, delivery_core.to_prune(inventory, (), job.held_elsewhere), job.instance)
        log.info("uninstalled from cluster", instance=job.instance, cluster=job.cluster, deleted=len(gone))
        return self._record(job, delivery.Result.PRUNED, f"deleted {len(gone)} objects", (), (), "uninstall")

    # -- drift -------------------------------------------------------------------------------

    def check_drift(self, job: Job, target: target_mod.Target) -> delivery.Delivery:
        """Compare each inventory object with a dry run of what was applied; correct or report."""
        previous = job.previous
        assert previous is not None
        try:
            planned = delivery_core.stages(self.objects(job), instance=job.instance)
        except errors.GitopsdError as err:
            return conditions.decide_delivery(dataclasses.replace(previous, message=f"drift check: {err}", at=self.now()))
        drifted: list[str] = []
        corrected = 0
        for stage in planned:
            for it in stage.items:
                if it.hook:
                    continue
                e = it.entry
                live = target.get(e.api_version, e.kind, e.namespace, e.name)
                force = job.options.force
                if live is not None:
                    try:
                        if not delivery_core.drifted(live, target.apply(it.body, dry_run=True)):
                            continue
                    except target_mod.ApiRefusal as err:
                        managers = err.conflicting_managers()
                        if err.status != 409 or not managers or not all(delivery_core.hand_edit(m) for m in managers):
                            continue  # fields another controller owns now (an HPA's replicas): not drift
                        force = True  # a person's edit of a field gitopsd manages: take it back
                drifted.append(e.subject)
                if job.options.drift is delivery.DriftMode.CORRECT:
                    target.apply(it.body, force=force)
                    corrected += 1
        if drifted:
            log.warning("drift", instance=job.instance, cluster=job.cluster, objects=len(drifted),
                        action="corrected" if corrected else "reported")
        message = previous.message if not drifted else (
            f"corrected drift of {', '.join(drifted)}" if corrected else f"drifted: {', '.join(drifted)}")
        return conditions.decide_delivery(dataclasses.replace(
            previous, drifted=tuple(drifted), corrected=corrected, drift_mode=job.options.drift, message=message, at=self.now()))

    def _record(self, job: Job, result: delivery.Result, message: str, inventory: Iterable[delivery.Entry],
                runs: Iterable[delivery.StageRun], stage: str, *, reason: str = "") -> delivery.Delivery:
        return conditions.decide_delivery(delivery.Delivery(
            cluster=job.cluster, result=result, digest=job.digest, version=job.version, message=" ".join(message.split())[:1000],
            inventory=tuple(inventory), stages=tuple(runs), stage=stage, drift_mode=job.options.drift, at=self.now(),
            reason=reason))


def _union(kept: Iterable[delivery.Entry], applied: Iterable[delivery.Entry]) -> tuple[delivery.Entry, ...]:
    """The previous inventory and what was applied since: what may be on the cluster now."""
    by_key: dict[tuple[str, str, str, str], delivery.Entry] = {}
    for e in (*kept, *applied):
        by_key[e.key] = e
    return tuple(by_key.values())
