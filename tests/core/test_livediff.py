"""``core.livediff``: which live objects a delivery would change, add or prune, as values."""

from __future__ import annotations

from typing import Any

import pytest

from gitopsd.core import livediff
from gitopsd.model import delivery

LABEL = {"gitopsd.dev/instance": "app-a"}


def cm(name: str, value: str, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns", **meta},
            "data": {"value": value}}


def entry(name: str) -> delivery.Entry:
    return delivery.Entry("v1", "ConfigMap", "ns", name)


@pytest.mark.parametrize(("live", "expected"), [
    (None, False),
    (cm("x", "1"), True),
    (cm("x", "1", labels=LABEL), True),
    (cm("x", "1", labels={"gitopsd.dev/instance": "other-a"}), False),
    (cm("x", "1", annotations={"gitopsd.dev/prune": "disabled"}), False),
], ids=["gone", "unlabelled", "ours", "another-instance", "prune-disabled"])
def test_prunable_follows_the_rules_of_a_delivery_prune(live: dict[str, Any] | None, expected: bool) -> None:
    assert livediff.prunable(live, "app-a") is expected


def test_prune_candidates_are_the_kept_inventory_less_the_desired_objects_and_other_instances() -> None:
    wanted = livediff.Wanted("app-a", "a", "app", "1.1.0", (cm("keep", "1"),),
                             kept=(entry("keep"), entry("old"), entry("shared")),
                             held_elsewhere=frozenset({entry("shared").key}))
    assert livediff.prune_candidates(wanted) == [entry("old")]


def test_an_uninstalled_instance_prunes_its_whole_inventory() -> None:
    wanted = livediff.Wanted("app-a", "a", "app", "", None, kept=(entry("one"), entry("two")))
    assert [e.name for e in livediff.prune_candidates(wanted)] == ["one", "two"]


def test_desired_leaves_hooks_out_and_labels_each_object_for_its_instance() -> None:
    hook = cm("hook", "1", annotations={"helm.sh/hook": "post-install"})
    items = livediff.desired(livediff.Wanted("app-a", "a", "app", "1", (cm("b", "1"), hook, cm("a", "1"))))
    assert [it.entry.name for it in items] == ["a", "b"]
    assert {it.body["metadata"]["labels"]["gitopsd.dev/instance"] for it in items} == {"app-a"}


def test_compare_leaves_server_set_fields_out() -> None:
    live = {**cm("x", "1", labels=LABEL, resourceVersion="7", uid="u", managedFields=[{"manager": "gitopsd"}]),
            "status": {}}
    after = cm("x", "1", labels=LABEL, resourceVersion="8", uid="u")
    assert livediff.compare(live, after, "ConfigMap/ns/x") is None


def test_compare_gives_the_diff_from_live_to_desired() -> None:
    found = livediff.compare(cm("x", "hand", labels=LABEL), cm("x", "1", labels=LABEL), "ConfigMap/ns/x")
    assert found is not None and found.diff == (
        "--- live/ConfigMap/ns/x", "+++ desired/ConfigMap/ns/x", "@@ -1,6 +1,6 @@", " apiVersion: v1", " data:",
        "-  value: hand", "+  value: '1'", " kind: ConfigMap", " metadata:", "   labels:")


def test_compare_masks_secret_values_and_says_which_key_changed() -> None:
    def secret(password: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"},
                "data": {"password": password, "user": "YWRtaW4="}}

    found = livediff.compare(secret("aGFuZA=="), secret("c2VjcmV0"), "Secret/ns/s")
    assert found is not None
    assert [line for line in found.diff if line.startswith(("-  ", "+  "))] == [
        "-  password: (hidden)", "+  password: (hidden, changed)"]
    assert not any(v in "\n".join(found.diff) for v in ("aGFuZA==", "c2VjcmV0", "YWRtaW4="))


def test_report_json_lists_only_packs_with_changes_and_counts_the_rest() -> None:
    quiet = livediff.PackLive("web-a", "web", "1.0.0", in_sync=3)
    moving = livediff.PackLive("app-a", "app", "1.1.0", missing=("ConfigMap/ns/gone",), in_sync=1)
    report = livediff.Report((livediff.ClusterLive("a", (moving, quiet)), livediff.ClusterLive("b", error="ClusterUnreachable: x")),
                             records_only=("dev",))
    assert report.has_changes and [c.cluster for c in report.unreachable] == ["b"]
    assert report.to_json() == {
        "summary": {"clusters": 2, "unreachable": 1,
                    "objects": {"changed": 0, "missing": 1, "prune": 0, "refused": 0, "inSync": 4}},
        "clusters": [
            {"cluster": "a", "reachable": True, "error": None, "packsInSync": 1,
             "packs": [{"instance": "app-a", "basePackName": "app", "version": "1.1.0", "changed": [],
                        "missing": ["ConfigMap/ns/gone"], "prune": [], "refused": [], "inSync": 1}]},
            {"cluster": "b", "reachable": False, "error": "ClusterUnreachable: x", "packs": [], "packsInSync": 0}],
        "recordsOnly": ["dev"]}
