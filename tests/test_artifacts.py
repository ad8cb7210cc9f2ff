"""The artifact step in the daemon's passes: an artifact damaged between two passes is repaired by
the next one, which is not a resync (the OCI layout's watch tells it what changed)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import pytest

from gitopsd import daemon
from gitopsd.adapters import ocilayout
from tests import test_daemon


def _first_layer(oci: pathlib.Path) -> pathlib.Path:
    index = json.loads((oci / "index.json").read_text())
    manifest = json.loads((oci / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    return oci / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]


def _flip(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


# what is done to the OCI layout between two passes -> artifacts the next pass writes again
DAMAGE: dict[str, tuple[Callable[[pathlib.Path], object], int]] = {
    "layer-flipped-in-place": (lambda oci: _flip(_first_layer(oci)), 1),
    "layer-deleted": (lambda oci: _first_layer(oci).unlink(), 1),
    "index-json-unreadable": (lambda oci: (oci / "index.json").write_text("{not json"), 5),  # every tag made again
}


def _sound(oci: pathlib.Path) -> dict[str, list[str]]:
    """Problems of every tagged artifact, read by a layout of its own (a new process would see the same)."""
    layout = ocilayout.OciLayout(oci, read_only=True)
    index = json.loads((oci / "index.json").read_text())
    refs = {m["annotations"][ocilayout.REF_NAME]: m["digest"] for m in index["manifests"]}
    return {ref: layout.verify(ref.split(":")[0], digest) for ref, digest in sorted(refs.items())}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_an_artifact_damaged_between_two_daemon_passes_is_repaired_by_the_next_pass(
        examples: pathlib.Path, state_dir: pathlib.Path, damage: str) -> None:
    do, repaired = DAMAGE[damage]
    options = daemon.Options(interval=3600, jitter=0, resync_interval=0)
    loop, vt, counted = test_daemon.virtual_daemon(test_daemon.local_env(examples, state_dir), options, horizon=300)
    vt.at(100, lambda: loop.trigger("nothing changed"))
    vt.at(200, lambda: (do(state_dir / "oci"), loop.trigger("damaged")))
    loop.run()
    first, quiet, after = counted.states
    assert (first.published, quiet.published, quiet.writes) == (5, 0, 0)
    assert after.published == repaired
    assert after.summary is not None and after.summary.ready and not after.pack_errors
    assert all(problems == [] for problems in _sound(state_dir / "oci").values())
    assert len(_sound(state_dir / "oci")) == 5
