"""The embedded registry is a valid OCI image layout, content-addressed and idempotent."""

from __future__ import annotations

import hashlib
import json
import pathlib

from gitopsd.adapters import ocilayout
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
