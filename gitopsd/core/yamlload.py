"""Safe, strict YAML loading for config-repo files and rendered manifests.

PyYAML's C loader does the parsing; this module adds what a GitOps input needs and PyYAML does
not do by itself: duplicate keys are errors, timestamps stay strings (as Kubernetes reads them),
alias bombs are cut off by a node budget, documents and files have size limits, and every error
names the file and the line. Neighbours: ``gitopsd.core.parse`` (specs) and
``gitopsd.core.compile`` (manifests) call it.
"""

from __future__ import annotations

import math

import yaml

from gitopsd import errors

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DOCUMENTS = 5000
MAX_NODES = 2_000_000
MAX_DEPTH = 100

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc,valid-type]
    """Safe loader: no timestamps, duplicate keys refused, all keys turned into strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[str, object]:
    loader.flatten_mapping(node)
    mapping: dict[str, object] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (dict, list)):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            )
        text = _key_text(key)
        if text in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {text!r}", key_node.start_mark
            )
        mapping[text] = loader.construct_object(value_node, deep=deep)
    return mapping


def _key_text(key: object) -> str:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load_all(data: bytes, path: str) -> list[object]:
    """Every non-empty document of a YAML stream, as plain JSON-compatible values."""
    if len(data) > MAX_FILE_BYTES:
        raise errors.SpecError(
            f"file is {len(data)} bytes, over the {MAX_FILE_BYTES}-byte limit; split it into smaller files",
            path=path,
            reason="FileTooLarge",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise errors.SpecError(
            f"byte {err.start} is not valid UTF-8; save the file as UTF-8", path=path, reason="InvalidEncoding"
        ) from err
    try:
        docs = [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]
    except yaml.YAMLError as err:
        raise errors.SpecError(_yaml_message(err), path=path, reason="InvalidYAML") from err
    except RecursionError as err:
        raise errors.SpecError(
            f"nesting deeper than Python can parse; flatten the document", path=path, reason="TooDeep"
        ) from err
    if len(docs) > MAX_DOCUMENTS:
        raise errors.SpecError(
            f"{len(docs)} documents, over the limit of {MAX_DOCUMENTS}; split the pack",
            path=path,
            reason="TooManyDocuments",
        )
    if "*" in text or "<<" in text:
        for doc in docs:
            _check_budget(doc, path)
    return docs


def load_one(data: bytes, path: str) -> object:
    docs = load_all(data, path)
    if len(docs) != 1:
        raise errors.SpecError(
            f"expected exactly one YAML document, found {len(docs)}", path=path, reason="InvalidYAML"
        )
    return docs[0]


def _check_budget(doc: object, path: str) -> None:
    """Walk the document counting nodes (aliases count each time): stops alias bombs early."""
    budget = MAX_NODES
    stack: list[tuple[object, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise errors.SpecError(
                f"document expands to over {MAX_NODES} nodes (YAML aliases); remove the anchors/aliases",
                path=path,
                reason="AliasBomb",
            )
        if depth > MAX_DEPTH:
            raise errors.SpecError(
                f"nesting deeper than {MAX_DEPTH} levels; flatten the document", path=path, reason="TooDeep"
            )
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def check_json_safe(value: object, path: str) -> None:
    """Floats that JSON cannot carry (NaN, infinity) are refused."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise errors.SpecError(
                "a number is NaN or infinite, which JSON cannot represent; quote it", path=path, reason="InvalidYAML"
            )
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _yaml_message(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    return f"{where}invalid YAML: {problem}"
