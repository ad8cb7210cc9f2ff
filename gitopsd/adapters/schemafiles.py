"""Load the JSON Schemas shipped in ``schemas/`` and build validators for ``gitopsd.core.parse``.

The hash over the whole schema set is the ``registryVersionHash`` of install records: it says which
schema version a pack was validated against (the WorkstreamPack seed's I14).

The validators remember which strings an array's ``items`` schema accepted: a PackBuild's
``targetClusters`` lists the same cluster names as every other PackBuild, and checking each name
against its ``anyOf`` again was most of the time spent loading 10,000 PackBuilds. A string the
schema refuses is never remembered, so its errors are jsonschema's own, as before.

A validator is built when it first checks a document: a pass whose documents all come from the
cache of validated documents (a no-op ``gitopsd diff``) never imports jsonschema (~0.05 s).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gitopsd.core import parse

if TYPE_CHECKING:  # imported by the first validation (see the module docstring)
    import jsonschema
    import referencing

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
    import referencing.jsonschema  # noqa: PLC0415 - see the module docstring

    resources = []
    for name, doc in raw().items():
        resource = referencing.Resource.from_contents(doc, default_specification=referencing.jsonschema.DRAFT202012)
        resources.append((f"{name}.schema.json", resource))
        if "$id" in doc:
            resources.append((str(doc["$id"]), resource))
    return referencing.Registry().with_resources(resources)


MAX_REMEMBERED = 100_000  # strings remembered as valid per items schema; past it the memory starts again


def _remembering_items(items_keyword: Any) -> Any:
    """jsonschema's ``items`` keyword, remembering the strings each ``items`` schema accepted. A
    string's verdict depends only on the string and the schema (no ``$dynamicRef`` in ours)."""
    accepted: dict[int, tuple[object, set[str]]] = {}  # id(items schema) -> (the schema, kept alive; strings)

    def items(validator: Any, items: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if not isinstance(items, dict) or "prefixItems" in schema or not isinstance(instance, list):
            yield from items_keyword(validator, items, instance, schema)
            return
        entry = accepted.get(id(items))
        if entry is None or entry[0] is not items:
            entry = accepted[id(items)] = (items, set())
        known = entry[1]
        for index, item in enumerate(instance):
            if type(item) is str and item in known:
                continue
            found = False
            for error in validator.descend(instance=item, schema=items, path=index):
                found = True
                yield error
            if not found and type(item) is str:
                if len(known) >= MAX_REMEMBERED:
                    known.clear()
                known.add(item)

    return items


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    import jsonschema  # noqa: PLC0415 - see the module docstring

    schema = raw()[name]
    base = jsonschema.validators.validator_for(schema)
    cls = jsonschema.validators.extend(base, {"items": _remembering_items(base.VALIDATORS["items"])})
    return cls(schema, registry=_registry(), format_checker=base.FORMAT_CHECKER)


class _Deferred:
    """The validator of schema ``name``, built when it first checks a document."""

    def __init__(self, name: str) -> None:
        self.name = name

    def iter_errors(self, instance: Any) -> Any:
        return validator(self.name).iter_errors(instance)


@functools.cache
def schemas() -> parse.Schemas:
    known = {name: tuple(sorted(raw()[name].get("properties", {}))) for name in ("packbuild", "config", "cluster")}
    return parse.Schemas(
        packbuild=_Deferred("packbuild"),
        config=_Deferred("config"),
        cluster=_Deferred("cluster"),
        known_keys=known,
        registry_hash=registry_hash(),
    )
