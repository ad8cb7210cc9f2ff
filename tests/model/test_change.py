"""Changes: a plan's changes in order, where a run of changes alike is one item."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gitopsd.model import change, instance
from gitopsd.model.change import Action, ObjectKind

PI_TEMPLATE = instance.PackInstance(
    name="", namespace="seam-system", base_pack_name="web", cluster="", cluster_pack="web-v1.0.0", version="1.0.0",
    manifest_digest="sha256:m", checksum="sha256:c", priority=0, source_build_ref="packs/web/packbuild.yaml",
    revision="main@sha1:1", state=instance.InstallState.INSTALLED)
CREATE = change.Change(ObjectKind.PACK_INSTANCE, "", Action.CREATE, "initial install", "web", "1.0.0",
                       direction=instance.Direction.INITIAL, pack_instance=PI_TEMPLATE)
SAME = change.Change(ObjectKind.PACK_INSTANCE, "", Action.UNCHANGED, "runs 1.0.0", "web", "1.0.0")
PACK = change.Change(ObjectKind.CLUSTER_PACK, "web-v1.0.0", Action.UNCHANGED, "same checksum", "web", "1.0.0")


def one_by_one(template: change.Change, cluster: str) -> change.Change:
    """The change a run makes for ``cluster``, made field by field."""
    name = f"web-{cluster}"
    pi = template.pack_instance
    return change.Change(template.kind, name, template.action, template.reason, "web", "1.0.0", cluster,
                         direction=template.direction,
                         pack_instance=None if pi is None else instance.PackInstance(
                             name=name, namespace=pi.namespace, base_pack_name="web", cluster=cluster,
                             cluster_pack=pi.cluster_pack, version=pi.version, manifest_digest=pi.manifest_digest,
                             checksum=pi.checksum, priority=0, source_build_ref=pi.source_build_ref,
                             revision=pi.revision, state=pi.state))


CHANGES = change.Changes([PACK, change.Run(SAME, ("a", "b")), change.Run(CREATE, ("c",)), change.Run(SAME, ("d", "e"))])
EXPANDED = (PACK, one_by_one(SAME, "a"), one_by_one(SAME, "b"), one_by_one(CREATE, "c"), one_by_one(SAME, "d"),
            one_by_one(SAME, "e"))


def test_changes_read_as_the_tuple_of_their_changes() -> None:
    assert len(CHANGES) == 6
    assert tuple(CHANGES) == EXPANDED
    assert CHANGES == EXPANDED and EXPANDED == CHANGES  # both ways round
    assert (EXPANDED[:-1] == CHANGES) is False
    assert CHANGES.counts() == {(ObjectKind.CLUSTER_PACK, Action.UNCHANGED): 1, (ObjectKind.PACK_INSTANCE, Action.UNCHANGED): 4,
                                (ObjectKind.PACK_INSTANCE, Action.CREATE): 1}


@pytest.mark.parametrize("index", [*range(-6, 6), slice(0, 6), slice(1, 4), slice(2, 5), slice(4, 99), slice(3, 3),
                                   slice(None, None, 2), slice(-2, None)],
                         ids=str)
def test_index_and_slice_give_what_the_tuple_gives(index: int | slice) -> None:
    expected = EXPANDED[index]
    got = CHANGES[index]
    assert (tuple(got) if isinstance(index, slice) else got) == expected


def test_index_out_of_range_raises() -> None:
    with pytest.raises(IndexError):
        CHANGES[6]


@pytest.mark.parametrize(("keep", "expected"), [
    (lambda c: c.writes, (one_by_one(CREATE, "c"),)),
    (lambda c: c.kind is ObjectKind.PACK_INSTANCE, EXPANDED[1:]),
    (lambda c: True, EXPANDED),
], ids=["writes", "instances", "all"])
def test_where_keeps_whole_runs(keep: Callable[[change.Change], bool], expected: tuple[change.Change, ...]) -> None:
    assert tuple(CHANGES.where(keep)) == expected


def test_part_works_out_writes_acts_and_counts_from_runs() -> None:
    part = change.Part(changes=CHANGES)
    assert tuple(part.writes) == tuple(part.acts) == (one_by_one(CREATE, "c"),)
    assert dict(part.counts) == CHANGES.counts()
    plan = change.Plan.of_parts("main@sha1:1", {"web": part}, ["web"], ())
    assert plan.changes == EXPANDED and tuple(plan.acts) == (one_by_one(CREATE, "c"),)
    assert plan.count(Action.UNCHANGED) == 5
