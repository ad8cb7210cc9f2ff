"""What delivery did on a target cluster: the inventory it applied, the stages it went through, and
the conditions it left, as kept in a PackInstance's ``status.delivery``.

A PackInstance says which ClusterPack a cluster should run (the plan's business); its delivery
says what the cluster actually got. ``gitopsd.core.delivery`` computes these values,
``gitopsd.delivery.engine`` produces them against a real cluster, and every ``ports.Cluster``
stores them beside the PackInstance they belong to.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from gitopsd.model import instance


class Result(enum.StrEnum):
    """How the last delivery of a PackInstance ended."""

    DELIVERED = "Delivered"  # every stage applied and healthy
    FAILED = "Failed"  # a stage was refused or an object failed
    TIMED_OUT = "TimedOut"  # a stage did not become healthy in time
    REFUSED = "Refused"  # the artifact or its signature did not verify: nothing applied
    UNREACHABLE = "Unreachable"  # the target cluster could not be reached
    PRUNED = "Pruned"  # uninstalled: the inventory was deleted


class DriftMode(enum.StrEnum):
    CORRECT = "correct"
    WARN = "warn"


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Entry:
    """One object delivery applied: its identity and the artifact digest it came from."""

    api_version: str
    kind: str
    namespace: str
    name: str
    digest: str = ""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Group, kind, namespace, name: the same object whatever version it was applied as."""
        return (self.group, self.kind, self.namespace, self.name)

    @property
    def subject(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    def to_json(self) -> dict[str, str]:
        out = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.digest:
            out["digest"] = self.digest
        return out

    @staticmethod
    def key_of(raw: Mapping[str, Any]) -> tuple[str, str, str, str]:
        """``key`` of an entry as stored (``to_json``), without making the Entry."""
        return (str(raw["apiVersion"]).rpartition("/")[0], str(raw["kind"]), str(raw.get("namespace") or ""),
                str(raw["name"]))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Entry:
        return cls(str(raw["apiVersion"]), str(raw["kind"]), str(raw.get("namespace", "")), str(raw["name"]),
                   str(raw.get("digest", "")))


@dataclasses.dataclass(frozen=True, slots=True)
class StageRun:
    """One stage of one delivery: how many objects, how long, and how it ended."""

    name: str
    objects: int
    seconds: float
    healthy: bool
    message: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "objects": self.objects, "seconds": round(self.seconds, 3),
                                  "healthy": self.healthy}
        if self.message:
            out["message"] = self.message
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StageRun:
        return cls(str(raw["name"]), int(raw.get("objects", 0)), float(raw.get("seconds", 0.0)), bool(raw.get("healthy")),
                   str(raw.get("message", "")))


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """``status.delivery`` of a PackInstance."""

    cluster: str
    result: Result
    digest: str  # manifest digest of the ClusterPack delivered (or tried)
    version: str
    message: str
    inventory: tuple[Entry, ...] = ()  # what is on the cluster from this PackInstance
    stages: tuple[StageRun, ...] = ()
    stage: str = ""  # the last stage reached
    drifted: tuple[str, ...] = ()  # subjects found drifted at the last check
    drift_mode: DriftMode = DriftMode.CORRECT
    corrected: int = 0  # drifted objects re-applied at the last check
    at: str = ""  # when this record was made
    reason: str = ""  # why it did not succeed, as one word (ClusterUnreachable, SignatureInvalid, Conflict...)
    # Ready / Reconciling / Stalled / Drifted: what gitopsd.core.conditions.of_delivery decides from the above
    conditions: tuple[instance.Condition, ...] = ()

    @property
    def ready(self) -> bool:
        return self.result is Result.DELIVERED

    def to_json(self) -> dict[str, object]:
        return {
            "cluster": self.cluster,
            "result": str(self.result),
            "digest": self.digest,
            "version": self.version,
            "message": self.message,
            "stage": self.stage,
            "stages": [s.to_json() for s in self.stages],
            "inventory": [e.to_json() for e in self.inventory],
            "drift": {"mode": str(self.drift_mode), "drifted": list(self.drifted), "corrected": self.corrected},
            "conditions": [c.to_json() for c in self.conditions],
            "at": self.at,
            **({"reason": self.reason} if self.reason else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Delivery:
        drift = raw.get("drift") or {}
        return cls(
            cluster=str(raw.get("cluster", "")),
            result=Result(str(raw.get("result", Result.FAILED))),
            digest=str(raw.get("digest", "")),
            version=str(raw.get("version", "")),
            message=str(raw.get("message", "")),
            inventory=tuple(Entry.from_json(e) for e in raw.get("inventory") or ()),
            stages=tuple(StageRun.from_json(s) for s in raw.get("stages") or ()),
            stage=str(raw.get("stage", "")),
            drifted=tuple(str(s) for s in drift.get("drifted") or ()),
            drift_mode=DriftMode(str(drift.get("mode", DriftMode.CORRECT))),
            corrected=int(drift.get("corrected", 0)),
            at=str(raw.get("at", "")),
            reason=str(raw.get("reason", "")),
            conditions=tuple(instance.Condition.from_json(c) for c in raw.get("conditions") or ()),
        )
