"""Between typed values and the Kubernetes-shaped JSON objects that stores and clusters hold.

Every backend (the SQLite store, the Kubernetes API, the status records in Git) keeps ClusterPacks
and PackInstances as ordinary objects with apiVersion/kind/metadata/spec/status; this module is the
one place that reads them back into ``model`` values, so the backends agree with each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gitopsd.core import targets
from gitopsd.model import instance, pack

PACK_INSTANCE_API_VERSION = pack.API_VERSION


def pack_instance_object(pi: instance.PackInstance) -> dict[str, object]:
    return {
        "apiVersion": PACK_INSTANCE_API_VERSION,
        "kind": instance.PACK_INSTANCE_KIND,
        "metadata": {
            "name": pi.name,
            "namespace": pi.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "gitopsd",
                "ontai.dev/base-pack": pi.base_pack_name,
                "ontai.dev/cluster": pi.cluster,
            },
        },
        "spec": pi.spec(),
        "status": pi.status(),
    }


def pack_instance_from_object(obj: Mapping[str, Any]) -> instance.PackInstance:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    ref = spec.get("clusterPackRef", {})
    return instance.PackInstance(
        name=meta["name"],
        namespace=meta.get("namespace", ""),
        base_pack_name=spec.get("basePackName", ""),
        cluster=spec.get("cluster", ""),
        cluster_pack=ref.get("name", ""),
        version=ref.get("version", ""),
        manifest_digest=ref.get("digest", ""),
        checksum=ref.get("checksum", ""),
        priority=int(spec.get("priority", 0)),
        source_build_ref=spec.get("sourceBuildRef", ""),
        revision=status.get("observedRevision", ""),
        state=instance.InstallState(status.get("state", "installed")),
        history=tuple(instance.InstallRecord.from_json(r) for r in status.get("history", [])),
        conditions=tuple(instance.Condition.from_json(c) for c in status.get("conditions", [])),
        uid=meta.get("uid"),
        resource_version=meta.get("resourceVersion"),
    )


def observed_pack_from_object(obj: Mapping[str, Any]) -> instance.ObservedPack:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    signature = annotations.get(pack.SIGNATURE_ANNOTATION) or status.get("packSignature")
    return instance.ObservedPack(
        name=meta["name"],
        version=spec.get("version", ""),
        base_pack_name=spec.get("basePackName", ""),
        checksum=spec.get("checksum", ""),
        manifest_digest=(spec.get("registryRef") or {}).get("digest", ""),
        signature=signature,
        spec_json=pack.canonical_json(spec),
        created_revision=(spec.get("provenance") or {}).get("commit", ""),
    )


def cluster_pack_to_json(cp: pack.ClusterPack) -> dict[str, object]:
    return {"namespace": cp.namespace, "name": cp.name, "spec": cp.spec(), "signature": cp.signature}


def cluster_pack_from_json(raw: Mapping[str, Any]) -> pack.ClusterPack:
    spec = raw["spec"]
    prov = spec.get("provenance", {})
    chart = None
    if "chartName" in spec:
        chart = pack.ChartInfo(spec["chartName"], spec.get("chartVersion", ""), spec.get("chartURL", ""),
                               spec.get("helmVersion", ""))
    return pack.ClusterPack(
        name=raw["name"],
        namespace=raw["namespace"],
        version=spec["version"],
        base_pack_name=spec.get("basePackName", ""),
        target_clusters=targets.shared(tuple(spec.get("targetClusters", ()))),
        registry_url=spec["registryRef"]["url"],
        manifest_digest=spec["registryRef"].get("digest", ""),
        checksum=spec.get("checksum", ""),
        rbac_digest=spec.get("rbacDigest"),
        cluster_scoped_digest=spec.get("clusterScopedDigest"),
        workload_digest=spec.get("workloadDigest"),
        source_build_ref=spec.get("sourceBuildRef", ""),
        execution_order=tuple(pack.Stage(s["name"]) for s in spec.get("executionOrder", ())),
        provenance=pack.Provenance(
            commit=prov.get("commit", ""),
            path=prov.get("path", ""),
            tree=prov.get("tree", ""),
            commit_time=prov.get("commitTime", ""),
            compiler=prov.get("compiler", ""),
            renderers=tuple(sorted((prov.get("renderers") or {}).items())),
            hooks=tuple(
                pack.Hook(h["object"], tuple(h.get("phases", ())), int(h.get("weight", 0)), tuple(h.get("deletePolicies", ())))
                for h in prov.get("hooks", ())
            ),
            dropped_hooks=tuple(prov.get("droppedHooks", ())),
            reproducible=bool(prov.get("reproducible", True)),
        ),
        chart=chart,
        signature=raw.get("signature"),
    )


def compiled_to_text(c: pack.CompiledPack) -> str:
    return json.dumps(
        {
            "clusterPack": cluster_pack_to_json(c.cluster_pack),
            "identities": [list(i) for i in c.identities],
            "subjects": list(c.subjects),
            "secretSubjects": list(c.secret_subjects),
            "objects": c.object_count,
            "reproducible": c.reproducible,
            "warnings": list(c.warnings),
            "crds": [list(entry) for entry in c.crds],
            "foreignScopes": [list(f) for f in c.foreign_scopes],
        },
        separators=(",", ":"),
    )


def compiled_from_text(text: str) -> pack.CompiledPack:
    raw = json.loads(text)
    return pack.CompiledPack(
        cluster_pack=cluster_pack_from_json(raw["clusterPack"]),
        identities=tuple(tuple(i) for i in raw["identities"]),
        subjects=tuple(raw["subjects"]),
        secret_subjects=tuple(raw.get("secretSubjects", ())),
        artifact=None,
        object_count=int(raw["objects"]),
        reproducible=bool(raw.get("reproducible", True)),
        warnings=tuple(raw.get("warnings", ())),
        # required: an entry from before these were kept is a miss (KeyError), not a pack without CRDs
        crds=tuple((str(gk), str(scope)) for gk, scope in raw["crds"]),
        foreign_scopes=tuple((str(gk), str(scope)) for gk, scope in raw["foreignScopes"]),
    )
