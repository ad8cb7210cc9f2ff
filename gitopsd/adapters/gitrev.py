"""Any revision of a local Git repository as a ``ports.Tree``: what ``gitopsd plan`` compares.

A pass normally reads one tip (a work tree's HEAD, a remote's branch: ``system.LocalSource``,
``gitsource.GitSource``); a plan reads two revisions named the way ``git`` names them
(``origin/main``, ``HEAD~1``, a tag, a commit id), straight from the object database with pygit2
(``gittree.GitTree``), with no checkout. ``FixedSource`` hands one of them to a pass.
"""

from __future__ import annotations

import pathlib

import pygit2

from gitopsd import errors, ports
from gitopsd.adapters import gittree


def open_repository(path: pathlib.Path) -> pygit2.Repository:
    """The Git repository at ``path`` (a work tree or a bare repository), or a clear error."""
    try:
        repo = pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError:
        raise errors.ConfigError(f"{path} is not a Git repository; gitopsd plan compares two revisions of a Git "
                                 "work tree or bare repository: give the path of a clone", reason="NotARepository") from None
    if repo.head_is_unborn:
        raise errors.ConfigError(f"{path} has no commit yet; commit the config repo first", reason="NoCommit")
    return repo


def revision_tree(repo: pygit2.Repository, ref: str | None, export_dir: pathlib.Path, *, flag: str) -> gittree.GitTree:
    """The commit ``ref`` names (``None``: HEAD) as a Tree; an unknown name stops with the flag that gave it."""
    if ref is None:
        commit = repo.head.peel(pygit2.Commit)
        name = repo.head.shorthand if not repo.head_is_detached else "HEAD"
    else:
        try:
            commit = repo.revparse_single(ref).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            raise errors.ConfigError(f"{flag} {ref}: no such revision in {repo.path.rstrip('/')}; give a branch, tag or "
                                     "commit the repository has (fetch it first, e.g. git fetch origin main)",
                                     reason="UnknownRevision") from None
        name = ref
    where = pathlib.Path(repo.workdir or repo.path).resolve()
    return gittree.GitTree(repo, commit, ref=name, export_dir=export_dir,
                           description=f"git {where} at {name} ({str(commit.id)[:12]})")


class FixedSource:
    """A source that always gives the same tree (one revision of a plan)."""

    def __init__(self, tree: ports.Tree) -> None:
        self.tree = tree

    def fetch(self) -> ports.Tree:
        return self.tree
