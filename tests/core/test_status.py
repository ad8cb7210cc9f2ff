"""Status records: the bytes per basePackName, and the per-record memo the daemon keeps between passes."""

from __future__ import annotations

import dataclasses

import yaml

from gitopsd.core import status
from tests.core.test_plan import build_plan, desired, observed_from


def test_memo_gives_the_same_bytes_and_rebuilds_only_the_records_whose_inputs_changed(monkeypatch):
    a1, b1 = desired("a", "1.0.0", clusters=("c1", "c2")), desired("b", "1.0.0", objects=("cm-b",))
    first = build_plan(a1, b1)
    observed = observed_from(first)
    steady = build_plan(a1, b1, observed=observed)
    compiled = [a1.compiled, b1.compiled]
    plain = status.records(steady, compiled, observed, "main@sha1:2")
    assert [p for p, _ in plain] == [".gitopsd/status/a.yaml", ".gitopsd/status/b.yaml"]
    record = yaml.safe_load(plain[0][1])
    assert [i["name"] for i in record["instances"]] == ["a-c1", "a-c2"]
    assert {i["state"] for i in record["instances"]} == {"installed"}

    memo: dict = {}
    assert status.records(steady, compiled, observed, "main@sha1:2", memo=memo) == plain
    built = []
    real = status._record
    monkeypatch.setattr(status, "_record", lambda base, *rest: built.append(base) or real(base, *rest))
    # the next pass: a new plan (new Change objects) over the same observed objects
    again = build_plan(a1, b1, observed=observed)
    assert status.records(again, compiled, observed, "main@sha1:3", memo=memo) == plain
    assert built == []

    # b is bumped: only b's record is built again, and it shows the upgrade
    b2 = desired("b", "1.1.0", objects=("cm-b",))
    bumped = build_plan(a1, b2, observed=observed)
    after = observed_from(first, bumped)
    out = status.records(build_plan(a1, b2, observed=after), [a1.compiled, b2.compiled], after, "main@sha1:4", memo=memo)
    assert built == ["b"]
    assert out[0] == plain[0]
    b_record = yaml.safe_load(out[1][1])
    assert b_record["instances"][0]["version"] == "1.1.0"
    assert b_record["instances"][0]["upgradeFromVersion"] == "1.0.0"
    assert out[1] == status.records(build_plan(a1, b2, observed=after), [a1.compiled, b2.compiled], after, "main@sha1:4")[1]

    # a basePackName with nothing left to report drops out of the memo too
    gone = dataclasses.replace(after, instances={k: v for k, v in after.instances.items() if not k.startswith("a-")})
    out = status.records(build_plan(b2, observed=gone), [b2.compiled], gone, "main@sha1:5", memo=memo)
    assert [p for p, _ in out] == [".gitopsd/status/b.yaml"]
    assert set(memo) == {"b"}


def test_a_record_with_other_inputs_but_the_same_content_is_not_dumped_again(monkeypatch):
    a1 = desired("a", "1.0.0", clusters=("c1", "c2"))
    first = build_plan(a1)  # the cold pass: the instances are created by this plan
    memo: dict = {}
    made = status.records(first, [a1.compiled], observed_from(first, first), "main@sha1:1", memo=memo)
    dumped = []
    real = status._dump
    monkeypatch.setattr(status, "_dump", lambda record: dumped.append(record["basePackName"]) or real(record))
    observed = observed_from(first)
    steady = build_plan(a1, observed=observed)  # the next pass: the same instances, unchanged
    again = status.records(steady, [a1.compiled], observed, "main@sha1:1", memo=memo)
    assert again == status.records(steady, [a1.compiled], observed, "main@sha1:1") == made
    assert dumped == ["a"]  # (only the record made without the memo)
