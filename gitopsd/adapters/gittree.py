"""A Git commit as a ``ports.Tree``, read from tree objects with pygit2 (no checkout needed).

Folder content ids are Git tree ids, free to read, which makes the compile cache exact. External
renderers (kustomize, helm) get a folder exported once per tree id under the state dir.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import re
import shutil
import tempfile
from typing import cast

import pygit2

from gitopsd import errors, ports
from gitopsd.adapters import fstree, links

_DIR, _LINK, _SUBMODULE = 0o040000, 0o120000, 0o160000
MAX_BLOB_BYTES = fstree.MAX_READ_BYTES  # the same cap as for a file of a plain folder
MAX_EXPORT_BYTES = 4 * MAX_BLOB_BYTES  # a folder exported for kustomize or helm, symlinks counted as copies
_TREE_ENTRY = re.compile(rb"([0-7]+) ([^\0]+)\0(.{20})", re.DOTALL)  # one entry of a raw tree object: mode, name, id


class GitTree:
    def __init__(self, repo: pygit2.Repository, commit: pygit2.Commit, *, ref: str, export_dir: pathlib.Path,
                 description: str) -> None:
        self.repo = repo
        self.commit = commit
        self._root = commit.tree
        self._entries: dict[str, pygit2.Object | None] = {}
        self.export_dir = export_dir
        self.submodules: set[str] = set()  # submodule paths that listdir met (and left out)
        when = datetime.datetime.fromtimestamp(commit.commit_time, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.snapshot = ports.Snapshot(
            revision=f"{ref}@sha1:{commit.id}",
            commit_time=when,
            author=f"{commit.author.name} <{commit.author.email}>",
            description=description,
            commit=str(commit.id),
        )

    def _entry(self, path: str) -> pygit2.Object | None:
        # Commit.tree loads the tree object on every access: keep the root, and every entry looked up.
        if not path:
            return self._root
        if path in self._entries:
            return self._entries[path]
        head, _, name = path.rpartition("/")
        parent = self._entry(head)  # walk down once per folder: a folder's tree is parsed once
        entry = None
        if isinstance(parent, pygit2.Tree):
            try:
                entry = parent[name]
            except KeyError:
                entry = None
        self._entries[path] = entry
        return entry

    def kind(self, path: str) -> ports.EntryKind | None:
        if not path:
            return ports.EntryKind.DIR
        entry = self._entry(path)
        if entry is None:
            return None
        mode = entry.filemode
        if mode == _DIR:
            return ports.EntryKind.DIR
        if mode == _LINK:
            return ports.EntryKind.LINK
        if mode == _SUBMODULE:
            raise errors.SpecError(f"{path} is a Git submodule; gitopsd reads only files of the config repo", path=path,
                                   reason="Submodule")
        return ports.EntryKind.FILE

    def listdir(self, path: str) -> list[tuple[str, ports.EntryKind]]:
        tree = self._entry(path)
        if not isinstance(tree, pygit2.Tree):
            raise NotADirectoryError(path)
        out = []
        for entry in tree:
            assert entry.name is not None  # an entry of a tree always has a name
            if not path and entry.name == ".gitopsd":
                continue
            sub = f"{path}/{entry.name}" if path else entry.name
            if entry.filemode == _SUBMODULE:
                self.submodules.add(sub)  # not listed: a reader that needs it asks kind() and gets the error
                continue
            self._entries.setdefault(sub, entry)  # its kind and id without looking it up again
            kind = self.kind(sub)
            if kind is not None:
                out.append((entry.name, kind))
        out.sort()
        return out

    def size(self, path: str) -> int:
        """The size of the file at ``path`` from its object header: nothing of it is read."""
        entry = self._entry(path)
        if entry is None or entry.filemode in (_DIR, _LINK):
            raise FileNotFoundError(path)
        return int(self.repo.odb.read_header(entry.id)[1])

    def read(self, path: str) -> bytes:
        """The bytes of the file at ``path``; over ``MAX_BLOB_BYTES`` (told by the object header, before
        anything is read) it is refused with an error naming the file."""
        size = self.size(path)
        if size > MAX_BLOB_BYTES:
            raise errors.SpecError(
                f"file is {size} bytes, over the {MAX_BLOB_BYTES}-byte limit; keep large files out of the config repo",
                path=path,
                reason="FileTooLarge",
            )
        entry = self._entry(path)
        assert entry is not None
        return cast(pygit2.Blob, self.repo[entry.id]).data

    def readlink(self, path: str) -> str:
        entry = self._entry(path)
        if entry is None or entry.filemode != _LINK:
            raise FileNotFoundError(path)
        if self.repo.odb.read_header(entry.id)[1] > 4096:
            raise errors.SpecError("a symlink's target is over 4096 bytes; remove the link", path=path, reason="PathEscape")
        return cast(pygit2.Blob, self.repo[entry.id]).data.decode("utf-8", "surrogateescape")

    def tree_id(self, path: str) -> str:
        entry = self._entry(path)
        if entry is None:
            return "sha1:0"
        return f"sha1:{entry.id}"

    def changed_names(self, path: str, since: str) -> set[str] | None:
        """Names of the entries of folder ``path`` added, removed or changed since the folder had tree id
        ``since``: the two tree objects' raw entries (mode, name, id) compared as sets, without an
        object per entry. None when ``since`` is no tree of this repository."""
        entry = self._entry(path)
        algorithm, _, hexid = since.partition(":")
        if not isinstance(entry, pygit2.Tree) or algorithm != "sha1":
            return None
        try:
            earlier = self.repo.get(hexid)
            old_raw, new_raw = self.repo.odb.read(hexid)[1], self.repo.odb.read(entry.id)[1]
        except (KeyError, ValueError):
            return None
        if not isinstance(earlier, pygit2.Tree):
            return None
        old, new = _TREE_ENTRY.findall(old_raw), _TREE_ENTRY.findall(new_raw)
        if len(old) != len(earlier) or len(new) != len(entry):
            return None  # not read entry by entry: let the caller list the folder
        try:
            return {name.decode() for _, name, _ in set(old) ^ set(new)}
        except UnicodeDecodeError:
            return None

    def materialize(self, path: str) -> pathlib.Path:
        """The folder ``path`` written under the export dir, once per tree id. A symlink in it is
        written as a copy of what it leads to inside ``path``; one that leads outside ``path`` (even
        back into the repo: its text would be read against the export dir) is refused, and so is a
        file over ``MAX_BLOB_BYTES`` or an export over ``MAX_EXPORT_BYTES``, checked from object
        headers before anything is read."""
        entry = self._entry(path)
        if not isinstance(entry, pygit2.Tree):
            raise NotADirectoryError(path)
        target = self.export_dir / str(entry.id)
        if target.is_dir():
            return target
        links.check_export(self, path)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        scratch = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=self.export_dir))
        try:
            self._write(path, scratch, path, [0])
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        try:
            os.rename(scratch, target)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)  # another pass exported it first
        return target

    def _write(self, path: str, into: pathlib.Path, root: str, budget: list[int]) -> None:
        for name, kind in self.listdir(path):
            sub = f"{path}/{name}" if path else name
            dest = into / name
            if kind is ports.EntryKind.LINK:
                sub, kind = links.export_target(self, sub, root)
            if kind is ports.EntryKind.DIR:
                dest.mkdir()
                self._write(sub, dest, root, budget)
                continue
            entry = self._entry(sub)
            assert entry is not None
            budget[0] += self.size(sub)
            if budget[0] > MAX_EXPORT_BYTES:
                raise errors.SpecError(
                    f"the folder {root or '.'} holds more than {MAX_EXPORT_BYTES // (1024 * 1024)} MiB (symlinks "
                    "counted as copies); keep large files out of the config repo",
                    path=root or ".", reason="FileTooLarge")
            dest.write_bytes(self.read(sub))
            if entry.filemode == 0o100755:
                dest.chmod(0o755)

def open_worktree(path: pathlib.Path, export_dir: pathlib.Path) -> GitTree | None:
    """The HEAD commit of the Git repository at ``path``; ``None`` when it is not one (or is empty)."""
    try:
        repo = pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError:
        return None
    if repo.head_is_unborn:
        return None
    commit = repo.head.peel(pygit2.Commit)
    ref = repo.head.shorthand if not repo.head_is_detached else "HEAD"
    return GitTree(repo, commit, ref=ref, export_dir=export_dir, description=f"git work tree {path} at HEAD ({ref})")
