"""Inputs read from the config repo: repo settings, clusters and PackBuilds.

These are what the parser (``gitopsd.core.parse``) produces from YAML and what the compiler
(``gitopsd.core.compile``) consumes. Field names follow Python; ``to_json`` gives the YAML/JSON
spelling users write.
"""

from __future__ import annotations

import dataclasses
import enum


class Category(enum.StrEnum):
    RAW = "raw"
    KUSTOMIZE = "kustomize"
    HELM = "helm"


class SelectorOp(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclasses.dataclass(frozen=True, slots=True)
class Requirement:
    """One label requirement of a Kubernetes-style label selector."""

    key: str
    op: SelectorOp
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str] | tuple[tuple[str, str], ...]) -> bool:
        found = dict(labels)
        if self.op is SelectorOp.EXISTS:
            return self.key in found
        if self.op is SelectorOp.DOES_NOT_EXIST:
            return self.key not in found
        if self.op is SelectorOp.IN:
            return found.get(self.key) in self.values
        return found.get(self.key) not in self.values


@dataclasses.dataclass(frozen=True, slots=True)
class Selector:
    """``matchLabels`` + ``matchExpressions``, normalized into requirements (all must hold)."""

    requirements: tuple[Requirement, ...]

    def matches(self, labels: tuple[tuple[str, str], ...]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.op is SelectorOp.EXISTS:
                parts.append(r.key)
            elif r.op is SelectorOp.DOES_NOT_EXIST:
                parts.append(f"!{r.key}")
            elif r.op is SelectorOp.IN and len(r.values) == 1:
                parts.append(f"{r.key}={r.values[0]}")
            else:
                word = "in" if r.op is SelectorOp.IN else "notin"
                parts.append(f"{r.key} {word} ({','.join(r.values)})")
        return ",".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterTarget:
    """One item of ``targetClusters``: a cluster name or a label selector."""

    name: str | None = None
    selector: Selector | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Cluster:
    """``clusters/<name>.yaml``: a cluster that packs can be delivered to."""

    name: str
    labels: tuple[tuple[str, str], ...]
    path: str
    kubeconfig_secret: tuple[str, str] | None = None  # (Secret name, key) in gitopsd's namespace
    context: str | None = None  # kubeconfig context to use


@dataclasses.dataclass(frozen=True, slots=True)
class RepoConfig:
    """``gitopsd.yaml``: settings that apply to the whole config repo."""

    namespace: str = "seam-system"
    registry: str | None = None
    keep_versions: int = 5
    installed_by: str | None = None
    clusters: tuple[str, ...] | None = None  # allow-list: clusters/*.yaml not named here are ignored
    crds: tuple[tuple[str, str], ...] = ()  # (group/Kind, Cluster|Namespaced) of CRDs installed outside gitopsd
    path: str = "gitopsd.yaml"


@dataclasses.dataclass(frozen=True, slots=True)
class RawSource:
    path: str  # repo path of the manifests directory


@dataclasses.dataclass(frozen=True, slots=True)
class KustomizeSource:
    path: str  # repo path of the kustomization directory


@dataclasses.dataclass(frozen=True, slots=True)
class HelmSource:
    chart: str  # repo path of a chart directory or .tgz, or a URL (refused offline)
    version: str | None = None
    values_file: str | None = None  # repo path
    values_json: str = "{}"  # inline values as canonical JSON (kept as text: arbitrary shape)
    namespace: str | None = None


Source = RawSource | KustomizeSource | HelmSource


@dataclasses.dataclass(frozen=True, slots=True)
class DeliverySettings:
    """``delivery:`` of a PackBuild."""

    timeout: float = 300.0  # seconds each stage may take to become healthy
    drift: str = "correct"  # correct | warn
    force: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class PackBuild:
    """One ``packs/<pack>/packbuild.yaml``: one version of one pack."""

    path: str  # repo path of this file; becomes the ClusterPack's sourceBuildRef
    name: str
    version: str  # normalized: no leading "v"
    base_pack_name: str
    targets: tuple[ClusterTarget, ...]
    category: Category
    source: Source
    registry_url: str | None = None
    namespace: str | None = None
    priority: int = 0
    license: str | None = None
    depends_on: tuple[str, ...] = ()
    delivery: DeliverySettings = dataclasses.field(default_factory=DeliverySettings)

    @property
    def cluster_pack_name(self) -> str:
        return f"{self.base_pack_name}-v{self.version}"

    @property
    def folder(self) -> str:
        head, _, _ = self.path.rpartition("/")
        return head
