"""Load the JSON Schemas shipped in ``schemas/`` and build validators for ``gitopsd.core.parse``.

The hash over the whole schema set is the ``registryVersionHash`` of install records: it says which
schema version a pack was validated against (the WorkstreamPack seed's I14).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
from typing import Any

import jsonschema
import referencing

from gitopsd.core import parse

NAMES = ("clusterpack", "packbuild", "packinstance", "status-record", "config", "cluster")


@functools.cache
def raw() -> dict[str, dict[str, Any]]:
    folder = importlib.resources.files("gitopsd") / "schemas"
    return {name: json.loads((folder / f"{name}.schema.json").read_text("utf-8")) for name in NAMES}


@functools.cache
def registry_hash() -> str:
    folder = importlib.resources.files("gitopsd") / "schemas"
    digest = hashlib.sha256()
    for name in sorted(NAMES):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update((folder / f"{name}.schema.json").read_bytes())
    return "sha256:" + digest.hexdigest()


@functools.cache
def _registry() -> referencing.Registry:
    resources = []
    for name, doc in raw().items():
        resource = referencing.Resource.from_contents(doc, default_specification=referencing.jsonschema.DRAFT202012)
        resources.append((f"{name}.schema.json", resource))
        if "$id" in doc:
            resources.append((str(doc["$id"]), resource))
    return referencing.Registry().with_resources(resources)


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = raw()[name]
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=_registry(), format_checker=cls.FORMAT_CHECKER)


@functools.cache
def schemas() -> parse.Schemas:
    known = {name: tuple(sorted(raw()[name].get("properties", {}))) for name in ("packbuild", "config", "cluster")}
    return parse.Schemas(
        packbuild=validator("packbuild"),
        config=validator("config"),
        cluster=validator("cluster"),
        known_keys=known,
        registry_hash=registry_hash(),
    )
