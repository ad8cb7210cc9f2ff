"""YAML reading: scalars resolve and documents split as kubectl, kustomize and Helm read them."""

from __future__ import annotations

import pytest

from gitopsd import errors
from gitopsd.core import yamlload

SCALARS = {
    "equals-sign": ("op: =\n", {"op": "="}),
    "not-equal": ("ops: [=, '!=', =~]\n", {"ops": ["=", "!=", "=~"]}),
    "base-60-stays-a-string": ("at: 1:30\nslot: 190:20:30.15\n", {"at": "1:30", "slot": "190:20:30.15"}),
    "timestamp-stays-a-string": ("since: 2024-01-01\nt: 2001-12-14t21:59:43.10-05:00\n",
                                 {"since": "2024-01-01", "t": "2001-12-14t21:59:43.10-05:00"}),
    "yes-no-on-off": ("a: yes\nb: Off\nc: y\nd: N\ne: true\n", {"a": True, "b": False, "c": True, "d": False, "e": True}),
    "bool-key": ("y: 1\nn: 2\n", {"true": 1, "false": 2}),
    "numbers": ("a: 1e3\nb: 0x1F\nc: 1_000\nd: 017\ne: .5\nf: -2\n",
                {"a": 1000.0, "b": 31, "c": 1000, "d": 15, "e": 0.5, "f": -2}),
    "nulls": ("a: ~\nb: null\nc:\n", {"a": None, "b": None, "c": None}),
    "plain-strings": ("a: 1.2.3\nb: 0.0.0.0/0\nc: '08'\nd: nope\n", {"a": "1.2.3", "b": "0.0.0.0/0", "c": "08", "d": "nope"}),
}


@pytest.mark.parametrize(("text", "expected"), SCALARS.values(), ids=SCALARS.keys())
def test_scalars_resolve_as_kubernetes_reads_them(text: str, expected: dict[str, object]) -> None:
    assert yamlload.load_all(text.encode(), "f.yaml") == [expected]


STREAMS = {
    "comment-glued-to-separator": ("a: 1\n---# Source: x.yaml\nb: 2\n", [{"a": 1}, {"b": 2}]),
    "comment-after-separator": ("a: 1\n--- # note\nb: 2\n", [{"a": 1}, {"b": 2}]),
    "trailing-blanks": ("a: 1\n---   \nb: 2\n---\n", [{"a": 1}, {"b": 2}]),
    "empty-documents": ("---\n---\n# only a comment\n---\na: 1\n", [{"a": 1}]),
    "separator-with-content": ("--- {a: 1}\n", [{"a": 1}]),
    "dashes-in-a-block-scalar": ("a: |\n  ---\n  text\n", [{"a": "---\ntext\n"}]),
}


@pytest.mark.parametrize(("text", "expected"), STREAMS.values(), ids=STREAMS.keys())
def test_documents_split_where_kubectl_and_helm_split_them(text: str, expected: list[object]) -> None:
    assert yamlload.load_all(text.encode(), "f.yaml") == expected


def test_an_error_names_the_line_in_the_whole_stream() -> None:
    with pytest.raises(errors.SpecError) as caught:
        yamlload.load_all(b"a: 1\n---# x\nb: 2\n---\nc: 1\nc: 2\n", "templates/x.yaml")
    assert str(caught.value) == "templates/x.yaml: line 6 column 1: invalid YAML: duplicate key 'c'; keep one"
