"""A Git commit as a ``ports.Tree``, read from tree objects with pygit2 (no checkout needed).

Folder content ids are Git tree ids, free to read, which makes the compile cache exact. External
renderers (kustomize, helm) get a folder exported once per tree id under the state dir.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import tempfile

import pygit2

from gitopsd import errors, ports

_DIR, _LINK, _SUBMODULE = 0o040000, 0o120000, 0o160000


class GitTree:
    def __init__(self, repo: pygit2.Repository, commit: pygit2.Commit, *, ref: str, export_dir: pathlib.Path,
                 description: str) -> None:
        self.repo = repo
        self.commit = commit
        self._root = commit.tree
        self._entries: dict[str, pygit2.Object | None] = {}
        self.export_dir = export_dir
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
            raise errors.SpecError(f"{path} is a Git submodule; gitopsd reads only files of the config repo", path=path, reason="Submodule")
        return ports.EntryKind.FILE

    def listdir(self, path: str) -> list[tuple[str, ports.EntryKind]]:
        tree = self._entry(path)
        if not isinstance(tree, pygit2.Tree):
            raise NotADirectoryError(path)
        out = []
        for entry in tree:
            if not path and entry.name == ".gitopsd":
                continue
            sub = f"{path}/{entry.name}" if path else entry.name
            kind = self.kind(sub)
            if kind is not None:
                out.append((entry.name, kind))
        out.sort()
        return out

    def read(self, path: str) -> bytes:
        entry = self._entry(path)
        if entry is None or entry.filemode in (_DIR, _LINK):
            raise FileNotFoundError(path)
        return self.repo[entry.id].data

    def readlink(self, path: str) -> str:
        entry = self._entry(path)
        if entry is None or entry.filemode != _LINK:
            raise FileNotFoundError(path)
        return self.repo[entry.id].data.decode("utf-8", "surrogateescape")

    def tree_id(self, path: str) -> str:
        entry = self._entry(path)
        if entry is None:
            return "sha1:0"
        return f"sha1:{entry.id}"

    def materialize(self, path: str) -> pathlib.Path:
        entry = self._entry(path)
        if not isinstance(entry, pygit2.Tree):
            raise NotADirectoryError(path)
        target = self.export_dir / str(entry.id)
        if target.is_dir():
            return target
        self.export_dir.mkdir(parents=True, exist_ok=True)
        scratch = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=self.export_dir))
        self._write(entry, scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)  # another pass exported it first
        return target

    def _write(self, tree: pygit2.Tree, into: pathlib.Path) -> None:
        for entry in tree:
            dest = into / entry.name
            if entry.filemode == _DIR:
                dest.mkdir()
                self._write(self.repo[entry.id], dest)
            elif entry.filemode == _LINK:
                os.symlink(self.repo[entry.id].data, dest)
            elif entry.filemode != _SUBMODULE:
                dest.write_bytes(self.repo[entry.id].data)
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
