"""What the API server does for particular kinds beyond generic storage.

Defaulting (so that a Service or Deployment read back looks like one from a real cluster and a
naive "desired == observed" diff fails here as it would there), the status a new object starts
with, the name rules each kind validates, the conversion between ``v1`` and ``events.k8s.io/v1``
Events (one storage, two shapes), and the status the apiextensions controller gives a CRD.
``operations`` calls these; each is a pure function of the object.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from gitopsd.testing.kubeapi.resources import ResourceType

JSON = dict[str, Any]

# -- names and labels -------------------------------------------------------------------------

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

_SUBDOMAIN_HELP = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_HELP = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1035_HELP = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL_VALUE_HELP = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def _check_name(name: str, rt: ResourceType) -> str | None:
    if rt.group == "rbac.authorization.k8s.io":
        bad = name in (".", "..") or "/" in name or "%" in name
        return "may not contain '/' or '%'" if bad else None
    if rt.kind == "Namespace":
        return None if _LABEL.match(name) and len(name) <= 63 else _LABEL_HELP
    if rt.kind == "Service":
        return None if _DNS1035.match(name) and len(name) <= 63 else _DNS1035_HELP
    return None if _SUBDOMAIN.match(name) and len(name) <= 253 else _SUBDOMAIN_HELP


def _check_label(key: str, value: Any) -> tuple[str, str] | None:
    prefix, _, name = key.rpartition("/")
    if (
        (prefix and not (_SUBDOMAIN.match(prefix) and len(prefix) <= 253))
        or not _LABEL_NAME.match(name)
        or len(name) > 63
    ):
        return (
            "metadata.labels",
            f"Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        )
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        return ("metadata.labels", f'Invalid value: "{value}": {_LABEL_VALUE_HELP}')
    return None


def validate_metadata(obj: Mapping[str, Any], rt: ResourceType) -> list[tuple[str, str]]:
    """``(field, message)`` violations of the object's name and labels."""
    metadata = obj.get("metadata") or {}
    violations: list[tuple[str, str]] = []
    name = metadata.get("name", "")
    if problem := _check_name(name, rt):
        violations.append(("metadata.name", f'Invalid value: "{name}": {problem}'))
    for key, value in (metadata.get("labels") or {}).items():
        if problem_label := _check_label(key, value):
            violations.append(problem_label)
    for key, value in (metadata.get("annotations") or {}).items():
        if not isinstance(value, str):
            violations.append(
                ("metadata.annotations", f"Invalid value: {key}: annotation values must be strings")
            )
    return violations


def validate_crd(crd: Mapping[str, Any]) -> list[tuple[str, str]]:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    violations = []
    expected = f"{names.get('plural', '')}.{spec.get('group', '')}"
    if crd["metadata"]["name"] != expected:
        violations.append(
            (
                "metadata.name",
                f'Invalid value: "{crd["metadata"]["name"]}": must be spec.names.plural+"."+spec.group',
            )
        )
    versions = spec.get("versions") or []
    if not versions:
        violations.append(
            ("spec.versions", "Invalid value: null: must have exactly one version marked as storage version")
        )
    elif sum(1 for v in versions if v.get("storage")) != 1:
        violations.append(
            ("spec.versions", "Invalid value: []: must have exactly one version marked as storage version")
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        violations.append(
            (
                "spec.scope",
                f'Unsupported value: "{spec.get("scope")}": supported values: "Cluster", "Namespaced"',
            )
        )
    if not names.get("kind"):
        violations.append(("spec.names.kind", "Required value"))
    return violations


# -- defaulting and initial status ------------------------------------------------------------


def _default_pod_spec(spec: JSON) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        image = container.get("image", "")
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        latest = image.endswith(":latest") or not tagged
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")


def _default_deployment(obj: JSON, old: JSON | None) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        strategy.setdefault("type", "RollingUpdate")
        strategy.setdefault("rollingUpdate", {}).setdefault("maxUnavailable", "25%")
        strategy["rollingUpdate"].setdefault("maxSurge", "25%")
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {})
    _default_pod_spec(template.setdefault("spec", {}))


def _default_service(obj: JSON, old: JSON | None) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports", []):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    if spec["type"] == "ExternalName":
        return
    old_spec = (old or {}).get("spec") or {}
    if "clusterIP" not in spec and "clusterIP" in old_spec:
        spec["clusterIP"] = old_spec["clusterIP"]
    if "clusterIP" not in spec:
        spec["clusterIP"] = _cluster_ip(obj)
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")


def _cluster_ip(obj: JSON) -> str:
    digest = sum(ord(c) * (i + 1) for i, c in enumerate(obj["metadata"].get("uid", obj["metadata"]["name"])))
    return f"10.96.{digest // 254 % 254 + 1}.{digest % 254 + 1}"


def _default_namespace(obj: JSON, old: JSON | None) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]


def _default_secret(obj: JSON, old: JSON | None) -> None:
    obj.setdefault("type", "Opaque")


def _default_crd(obj: JSON, old: JSON | None) -> None:
    spec = obj.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if names.get("kind"):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})
    for version in spec.get("versions", []):
        version.setdefault("served", True)


def _default_event(obj: JSON, old: JSON | None) -> None:
    # Go serializes these zero values instead of omitting them.
    obj.setdefault("eventTime", None)
    obj.setdefault("reportingComponent", "")
    obj.setdefault("reportingInstance", "")


_DEFAULTERS: dict[str, Callable[[JSON, JSON | None], None]] = {
    "Event": _default_event,
    "Deployment": _default_deployment,
    "Service": _default_service,
    "Namespace": _default_namespace,
    "Secret": _default_secret,
    "CustomResourceDefinition": _default_crd,
}


def apply_defaults(rt: ResourceType, obj: JSON, old: JSON | None) -> None:
    """Fill in what the real defaulters would (in place)."""
    if not rt.custom and rt.kind in _DEFAULTERS:
        _DEFAULTERS[rt.kind](obj, old)


def initial_status(rt: ResourceType, obj: JSON, now: str) -> JSON | None:
    """The status a newly created object of a kind with a status subresource starts with."""
    match rt.kind if not rt.custom else "":
        case "Namespace":
            return {"phase": "Active"}
        case "Deployment":
            return {}
        case "Service":
            return {"loadBalancer": {}}
        case "CustomResourceDefinition":
            return crd_status(obj, None, now)
    return None


def crd_status(crd: JSON, previous: JSON | None, now: str) -> JSON:
    """The status the apiextensions controllers converge a CRD to: names accepted, established."""
    spec = crd.get("spec") or {}
    old_conditions = {c.get("type"): c for c in ((previous or {}).get("conditions") or [])}

    def condition(kind: str, reason: str, message: str) -> JSON:
        since = old_conditions.get(kind, {}).get("lastTransitionTime", now)
        return {
            "type": kind,
            "status": "True",
            "lastTransitionTime": since,
            "reason": reason,
            "message": message,
        }

    stored = list((previous or {}).get("storedVersions") or [])
    for version in spec.get("versions") or []:
        if version.get("storage") and version["name"] not in stored:
            stored.append(version["name"])
    return {
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": copy.deepcopy(spec.get("names") or {}),
        "storedVersions": stored,
    }


# -- events.k8s.io/v1 <-> v1 Event ------------------------------------------------------------

_EVENTS_V1_NAMES = {
    "involvedObject": "regarding",
    "message": "note",
    "source": "deprecatedSource",
    "firstTimestamp": "deprecatedFirstTimestamp",
    "lastTimestamp": "deprecatedLastTimestamp",
    "count": "deprecatedCount",
    "reportingComponent": "reportingController",
}
_CORE_NAMES = {new: old for old, new in _EVENTS_V1_NAMES.items()}


def to_external(rt: ResourceType, stored: JSON, *, copied: bool = True) -> JSON:
    """The stored object as the requested group/version presents it; ``copied=False`` shares all but
    the top level with ``stored`` (a view to match selectors against, not to hand out)."""
    # stored objects are plain JSON values: a JSON round trip copies them several times faster than deepcopy
    obj = json.loads(json.dumps(stored)) if copied else dict(stored)
    if rt.group == "events.k8s.io":
        obj = {_EVENTS_V1_NAMES.get(k, k): v for k, v in obj.items()}
    obj["apiVersion"] = rt.api_version
    obj["kind"] = rt.kind
    return {"apiVersion": obj.pop("apiVersion"), "kind": obj.pop("kind"), **obj}


def to_internal(rt: ResourceType, obj: JSON) -> JSON:
    """A request body in the storage shape (core ``v1`` for both Event APIs)."""
    obj = copy.deepcopy(obj)
    if rt.group == "events.k8s.io":
        obj = {_CORE_NAMES.get(k, k): v for k, v in obj.items()}
        obj["apiVersion"] = "v1"
    else:
        obj["apiVersion"] = rt.api_version
    obj["kind"] = rt.kind
    return obj


# -- timestamps -------------------------------------------------------------------------------

Path = tuple[str, ...]
_META_TIMES: tuple[Path, ...] = (
    ("metadata", "creationTimestamp"),
    ("metadata", "deletionTimestamp"),
    ("metadata", "managedFields", "*", "time"),
)
_CONDITION_TIMES: tuple[Path, ...] = (
    ("status", "conditions", "*", "lastTransitionTime"),
    ("status", "conditions", "*", "lastUpdateTime"),
)
_TIMES: dict[str, tuple[Path, ...]] = {
    "Event": (("firstTimestamp",), ("lastTimestamp",)),
    "Deployment": _CONDITION_TIMES,
    "CustomResourceDefinition": _CONDITION_TIMES,
    "Namespace": _CONDITION_TIMES,
    "Service": _CONDITION_TIMES,
}
_MICRO_TIMES: dict[str, tuple[Path, ...]] = {
    "Lease": (("spec", "acquireTime"), ("spec", "renewTime")),
    "Event": (("eventTime",), ("series", "lastObservedTime")),
}


class TimestampError(ValueError):
    """A typed timestamp field that does not parse as RFC 3339."""


def _canonical(value: Any, micro: bool, where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise TimestampError(f'{where}: parsing time "{value}" as RFC 3339: {err}') from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _rewrite(node: Any, path: Path, micro: bool, where: str) -> None:
    head, rest = path[0], path[1:]
    children = (node if head == "*" else []) if isinstance(node, list) else []
    if isinstance(node, dict) and head in node:
        if rest:
            _rewrite(node[head], rest, micro, f"{where}.{head}".lstrip("."))
        else:
            node[head] = _canonical(node[head], micro, f"{where}.{head}".lstrip("."))
    for item in children:
        _rewrite(item, rest, micro, where)


def canonical_timestamps(rt: ResourceType, obj: JSON) -> None:
    """Re-serialize typed timestamps the way Go does (``Z``, seconds or microseconds), in place:
    the Python client sends ``+00:00``, which a real server decodes and re-encodes."""
    kind = "" if rt.custom else rt.kind
    for path in (*_META_TIMES, *_TIMES.get(kind, ())):
        _rewrite(obj, path, False, "")
    for path in _MICRO_TIMES.get(kind, ()):
        _rewrite(obj, path, True, "")
