"""Any revision of a local Git repository as a ``ports.Tree``: what ``gitopsd plan`` compares.

A pass normally reads one tip (a work tree's HEAD, a remote's branch: ``system.LocalSource``,
``gitsource.GitSource``); a plan reads two revisions named the way ``git`` names them
(``origin/main``, ``HEAD~1``, a tag, a commit id), straight from the object database with pygit2
(``gittree.GitTree``), with no checkout; or a work tree with its uncommitted changes
(``worktree_tree``), the default head of a plan. ``FixedSource`` hands one of them to a pass.
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


def worktree_tree(repo: pygit2.Repository, export_dir: pathlib.Path, objects_dir: pathlib.Path) -> gittree.GitTree:
    """The work tree of ``repo`` as it is on disk, uncommitted changes included: modified and deleted
    tracked files, and untracked files ``git status`` shows (``.gitignore`` respected), as ``git add -A``
    would stage them. Nothing of the repository changes: its index is read, never written, and the
    blobs, trees and the one commit made for the snapshot go to ``objects_dir`` (the repository's
    objects are read through it as an alternate). A clean work tree is HEAD itself."""
    head = repo.head.peel(pygit2.Commit)
    name = repo.head.shorthand if not repo.head_is_detached else "HEAD"
    objects_dir.mkdir(parents=True, exist_ok=True)
    snap = pygit2.Repository(repo.workdir, pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    odb = pygit2.Odb(str(objects_dir))
    odb.add_disk_alternate(str(pathlib.Path(repo.path) / "objects"))
    snap.set_odb(odb)
    index = snap.index  # in memory from here: index.write() is never called
    try:
        index.add_all()
        tree_id = index.write_tree()
    except (pygit2.GitError, OSError) as err:
        raise errors.ConfigError(f"cannot read the work tree of {repo.workdir}: {err}; commit the change and give "
                                 f"{errors.setting('head')} HEAD", reason="WorkTreeUnreadable") from err
    where = pathlib.Path(repo.workdir).resolve()
    if tree_id == head.tree_id:
        return gittree.GitTree(repo, head, ref=name, export_dir=export_dir,
                               description=f"git {where} at {name} ({str(head.id)[:12]}), work tree clean")
    commit = snap[snap.create_commit(None, head.author, head.committer, "uncommitted work tree", tree_id, [head.id])]
    assert isinstance(commit, pygit2.Commit)
    return gittree.GitTree(snap, commit, ref=f"{name}+worktree", export_dir=export_dir,
                           description=f"git {where} work tree (uncommitted changes on {name} {str(head.id)[:12]})")
