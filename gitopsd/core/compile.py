"""Compile one PackBuild's rendered manifests into a CompiledPack (design.md §Compile 2-8).

Pure and deterministic: the renderer adapters (``gitopsd.adapters.render``) produce YAML bytes;
from there this module parses, validates, splits into layers, orders stages, computes the
canonical checksum, builds the OCI artifact and the ClusterPack. The same inputs give
byte-identical outputs; reformatting YAML or reordering files does not change the checksum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

from gitopsd import errors
from gitopsd.core import artifact, layers, yamlload
from gitopsd.model import pack, spec

MAX_OBJECT_BYTES = 1_572_864  # etcd's default request limit, 1.5 MiB
MAX_PACK_BYTES = 16 * 1024 * 1024  # rendered YAML of one pack: parsing it takes about ten times as much memory
MAX_OBJECTS = 10_000  # objects in one pack
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,62}$")
_API_VERSION = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[a-z0-9]{1,63}$")
_PATH_SEGMENT_KINDS = layers.RBAC_KINDS - {"ServiceAccount"}  # RBAC names may hold ':'


@dataclasses.dataclass(frozen=True, slots=True)
class Inputs:
    """Everything besides the rendered bytes that goes into a ClusterPack."""

    namespace: str  # where the ClusterPack lives (gitopsd.yaml namespace)
    registry: str  # registry URL prefix, e.g. registry.example.com/packs
    target_clusters: tuple[str, ...]
    revision: str
    commit_time: str
    tree_id: str
    compiler: str
    crd_scopes: tuple[tuple[str, str], ...] = ()  # (group/Kind, Cluster|Namespaced) of CRDs known outside the pack


def known_scopes(configured: tuple[tuple[str, str], ...], packs: list[tuple[str, tuple[tuple[str, str], ...]]]
                 ) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The scopes of CRDs known outside any one pack, for ``Inputs.crd_scopes``: gitopsd.yaml's
    ``crds`` (``configured``) first, then each pack's CRDs in the order given (path order). A later
    scope that differs for the same kind is not used; the second value says each one."""
    found = dict(configured)
    origin = dict.fromkeys(found, "gitopsd.yaml crds")
    disagreements: list[str] = []
    for path, crds in packs:
        for kind, scope in crds:
            if kind not in found:
                found[kind], origin[kind] = scope, path
            elif found[kind] != scope:
                disagreements.append(f"{kind}: the CRD in {path} says {scope}, {origin[kind]} says {found[kind]}; "
                                     f"{found[kind]} is used; make them agree")
    return tuple(sorted(found.items())), tuple(disagreements)


def parse_objects(documents: tuple[tuple[str, bytes], ...], *, field: str = "source",
                  max_objects: int = MAX_OBJECTS) -> list[tuple[str, dict[str, object]]]:
    """Every object of the rendered stream with the file it came from; ``List`` kinds flattened.

    Past ``max_objects`` it stops with an error naming ``field`` (the PackBuild's source field)."""
    out: list[tuple[str, dict[str, object]]] = []
    for source, data in documents:
        if len(out) > max_objects:
            break
        for index, doc in enumerate(yamlload.load_all(data, source)):
            where = f"{source} (document {index + 1})"
            if not isinstance(doc, dict):
                raise errors.RenderError(
                    f"{where}: a manifest must be a mapping with apiVersion, kind and metadata; got {type(doc).__name__}",
                    path=source,
                )
            kind = doc.get("kind")
            if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
                # kind: List and typed lists (ConfigMapList, SecretList, ...): kubectl applies the items
                out.extend((where, item) for item in doc["items"])
            else:
                out.append((where, doc))
    if len(out) > max_objects:
        raise errors.RenderError(
            f"{field} renders over {max_objects} objects, the limit of one pack; split it into several packs",
            reason="PackTooLarge",
        )
    return out


def compile_pack(build: spec.PackBuild, rendered_documents: tuple[tuple[str, bytes], ...], *,
                 renderers: tuple[tuple[str, str], ...], chart: pack.ChartInfo | None,
                 inputs: Inputs, dropped_hooks: tuple[str, ...] = (), reproducible: bool = True) -> pack.CompiledPack:
    size = sum(len(data) for _, data in rendered_documents)
    if size > MAX_PACK_BYTES:
        raise errors.RenderError(
            f"{_source_field(build)} renders {size} bytes of YAML, over the {MAX_PACK_BYTES // (1024 * 1024)} MiB "
            "limit of one pack; split it into several packs",
            path=build.path,
            reason="PackTooLarge",
        )
    objects = parse_objects(rendered_documents, field=_source_field(build))
    if not objects:
        raise errors.RenderError(
            f"the source rendered no Kubernetes objects; check {_source_field(build)}",
            path=build.path,
        )
    own = _crd_scopes(objects)
    crd_scopes = {**dict(inputs.crd_scopes), **own}
    default_ns = build.namespace or (build.source.namespace if isinstance(build.source, spec.HelmSource) else None)
    notes: dict[str, str] = {}
    manifests = [_manifest(where, obj, default_ns, crd_scopes, notes) for where, obj in objects]
    _refuse_duplicates(manifests, build.path)
    manifests.sort(key=order_key)
    hooks = _hooks(manifests) if build.category is spec.Category.HELM else ()
    checksum = canonical_checksum(manifests)
    by_layer: dict[pack.Layer, list[pack.Manifest]] = {layer: [] for layer in layers.LAYER_ORDER}
    for m in manifests:
        by_layer[m.layer].append(m)
    order = layers.execution_order(m.kind for m in manifests)
    art = artifact.build(
        name=build.name,
        version=build.version,
        base_pack_name=build.base_pack_name,
        category=str(build.category),
        checksum=checksum,
        execution_order=order,
        layers=by_layer,
    )
    provenance = pack.Provenance(
        commit=inputs.revision,
        path=build.path,
        tree=inputs.tree_id,
        commit_time=inputs.commit_time,
        compiler=inputs.compiler,
        renderers=renderers,
        hooks=hooks,
        dropped_hooks=dropped_hooks,
        reproducible=reproducible,
    )
    cluster_pack = pack.ClusterPack(
        name=build.cluster_pack_name,
        namespace=inputs.namespace,
        version=build.version,
        base_pack_name=build.base_pack_name,
        target_clusters=inputs.target_clusters,
        registry_url=f"{inputs.registry.rstrip('/')}/{build.base_pack_name}:{art.tag}",
        manifest_digest=art.manifest_digest,
        checksum=checksum,
        rbac_digest=art.layer_digest(pack.Layer.RBAC),
        cluster_scoped_digest=art.layer_digest(pack.Layer.CLUSTER_SCOPED),
        workload_digest=art.layer_digest(pack.Layer.WORKLOAD),
        source_build_ref=build.path,
        execution_order=order,
        provenance=provenance,
        chart=chart,
    )
    return pack.CompiledPack(
        cluster_pack=cluster_pack,
        identities=tuple(sorted(m.identity for m in manifests)),
        subjects=tuple(m.subject for m in manifests),
        secret_subjects=tuple(m.subject for m in manifests if m.kind == "Secret"),
        artifact=art,
        object_count=len(manifests),
        reproducible=reproducible,
        warnings=tuple(notes[k] for k in sorted(notes)),
        crds=tuple(sorted(own.items())),
        foreign_scopes=_foreign_scopes(manifests, own, dict(inputs.crd_scopes)),
    )


def _foreign_scopes(manifests: list[pack.Manifest], own: dict[str, str],
                    given: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """(group/Kind, the scope ``given`` for it or "") of each custom kind whose CRD is not in the pack:
    all the compile read of ``Inputs.crd_scopes``."""
    found: dict[str, str] = {}
    for m in manifests:
        group = m.api_version.rpartition("/")[0]
        key = f"{group}/{m.kind}"
        if key not in own and layers.is_custom(group, m.kind):
            found[key] = given.get(key, "")
    return tuple(sorted(found.items()))


def order_key(m: pack.Manifest) -> tuple[object, ...]:
    """Artifact order: layer, stage, then Helm's install order of kinds, then identity."""
    return (layers.LAYER_RANK[m.layer], layers.STAGE_RANK[m.stage], layers.kind_rank(m.kind), m.identity)


def _hooks(manifests: list[pack.Manifest]) -> tuple[pack.Hook, ...]:
    """The Helm hooks among the objects, in the order Helm runs them: by weight, then Helm's install
    order of kinds, then name."""
    found: list[tuple[tuple[object, ...], pack.Hook]] = []
    for m in manifests:
        annotations = (json.loads(m.canonical).get("metadata") or {}).get("annotations") or {}
        value = annotations.get("helm.sh/hook")
        if not isinstance(value, str) or not value.strip():
            continue
        phases = tuple(p.strip() for p in value.split(",") if p.strip())
        try:
            weight = int(str(annotations.get("helm.sh/hook-weight", "0")).strip() or "0")
        except ValueError as err:
            raise errors.RenderError(
                f"{m.source}: field 'metadata.annotations.helm.sh/hook-weight' of {m.subject}: "
                f"{yamlload.short(annotations.get('helm.sh/hook-weight'))} is not an integer; fix it",
                path=m.source,
            ) from err
        policy = annotations.get("helm.sh/hook-delete-policy")
        policies = tuple(p.strip() for p in policy.split(",") if p.strip()) if isinstance(policy, str) else ()
        hook = pack.Hook(m.subject, phases, weight, policies or ("before-hook-creation",))
        found.append(((weight, layers.kind_rank(m.kind), m.name), hook))
    return tuple(hook for _, hook in sorted(found, key=lambda item: item[0]))


def canonical_checksum(manifests: list[pack.Manifest]) -> str:
    """sha256 over the objects' canonical JSON in identity order: formatting and file order do not count."""
    digest = hashlib.sha256()
    for m in sorted(manifests, key=lambda m: (m.identity, m.api_version)):
        digest.update(m.canonical.encode("utf-8"))
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def _source_field(build: spec.PackBuild) -> str:
    if isinstance(build.source, spec.HelmSource):
        return f"helmSource.chart ({build.source.chart})"
    field = "rawSource" if isinstance(build.source, spec.RawSource) else "kustomizeSource"
    return f"{field}.path ({build.source.path})"


def _crd_scopes(objects: list[tuple[str, dict[str, object]]]) -> dict[str, str]:
    """``group/Kind`` -> ``Cluster``/``Namespaced`` for every CRD among the objects."""
    scopes: dict[str, str] = {}
    for _, obj in objects:
        if obj.get("kind") == "CustomResourceDefinition":
            body = obj.get("spec")
            if isinstance(body, dict) and isinstance(body.get("group"), str):
                names = body.get("names")
                if isinstance(names, dict) and isinstance(names.get("kind"), str):
                    scope = "Cluster" if body.get("scope") == "Cluster" else "Namespaced"
                    scopes[f"{body['group']}/{names['kind']}"] = scope
    return scopes


def _manifest(where: str, obj: dict[str, object], default_ns: str | None, crd_scopes: dict[str, str],
              notes: dict[str, str]) -> pack.Manifest:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    metadata = obj.get("metadata")
    if not isinstance(api_version, str) or not api_version:
        raise errors.RenderError(f"{where}: field 'apiVersion' is missing; every object needs apiVersion, kind and metadata.name",
                                 path=where)
    if not isinstance(kind, str) or not kind:
        raise errors.RenderError(f"{where}: field 'kind' is missing; every object needs apiVersion, kind and metadata.name",
                                 path=where)
    if not _API_VERSION.match(api_version):
        raise errors.RenderError(f"{where}: field 'apiVersion' {yamlload.short(api_version)} is not a Kubernetes API version "
                                 "(group/version or version); fix it", path=where)
    if not _KIND.match(kind):
        raise errors.RenderError(f"{where}: field 'kind' {yamlload.short(kind)} is not a Kubernetes kind "
                                 "(letters and digits, starting with a letter); fix it", path=where)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        if isinstance(metadata, dict) and "generateName" in metadata:
            raise errors.RenderError(f"{where}: {kind} uses 'metadata.generateName'; "
                                     "a pack needs fixed names, set 'metadata.name'", path=where)
        raise errors.RenderError(f"{where}: field 'metadata.name' is missing on {kind}; every object needs a name", path=where)
    name = metadata["name"]
    _check_name(where, kind, name)
    _check_labels(where, kind, name, metadata)
    yamlload.check_json_safe(obj, where)
    group = api_version.rpartition("/")[0]
    scope = layers.scope_of(group, kind, crd_scopes)
    cluster_scoped = scope in (layers.Scope.CLUSTER, layers.Scope.ASSUMED_CLUSTER)
    if scope is layers.Scope.ASSUMED_CLUSTER:
        notes[f"{group}/{kind}"] = (
            f"{kind} ({api_version}): no CRD for it in this pack, another pack or gitopsd.yaml's crds, taken as "
            "cluster-scoped (its name starts with Cluster) and given no namespace; if that is wrong, add its CRD to a "
            "pack or its scope to crds in gitopsd.yaml"
        )
    namespace = metadata.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not _SUBDOMAIN.match(namespace) or len(namespace) > 63):
        raise errors.RenderError(f"{where}: field 'metadata.namespace' of {kind}/{name}: {yamlload.short(namespace)} "
                                 "is not a valid namespace name (DNS-1123 label); rename it", path=where)
    if cluster_scoped:
        namespace = None
    elif not namespace and default_ns:
        obj = {**obj, "metadata": {**metadata, "namespace": default_ns}}
        namespace = default_ns
        if scope is layers.Scope.UNKNOWN:
            notes[f"{group}/{kind}"] = (
                f"{kind} ({api_version}): no CRD for it in this pack, another pack or gitopsd.yaml's crds, so its "
                f"scope is unknown; taken as namespaced and given namespace {default_ns}; add its CRD to a pack or its "
                "scope to crds in gitopsd.yaml, or set metadata.namespace"
            )
    canonical = pack.canonical_json(obj)
    if len(canonical.encode("utf-8")) > MAX_OBJECT_BYTES:
        raise errors.RenderError(
            f"{where}: {kind}/{name} is {len(canonical)} bytes, over the 1.5 MiB object limit of etcd; split it",
            path=where,
        )
    return pack.Manifest(
        api_version=api_version,
        kind=kind,
        name=name,
        namespace=namespace or None,
        canonical=canonical,
        source=where,
        layer=layers.layer_of(kind, cluster_scoped=cluster_scoped),
        stage=layers.stage_of(kind),
    )


def _check_name(where: str, kind: str, name: str) -> None:
    if kind in _PATH_SEGMENT_KINDS:
        ok = name not in (".", "..") and "/" not in name and "%" not in name and len(name) <= 253
    else:
        ok = len(name) <= 253 and bool(_SUBDOMAIN.match(name))
    if not ok:
        raise errors.RenderError(
            f"{where}: field 'metadata.name' {yamlload.short(name)} of {kind} is not a valid Kubernetes name "
            "(lowercase letters, digits, '-' and '.', at most 253 characters); rename it",
            path=where,
        )


def _check_labels(where: str, kind: str, name: str, metadata: dict[str, object]) -> None:
    labels = metadata.get("labels")
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise errors.RenderError(f"{where}: field 'metadata.labels' of {kind}/{name} must be a mapping", path=where)
    for key, value in labels.items():
        prefix, _, label_name = key.rpartition("/")
        key_ok = bool(_LABEL_NAME.match(label_name)) and len(label_name) <= 63 and (
            not prefix or (len(prefix) <= 253 and bool(_SUBDOMAIN.match(prefix)))
        )
        if not key_ok:
            raise errors.RenderError(f"{where}: label key {yamlload.short(key)} of {kind}/{name} is not valid "
                                     "(field 'metadata.labels'); rename it", path=where)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise errors.RenderError(
                f"{where}: field 'metadata.labels.{key}' of {kind}/{name}: {yamlload.short(value)} is not a valid label value "
                "(a string of at most 63 letters, digits, '-', '_' or '.'; quote numbers and booleans)",
                path=where,
            )


def _refuse_duplicates(manifests: list[pack.Manifest], file: str) -> None:
    seen: dict[tuple[str, str, str, str], pack.Manifest] = {}
    for m in manifests:
        first = seen.get(m.identity)
        if first is not None:
            raise errors.RenderError(
                f"{m.subject} is defined twice: in {first.source} and in {m.source}; keep one",
                path=file,
                reason="DuplicateObject",
            )
        seen[m.identity] = m
