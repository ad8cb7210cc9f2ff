"""The difference between two sets of Kubernetes objects, object by object, as people read it.

``gitopsd plan`` compares what a cluster runs at one revision with what it would run at another
(and, with delivery, what it holds now). Objects are matched by identity (group, kind, namespace,
name); a changed object gets a unified diff of its YAML with sorted keys, after the fields the API
server sets by itself are left out (``status``, ``resourceVersion``, ``managedFields``, ...).
Secret values never reach the diff: each key of ``data``/``stringData`` shows as a marker saying
whether it changed, never its value. Pure: values in, values out (``gitopsd.preview`` feeds it).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from gitopsd.core import delivery as delivery_core

HIDDEN = "(hidden)"  # a Secret value on the side it is compared against, or on both when equal
CHANGED = "(hidden, changed)"  # a Secret value that differs from the other side's
SECRET_FIELDS = ("data", "stringData")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"  # holds a Secret's values in plain text

Identity = tuple[str, str, str, str]  # group, kind, namespace, name


def identity(obj: Mapping[str, Any]) -> Identity:
    meta = obj.get("metadata") or {}
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    return (group, str(obj.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name", "")))


def subject(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` (``Kind/name`` when cluster-scoped): Flux's object subject."""
    _, kind, namespace, name = identity(obj)
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Changed:
    subject: str
    diff: tuple[str, ...]  # unified diff lines, without line ends


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectDiff:
    """What turning one set of objects into another does: subjects added, removed and changed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[Changed, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, object]:
        return {"added": list(self.added), "removed": list(self.removed),
                "changed": [{"object": c.subject, "diff": list(c.diff)} for c in self.changed]}


def comparable(obj: Mapping[str, Any], *, drop_labels: Iterable[str] = ()) -> dict[str, Any]:
    """The object without what the server sets by itself (and without ``drop_labels``, such as the
    label delivery adds); empty labels or annotations left by that are dropped too."""
    out = delivery_core.comparable(obj)
    meta = dict(out["metadata"])
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in set(drop_labels)}
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    if "annotations" in meta and not meta["annotations"]:
        meta.pop("annotations")
    out["metadata"] = meta
    return out


def _is_secret(obj: Mapping[str, Any]) -> bool:
    return obj.get("kind") == "Secret" and str(obj.get("apiVersion", "")) == "v1"


def _masked(obj: Mapping[str, Any], other: Mapping[str, Any] | None) -> dict[str, Any]:
    """A Secret with every value of ``data``/``stringData`` replaced by a marker: ``CHANGED`` when
    ``other`` (the Secret it is compared with) holds another value or none, else ``HIDDEN``. The
    last-applied annotation (which repeats the values) is masked as a whole."""
    out = dict(obj)
    for field in SECRET_FIELDS:
        values = obj.get(field)
        if not isinstance(values, Mapping):
            continue
        theirs = (other or {}).get(field)
        theirs = theirs if isinstance(theirs, Mapping) else {}
        out[field] = {key: HIDDEN if other is None or (key in theirs and theirs[key] == value) else CHANGED
                      for key, value in values.items()}
    meta = obj.get("metadata") or {}
    notes = meta.get("annotations") or {}
    if LAST_APPLIED in notes:
        mine, theirs_note = notes[LAST_APPLIED], ((other or {}).get("metadata") or {}).get("annotations", {}).get(LAST_APPLIED)
        mark = HIDDEN if other is None or mine == theirs_note else CHANGED
        out["metadata"] = {**meta, "annotations": {**notes, LAST_APPLIED: mark}}
    return out


def masked_pair(before: Mapping[str, Any] | None,
                after: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Both sides of a comparison, safe to print: Secret values replaced by markers. A value that
    is the same on both sides is ``(hidden)`` on both; one that differs (or is new) is ``(hidden)``
    before and ``(hidden, changed)`` after, so the diff shows the key changed and nothing else."""
    if not ((before is not None and _is_secret(before)) or (after is not None and _is_secret(after))):
        return (dict(before) if before is not None else None, dict(after) if after is not None else None)
    left = None if before is None else _masked(before, None)
    right = None if after is None else _masked(after, before)
    return left, right


def to_yaml(obj: Mapping[str, Any]) -> str:
    """Block YAML with sorted keys: the form diffs are made of."""
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, allow_unicode=True, width=1 << 16)


def unified(before: Mapping[str, Any], after: Mapping[str, Any], name: str, *, context: int = 3,
            labels: tuple[str, str] = ("a", "b")) -> tuple[str, ...]:
    """The unified diff of two objects' YAML (already cleaned and masked), header lines included."""
    return tuple(difflib.unified_diff(to_yaml(before).splitlines(), to_yaml(after).splitlines(),
                                      fromfile=f"{labels[0]}/{name}", tofile=f"{labels[1]}/{name}", n=context, lineterm=""))


def compare(before: Iterable[Mapping[str, Any]], after: Iterable[Mapping[str, Any]], *,
            drop_labels: Iterable[str] = (), labels: tuple[str, str] = ("a", "b")) -> ObjectDiff:
    """Added, removed and changed objects from ``before`` to ``after``, each list in subject order."""
    drop = tuple(drop_labels)
    old = {identity(o): o for o in before}
    new = {identity(o): o for o in after}
    added = sorted(subject(new[k]) for k in new.keys() - old.keys())
    removed = sorted(subject(old[k]) for k in old.keys() - new.keys())
    changed = []
    for key in new.keys() & old.keys():
        left, right = comparable(old[key], drop_labels=drop), comparable(new[key], drop_labels=drop)
        if left == right:
            continue
        shown_left, shown_right = masked_pair(left, right)
        assert shown_left is not None and shown_right is not None
        name = subject(new[key])
        changed.append(Changed(name, unified(shown_left, shown_right, name, labels=labels)))
    changed.sort(key=lambda c: c.subject)
    return ObjectDiff(tuple(added), tuple(removed), tuple(changed))
