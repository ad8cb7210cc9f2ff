"""The embedded store: resourceVersions, one transaction per pass, uninstall as deletion, events."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sqlite3

import pytest

from gitopsd import errors
from gitopsd.adapters import localstore
from gitopsd.core import codec
from tests import recordfields
from tests.core.test_plan import build_plan, desired


def test_writes_bump_a_global_resource_version_and_keep_uids(tmp_path: pathlib.Path) -> None:
    store = localstore.LocalStore(tmp_path / "s.db")
    first = build_plan(desired("web", "1.0.0"))
    assert store.apply("seam-system", first.changes, first.revision, "t1") == 2
    assert store.resource_version() == 2
    observed = store.observe("seam-system")
    uid = observed.instances["web-c1"].uid
    up = build_plan(desired("web", "1.1.0"), observed=observed)
    store.apply("seam-system", up.changes, up.revision, "t2")
    obj = store.get_object("PackInstance", "seam-system", "web-c1")
    assert obj is not None
    assert obj["metadata"]["uid"] == uid  # type: ignore[index]
    assert obj["metadata"]["generation"] == 2  # type: ignore[index]
    assert obj["metadata"]["resourceVersion"] == "4"  # type: ignore[index]
    assert store.integrity_ok()


def test_a_failing_change_rolls_back_the_whole_pass(tmp_path: pathlib.Path) -> None:
    store = localstore.LocalStore(tmp_path / "s.db")
    first = build_plan(desired("web", "1.0.0"))
    store.apply("seam-system", first.changes, first.revision, "t1")
    stale = store.observe("seam-system")
    other = build_plan(desired("api", "1.0.0"), desired("web", "1.1.0"), observed=stale)
    concurrent = build_plan(desired("web", "1.2.0"), observed=stale)
    store.apply("seam-system", concurrent.changes, concurrent.revision, "t2")  # someone else moved web-c1
    before = store.resource_version()
    with pytest.raises(errors.TransientError, match="changed during the pass"):
        store.apply("seam-system", other.changes, other.revision, "t3")
    assert store.resource_version() == before
    assert store.get_object("InfrastructureClusterPack", "seam-system", "api-v1.0.0") is None  # nothing half-applied


def test_uninstall_deletes_the_instance_and_records_an_event(tmp_path: pathlib.Path) -> None:
    store = localstore.LocalStore(tmp_path / "s.db")
    first = build_plan(desired("web", "1.0.0"))
    store.apply("seam-system", first.changes, first.revision, "t1")
    gone = build_plan(observed=store.observe("seam-system"))
    assert [r.state.value for r in gone.changes[0].pack_instance.history] == ["installed", "uninstalled"]  # type: ignore[union-attr]
    assert store.apply("seam-system", gone.changes, gone.revision, "t2") == 1
    assert store.get_object("PackInstance", "seam-system", "web-c1") is None
    assert store.observe("seam-system").instances == {}
    assert store.observe("seam-system") == localstore.LocalStore(tmp_path / "s.db").observe("seam-system")
    assert [(e["name"], e["reason"]) for e in store.events()][-1] == ("web-c1", "Uninstalled")
    again = build_plan(observed=store.observe("seam-system"))
    assert again.changes == ()


def test_events_are_recorded_and_repeated_warnings_are_not(tmp_path: pathlib.Path) -> None:
    store = localstore.LocalStore(tmp_path / "s.db")
    first = build_plan(desired("web", "1.0.0"))
    store.apply("seam-system", first.changes, first.revision, "t1")
    blocked = build_plan(desired("web", "1.0.0", extra="x"), observed=store.observe("seam-system"))
    for _ in range(3):
        store.apply("seam-system", [c for c in blocked.changes if c.condition], blocked.revision, "t2")
    reasons = [(e["name"], e["reason"]) for e in store.events()]
    assert reasons.count(("web-v1.0.0", "ImmutabilityViolation")) == 1
    assert ("web-c1", "Installed") in reasons


def test_observe_is_served_from_memory_while_nothing_was_written(tmp_path: pathlib.Path) -> None:
    store = localstore.LocalStore(tmp_path / "s.db")
    first = build_plan(desired("web", "1.0.0"))
    store.apply("seam-system", first.changes, first.revision, "t1")
    assert store.observe("seam-system").parts is store.observe("seam-system").parts
    other = localstore.LocalStore(tmp_path / "s.db")
    up = build_plan(desired("web", "1.1.0"), observed=other.observe("seam-system"))
    other.apply("seam-system", up.changes, up.revision, "t2")
    assert store.observe("seam-system").instances["web-c1"].version == "1.1.0"
    assert dataclasses.is_dataclass(store.observe("seam-system"))


def test_observed_state_carried_over_a_pass_equals_a_fresh_read(tmp_path: pathlib.Path) -> None:
    store = localstore.LocalStore(tmp_path / "s.db")
    store.observe("seam-system")  # a current cache: the change feed carries the pass's writes into it
    first = build_plan(desired("web", "1.0.0", clusters=("c1", "c2")), desired("api", "2.0.0"))
    store.apply("seam-system", first.changes, first.revision, "t1")
    carried = store.observe("seam-system")
    assert carried == localstore.LocalStore(tmp_path / "s.db").observe("seam-system")
    up = build_plan(desired("web", "1.1.0", clusters=("c1",)), observed=carried)  # supersede one, uninstall one, drop api
    store.apply("seam-system", up.changes, up.revision, "t2")
    assert store.observe("seam-system") == localstore.LocalStore(tmp_path / "s.db").observe("seam-system")
    assert "web-c2" not in store.observe("seam-system").instances


def _pack_creates(plan_: object) -> list:
    return [c for c in plan_.changes if c.kind.value == "ClusterPack"]  # type: ignore[attr-defined]


def test_a_cluster_pack_created_meanwhile_with_other_content_is_an_immutability_violation(tmp_path: pathlib.Path) -> None:
    store = localstore.LocalStore(tmp_path / "s.db")
    empty = store.observe("seam-system")
    early = build_plan(desired("web", "1.0.0"), observed=empty)
    late = build_plan(desired("web", "1.0.0", extra="x"), observed=empty)  # planned from the same empty store
    store.apply("seam-system", _pack_creates(early), early.revision, "t1")
    with pytest.raises(errors.ImmutabilityViolation) as raised:
        store.apply("seam-system", _pack_creates(late), late.revision, "t2")
    assert raised.value.reason == "ImmutabilityViolation" and not raised.value.transient
    assert "bump 'version'" in str(raised.value)
    kept = store.get_object(localstore.CLUSTER_PACK, "seam-system", "web-v1.0.0")
    assert kept is not None and kept["spec"]["checksum"] == early.changes[0].cluster_pack.checksum  # type: ignore[index,union-attr]


def test_a_cluster_pack_created_meanwhile_with_the_same_content_is_adopted(tmp_path: pathlib.Path) -> None:
    store = localstore.LocalStore(tmp_path / "s.db")
    empty = store.observe("seam-system")
    early = build_plan(desired("web", "1.0.0"), observed=empty)
    late = build_plan(desired("web", "1.0.0"), observed=empty)
    store.apply("seam-system", _pack_creates(early), early.revision, "t1")
    before = store.resource_version()
    assert store.apply("seam-system", _pack_creates(late), late.revision, "t2") == 1
    assert store.resource_version() == before


@pytest.mark.parametrize(("max_events", "row_batch"), [(3, 10_000), (1, 1), (2, 2)], ids=["at-the-end", "tiny", "small"])
def test_events_past_the_limit_keep_the_ids_and_order_of_one_insert_each(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, max_events: int, row_batch: int) -> None:
    """A pass's Events and rows are handed to SQLite in batches, and Events the pass's own pruning
    would delete are not inserted: the tables hold what inserting each one and pruning afterwards
    would leave, ids included, wherever the batches end."""
    monkeypatch.setattr(localstore, "MAX_EVENTS", max_events)
    monkeypatch.setattr(localstore, "ROW_BATCH", row_batch)
    store = localstore.LocalStore(tmp_path / "s.db")
    first = build_plan(desired("web", "1.0.0"), desired("api", "1.0.0"))  # both claim web-c1: a Warning too
    store.apply("seam-system", first.changes, first.revision, "t1")
    up = build_plan(desired("web", "1.1.0"), desired("api", "1.0.0"), observed=store.observe("seam-system"))
    store.apply("seam-system", up.changes, up.revision, "t2")
    rows = store._db.execute("SELECT id, time, name, reason FROM events ORDER BY id").fetchall()
    # the last three Events of the one-insert-each store (ids 1-3 were the first pass's others)
    last = [(4, "t1", "web-c1", "PackCollisionDetected"), (5, "t2", "web-v1.1.0", "Created"),
            (6, "t2", "web-c1", "PackCollisionDetected")]
    assert rows == last[-max_events:]
    assert store._db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone() == (6,)
    assert store.observe("seam-system") == localstore.LocalStore(tmp_path / "s.db").observe("seam-system")
    assert store.integrity_ok()


def test_instances_written_alike_are_stored_as_each_one_encoded_whole(tmp_path: pathlib.Path) -> None:
    """The bodies of a run of instances (one pack on many clusters) are made from one encoding with
    the name and cluster put in: each must be the body of its own instance, escaping included."""
    clusters = ("c1", "c-é", 'c"q', "c\\b", "c\x00", "z")
    first = build_plan(desired("web", "1.0.0", clusters=clusters), desired("api", "1.0.0", clusters=clusters[:2],
                                                                             objects=("cm-b",)))
    store = localstore.LocalStore(tmp_path / "s.db")
    store.apply("seam-system", first.changes, first.revision, "t1")
    rows = dict(store._db.execute("SELECT name, body FROM objects WHERE kind='PackInstance'").fetchall())
    expected = {c.name: json.dumps(codec.pack_instance_object(c.pack_instance), sort_keys=True, separators=(",", ":"))
                for c in first.changes if c.pack_instance is not None}
    assert rows == expected and len(rows) == 8
    observed = store.observe("seam-system")
    assert observed == localstore.LocalStore(tmp_path / "s.db").observe("seam-system")
    assert {pi.cluster for pi in observed.instances.values()} == set(clusters)


def delivered_store(path: pathlib.Path) -> localstore.LocalStore:
    """A store with web on c1, c2 and c3, each with a delivery record of another shape."""
    store = localstore.LocalStore(path)
    made = build_plan(desired("web", "1.0.0", clusters=("c1", "c2", "c3")))
    store.apply("seam-system", made.changes, made.revision, "t1")
    for i, cluster in enumerate(("c1", "c2", "c3")):
        store.record_delivery("seam-system", f"web-{cluster}", recordfields.records(cluster)[i], "t2")
    return store


def test_the_fields_read_of_delivery_records_agree_with_the_whole_records(tmp_path: pathlib.Path) -> None:
    recordfields.assert_fields_agree(delivered_store(tmp_path / "s.db"), "seam-system", {"c1", "c2", "c3"})


def test_a_store_made_before_the_index_of_delivered_objects_gets_it_filled_on_open(tmp_path: pathlib.Path) -> None:
    delivered_store(tmp_path / "s.db").close()
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)  # as a store of an earlier gitopsd left it
    for trigger in ("insert", "update", "delete"):
        db.execute(f"DROP TRIGGER delivery_objects_{trigger}")
    db.execute("DROP TABLE delivery_objects")
    db.execute("DELETE FROM meta WHERE key='delivery_objects'")
    db.close()
    store = localstore.LocalStore(tmp_path / "s.db")
    recordfields.assert_fields_agree(store, "seam-system", {"c1", "c2", "c3"})
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)  # by hand, after: the triggers keep it current
    db.execute("DELETE FROM deliveries WHERE name='web-c1'")
    db.close()
    assert "c1" not in store.delivery_holdings("seam-system", {"c1": {("", "Namespace", "", "apps")}})
    recordfields.assert_fields_agree(store, "seam-system", {"c2", "c3"})
