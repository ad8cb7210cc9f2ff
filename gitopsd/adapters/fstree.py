"""A plain folder on disk as a ``ports.Tree``: for config repos that are not (yet) Git repos.

Content ids are sha256 over names, kinds and bytes, so an unchanged folder keeps its id and its
compile-cache entry. The revision is ``dir@sha256:<id of the whole folder>``.

A folder is not a Git tree: it can hold FIFOs, sockets and devices (reading a FIFO blocks forever)
and files of any size. Ids are hashed in chunks and never open special files; ``read`` refuses
special files and files over ``MAX_READ_BYTES`` with an error naming the file.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import os
import pathlib
import stat

from gitopsd import errors, ports
from gitopsd.adapters import links

SKIP = frozenset({".git", ".gitopsd"})
MAX_READ_BYTES = 64 * 1024 * 1024  # no config-repo file gitopsd reads (YAML, a chart .tgz) is near this


class FsTree:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root.resolve()
        self._ids: dict[str, str] = {}
        self._real: set[str] = set()  # folders known to be real folders, not symlinks
        newest = 0.0
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d not in SKIP]
            for name in filenames:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except OSError:
                    continue
        when = datetime.datetime.fromtimestamp(newest, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        self.snapshot = ports.Snapshot(
            revision=f"dir@{self.tree_id('')}",
            commit_time=when,
            author=user,
            description=f"plain folder {self.root}",
        )

    def _path(self, path: str) -> pathlib.Path:
        """The file-system path of ``path``, once every folder above it is known to be a real folder:
        a path through a symlinked folder (``ext -> /outside`` then ``ext/sub``) is never followed."""
        head = path.rpartition("/")[0]
        if head and head not in self._real:
            parts = head.split("/")
            for index in range(1, len(parts) + 1):
                prefix = "/".join(parts[:index])
                if prefix in self._real:
                    continue
                try:
                    mode = os.lstat(self.root / prefix).st_mode
                except OSError:
                    break  # missing: lstat of what is below fails too
                if stat.S_ISLNK(mode):
                    raise errors.SpecError(
                        f"{path} goes through the symlink {prefix}; gitopsd does not follow a symlinked folder in a "
                        "path: point the path at the real folder",
                        path=path,
                        reason="PathEscape",
                    )
                self._real.add(prefix)
        return self.root / path if path else self.root

    def kind(self, path: str) -> ports.EntryKind | None:
        try:
            mode = os.lstat(self._path(path)).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            return ports.EntryKind.LINK
        if stat.S_ISDIR(mode):
            return ports.EntryKind.DIR
        return ports.EntryKind.FILE

    def listdir(self, path: str) -> list[tuple[str, ports.EntryKind]]:
        out = []
        if path and self.kind(path) is ports.EntryKind.LINK:
            raise errors.SpecError(f"{path} is a symlinked folder; gitopsd does not list a folder through a symlink",
                                   path=path, reason="PathEscape")
        for name in sorted(os.listdir(self._path(path))):
            if not path and name in SKIP:
                continue
            kind = self.kind(f"{path}/{name}" if path else name)
            if kind is not None:
                out.append((name, kind))
        return out

    def read(self, path: str) -> bytes:
        full = self._path(path)
        info = os.lstat(full)  # a link is never read through: the renderers read the target they resolved
        if stat.S_ISLNK(info.st_mode):
            raise errors.SpecError(f"{path} is a symlink; gitopsd reads the file it leads to, not the link", path=path,
                                   reason="PathEscape")
        if not stat.S_ISREG(info.st_mode):
            raise errors.SpecError(
                f"{path} is not a regular file (a FIFO, socket or device); remove it from the config repo",
                path=path,
                reason="NotARegularFile",
            )
        if info.st_size > MAX_READ_BYTES:
            raise errors.SpecError(
                f"file is {info.st_size} bytes, over the {MAX_READ_BYTES}-byte limit; keep large files out of the config repo",
                path=path,
                reason="FileTooLarge",
            )
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, "rb") as handle:
            return handle.read(MAX_READ_BYTES + 1)

    def size(self, path: str) -> int:
        return os.lstat(self._path(path)).st_size

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def tree_id(self, path: str) -> str:
        cached = self._ids.get(path)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        kind = self.kind(path)
        if kind is ports.EntryKind.FILE:
            digest.update(b"F")
            mode = os.lstat(self._path(path)).st_mode
            if stat.S_ISREG(mode):
                with open(self._path(path), "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
            else:
                digest.update(f"special {stat.S_IFMT(mode):o}".encode())
        elif kind is ports.EntryKind.LINK:
            digest.update(b"L" + self.readlink(path).encode())
        elif kind is ports.EntryKind.DIR:
            for name, child in self.listdir(path):
                sub = f"{path}/{name}" if path else name
                digest.update(f"{name}\0{child}\0{self.tree_id(sub)}\n".encode())
        result = "sha256:" + digest.hexdigest()
        self._ids[path] = result
        return result

    def materialize(self, path: str) -> pathlib.Path:
        """The folder itself: the external renderer reads it in place, so every symlink below it must
        lead inside it (``links.check_export``), as in an export of a Git tree."""
        if self.kind(path) is not ports.EntryKind.DIR:
            raise NotADirectoryError(path)
        links.check_export(self, path)
        return self._path(path)
