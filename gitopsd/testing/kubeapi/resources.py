"""The resource types the emulator serves: a fixed set of built-ins plus whatever CRDs define.

A :class:`ResourceType` is one (group, version, plural) with the facts discovery publishes and the
facts the API semantics need (scope, status subresource, generation tracking, schema). The
:class:`Registry` resolves URL paths to types and is rebuilt from the stored CRDs after every CRD
write, so a created CRD is served at once and a deleted one stops being served.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gitopsd.testing.kubeapi import schema

StorageKey = tuple[str, str]  # (group, plural)

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    custom: bool = False
    tracks_generation: bool = False
    storage: StorageKey | None = None
    field_labels: frozenset[str] = frozenset()
    openapi_schema: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def storage_key(self) -> StorageKey:
        return self.storage or (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def shape(self) -> schema.Shape:
        custom = self.openapi_schema
        return schema.root_shape(custom if custom is not None else schema.BUILTIN_SCHEMAS.get(self.kind))

    @property
    def selectable_fields(self) -> frozenset[str]:
        base = {"metadata.name"} | ({"metadata.namespace"} if self.namespaced else set())
        return frozenset(base) | self.field_labels


def _builtin(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool,
    *,
    short: tuple[str, ...] = (),
    status: bool = False,
    generation: bool = False,
    categories: tuple[str, ...] = (),
    storage: StorageKey | None = None,
    field_labels: Iterable[str] = (),
) -> ResourceType:
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        singular=kind.lower(),
        short_names=short,
        categories=categories,
        subresources=frozenset({"status"} if status else ()),
        tracks_generation=generation,
        storage=storage,
        field_labels=frozenset(field_labels),
    )


_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

BUILTINS: tuple[ResourceType, ...] = (
    _builtin(
        "", "v1", "namespaces", "Namespace", False, short=("ns",), status=True, field_labels=("status.phase",)
    ),
    _builtin("", "v1", "events", "Event", True, short=("ev",), field_labels=_EVENT_FIELDS),
    _builtin("", "v1", "configmaps", "ConfigMap", True, short=("cm",)),
    _builtin("", "v1", "secrets", "Secret", True, field_labels=("type",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", True, short=("sa",)),
    _builtin("", "v1", "services", "Service", True, short=("svc",), status=True, categories=("all",)),
    _builtin(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        True,
        short=("ev",),
        storage=("", "events"),
        field_labels=("regarding.kind", "regarding.name", "regarding.namespace", "reason", "type"),
    ),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease", True),
    _builtin(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        True,
        short=("deploy",),
        status=True,
        generation=True,
        categories=("all",),
    ),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short=("crd", "crds"),
        status=True,
        generation=True,
    ),
)

CRD_KEY: StorageKey = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_KEY: StorageKey = ("", "namespaces")


def types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The served versions of a CRD as resource types."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    types = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        types.append(
            ResourceType(
                group=spec.get("group", ""),
                version=version["name"],
                plural=names.get("plural", ""),
                kind=names.get("kind", ""),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or names.get("kind", "").lower(),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset({"status"} if "status" in subresources else ()),
                custom=True,
                tracks_generation=True,
                openapi_schema=(version.get("schema") or {}).get("openAPIV3Schema")
                or {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            )
        )
    return types


class Registry:
    """Served resource types by group/version/plural; rebuilt when CRDs change."""

    def __init__(self, builtins: Iterable[ResourceType] = BUILTINS) -> None:
        self._builtins = tuple(builtins)
        self._lock = threading.Lock()
        self._types: tuple[ResourceType, ...] = self._builtins

    def refresh(self, crds: Iterable[Mapping[str, Any]]) -> None:
        custom = [
            rt for crd in crds if not crd["metadata"].get("deletionTimestamp") for rt in types_from_crd(crd)
        ]
        with self._lock:
            self._types = self._builtins + tuple(custom)

    def all(self) -> tuple[ResourceType, ...]:
        with self._lock:
            return self._types

    def resolve(self, group: str, version: str, plural: str) -> ResourceType | None:
        return next(
            (rt for rt in self.all() if (rt.group, rt.version, rt.plural) == (group, version, plural)), None
        )

    def served_versions(self, group: str) -> list[str]:
        versions: list[str] = []
        for rt in self.all():
            if rt.group == group and rt.version not in versions:
                versions.append(rt.version)
        return versions

    def groups(self) -> list[str]:
        names: list[str] = []
        for rt in self.all():
            if rt.group and rt.group not in names:
                names.append(rt.group)
        return names

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self.all() if rt.group == group and rt.version == version]

    def find(self, resource: str, group: str | None = None) -> ResourceType:
        """A type by plural, kind, short name or ``plural.group`` (kubectl's spelling)."""
        if group is None and "." in resource:
            resource, group = resource.split(".", 1)
        wanted = resource.lower()
        matches = [
            rt
            for rt in self.all()
            if (group is None or rt.group == group)
            and wanted in (rt.plural, rt.kind.lower(), rt.singular, *rt.short_names)
        ]
        if not matches:
            raise KeyError(f"no served resource {resource!r}" + (f" in group {group!r}" if group else ""))
        return matches[0]
