"""A Git remote as the config repo: the ``ports.Source`` read from the mirror, and a plain folder as a remote.

Why this exists: users push to a Git server; gitopsd reads that repo at one revision as tree
objects. Commits that only change ``.gitopsd/`` (gitopsd's own status commits) are not desired
state: the tree of a tip is read at its *desired commit*, the newest first-parent ancestor-or-self
that changed something outside ``.gitopsd/``, and both ``fetch()`` and ``head()`` report that
commit's revision (``main@sha1:<hex>``). So a daemon comparing ``head()`` with the revision of its
last pass skips its own status commits; :meth:`GitSource.changed_since` answers the same question
for two commits. With verification on, the desired commit must pass the commit verifier and every
status-only commit above it must be signed by gitopsd's key.

Neighbours: ``adapters.gitmirror`` (the remote and its mirror), ``adapters.gitverify`` (commit
signatures), ``adapters.gitlocation`` (REPO forms and credentials), ``adapters.gittree`` (a commit
as a ``ports.Tree``), ``adapters.statuswriter`` (status commits), ``wiring`` (builds these).
"""

from __future__ import annotations

import os
import pathlib
from typing import cast

import pygit2

from gitopsd import errors
from gitopsd.adapters import gitmirror, gittree, gitverify, keys

STATUS_ROOT = ".gitopsd"  # written by gitopsd only; never desired state
_MAX_DESIRED_WALK = 10_000


# ---------------------------------------------------------------- the source


def desired_tree_equal(a: pygit2.Tree, b: pygit2.Tree) -> bool:
    """True when two root trees differ at most under ``.gitopsd/``."""
    if a.id == b.id:
        return True
    left = {entry.name: entry.id for entry in a if entry.name != STATUS_ROOT}
    right = {entry.name: entry.id for entry in b if entry.name != STATUS_ROOT}
    return left == right


class GitSource:
    """``ports.Source`` and ``ports.Pollable`` over a :class:`GitRemote`."""

    def __init__(self, remote: gitmirror.GitRemote, export_dir: pathlib.Path, *, verifier: gitverify.CommitVerifier | None = None,
                 status_keys: tuple[keys.PublicKey, ...] = ()) -> None:
        self.remote = remote
        self.export_dir = export_dir
        self.verifier = verifier
        # With verification on, a commit that changes only .gitopsd/ must be signed by one of these
        # (gitopsd's own key): a status record is gitopsd's word, nobody else's.
        self.status_keys = {key.raw: key for key in status_keys}
        self._status_verified: set[str] = set()
        self._desired: dict[str, str] = {}  # tip commit -> its desired commit
        self.tip: str | None = None  # the commit the last fetch found at the tip
        self.listed_tip: str | None = None  # the tip the last head() listed

    def revision(self, commit: str) -> str:
        assert self.remote.target is not None
        return f"{self.remote.target.name}@sha1:{commit}"

    def fetch(self) -> gittree.GitTree:
        repo, tip = self.remote.sync()
        desired = self.desired_commit(repo, tip)
        self.tip = str(tip.id)
        if self.verifier is not None:
            problem = self.verifier.problem(repo, desired)
            if problem is not None:
                raise errors.StalledError(
                    f"commit {desired.id} ({self.revision(str(desired.id))} in {self.remote.display}) was refused: "
                    f"{problem}; nothing was applied, the last verified revision stays in place",
                    reason="CommitVerificationFailed",
                )
            self._verify_status_commits(repo, tip, desired)
        target = self.remote.target
        assert target is not None
        if desired.id != tip.id:
            how = f"{target.name} at {str(tip.id)[:12]}, desired state of {str(desired.id)[:12]}"
        else:
            how = f"{target.name} at {str(tip.id)[:12]}"
        return gittree.GitTree(repo, desired, ref=target.name, export_dir=self.export_dir,
                               description=f"git {self.remote.display} {how}")

    def _verify_status_commits(self, repo: pygit2.Repository, tip: pygit2.Commit, desired: pygit2.Commit) -> None:
        """Every commit above the desired commit changes only ``.gitopsd/``: each must be gitopsd's own,
        signed by its status key (or, with no such key known, pass the commit verifier)."""
        commit = tip
        while commit.id != desired.id:
            key = str(commit.id)
            if key not in self._status_verified:
                problem = self._status_problem(repo, commit)
                if problem is not None:
                    raise errors.StalledError(
                        f"commit {commit.id} in {self.remote.display} changes only {STATUS_ROOT}/ (status records) and "
                        f"was refused: {problem}; only gitopsd's key may write status: revert the commit (or push the "
                        "branch without it); nothing was applied",
                        reason="CommitVerificationFailed",
                    )
                self._status_verified.add(key)
            if not commit.parent_ids:
                return
            commit = cast(pygit2.Commit, repo[commit.parent_ids[0]])

    def _status_problem(self, repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        if not self.status_keys:
            assert self.verifier is not None
            return self.verifier.problem(repo, commit)
        return gitverify.status_signer_problem(commit, self.status_keys)

    def status_moved(self) -> bool:
        """True when the tip ``head()`` listed is not the one the last fetch read, while the desired
        revision is the same: someone else's commit on top (status records edited) or a force-push
        (status records dropped). A pass then puts the true records back."""
        return self.listed_tip is not None and self.tip is not None and self.listed_tip != self.tip

    def head(self) -> str | None:
        """The revision ``fetch`` would read now, from a ref listing (no fetch).

        For a tip already in the mirror (a status commit gitopsd pushed, a commit fetched before) that
        is the revision of its desired commit, so gitopsd's own commits read as "nothing new"; an
        unknown tip is reported as itself, which differs from any earlier revision.
        """
        repo = self.remote.open()
        target = self.remote.remote_tip(repo)
        self.listed_tip = target.commit
        if not gitmirror.has(repo, target.commit):
            return self.revision(target.commit)
        return self.revision(str(self.desired_commit(repo, repo[target.commit].peel(pygit2.Commit)).id))

    def changed_since(self, old: str, new: str) -> bool:
        """True when commit ``new`` differs from commit ``old`` outside ``.gitopsd/`` (both must be fetched)."""
        repo = self.remote.open()
        return not desired_tree_equal(repo[old].peel(pygit2.Commit).tree, repo[new].peel(pygit2.Commit).tree)

    def desired_commit(self, repo: pygit2.Repository, tip: pygit2.Commit) -> pygit2.Commit:
        """The newest first-parent ancestor-or-self of ``tip`` that changed anything outside ``.gitopsd/``."""
        key = str(tip.id)
        if key in self._desired:
            return cast(pygit2.Commit, repo[self._desired[key]])
        commit, walked = tip, []
        for _ in range(_MAX_DESIRED_WALK):
            if str(commit.id) in self._desired:
                commit = cast(pygit2.Commit, repo[self._desired[str(commit.id)]])
                break
            walked.append(str(commit.id))
            if not commit.parent_ids or not gitmirror.has(repo, str(commit.parent_ids[0])):
                break
            parent = cast(pygit2.Commit, repo[commit.parent_ids[0]])
            if not desired_tree_equal(commit.tree, parent.tree):
                break
            commit = parent
        for seen in walked:
            self._desired[seen] = str(commit.id)
        return commit


# ---------------------------------------------------------------- a plain folder as a local remote


def _folder_tree(repo: pygit2.Repository, folder: pathlib.Path, *, top: bool) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if top and entry.name in (".git", STATUS_ROOT):
            continue
        path = pathlib.Path(entry.path)
        if entry.is_symlink():
            builder.insert(entry.name, repo.create_blob(os.fsencode(os.readlink(path))), pygit2.enums.FileMode.LINK)
        elif entry.is_dir():
            sub = _folder_tree(repo, path, top=False)
            if len(cast(pygit2.Tree, repo[sub])):
                builder.insert(entry.name, sub, pygit2.enums.FileMode.TREE)
        elif entry.is_file():
            mode = pygit2.enums.FileMode.BLOB_EXECUTABLE if os.access(path, os.X_OK) else pygit2.enums.FileMode.BLOB
            builder.insert(entry.name, repo.create_blob_fromdisk(str(path)), mode)  # streamed: a large file is never held whole
    return builder.write()


def import_folder(folder: pathlib.Path, bare: pathlib.Path, *, branch: str = "main") -> str:
    """Commit ``folder``'s files to ``branch`` of the bare repository ``bare`` (made on first use).

    Later calls add a commit only when the files changed, keeping what gitopsd wrote under
    ``.gitopsd/`` at the tip; the branch moves by compare-and-swap. Returns the tip commit id.
    """
    if not folder.is_dir():
        raise errors.ConfigError(f"{folder} is not a folder", reason="RepoNotFound")
    repo = (pygit2.Repository(str(bare), pygit2.enums.RepositoryOpenFlag.NO_SEARCH) if bare.exists()
            else pygit2.init_repository(str(bare), bare=True, initial_head=branch))
    files = _folder_tree(repo, folder, top=True)
    who = pygit2.Signature("gitopsd", "gitopsd@localhost")
    ref = repo.references.get(f"refs/heads/{branch}")
    if ref is None:
        commit = repo.create_commit(None, who, who, f"import {folder.name}\n", files, [])
        repo.references.create(f"refs/heads/{branch}", commit)
        return str(commit)
    tip = ref.peel(pygit2.Commit)
    top = repo.TreeBuilder(cast(pygit2.Tree, repo[files]))
    if STATUS_ROOT in tip.tree:
        top.insert(STATUS_ROOT, tip.tree[STATUS_ROOT].id, tip.tree[STATUS_ROOT].filemode)
    tree = top.write()
    if tree == tip.tree_id:
        return str(tip.id)
    commit = repo.create_commit(None, who, who, f"sync {folder.name}\n", tree, [tip.id])
    ref.set_target(commit, f"sync {folder.name}")
    return str(commit)
