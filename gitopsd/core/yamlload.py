"""Safe, strict YAML loading for config-repo files and rendered manifests.

PyYAML's C loader does the parsing; this module adds what a GitOps input needs and PyYAML does
not do by itself: duplicate keys are errors, timestamps stay strings (as Kubernetes reads them),
alias bombs are cut off by a node budget, nesting is limited before the C parser sees it (its
composer recurses on the C stack: a few tens of thousands of ``[`` crash the process), documents
and files have size limits, only JSON values are built (no ``!!binary``, ``!!set``, explicit
``!!timestamp``, NaN or infinity, integers too long for Python to read), and every error names the
file and the line, on one line. Neighbours: ``gitopsd.core.parse`` (specs) and
``gitopsd.core.compile`` (manifests) call it.
"""

from __future__ import annotations

import math
import re

import yaml

from gitopsd import errors

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DOCUMENTS = 5000
MAX_NODES = 2_000_000
MAX_DEPTH = 100

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_RESOLVED: dict[tuple[str, tuple[bool, bool]], str] = {}  # (scalar, implicit) -> tag, by _Loader.resolve


class _Bomb(yaml.constructor.ConstructorError):
    """Aliases or merge keys that expand past the budget."""


class _Loader(_Base):  # type: ignore[misc,valid-type]  # _Base is CSafeLoader or SafeLoader, chosen at import
    """Safe loader: no timestamps, duplicate keys refused, all keys turned into strings, merge keys
    (``<<``) flattened without copies (PyYAML's own flattening copies every merged entry at every
    level: ten merges of ten merges ... is a memory bomb before any alias budget can act)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.merged: dict[yaml.MappingNode, int] = {}  # flattened node -> how many entries came from merges
        self.merge_budget = MAX_NODES

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        """PyYAML's, but a plain string scalar (most keys and values of a manifest) is its own value,
        without the bookkeeping PyYAML does for nodes that can hold other nodes."""
        if node.tag == _STR and type(node) is yaml.ScalarNode:
            return node.value
        return super().construct_object(node, deep)

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        """PyYAML's, remembered for short scalars: a tag depends only on the node kind, the value and
        whether it was plain or quoted (no path resolvers here), and manifests repeat their keys."""
        if kind is not yaml.ScalarNode or len(value) > 64:
            return str(super().resolve(kind, value, implicit))
        key = (value, implicit)
        tag = _RESOLVED.get(key)
        if tag is None:
            if len(_RESOLVED) >= 50_000:
                _RESOLVED.clear()
            tag = _RESOLVED[key] = str(super().resolve(kind, value, implicit))
        return tag

    def flatten_mapping(self, node: yaml.MappingNode) -> int:
        """Resolve ``<<`` in place like PyYAML (later entries win), keeping one entry per merged key;
        returns how many leading entries of ``node.value`` came from merges."""
        done = self.merged.get(node)
        if done is not None:
            return done
        self.merged[node] = 0  # a merge cycle meets this and stops
        merge: list[tuple[yaml.Node, yaml.Node]] = []
        own: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.tag == "tag:yaml.org,2002:value":
                    key_node.tag = "tag:yaml.org,2002:str"
                own.append((key_node, value_node))
                continue
            if isinstance(value_node, yaml.MappingNode):
                sources = [value_node]
            elif isinstance(value_node, yaml.SequenceNode) and all(isinstance(n, yaml.MappingNode) for n in value_node.value):
                sources = list(reversed(value_node.value))  # the first mapping listed wins: it goes last
            else:
                raise yaml.constructor.ConstructorError(
                    None, None, "a merge key (<<) takes a mapping or a list of mappings", value_node.start_mark
                )
            for source in sources:
                self.flatten_mapping(source)
                merge.extend(source.value)
                self.merge_budget -= len(source.value)
                if self.merge_budget < 0:
                    raise _Bomb(
                        None, None, f"merge keys (<<) expand to over {MAX_NODES} entries (YAML aliases); remove the "
                        "anchors/aliases", key_node.start_mark
                    )
        if merge:
            last: dict[object, int] = {}
            for index, (key_node, _) in enumerate(merge):
                ident = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else key_node
                last[ident] = index
            merge = [merge[i] for i in sorted(last.values())]
        node.value = merge + own
        self.merged[node] = len(merge)
        return len(merge)


# Scalars resolve as Kubernetes reads them (go-yaml v2 through sigs.k8s.io/yaml, which kubectl,
# kustomize and Helm share), not as PyYAML's YAML 1.1 tables do: no timestamps, no base-60 numbers
# (``1:30`` stays a string), no ``=`` value tag (``=`` is the string "="), ``y``/``n`` are booleans,
# ``1e3`` is a number, ``_`` may separate digits.
_BOOL = re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_TRUE = frozenset({"y", "yes", "true", "on"})


def _resolvers() -> dict[str | None, list[tuple[str, re.Pattern[str]]]]:
    table: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}
    rows = (
        ("tag:yaml.org,2002:bool", _BOOL, "yYnNtTfFoO"),
        ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
        ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
        ("tag:yaml.org,2002:null", _NULL, "~nN"),
        ("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), "<"),
    )
    for tag, regexp, firsts in rows:
        for first in firsts:
            table.setdefault(first, []).append((tag, regexp))
    table.setdefault("", []).append(("tag:yaml.org,2002:null", _NULL))
    return table


_Loader.yaml_implicit_resolvers = _resolvers()


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[str, object]:
    # Keys merged in with ``<<`` may be overridden by the mapping's own keys (YAML merge semantics);
    # a key written twice in the mapping itself is an error.
    merged = loader.flatten_mapping(node)
    mapping: dict[str, object] = {}
    explicit: set[str] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (dict, list)):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            )
        text = _key_text(key)
        if index >= merged:
            if text in explicit:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(text)}; keep one", key_node.start_mark
                )
            explicit.add(text)
        mapping[text] = loader.construct_object(value_node, deep=deep)
    return mapping


def _key_text(key: object) -> str:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    try:
        return loader.construct_yaml_int(node)
    except ValueError as err:  # more digits than int() reads (sys.get_int_max_str_digits)
        raise yaml.constructor.ConstructorError(
            None, None, f"integer with {len(str(node.value))} characters is too long; quote it", node.start_mark
        ) from err


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return str(node.value).lower() in _TRUE


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    value: float = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        raise yaml.constructor.ConstructorError(
            None, None, f"{short(node.value)} is NaN or infinite, which JSON cannot represent; quote it", node.start_mark
        )
    return value


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    raise yaml.constructor.ConstructorError(
        None, None, f"tag {tag} makes a value JSON cannot carry; remove the tag (quote the value)", node.start_mark
    )


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
for _tag in ("binary", "set", "timestamp", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


def load_all(data: bytes, path: str, *, first_line: int = 1) -> list[object]:
    """Every non-empty document of a YAML stream, as plain JSON-compatible values; errors give
    lines counted from ``first_line`` (the stream may be a piece of a larger file)."""
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
    docs: list[object] = []
    chunks = split_documents(text)
    if len(chunks) > MAX_DOCUMENTS:
        raise errors.SpecError(
            f"{len(chunks)} documents, over the limit of {MAX_DOCUMENTS}; split the pack",
            path=path,
            reason="TooManyDocuments",
        )
    for offset, chunk in chunks:
        offset += first_line - 1
        try:
            _check_nesting(chunk, path, offset)
            docs.extend(doc for doc in yaml.load_all(chunk, Loader=_Loader) if doc is not None)
        except _Bomb as err:
            raise errors.SpecError(_yaml_message(err, offset), path=path, reason="AliasBomb") from err
        except yaml.YAMLError as err:
            raise errors.SpecError(_yaml_message(err, offset), path=path, reason="InvalidYAML") from err
        except RecursionError as err:
            raise errors.SpecError(
                "nesting deeper than Python can parse; flatten the document", path=path, reason="TooDeep"
            ) from err
        if len(docs) > MAX_DOCUMENTS:
            break
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


def split_documents(text: str) -> list[tuple[int, str]]:
    """The documents of a stream as kubectl's and Helm's readers cut them, each with the number of
    lines before it: a line starting with ``---`` followed by nothing but blanks or a comment
    (``---``, ``--- # note``, ``---# note`` left by ``{{- if -}}`` trimming) separates documents."""
    if "---" not in text:
        return [(0, text)]
    chunks: list[tuple[int, str]] = []
    start, lines = 0, text.splitlines(keepends=True)
    current: list[str] = []
    for number, line in enumerate(lines):
        if line.startswith("---"):
            rest = line[3:].strip()
            if not rest or rest.startswith("#"):
                chunks.append((start, "".join(current)))
                current, start = [], number + 1
                continue
        current.append(line)
    chunks.append((start, "".join(current)))
    return [(offset, chunk) for offset, chunk in chunks if chunk.strip()]


def load_one(data: bytes, path: str) -> object:
    docs = load_all(data, path)
    if len(docs) != 1:
        fix = "the file is empty: write one document in it" if not docs else "keep one document per file"
        raise errors.SpecError(
            f"expected exactly one YAML document, found {len(docs)}; {fix}", path=path, reason="InvalidYAML"
        )
    return docs[0]


def _check_nesting(text: str, path: str, offset: int = 0) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` before composing: the C composer recurses without
    a limit. Each level of nesting needs one of ``[ { - ? :``, so most files are cleared by counting
    those; the rest are walked as parser events (iterative, no recursion). The C parser may stop on
    a limit of its own while it looks ahead; the walk is then done again with the pure-Python
    parser, so a too-deep document always gets ``TooDeep`` at the line where it passes the limit,
    whatever the library's own limits are."""
    bound = sum(text.count(ch) for ch in "[{-?:")
    if bound <= MAX_DEPTH:
        return
    try:
        _walk_depth(text, path, _Loader, offset)
    except yaml.YAMLError:
        _walk_depth(text, path, yaml.SafeLoader, offset)  # raises TooDeep, or the YAML error itself


def _walk_depth(text: str, path: str, loader: type, offset: int = 0) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                assert mark is not None  # the parser marks every event it emits
                raise errors.SpecError(
                    f"line {offset + mark.line + 1} column {mark.column + 1}: nesting deeper than {MAX_DEPTH} levels; "
                    "flatten the document",
                    path=path,
                    reason="TooDeep",
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


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
    """Values JSON cannot carry (NaN, infinity, bytes, sets, dates) are refused, naming the field."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise errors.SpecError(
                f"field {where or '(top level)'!r}: a number is NaN or infinite, which JSON cannot represent; quote it",
                path=path,
                reason="InvalidYAML",
            )
        elif item is not None and not isinstance(item, (str, int, float, bool)):
            raise errors.SpecError(
                f"field {where or '(top level)'!r}: a {type(item).__name__} value is not JSON; write it as a string",
                path=path,
                reason="InvalidYAML",
            )


def short(text: object, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters: error messages stay one short line."""
    shown = repr(text) if isinstance(text, str) else repr(str(text))
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _yaml_message(err: yaml.YAMLError, offset: int = 0) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {offset + mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    problem = " ".join(str(problem).split())  # one line, whatever the parser put in it
    if problem.startswith("could not determine a constructor for the tag"):
        tag = problem.rpartition(" ")[2].strip("'").replace("tag:yaml.org,2002:", "!!")
        problem = f"tag {tag} is not allowed (plain YAML values only); remove the tag"
    elif problem == "found unconstructable recursive node":
        problem = "an alias refers to the node that holds it (a cycle); remove the alias"
    if len(problem) > 200:
        problem = problem[:197] + "..."
    return f"{where}invalid YAML: {problem}"
