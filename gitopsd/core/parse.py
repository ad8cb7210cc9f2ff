"""Turn config-repo YAML into typed specs: ``gitopsd.yaml``, ``clusters/*.yaml`` and PackBuilds.

Each document is first checked against its JSON Schema (``schemas/``); the first violation becomes
a one-line ``SpecError`` naming the file, the field path and the fix. Unknown keys are errors,
never silently ignored. The validators are handed in (``Schemas``) so that this module does no I/O;
``gitopsd.adapters.schemafiles`` loads them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from gitopsd import errors
from gitopsd.core import layers, paths, semver
from gitopsd.model import spec

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class _SchemaError(Protocol):
    message: str
    validator: str
    validator_value: Any
    instance: Any
    absolute_path: Any
    context: Any


class Validator(Protocol):
    def iter_errors(self, instance: Any) -> Any: ...  # Any: jsonschema's Validator takes its own JSON type


@dataclasses.dataclass(frozen=True, slots=True)
class Schemas:
    packbuild: Validator
    config: Validator
    cluster: Validator
    known_keys: Mapping[str, tuple[str, ...]]  # schema name -> top-level keys, for suggestions
    registry_hash: str  # sha256 over the schemas/ set: recorded in install records


def check(validator: Validator, document: object, *, file: str, kind: str, known: tuple[str, ...] = ()) -> None:
    found = sorted(validator.iter_errors(document), key=_error_rank)
    if found:
        raise errors.SpecError(describe(found[0], known=known, kind=kind), path=file, reason="InvalidSpec")


def _error_rank(err: _SchemaError) -> tuple[int, int]:
    # Report unknown keys and missing fields first: they are what people get wrong most often.
    order = {"additionalProperties": 0, "required": 1, "type": 2}
    return (order.get(err.validator, 3), len(list(err.absolute_path)))


def field_path(parts: Iterable[object]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def describe(err: _SchemaError, *, known: tuple[str, ...] = (), kind: str = "document") -> str:
    where = field_path(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {})) if hasattr(err, "schema") else set(known)
        extra = sorted(k for k in err.instance if k not in allowed)
        key = extra[0] if extra else "?"
        full = f"{where}.{key}" if where != "(top level)" else key
        hint = difflib.get_close_matches(key, sorted(allowed), n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"remove it (allowed: {', '.join(sorted(allowed))})"
        return f"field {full!r}: unknown key in {kind}; {fix}"
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        full = f"{where}.{missing}" if where != "(top level)" else missing
        return f"field {full!r}: required but missing; add it"
    if err.validator == "pattern":
        return f"field {where!r}: {err.instance!r} has the wrong format (must match {err.validator_value}); fix the value"
    if err.validator == "enum":
        choices = ", ".join(str(v) for v in err.validator_value)
        return f"field {where!r}: {err.instance!r} is not one of: {choices}"
    if err.validator in ("anyOf", "oneOf") and where.startswith("targetClusters"):
        return (
            f"field {where!r}: {json.dumps(err.instance)} is neither a cluster name (DNS-1123 label) "
            "nor a label selector {matchLabels: ..., matchExpressions: ...}"
        )
    return f"field {where!r}: {err.message}"


def parse_config(raw: object, schemas: Schemas, *, file: str = "gitopsd.yaml", checked: bool = False) -> spec.RepoConfig:
    """``checked``: this very document passed the schema before (a persisted parse), so it is not checked again."""
    if raw is None:
        return spec.RepoConfig(path=file)
    if not checked:
        check(schemas.config, raw, file=file, kind="gitopsd.yaml", known=schemas.known_keys.get("config", ()))
    assert isinstance(raw, dict)
    policies = raw.get("policies", {})
    return spec.RepoConfig(
        namespace=raw.get("namespace", "seam-system"),
        registry=raw.get("registry"),
        keep_versions=int(policies.get("keepVersions", 5)),
        installed_by=policies.get("installedBy"),
        clusters=tuple(raw["clusters"]) if "clusters" in raw else None,
        crds=_crds(raw.get("crds", ()), file),
        path=file,
    )


def _crds(entries: list[dict[str, str]], file: str) -> tuple[tuple[str, str], ...]:
    """``crds:`` of gitopsd.yaml as sorted (group/Kind, scope) pairs; one kind listed once."""
    found: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(entries):
        group, kind, scope = entry["group"], entry["kind"], entry["scope"]
        if not layers.is_custom(group, kind):
            raise errors.SpecError(
                f"field 'crds[{index}].group': {group or 'core'}/{kind} is a Kubernetes kind, its scope is known; "
                "list only custom resources' CRDs here",
                path=file, reason="InvalidSpec",
            )
        first = found.get(f"{group}/{kind}")
        if first is not None:
            raise errors.SpecError(
                f"field 'crds[{index}]': {group}/{kind} is listed again (first at crds[{first[0]}]); keep one",
                path=file, reason="InvalidSpec",
            )
        found[f"{group}/{kind}"] = (index, scope)
    return tuple(sorted((key, scope) for key, (_, scope) in found.items()))


def parse_cluster(raw: object, schemas: Schemas, *, file: str, checked: bool = False) -> spec.Cluster:
    """``checked`` as for :func:`parse_config`."""
    if not checked:
        check(schemas.cluster, raw, file=file, kind="cluster", known=schemas.known_keys.get("cluster", ()))
    assert isinstance(raw, dict)
    labels = raw.get("labels", {})
    for key in labels:
        if not _valid_label_key(key):
            raise errors.SpecError(
                f"field 'labels.{key}': not a valid label key (optional DNS prefix/ then a name of "
                "letters, digits, '-', '_' or '.'); rename it",
                path=file,
                reason="InvalidSpec",
            )
    reach = raw.get("kubeconfig") or {}
    secret = reach.get("secretRef")
    return spec.Cluster(name=raw["name"], labels=tuple(sorted(labels.items())), path=file,
                        kubeconfig_secret=(secret["name"], secret.get("key", "value")) if secret else None,
                        context=reach.get("context"))


_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")


def _valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not all(DNS_LABEL.match(p) for p in prefix.split("."))):
        return False
    return bool(_LABEL_NAME.match(name))


def parse_packbuild(raw: object, schemas: Schemas, *, file: str, checked: bool = False) -> spec.PackBuild:
    """A PackBuild from its YAML document; every path is resolved against the file's folder.
    ``checked``: this very document passed the schema before (a persisted parse), so it is not checked again."""
    if not checked:
        check(schemas.packbuild, raw, file=file, kind="PackBuild", known=schemas.known_keys.get("packbuild", ()))
    assert isinstance(raw, dict)
    folder = file.rpartition("/")[0]
    category = spec.Category(raw["category"])
    source = _source(raw, category, folder=folder, file=file)
    version = semver.normalize(raw["version"])
    if "+" in version:
        raise errors.SpecError(
            f"field 'version': {raw['version']!r} has build metadata ('+...'), which cannot be part of a "
            "ClusterPack name; drop it",
            path=file,
            reason="InvalidSpec",
        )
    name = f"{raw['basePackName']}-v{version}"
    if len(name) > 253 or not all(DNS_LABEL.match(part) for part in name.split(".")):
        raise errors.SpecError(
            f"field 'version': ClusterPack name {name!r} is not a valid Kubernetes name; "
            "use lowercase letters, digits, '-' and '.' in the pre-release",
            path=file,
            reason="InvalidSpec",
        )
    return spec.PackBuild(
        path=file,
        name=raw["name"],
        version=version,
        base_pack_name=raw["basePackName"],
        targets=_shared_targets(tuple(_target(item) for item in raw["targetClusters"])),
        category=category,
        source=source,
        registry_url=raw.get("registryUrl"),
        namespace=raw.get("namespace"),
        priority=int(raw.get("priority", 0)),
        license=raw.get("license"),
        depends_on=tuple(raw.get("dependsOn", ())),
        delivery=_delivery(raw.get("delivery") or {}),
    )


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds of a duration such as ``90s``, ``5m``, ``1.5h`` (the schema checked its form)."""
    unit = "ms" if text.endswith("ms") else text[-1]
    return float(text[: -len(unit)]) * _UNITS[unit]


def _delivery(raw: dict[str, Any]) -> spec.DeliverySettings:
    default = spec.DeliverySettings()
    return spec.DeliverySettings(
        timeout=duration(raw["timeout"]) if "timeout" in raw else default.timeout,
        drift=str(raw.get("drift", default.drift)),
        force=bool(raw.get("force", default.force)),
    )


_SOURCE_KEYS = {
    spec.Category.RAW: "rawSource",
    spec.Category.KUSTOMIZE: "kustomizeSource",
    spec.Category.HELM: "helmSource",
}


def _source(raw: dict[str, Any], category: spec.Category, *, folder: str, file: str) -> spec.Source:
    present = [key for key in _SOURCE_KEYS.values() if key in raw]
    wanted = _SOURCE_KEYS[category]
    if len(present) > 1:
        raise errors.SpecError(
            f"fields {', '.join(present)}: exactly one source is allowed; keep only {wanted!r} for category {category}",
            path=file,
            reason="InvalidSpec",
        )
    if present != [wanted]:
        have = f"found {present[0]!r}" if present else "none is set"
        raise errors.SpecError(
            f"field {wanted!r}: category {category} needs {wanted!r} ({have}); add it or change 'category'",
            path=file,
            reason="InvalidSpec",
        )
    body = raw[wanted]
    if category is spec.Category.RAW:
        return spec.RawSource(paths.join(folder, body["path"], file=file, field="rawSource.path"))
    if category is spec.Category.KUSTOMIZE:
        return spec.KustomizeSource(paths.join(folder, body["path"], file=file, field="kustomizeSource.path"))
    chart = body["chart"]
    if "://" not in chart:
        chart = paths.join(folder, chart, file=file, field="helmSource.chart")
    values_file = body.get("valuesFile")
    if values_file is not None:
        values_file = paths.join(folder, values_file, file=file, field="helmSource.valuesFile")
    return spec.HelmSource(
        chart=chart,
        version=body.get("version"),
        values_file=values_file,
        values_json=json.dumps(body.get("values", {}), sort_keys=True, separators=(",", ":")),
        namespace=body.get("namespace"),
    )


def _shared_targets(targets: tuple[spec.ClusterTarget, ...]) -> tuple[spec.ClusterTarget, ...]:
    """``targets``, or an equal tuple parsed before: the PackBuilds of a fleet mostly list the same
    clusters (one tuple for 10,000 of them, not 10,000 with a million ClusterTargets)."""
    try:
        return _equal_targets(targets)
    except TypeError:  # a value the schema let through that cannot be hashed: kept as it is
        return targets


@functools.lru_cache(maxsize=4096)
def _equal_targets(targets: tuple[spec.ClusterTarget, ...]) -> tuple[spec.ClusterTarget, ...]:
    return targets


def _target(item: object) -> spec.ClusterTarget:
    if isinstance(item, str):
        return spec.ClusterTarget(name=item)
    assert isinstance(item, dict)
    reqs = [
        spec.Requirement(key, spec.SelectorOp.IN, (value,)) for key, value in sorted(item.get("matchLabels", {}).items())
    ]
    for expr in item.get("matchExpressions", []):
        reqs.append(spec.Requirement(expr["key"], spec.SelectorOp(expr["operator"]), tuple(expr.get("values", ()))))
    return spec.ClusterTarget(selector=spec.Selector(tuple(reqs)))
