"""The embedded registry: an OCI image-layout directory (``oci-layout``, ``index.json``, ``blobs/``).

Any OCI tool that reads image layouts (oras, skopeo, crane) can read it. Blobs are written
atomically (temp file + rename) and content-addressed, so a crash never leaves a wrong blob; the
index is rewritten atomically once per pass (``flush``), each manifest tagged
``org.opencontainers.image.ref.name = <repository>:<version>``.

A push writes its blobs to temporary files and makes them durable in batches (``_settle``): one
``syncfs`` of the layout's file system for the whole batch instead of an fsync per blob, then the
renames, then one fsync of the blobs folder; only then may index.json name them. Every read settles
the pending blobs first, so a push is visible at once, as before.

What a pass checks (``sound``, called by the artifact step for every artifact in use): in a new
process, and on every ``recheck(full=True)`` (the daemon's resync), each blob of the artifact is
stat'ed and hashed again when its size, mtime or inode moved (a new process hashes every one).
Between those, a watch of the layout's folders (``dirwatch``: inotify) tells which blobs were
written, truncated, replaced, deleted or chmod'ed and whether index.json changed since the last
pass; an artifact found sound that none of these touched is sound without any I/O, the others are
checked in full, and an index.json changed by someone else is read again. Without a watch (no
inotify, its queue overflowed) every pass checks everything, as a resync does.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import json
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gitopsd import errors
from gitopsd.adapters import dirwatch
from gitopsd.core import artifact as artifact_core
from gitopsd.model import pack

REF_NAME = "org.opencontainers.image.ref.name"
PENDING_BLOBS = 4096  # blobs written by pushes and not yet renamed into place: past it, settle them
DRAIN_EVERY = 1024  # blobs staged between two takes of the watch's events (``_drain``)
log = structlog.get_logger()


class OciLayout:
    def __init__(self, root: pathlib.Path, *, read_only: bool = False) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.read_only = read_only
        if not read_only:
            self.blobs.mkdir(parents=True, exist_ok=True)
            layout = root / "oci-layout"
            if not layout.exists():
                _atomic_write(layout, b'{"imageLayoutVersion":"1.0.0"}')
            _remove_stale_temporaries(root, self.blobs)
        self.index_problem: str | None = None  # why index.json was unreadable, when it was
        self._verified: dict[str, tuple[int, int, int]] = {}  # digest -> (size, mtime, inode) when it matched
        self._index: dict[str, Any] | None = None  # index.json as read: raw JSON
        self._positions: dict[str, dict[str, Any]] = {}  # ref name -> its first descriptor in the index (the same object)
        self._refs_of: dict[str, set[str]] = {}  # manifest digest -> ref names tagging it
        self._pending: dict[pathlib.Path, str] = {}  # blob path -> temporary file holding its bytes, not yet durable
        self._dirty = False
        self._unsorted = True  # index.json as read may not be in tag order
        self.pushed = 0
        # (repository, manifest digest) -> the blob names of an artifact found sound, while the watch
        # saw no change to any of them (``recheck``); empty without a watch
        self._sound: dict[tuple[str, str], frozenset[str]] = {}
        # the keys dropped from ``_sound`` since the last ``recheck`` (None: all of them, at once)
        self._lost: set[tuple[str, str]] | None = set()
        self._watch: dirwatch.DirWatch | None = None
        self._own: collections.Counter[str] = collections.Counter()  # names this process renamed into place, not yet seen
        # blob names this process wrote (from bytes whose digest it computed) while the watch was on,
        # and that the watch saw no one else change since: an artifact pushed from them is sound
        self._trusted: set[str] = set()
        # names someone else changed, from the watch's events taken so far (``_drain``); None when the
        # watch lost track (its queue overflowed, the blobs folder moved)
        self._changed: set[str] | None = set()

    def _blob_path(self, digest: str) -> pathlib.Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64 or not all(ch in "0123456789abcdef" for ch in hexdigest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.blobs / hexdigest

    def has(self, repository: str, digest: str) -> bool:
        """The manifest is stored AND tagged for ``repository``: blobs a crash left untagged do
        not count, so the next push tags them (it finds the blobs and uploads nothing)."""
        path = self._blob_path(digest)
        if path not in self._pending and not path.exists():  # a pushed blob counts before it is settled
            return False
        return self._tagged(repository, digest)

    def read_blob(self, digest: str) -> bytes:
        self._settle()
        data = self._blob_path(digest).read_bytes()
        if artifact_core.digest_of(data) != digest:
            raise ValueError(f"blob {digest} in {self.root} is corrupt (content does not match its digest)")
        return data

    def pull(self, repository: str, digest: str) -> tuple[bytes, dict[str, bytes]]:
        """The manifest bytes and every blob it names, as stored (delivery checks every digest)."""
        self._settle()
        try:
            manifest = self._blob_path(digest).read_bytes()
            descriptors = [(json.loads(manifest).get("config") or {}), *json.loads(manifest).get("layers", [])]
            blobs = {}
            for descriptor in descriptors:
                blob_digest = str(descriptor.get("digest", ""))
                path = self._blob_path(blob_digest)
                if path.exists():
                    blobs[blob_digest] = path.read_bytes()
        except (OSError, ValueError) as err:
            raise errors.StalledError(f"artifact {repository}@{digest} is not readable in {self.root}: {err}",
                                      reason="ArtifactNotFound") from err
        return manifest, blobs

    def verify(self, repository: str, manifest_digest: str, layers: Mapping[str, str] | None = None) -> list[str]:
        """Problems with the stored artifact (empty when sound): every digest recomputed from bytes."""
        ref = f"{self.root}@{manifest_digest}"
        try:
            manifest = json.loads(self.read_blob(manifest_digest))
        except FileNotFoundError:
            return [f"{ref}: the manifest is not in the OCI layout"]
        except ValueError as err:
            return [f"{ref}: {err}"]
        problems = []
        if not self.has(repository, manifest_digest):
            problems.append(f"{ref}: index.json has no tag {repository}:<version> for it (a pass tags it again)")
        descriptors = [manifest.get("config", {}), *manifest.get("layers", [])]
        for descriptor in descriptors:
            digest = str(descriptor.get("digest", ""))
            try:
                data = self.read_blob(digest)
            except FileNotFoundError:
                problems.append(f"{ref}: blob {digest} is missing")
                continue
            except ValueError as err:
                problems.append(f"{ref}: {err}")
                continue
            if len(data) != descriptor.get("size"):
                problems.append(f"{ref}: blob {digest} is {len(data)} bytes, the manifest says {descriptor.get('size')}")
        layer_digests = {str(d.get("digest")) for d in descriptors[1:]}
        for field, digest in sorted((layers or {}).items()):
            if digest not in layer_digests:
                problems.append(f"{ref}: {field} {digest} is not a layer of this manifest")
        return problems

    def sound(self, repository: str, manifest_digest: str) -> bool:
        """The artifact is tagged for ``repository`` and every blob of it is present with the bytes of
        its digest. A blob is hashed once per process while its size, mtime and inode stay the same;
        an artifact found sound is not read again while the watch sees no change to it (``recheck``)."""
        key = (repository, manifest_digest)
        if key in self._sound:  # dropped when one of its blobs or its tag changes
            return True
        if not self.has(repository, manifest_digest):
            return False
        try:
            manifest = json.loads(self._checked(manifest_digest))
            names = {self._blob_path(manifest_digest).name}
            for descriptor in [manifest.get("config", {}), *manifest.get("layers", [])]:
                digest = str(descriptor.get("digest", ""))
                self._checked(digest)
                names.add(self._blob_path(digest).name)
        except (OSError, ValueError, AttributeError):
            return False
        if self._watch is not None:
            self._sound[key] = frozenset(names)
        return True

    def recheck(self, *, full: bool) -> set[tuple[str, str]] | None:
        """Begin a pass's checks: forget that an artifact was found sound when the watch saw one of its
        blobs change since the last call (every artifact when ``full``, or when the watch cannot
        tell), and read index.json again when someone else changed it. The first call arms the watch.
        Returns the artifacts no longer counted as sound since the last call (None: every one, or
        no watch: then ``sound`` reads every artifact it is asked about)."""
        self._drain()
        changed = self._changed if self._watch is not None else None
        self._changed = set()
        if full or changed is None:
            self._clear_sound()
            self._own.clear()
            self._trusted.clear()
            if self._watch is not None:
                self._watch.close()
            self._watch = None if self.read_only else dirwatch.open_watch([self.root, self.blobs])
            if self._index is not None and not self._dirty:
                self._index = None  # read again: it may have changed while nothing watched it
            return self._take_lost()
        self._own = +self._own
        if "index.json" in changed and self._index is not None and not self._dirty:
            self._index = None  # someone else wrote it: read it again (unreadable: its tags are made again)
            self._clear_sound()  # every tag is checked again
        changed.discard("index.json")
        if changed:
            self._drop_sound(lambda key, names: not names.isdisjoint(changed))
            self._trusted -= changed
        return self._take_lost()

    def _take_lost(self) -> set[tuple[str, str]] | None:
        lost, self._lost = self._lost, set()
        return lost if self._watch is not None else None

    def _clear_sound(self) -> None:
        self._sound.clear()
        self._lost = None

    def _drop_sound(self, gone: Callable[[tuple[str, str], frozenset[str]], bool]) -> None:
        """Forget the artifacts found sound for which ``gone(key, blob names)`` holds."""
        kept = {}
        for key, names in self._sound.items():
            if not gone(key, names):
                kept[key] = names
            elif self._lost is not None:
                self._lost.add(key)
        self._sound = kept

    def _drain(self) -> None:
        """Take the events the watch queued so far into ``_changed``, leaving out this process's own
        renames and writes in flight. Called as blobs are written too: the kernel queues at most
        16,384 events (five a blob written), and a queue that overflows makes the next check read
        every artifact again."""
        if self._watch is None or self._changed is None:
            return
        events = self._watch.changes()
        if events is None or any(folder == 0 and name == "blobs" for folder, _, name in events):
            self._changed = None  # the blobs folder itself was replaced, moved or deleted: the watch is on the old one
            return
        for folder, mask, name in events:
            if folder == 0 and name != "index.json":
                continue
            if name.startswith(".tmp-"):
                continue  # a write in flight; its rename into place is an event of its own
            if mask & dirwatch.IN_MOVED_TO and self._own[name] > 0:
                self._own[name] -= 1  # this process's own write
                continue
            self._changed.add(name)

    def _tagged(self, repository: str, digest: str) -> bool:
        self._load_index()
        prefix = f"{repository}:"
        return any(ref.startswith(prefix) for ref in self._refs_of.get(digest, ()))

    def _checked(self, digest: str) -> bytes:
        self._settle()
        path = self._blob_path(digest)
        info = path.stat()
        mark = (info.st_size, info.st_mtime_ns, info.st_ino)
        if self._verified.get(digest) == mark:
            return path.read_bytes()
        data = self.read_blob(digest)  # ValueError when the bytes do not match the digest
        self._verified[digest] = mark
        return data

    def repair(self, repository: str, art: pack.Artifact) -> None:
        """Write again every blob of ``art`` that is missing or does not match its digest, and tag it."""
        self._settle()
        for digest, data in [*((b.digest, b.data) for b in art.blobs), (art.manifest_digest, art.manifest)]:
            path = self._blob_path(digest)
            try:
                self.read_blob(digest)
            except (OSError, ValueError):
                _atomic_write(path, data)
                self._wrote(path.name)
        self._tag(f"{repository}:{art.tag}", art)

    def push(self, repository: str, art: pack.Artifact) -> bool:
        manifest_path = self._blob_path(art.manifest_digest)
        present = manifest_path in self._pending or manifest_path.exists()
        if not present:
            for blob in art.blobs:
                path = self._blob_path(blob.digest)
                if path not in self._pending and not path.exists():
                    self._stage(path, blob.data)
            self._stage(manifest_path, art.manifest)  # after its blobs: settled in this order
            self.pushed += 1
        self._tag(f"{repository}:{art.tag}", art)
        if self._watch is not None:
            # written here (or earlier by this process, unchanged since) from the bytes the compile
            # hashed: sound without reading it back, until the watch sees a change to one of its blobs
            paths = [self._blob_path(blob.digest) for blob in art.blobs] + [manifest_path]
            if all(path in self._pending or path.name in self._trusted for path in paths):
                self._sound[(repository, art.manifest_digest)] = frozenset(path.name for path in paths)
        if len(self._pending) >= PENDING_BLOBS:
            self._settle()
        return not present

    def _stage(self, path: pathlib.Path, data: bytes) -> None:
        """Write ``data`` to a temporary file beside ``path``; ``_settle`` makes it durable and renames it."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        self._pending[path] = tmp
        if len(self._pending) % DRAIN_EVERY == 0:
            self._drain()

    def _settle(self) -> None:
        """Make the staged blobs durable (one ``syncfs``, else an fsync each), rename them into place
        (a manifest after its blobs), then fsync the folder so the names are durable too."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            _sync_contents(self.blobs, list(pending.values()))
            for path, tmp in pending.items():
                os.replace(tmp, path)
                self._wrote(path.name)
            _fsync_folder(self.blobs)
        except BaseException:
            for tmp in pending.values():
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self._clear_sound()  # some of the blobs an artifact was found sound by may not be in place
            raise
        if self._watch is not None:
            self._trusted.update(path.name for path in pending)
            self._drain()

    def _load_index(self) -> dict[str, Any]:
        if self._index is None:
            path = self.root / "index.json"
            empty: dict[str, Any] = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
            try:
                loaded = json.loads(path.read_text("utf-8")) if path.exists() else empty
                if not isinstance(loaded, dict) or not isinstance(loaded.get("manifests"), list) or not all(
                        isinstance(m, dict) and isinstance(m.get("annotations", {}), dict) for m in loaded["manifests"]):
                    raise ValueError("not an OCI image index")
            except (ValueError, UnicodeDecodeError) as err:
                # Only tags live here (blobs are content-addressed): start from an empty index, and the
                # pass tags again every artifact in use (reconcile.repair_artifacts).
                self.index_problem = f"{path} is unreadable ({err}); its tags are made again"
                log.warning("oci index unreadable, tags made again", path=str(path), error=str(err))
                loaded = empty
                self._dirty = True
            self._index = loaded
            self._unsorted = True  # as read: maybe not in tag order
            self._reindex()
        return self._index

    def _reindex(self) -> None:
        assert self._index is not None
        self._positions, self._refs_of = {}, {}
        for existing in self._index["manifests"]:
            ref = existing.get("annotations", {}).get(REF_NAME)
            if ref is None:
                continue
            self._positions.setdefault(ref, existing)
            self._refs_of.setdefault(existing.get("digest"), set()).add(ref)

    def _untag(self, digest: object, ref: str) -> None:
        refs = self._refs_of.get(str(digest))
        if refs is not None:
            refs.discard(ref)
        if self._sound:  # an artifact found sound is so while it is tagged: check again what used this digest
            self._drop_sound(lambda key, _names: key[1] == digest)

    def _tag(self, ref: str, art: pack.Artifact) -> None:
        index = self._load_index()
        manifests: list[dict[str, Any]] = index["manifests"]
        descriptor = {
            "mediaType": artifact_core.MANIFEST_MEDIA_TYPE,
            "artifactType": artifact_core.ARTIFACT_TYPE,
            "digest": art.manifest_digest,
            "size": len(art.manifest),
            "annotations": {REF_NAME: ref},
        }
        existing = self._positions.get(ref)
        if existing is not None:
            if existing != descriptor:
                before = existing.get("digest")
                existing.clear()
                existing.update(descriptor)  # in its place in the index
                if not any(m.get("digest") == before and m.get("annotations", {}).get(REF_NAME) == ref
                           for m in manifests):
                    self._untag(before, ref)
                self._refs_of.setdefault(art.manifest_digest, set()).add(ref)
                self._dirty = True
            return
        self._positions[ref] = descriptor
        self._refs_of.setdefault(art.manifest_digest, set()).add(ref)
        if self._unsorted:
            manifests.append(descriptor)  # sorted by the next flush
        else:
            bisect.insort(manifests, descriptor, key=_ref_name)
        self._dirty = True

    def resolve(self, ref: str) -> str | None:
        self._load_index()
        found = self._positions.get(ref)
        return None if found is None else str(found["digest"])

    def flush(self) -> None:
        self._settle()
        if self._dirty and self._index is not None and not self.read_only:
            if self._unsorted:  # as read; later tags are inserted in their place
                self._index["manifests"] = sorted(self._index["manifests"], key=_ref_name)
                self._unsorted = False
            # compact: one C-encoded line (an indented index of 10,000 tags took 0.3 s to write)
            _atomic_write(self.root / "index.json",
                          json.dumps(self._index, sort_keys=True, separators=(",", ":")).encode())
            self._wrote("index.json")
            self._dirty = False

    def close(self) -> None:
        """Stop watching the layout's folders (the next ``recheck`` would watch them again)."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._clear_sound()
        self._trusted.clear()

    def _wrote(self, name: str) -> None:
        """This process renamed ``name`` into place: the watch's event for it is no change to check."""
        if self._watch is not None:
            self._own[name] += 1


def _ref_name(descriptor: dict[str, Any]) -> str:
    return str(descriptor.get("annotations", {}).get(REF_NAME, ""))


STALE_SECONDS = 3600


def _remove_stale_temporaries(*folders: pathlib.Path) -> None:
    """Temporary files an interrupted write left behind (older than an hour: never one in flight)."""
    cutoff = time.time() - STALE_SECONDS
    for folder in folders:
        for leftover in folder.glob(".tmp-*"):
            try:
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
            except OSError:
                continue


def _sync_contents(folder: pathlib.Path, files: list[str]) -> None:
    """Make the contents of ``files`` (all in ``folder``) durable: one ``syncfs`` of the folder's
    file system where the C library has it (Linux), else an fsync of each file."""
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for name in files:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_folder(folder: pathlib.Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNCFS: list[Any] = []


def _syncfs() -> Any:
    """libc's ``syncfs(fd)``, or None where there is none."""
    if not _SYNCFS:
        found = None
        if sys.platform.startswith("linux"):
            try:
                found = ctypes.CDLL(None, use_errno=True).syncfs
                found.argtypes, found.restype = [ctypes.c_int], ctypes.c_int
            except (OSError, AttributeError):
                found = None
        _SYNCFS.append(found)
    return _SYNCFS[0]


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
