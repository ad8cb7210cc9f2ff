"""The OCI artifact of a pack: config blob, three layers, one image manifest — all deterministic.

No timestamps and no machine-specific values go in, so the same pack gives the same digests on any
machine. A layer is a YAML stream whose documents are the objects' canonical JSON (JSON is YAML),
ordered by stage then identity: readable, diffable, and byte-stable. The rbac and workload layers
are always present (possibly empty); the cluster-scoped layer only when it has objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from gitopsd.model import pack

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.ontai.pack.v1"
CONFIG_MEDIA_TYPE = "application/vnd.ontai.pack.config.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(media_type: str, data: bytes) -> pack.Blob:
    return pack.Blob(media_type=media_type, digest=digest_of(data), data=data)


def layer_bytes(manifests: Sequence[pack.Manifest]) -> bytes:
    return "".join(f"---\n{m.canonical}\n" for m in manifests).encode("utf-8")


def build(
    *,
    name: str,
    version: str,
    base_pack_name: str,
    category: str,
    checksum: str,
    execution_order: Sequence[pack.Stage],
    layers: dict[pack.Layer, list[pack.Manifest]],
) -> pack.Artifact:
    config_doc = {
        "name": name,
        "version": version,
        "basePackName": base_pack_name,
        "category": category,
        "checksum": checksum,
        "executionOrder": [str(s) for s in execution_order],
        "objects": {str(layer): len(items) for layer, items in layers.items()},
    }
    config = blob(CONFIG_MEDIA_TYPE, pack.canonical_json(config_doc).encode("utf-8"))
    blobs = []
    for layer in (pack.Layer.RBAC, pack.Layer.CLUSTER_SCOPED, pack.Layer.WORKLOAD):
        items = layers.get(layer, [])
        if layer is pack.Layer.CLUSTER_SCOPED and not items:
            continue
        blobs.append(blob(layer.media_type, layer_bytes(items)))
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": _descriptor(config),
        "layers": [
            _descriptor(b, {"org.opencontainers.image.title": _title(b.media_type)}) for b in blobs
        ],
        "annotations": {
            "org.opencontainers.image.title": base_pack_name,
            "org.opencontainers.image.version": version,
            "dev.ontai.pack.checksum": checksum,
        },
    }
    manifest = json.dumps(manifest_doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return pack.Artifact(
        manifest=manifest,
        manifest_digest=digest_of(manifest),
        config=config,
        layers=tuple(blobs),
        tag=version.replace("+", "_"),
    )


def _descriptor(b: pack.Blob, annotations: dict[str, str] | None = None) -> dict[str, object]:
    out: dict[str, object] = {"mediaType": b.media_type, "digest": b.digest, "size": b.size}
    if annotations:
        out["annotations"] = annotations
    return out


def _title(media_type: str) -> str:
    return media_type.split(".")[3] + ".yaml"  # application/vnd.ontai.pack.<layer>.v1+yaml
