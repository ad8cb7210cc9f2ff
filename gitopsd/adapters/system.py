"""The real clock, and a one-shot source over a local folder (a plain folder or a Git work tree)."""

from __future__ import annotations

import datetime
import pathlib

from gitopsd import ports
from gitopsd.adapters import fstree, gittree


class SystemClock:
    def now(self) -> str:
        return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LocalSource:
    """A directory: read at HEAD when it is a Git work tree with commits, else read as plain files."""

    def __init__(self, path: pathlib.Path, export_dir: pathlib.Path) -> None:
        self.path = path
        self.export_dir = export_dir

    def fetch(self) -> ports.Tree:
        tree = gittree.open_worktree(self.path, self.export_dir)
        if tree is not None:
            return tree
        return fstree.FsTree(self.path)

    def head(self) -> str | None:
        """The revision a fetch would read: the HEAD commit of a work tree (cheap), or the content
        hash of a plain folder (reads every file, but spares the pass)."""
        return self.fetch().snapshot.revision
