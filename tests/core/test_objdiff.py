"""Object-by-object comparison: identities, server-set fields, Secret masking, the diff lines."""

from __future__ import annotations

import pytest

from gitopsd.core import objdiff


def cm(name: str = "app", ns: str | None = "web", **extra: object) -> dict:
    meta: dict = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, **extra}


def secret(**fields: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "web"}, **fields}


LIVE = cm(data={"a": "1"}, status={"x": 1})
LIVE["metadata"].update(resourceVersion="42", uid="u-1", managedFields=[{"manager": "gitopsd"}], generation=3,
                        creationTimestamp="2026-01-01T00:00:00Z", labels={"gitopsd.dev/instance": "app-dev"})


@pytest.mark.parametrize(("before", "after", "expected"), [
    ([cm(data={"a": "1"})], [cm(data={"a": "1"})], objdiff.ObjectDiff()),
    ([cm(data={"a": "1"})], [LIVE], objdiff.ObjectDiff()),
    ([], [cm("b"), cm("a", ns=None)], objdiff.ObjectDiff(added=("ConfigMap/a", "ConfigMap/web/b"))),
    ([cm("a"), cm("a", ns="other")], [cm("a", ns="other")], objdiff.ObjectDiff(removed=("ConfigMap/web/a",))),
    ([cm(data={"a": "1"})], [{**cm(data={"a": "1"}), "apiVersion": "example.com/v1"}],
     objdiff.ObjectDiff(added=("ConfigMap/web/app",), removed=("ConfigMap/web/app",))),
], ids=["same", "server-set-fields-and-delivery-label-ignored", "added-in-subject-order", "namespace-is-identity",
        "group-is-identity"])
def test_compare_matches_objects_by_identity(before: list, after: list, expected: objdiff.ObjectDiff) -> None:
    assert objdiff.compare(before, after, drop_labels=("gitopsd.dev/instance",)) == expected


def test_a_changed_object_gets_a_unified_diff_of_sorted_key_yaml() -> None:
    got = objdiff.compare([cm(data={"b": "2", "a": "1"})], [cm(data={"a": "1", "b": "3"})], labels=("base", "head"))
    assert got == objdiff.ObjectDiff(changed=(objdiff.Changed("ConfigMap/web/app", (
        "--- base/ConfigMap/web/app", "+++ head/ConfigMap/web/app", "@@ -1,7 +1,7 @@", " apiVersion: v1", " data:",
        "   a: '1'", "-  b: '2'", "+  b: '3'", " kind: ConfigMap", " metadata:",
        "   name: app")),))


@pytest.mark.parametrize(("before", "after", "expected"), [
    (secret(data={"k": "QQ=="}), secret(data={"k": "QQ=="}),
     (secret(data={"k": "(hidden)"}), secret(data={"k": "(hidden)"}))),
    (secret(data={"k": "QQ==", "same": "Qg=="}), secret(data={"k": "Qw==", "same": "Qg==", "new": "RA=="}),
     (secret(data={"k": "(hidden)", "same": "(hidden)"}),
      secret(data={"k": "(hidden, changed)", "same": "(hidden)", "new": "(hidden, changed)"}))),
    (secret(stringData={"t": "one"}), secret(data={"t": "b25l"}),
     (secret(stringData={"t": "(hidden)"}), secret(data={"t": "(hidden, changed)"}))),
    (None, secret(data={"k": "QQ=="}), (None, secret(data={"k": "(hidden)"}))),
    (secret(data={"k": "QQ=="}, metadata={"name": "db", "annotations": {objdiff.LAST_APPLIED: '{"data":{"k":"QQ=="}}'}}),
     secret(data={"k": "Qw=="}, metadata={"name": "db", "annotations": {objdiff.LAST_APPLIED: '{"data":{"k":"Qw=="}}'}}),
     (secret(data={"k": "(hidden)"}, metadata={"name": "db", "annotations": {objdiff.LAST_APPLIED: "(hidden)"}}),
      secret(data={"k": "(hidden, changed)"}, metadata={"name": "db", "annotations": {objdiff.LAST_APPLIED: "(hidden, changed)"}}))),
    (cm(data={"k": "v"}), cm(data={"k": "w"}), (cm(data={"k": "v"}), cm(data={"k": "w"}))),
], ids=["unchanged-value", "changed-kept-and-new-keys", "moved-to-data", "new-secret", "last-applied-annotation",
        "configmap-values-shown"])
def test_secret_values_become_markers(before: dict | None, after: dict, expected: tuple) -> None:
    assert objdiff.masked_pair(before, after) == expected
