"""The loader's own flattening of merge keys (``<<``) gives the YAML 1.1 values, written out below,
while merges that multiply at every level stay small and fast (a loader that copies every merged
entry would build 10^8 entries here)."""

from __future__ import annotations

import pytest

from gitopsd import errors
from gitopsd.core import yamlload

# YAML 1.1 merge keys, with the values they mean written out: a mapping's own keys override merged
# ones, the first mapping listed in ``<<: [...]`` wins, and a merged mapping brings its own merges
# with it (as Kubernetes' YAML reader and kubectl give them).
MERGES = {
    "one-mapping": ("a: &a {x: 1, w: 2}\nb: {<<: *a, z: 3}\n",
                    {"a": {"x": 1, "w": 2}, "b": {"x": 1, "w": 2, "z": 3}}),
    "own-key-overrides": ("a: &a {x: 1}\nb: {<<: *a, x: 2}\n", {"a": {"x": 1}, "b": {"x": 2}}),
    "first-listed-wins": ("a: &a {x: 1}\nb: &b {x: 2, w: 2}\nc: {<<: [*a, *b]}\n",
                          {"a": {"x": 1}, "b": {"x": 2, "w": 2}, "c": {"x": 1, "w": 2}}),
    "nested-merges": ("a: &a {x: 1, w: 1}\nb: &b {<<: *a, x: 2}\nc: {<<: *b, z: 3}\nd: *b\n",
                      {"a": {"x": 1, "w": 1}, "b": {"x": 2, "w": 1}, "c": {"x": 2, "w": 1, "z": 3},
                       "d": {"x": 2, "w": 1}}),
    "merge-used-before-own-construction": ("a: &a {x: 1}\nb: &b {<<: *a, x: 2}\nc: {<<: *b}\n",
                                           {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 2}}),
    "block-style": ("base: &base\n  image: nginx\n  port: 80\nweb:\n  <<: *base\n  port: 8080\n",
                    {"base": {"image": "nginx", "port": 80}, "web": {"image": "nginx", "port": 8080}}),
    "two-merge-keys-in-sequence": ("a: &a {p: 1}\nb: &b {q: 2}\nc:\n  <<: [*b, *a]\n  r: 3\n",
                                   {"a": {"p": 1}, "b": {"q": 2}, "c": {"q": 2, "p": 1, "r": 3}}),
}


@pytest.mark.parametrize(("text", "expected"), MERGES.values(), ids=MERGES.keys())
def test_merge_keys_give_their_yaml_1_1_values(text: str, expected: dict[str, object]) -> None:
    assert yamlload.load_all(text.encode(), "f.yaml") == [expected]


def test_merges_that_multiply_at_every_level_stay_small() -> None:
    levels = "m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}\n" + "".join(
        f"m{j}: &m{j}\n  <<: [" + ", ".join([f"*m{j - 1}"] * 10) + f"]\n  own{j}: x\n" for j in range(1, 9))
    [doc] = yamlload.load_all(levels.encode(), "f.yaml")
    assert isinstance(doc, dict) and len(doc["m8"]) == 10 + 8  # k0..k9 and own1..own8


def test_a_key_written_twice_next_to_a_merge_is_still_a_duplicate() -> None:
    with pytest.raises(errors.SpecError, match="duplicate key 'w'; keep one"):
        yamlload.load_all(b"a: &a {x: 1}\nb: {<<: *a, w: 2, w: 3}\n", "f.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: {<<: 3}\n", "a merge key (<<) takes a mapping or a list of mappings"),
        ("a: 1.0e+400\n", "NaN or infinite"),
        ("a: !!binary aGk=\n", "tag !!binary"),
        ("a: !!python/name:os.system ''\n", "tag !!python/name:os.system is not allowed"),
        ("a: " + "[" * 200 + "]" * 200 + "\n", "nesting deeper than 100 levels"),
    ],
    ids=["merge-of-a-scalar", "overflowing-float", "binary", "python-tag", "deep"],
)
def test_values_json_cannot_carry_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(errors.SpecError, match="line 1") as caught:
        yamlload.load_all(text.encode(), "f.yaml")
    assert message in str(caught.value)
