"""PackInstances, their install records and conditions, and the observed side of the cluster.

A PackInstance is named ``{basePackName}-{cluster}``: it says which ClusterPack version one
cluster should run. A newer version supersedes it *in place*: same object, new spec, one more
install record. Install records follow the WorkstreamPack seed: state installed / upgraded /
uninstalled, version, upgradeFromVersion, priority, license, registry hash, when and by whom.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

T = TypeVar("T")

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
class Head:
    """What the plan reads of a PackInstance it does not change: what it runs (``runs``: ClusterPack,
    digest, checksum, priority, PackBuild path), whether it is live, and when it was first installed
    (the tie-breaker of collisions). The instances of one base that run the same version share one."""

    runs: tuple[str, str, str, int, str]
    state: InstallState
    installed_at: str

    @classmethod
    def of(cls, pi: PackInstance) -> Head:
        return cls((pi.cluster_pack, pi.manifest_digest, pi.checksum, pi.priority, pi.source_build_ref), pi.state,
                   pi.installed_at)

    @property
    def cluster_pack(self) -> str:
        return self.runs[0]

    @property
    def source_build_ref(self) -> str:
        return self.runs[4]


class Heads(Mapping[str, Head]):
    """The Heads of one base's PackInstances in a few bytes per instance: the instance on cluster
    ``clusters[i]`` (named ``{base}-{clusters[i]}``) has head ``kinds[index[i] - 1]`` (0: none).
    ``clusters`` and ``positions`` are shared by every base with the same clusters; an instance
    named otherwise, or one head too many, is kept in ``others``."""

    __slots__ = ("_clusters", "_index", "_kinds", "_others", "_positions", "_prefix")

    def __init__(self, base: str, clusters: tuple[str, ...], positions: Mapping[str, int], index: bytes,
                 kinds: tuple[Head, ...], others: Mapping[str, Head]) -> None:
        self._prefix = base + "-"
        self._clusters, self._positions, self._index, self._kinds, self._others = clusters, positions, index, kinds, others

    def __getitem__(self, name: str) -> Head:
        if name.startswith(self._prefix):
            at = self._positions.get(name[len(self._prefix):])
            if at is not None and self._index[at]:
                return self._kinds[self._index[at] - 1]
        return self._others[name]

    def __iter__(self) -> Iterator[str]:
        prefix, index = self._prefix, self._index
        for at, cluster in enumerate(self._clusters):
            if index[at]:
                yield prefix + cluster
        yield from self._others

    def __len__(self) -> int:
        return sum(1 for i in self._index if i) + len(self._others)

    def runs_everywhere(self, clusters: Iterable[str]) -> Head | None:
        """The one Head of every instance when they all share it and there is one on each of
        ``clusters`` (a base where nothing moves, told apart without a lookup per instance)."""
        if len(self._kinds) != 1 or self._others or 0 in self._index or not self._positions.keys() >= set(clusters):
            return None
        return self._kinds[0]


def compact(base: str, heads: Mapping[str, Head], shared: dict[tuple[str, ...], tuple[tuple[str, ...], dict[str, int]]]) -> Heads:
    """``heads`` (name -> Head) of one base as ``Heads``; ``shared`` interns the cluster lists."""
    prefix = base + "-"
    clusters = tuple(sorted(name[len(prefix):] for name in heads if name.startswith(prefix)))
    known = shared.get(clusters)
    if known is None:
        known = shared[clusters] = (clusters, {c: i for i, c in enumerate(clusters)})
    clusters, positions = known
    kinds: dict[Head, int] = {}
    index = bytearray(len(clusters))
    others: dict[str, Head] = {}
    for name, head in heads.items():
        at = positions.get(name[len(prefix):]) if name.startswith(prefix) else None
        number = kinds.get(head)
        if number is None and at is not None and len(kinds) < 255:
            number = kinds[head] = len(kinds) + 1
        if at is None or number is None:
            others[name] = head
        else:
            index[at] = number
    return Heads(base, clusters, positions, bytes(index), tuple(kinds), others)


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """What one basePackName has in the store or cluster: its ClusterPacks and PackInstances by name.
    An object belongs to the base its spec names (``spec.basePackName``).

    ``heads`` is what the plan compares of each instance; ``instances`` gives the whole objects, which
    a store may read only when asked (the plan asks only for the instances it changes)."""

    packs: Mapping[str, ObservedPack]
    instances: Mapping[str, PackInstance]
    heads: Mapping[str, Head] = dataclasses.field(compare=False)

    @classmethod
    def whole(cls, packs: Mapping[str, ObservedPack], instances: Mapping[str, PackInstance]) -> Part:
        """A part holding its objects whole, the heads made from them."""
        shared: dict[Head, Head] = {}
        heads = {}
        for name, pi in instances.items():
            head = Head.of(pi)
            heads[name] = shared.setdefault(head, head)
        return cls(packs, instances, heads)


EMPTY = Part({}, {}, {})


class Named(Mapping[str, T]):
    """Every ClusterPack or PackInstance by name, read through the parts by base (no index of its
    own): a name ``{base}-{cluster}`` or ``{base}-v{version}`` is looked for in each base its dashes
    could end. An object whose name does not start with its base is not found by name."""

    __slots__ = ("_field", "_parts")

    def __init__(self, parts: Mapping[str, Part], field: str) -> None:
        self._parts = parts
        self._field = field

    def __getitem__(self, name: str) -> T:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        return found

    def get(self, name: str, default: T | None = None) -> T | None:  # type: ignore[override]
        """``self[name]``, or ``default``: the same search without an exception when nothing is found
        (a pass asks once per pack)."""
        parts, field = self._parts, self._field
        cut = name.rfind("-")
        while cut > 0:
            part = parts.get(name[:cut])
            if part is not None:
                found = getattr(part, field).get(name)
                if found is not None:
                    return found  # type: ignore[no-any-return]
            cut = name.rfind("-", 0, cut)
        return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        field = self._field
        for part in self._parts.values():
            yield from getattr(part, field)

    def __len__(self) -> int:
        field = self._field
        return sum(len(getattr(part, field)) for part in self._parts.values())


@dataclasses.dataclass(frozen=True, slots=True)
class Observed:
    """Everything the plan needs to know about the management cluster (or the local store).

    ``changed`` is the change feed: the bases with an object written (by anyone) since the
    ``since`` token given to ``ports.Cluster.observe``, or ``None`` when the store cannot tell
    (no token, another store, a feed trimmed past it): then every base may have changed.
    ``token`` is what to pass as ``since`` next time. Two Observed are equal when they hold the
    same objects."""

    packs: Mapping[str, ObservedPack]
    instances: Mapping[str, PackInstance]
    changed: frozenset[str] | None = dataclasses.field(default=None, compare=False)
    token: object = dataclasses.field(default=None, compare=False)
    # by base: made once, on first use, or given by the store (``of_parts``); not copied by
    # ``dataclasses.replace``, which may change the objects
    _parts: Mapping[str, Part] | None = dataclasses.field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def of_parts(cls, parts: Mapping[str, Part], *, changed: frozenset[str] | None = None,
                 token: object = None) -> Observed:
        made = cls(packs=Named[ObservedPack](parts, "packs"), instances=Named[PackInstance](parts, "instances"),
                   changed=changed, token=token)
        object.__setattr__(made, "_parts", parts)
        return made

    def with_feed(self, changed: frozenset[str] | None, token: object) -> Observed:
        """The same objects with another change feed answer."""
        made = Observed(packs=self.packs, instances=self.instances, changed=changed, token=token)
        object.__setattr__(made, "_parts", self._parts)
        return made

    @property
    def parts(self) -> Mapping[str, Part]:
        """The objects by the base they belong to."""
        if self._parts is None:
            packs: dict[str, dict[str, ObservedPack]] = {}
            instances: dict[str, dict[str, PackInstance]] = {}
            for name, p in self.packs.items():
                packs.setdefault(p.base_pack_name, {})[name] = p
            for name, i in self.instances.items():
                instances.setdefault(i.base_pack_name, {})[name] = i
            parts = {b: Part.whole(packs.get(b, {}), instances.get(b, {})) for b in packs.keys() | instances.keys()}
            object.__setattr__(self, "_parts", parts)
            return parts
        return self._parts

    def part(self, base: str) -> Part:
        return self.parts.get(base, EMPTY)
