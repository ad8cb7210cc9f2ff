"""The embedded registry is a valid OCI image layout, content-addressed and idempotent."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import pytest

from gitopsd.adapters import ocilayout
from gitopsd.model import pack
from tests.core.test_compile import DEPLOY, SA, compile_docs


def test_push_writes_a_valid_layout_and_a_second_push_writes_nothing(tmp_path: pathlib.Path) -> None:
    art = compile_docs(("m/a.yaml", DEPLOY), ("m/b.yaml", SA)).artifact
    assert art is not None
    layout = ocilayout.OciLayout(tmp_path / "oci")
    assert layout.push("demo", art) is True
    layout.flush()
    assert json.loads((tmp_path / "oci/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((tmp_path / "oci/index.json").read_text())
    assert [(m["digest"], m["annotations"]["org.opencontainers.image.ref.name"]) for m in index["manifests"]] == [
        (art.manifest_digest, "demo:1.0.0")
    ]
    for blob in (*art.blobs,):
        data = (tmp_path / "oci/blobs/sha256" / blob.digest.split(":")[1]).read_bytes()
        assert data == blob.data and "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest
    assert layout.read_blob(art.manifest_digest) == art.manifest
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "oci").rglob("*") if p.is_file()}
    again = ocilayout.OciLayout(tmp_path / "oci")
    assert again.push("demo", art) is False
    again.flush()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "oci").rglob("*") if p.is_file()} == mtimes
    assert again.resolve("demo:1.0.0") == art.manifest_digest


def test_pushed_blobs_are_readable_before_the_flush_and_durable_names_come_with_it(tmp_path: pathlib.Path) -> None:
    art = compile_docs(("m/a.yaml", DEPLOY), ("m/b.yaml", SA)).artifact
    assert art is not None
    layout = ocilayout.OciLayout(tmp_path / "oci")
    assert layout.push("demo", art) is True
    blobs = tmp_path / "oci/blobs/sha256"
    # written, not yet renamed into place: a crash now leaves only temporary files, never a wrong blob
    assert all(p.name.startswith(".tmp-") for p in blobs.iterdir())
    assert layout.push("demo", art) is False  # the pending manifest counts as present
    assert layout.has("demo", art.manifest_digest)  # pushed and tagged: present before it is settled
    assert layout.verify("demo", art.manifest_digest) == []  # a read of the bytes settles them first
    layout.flush()
    assert sorted(p.name for p in blobs.iterdir()) == sorted(
        {b.digest.split(":")[1] for b in art.blobs} | {art.manifest_digest.split(":")[1]})
    assert ocilayout.OciLayout(tmp_path / "oci").resolve("demo:1.0.0") == art.manifest_digest


# --- the check of each pass: what the watch saw change is checked again, the rest is not read ------
def _blob(root: pathlib.Path, digest: str) -> pathlib.Path:
    return root / "blobs" / "sha256" / digest.split(":")[1]


def _layer(root: pathlib.Path, art: pack.Artifact) -> pathlib.Path:
    return _blob(root, json.loads(art.manifest)["layers"][0]["digest"])


def _flip(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


def _replace(path: pathlib.Path) -> None:
    (path.parent / "other").write_bytes(b"not the layer")
    os.replace(path.parent / "other", path)


def _blobs_folder_moved(root: pathlib.Path, _: pack.Artifact) -> None:
    (root / "blobs" / "sha256").rename(root / "blobs" / "sha256.old")
    (root / "blobs" / "sha256").mkdir()


DAMAGE = {
    "layer-flipped-in-place": lambda root, art: _flip(_layer(root, art)),
    "layer-truncated": lambda root, art: os.truncate(_layer(root, art), 3),
    "layer-deleted": lambda root, art: _layer(root, art).unlink(),
    "layer-replaced-by-rename": lambda root, art: _replace(_layer(root, art)),
    "manifest-deleted": lambda root, art: _blob(root, art.manifest_digest).unlink(),
    "index-json-unreadable": lambda root, _: (root / "index.json").write_text("{not json"),
    "blobs-folder-moved": _blobs_folder_moved,
}


def _pushed(tmp_path: pathlib.Path) -> tuple[ocilayout.OciLayout, pack.Artifact]:
    art = compile_docs(("m/a.yaml", DEPLOY), ("m/b.yaml", SA)).artifact
    assert art is not None
    layout = ocilayout.OciLayout(tmp_path / "oci")
    layout.push("demo", art)
    layout.flush()
    layout.recheck(full=True)
    assert layout.sound("demo", art.manifest_digest)
    return layout, art


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damage_between_two_passes_is_found_by_the_second_passs_check(tmp_path: pathlib.Path, damage: str) -> None:
    layout, art = _pushed(tmp_path)
    layout.recheck(full=False)
    assert layout.sound("demo", art.manifest_digest)
    DAMAGE[damage](tmp_path / "oci", art)
    layout.recheck(full=False)
    assert not layout.sound("demo", art.manifest_digest)
    layout.repair("demo", art)
    layout.flush()
    layout.recheck(full=False)
    assert layout.sound("demo", art.manifest_digest)
    assert ocilayout.OciLayout(tmp_path / "oci").verify("demo", art.manifest_digest) == []
    layout.close()


def test_a_pass_reads_no_blob_the_watch_saw_unchanged_and_a_full_check_reads_them_all(tmp_path: pathlib.Path) -> None:
    layout, art = _pushed(tmp_path)
    other = compile_docs(("m/a.yaml", DEPLOY.replace(b"replicas: 2", b"replicas: 3"))).artifact
    assert other is not None
    layout.push("other", other)  # this process's own writes are no change to check
    layout.flush()
    # A write through a hard link outside the layout raises no event in the watched folder (the mtime is
    # set apart so that a stat tells the change even within one tick of the file system's clock).
    link = tmp_path / "link"
    os.link(_layer(tmp_path / "oci", art), link)
    _flip(link)
    os.utime(link, ns=(1, 1))
    layout.recheck(full=False)
    assert layout.sound("demo", art.manifest_digest)  # known sound, no change seen: not read again
    assert layout.sound("other", other.manifest_digest)
    layout.recheck(full=True)  # a resync: every blob stat'ed, a changed one hashed again
    assert not layout.sound("demo", art.manifest_digest)
    assert layout.sound("other", other.manifest_digest)
    layout.close()


@pytest.mark.parametrize("damage", ["layer-flipped-in-place", "layer-replaced-by-rename", "manifest-deleted"])
def test_what_this_process_pushed_is_sound_without_a_read_until_someone_changes_it(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    layout = ocilayout.OciLayout(tmp_path / "oci")
    layout.recheck(full=True)  # a pass's check comes before its publish: the watch is on
    art = compile_docs(("m/a.yaml", DEPLOY), ("m/b.yaml", SA)).artifact
    assert art is not None
    layout.push("demo", art)
    layout.flush()
    reads: list[str] = []
    read_blob = layout.read_blob
    monkeypatch.setattr(layout, "read_blob", lambda digest: (reads.append(digest), read_blob(digest))[1])
    layout.recheck(full=False)
    assert layout.sound("demo", art.manifest_digest)
    assert reads == []  # written from the bytes the compile hashed: not read back
    DAMAGE[damage](tmp_path / "oci", art)
    layout.recheck(full=False)
    assert not layout.sound("demo", art.manifest_digest)
    layout.close()


@pytest.mark.slow
def test_a_pass_that_writes_more_blobs_than_the_watch_queues_keeps_its_own_pushes_sound(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold pass writes tens of thousands of blobs, five watch events each; the kernel queues
    16,384 events by default (fs.inotify.max_queued_events): the layout takes them as it writes, so the next
    pass reads none of what it pushed back (an overflow would have it check every artifact)."""
    queued = int(pathlib.Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    layout = ocilayout.OciLayout(tmp_path / "oci")
    layout.recheck(full=True)
    arts = []
    for i in range(queued // 10 + 1000):  # two new blobs each (layer, manifest), five events a blob: past the queue
        art = compile_docs(("m/a.yaml", DEPLOY.replace(b"replicas: 2", f"replicas: {i + 10}".encode()))).artifact
        assert art is not None
        layout.push(f"p{i}", art)
        arts.append(art)
    layout.flush()
    reads: list[str] = []
    read_blob = layout.read_blob
    monkeypatch.setattr(layout, "read_blob", lambda digest: (reads.append(digest), read_blob(digest))[1])
    layout.recheck(full=False)
    assert all(layout.sound(f"p{i}", art.manifest_digest) for i, art in enumerate(arts))
    assert reads == []
    layout.close()
