"""Label and field selectors with the grammar of ``k8s.io/apimachinery/pkg/labels`` and ``fields``.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``,
``a>1``, ``a<1``, comma-joined (AND). Field selectors: ``path=value``, ``path==value``,
``path!=value`` over dotted paths such as ``metadata.name``. ``operations`` uses them to filter
lists and watches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_CMP_RE = re.compile(rf"^({_KEY})\s*(==|=|!=|>|<)\s*(.*)$")
_EXISTS_RE = re.compile(rf"^(!?)\s*({_KEY})$")


class SelectorError(ValueError):
    """A selector that does not parse."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
            case ">" | "<":
                return present and _compare_int(value or "", self.values[0], self.operator)
        raise AssertionError(self.operator)


def _compare_int(value: str, bound: str, operator: str) -> bool:
    try:
        left, right = int(value), int(bound)
    except ValueError:
        return False
    return left > right if operator == ">" else left < right


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    terms.append("".join(current).strip())
    if depth != 0:
        raise SelectorError(f"unbalanced parentheses in selector {text!r}")
    return [term for term in terms if term] if text.strip() else []


def _parse_requirement(term: str) -> Requirement:
    if match := _SET_RE.match(term):
        key, operator, values = match.groups()
        parsed = tuple(v.strip() for v in values.split(",") if v.strip())
        return Requirement(key, operator, parsed)
    if match := _CMP_RE.match(term):
        key, operator, value = match.groups()
        value = value.strip()
        if operator in (">", "<") and not re.fullmatch(r"-?\d+", value):
            raise SelectorError(f"{term!r}: {operator} needs an integer")
        return Requirement(key, "=" if operator == "==" else operator, (value,))
    if match := _EXISTS_RE.match(term):
        negated, key = match.groups()
        return Requirement(key, "!" if negated else "exists")
    raise SelectorError(f"unable to parse requirement: {term!r}")


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        return cls(tuple(_parse_requirement(term) for term in _split_terms(text or "")))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: str
    negated: bool
    value: str


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None, allowed: Collection[str]) -> FieldSelector:
        requirements = []
        for term in re.split(r"(?<!\\),", text or ""):
            term = term.strip()
            if not term:
                continue
            match = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", term)
            if not match:
                raise SelectorError(f"invalid field selector: {term!r}")
            path, operator, value = match.groups()
            if path not in allowed:
                raise SelectorError(f"field label not supported: {path}")
            requirements.append(FieldRequirement(path, operator == "!=", _unescape(value)))
        return cls(tuple(requirements))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all((field_value(obj, r.path) == r.value) != r.negated for r in self.requirements)

    def names(self) -> set[str] | None:
        """The single ``metadata.name`` this selector pins, if it pins one (watch of one object)."""
        pinned = {r.value for r in self.requirements if r.path == "metadata.name" and not r.negated}
        return pinned or None


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The value at a dotted path as a field selector compares it (missing is ``""``)."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


Matcher = Callable[[Mapping[str, Any]], bool]


def object_matcher(labels: LabelSelector, fields: FieldSelector) -> Matcher:
    def matches(obj: Mapping[str, Any]) -> bool:
        return labels.matches(obj.get("metadata", {}).get("labels")) and fields.matches(obj)

    return matches
