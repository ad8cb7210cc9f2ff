"""PackInstances, their install records and conditions, and the observed side of the cluster.

A PackInstance is named ``{basePackName}-{cluster}``: it says which ClusterPack version one
cluster should run. A newer version supersedes it *in place*: same object, new spec, one more
install record. Install records follow the WorkstreamPack seed: state installed / upgraded /
uninstalled, version, upgradeFromVersion, priority, license, registry hash, when and by whom.
"""

from __future__ import annotations

import dataclasses
import enum

PACK_INSTANCE_KIND = "PackInstance"


class InstallState(enum.StrEnum):
    INSTALLED = "installed"
    UPGRADED = "upgraded"
    UNINSTALLED = "uninstalled"


class Direction(enum.StrEnum):
    INITIAL = "Initial"
    UPGRADE = "Upgrade"
    ROLLBACK = "Rollback"
    REDEPLOY = "Redeploy"


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message}

    @classmethod
    def from_json(cls, raw: dict[str, str]) -> Condition:
        return cls(raw["type"], raw["status"], raw.get("reason", ""), raw.get("message", ""))


@dataclasses.dataclass(frozen=True, slots=True)
class InstallRecord:
    state: InstallState
    pack_id: str  # basePackName
    pack_version: str
    cluster_pack: str
    priority: int
    license: str | None
    registry_version_hash: str
    installed_at: str
    installed_by: str
    artifact: str  # registry url @ manifest digest
    revision: str
    upgrade_from_version: str | None = None
    direction: Direction | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "state": str(self.state),
            "packId": self.pack_id,
            "packVersion": self.pack_version,
            "clusterPack": self.cluster_pack,
            "priority": self.priority,
            "registryVersionHash": self.registry_version_hash,
            "installedAt": self.installed_at,
            "installedBy": self.installed_by,
            "artifact": self.artifact,
            "revision": self.revision,
            "upgradeFromVersion": self.upgrade_from_version,
        }
        if self.license is not None:
            out["license"] = self.license
        if self.direction is not None:
            out["upgradeDirection"] = str(self.direction)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> InstallRecord:
        direction = raw.get("upgradeDirection")
        return cls(
            state=InstallState(str(raw["state"])),
            pack_id=str(raw["packId"]),
            pack_version=str(raw["packVersion"]),
            cluster_pack=str(raw.get("clusterPack", "")),
            priority=int(raw.get("priority", 0)),  # type: ignore[call-overload]  # raw JSON: the schema makes it an integer
            license=None if raw.get("license") is None else str(raw["license"]),
            registry_version_hash=str(raw.get("registryVersionHash", "")),
            installed_at=str(raw.get("installedAt", "")),
            installed_by=str(raw.get("installedBy", "")),
            artifact=str(raw.get("artifact", "")),
            revision=str(raw.get("revision", "")),
            upgrade_from_version=None if raw.get("upgradeFromVersion") is None else str(raw["upgradeFromVersion"]),
            direction=None if direction is None else Direction(str(direction)),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class PackInstance:
    """Which ClusterPack version one cluster runs, with its history."""

    name: str
    namespace: str
    base_pack_name: str
    cluster: str
    cluster_pack: str
    version: str
    manifest_digest: str
    checksum: str
    priority: int
    source_build_ref: str
    revision: str
    state: InstallState
    history: tuple[InstallRecord, ...] = ()
    conditions: tuple[Condition, ...] = ()
    uid: str | None = None  # set by the store/cluster
    resource_version: str | None = None

    @property
    def installed_at(self) -> str:
        """When this instance was first installed: the tie-breaker of collisions."""
        return self.history[0].installed_at if self.history else ""

    def spec(self) -> dict[str, object]:
        return {
            "basePackName": self.base_pack_name,
            "cluster": self.cluster,
            "clusterPackRef": {
                "name": self.cluster_pack,
                "version": self.version,
                "digest": self.manifest_digest,
                "checksum": self.checksum,
            },
            "priority": self.priority,
            "sourceBuildRef": self.source_build_ref,
        }

    def status(self) -> dict[str, object]:
        latest = self.history[-1] if self.history else None
        return {
            "state": str(self.state),
            "version": self.version,
            "upgradeFromVersion": latest.upgrade_from_version if latest else None,
            "upgradeDirection": str(latest.direction) if latest and latest.direction else None,
            "observedRevision": self.revision,
            "history": [r.to_json() for r in self.history],
            "conditions": [c.to_json() for c in self.conditions],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ObservedPack:
    """A ClusterPack as found in the store or cluster: enough to compare, verify and list it."""

    name: str
    version: str
    base_pack_name: str
    checksum: str
    manifest_digest: str
    signature: str | None
    spec_json: str  # canonical JSON of the stored spec: what the signature must cover
    created_revision: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    """Everything the plan needs to know about the management cluster (or the local store)."""

    packs: dict[str, ObservedPack]
    instances: dict[str, PackInstance]
