"""Status write-back: a pass's status records as one signed commit on top of the branch tip.

Why this exists: the config repo is the record of what gitopsd did. Each pass that changes a status
record adds ONE commit that replaces ``.gitopsd/status/`` (records of packs no longer present are
removed, everything else in the tree is kept as it is at the tip), built from tree objects without a
work tree, signed with the SSH key so ``git verify-commit`` accepts it, and pushed without force.
When someone pushed in the meantime the branch is no longer where the commit was built: the writer
takes the new tip, builds its status change on top of it again, and retries with exponential backoff
(bounded). A user's commit is never lost or rewritten, history stays linear (no merges).

Where the commit goes is a :class:`Branch`: ``gitmirror.GitRemote`` (a remote, through the mirror) or
:class:`WorkTreeBranch` (the checked-out branch of a local work tree, opt-in with ``--write-status``).

Neighbours: ``core.status`` makes the records, ``reconcile.write_status`` calls :meth:`write`
(``ports.StatusWriter``), ``adapters.sshsig`` signs, ``adapters.schemafiles`` validates.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import time
from collections.abc import Callable, Iterable
from typing import Protocol, cast

import pygit2
import structlog
import yaml

from gitopsd import errors
from gitopsd.adapters import gitmirror, keys, schemafiles, sshsig

log = structlog.get_logger()

STATUS_ROOT = ".gitopsd"
STATUS_DIR = f"{STATUS_ROOT}/status"
_BLOB, _TREE = pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.TREE
_REJECTED = ("old reference value does not match", "failed to lock", "locked")


class Branch(Protocol):
    """Where status commits go: the tip to build on, and a compare-and-swap publish."""

    @property
    def display(self) -> str: ...

    def tip(self) -> tuple[pygit2.Repository, pygit2.Commit]: ...

    def refresh(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        """The tip after someone else moved the branch (fetch again)."""
        ...

    def publish(self, repo: pygit2.Repository, commit: pygit2.Oid, parent: pygit2.Oid) -> bool:
        """Move the branch from ``parent`` to ``commit``; ``False`` when it is no longer at ``parent``."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    name: str = "gitopsd"
    email: str = "gitopsd@localhost"


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What the last :meth:`GitStatusWriter.write` did, for the CLI and metrics."""

    commit: str | None  # None: the tree was unchanged, nothing committed
    parent: str  # the tip it was built on
    attempts: int
    seconds: float


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 1,000 records parse in a second, not ten


def validate(records: Iterable[tuple[str, bytes]], *, known_valid: set[str] | None = None) -> dict[str, bytes]:
    """Check every record against ``schemas/status-record.schema.json``; file name -> bytes.

    ``known_valid`` holds Git blob ids of records that need no check: ones checked before (a daemon
    writes mostly the same records pass after pass) and ones already committed at the tip with the
    same bytes (writing them changes nothing). Records found valid are added to it.
    """
    validator = schemafiles.validator("status-record")
    files: dict[str, bytes] = {}
    for path, data in records:
        name = path.removeprefix(f"{STATUS_DIR}/")
        if name == path or "/" in name or name.startswith(".") or not name.endswith(".yaml"):
            raise errors.StalledError(f"{path}: a status record must be a .yaml file directly under {STATUS_DIR}/",
                                      reason="InvalidStatusRecord", path=path)
        if name in files:
            raise errors.StalledError("two status records with the same path", reason="InvalidStatusRecord", path=path)
        digest = str(pygit2.hash(data))
        if known_valid is not None and digest in known_valid:
            files[name] = data
            continue
        try:
            document = yaml.load(data, Loader=_Loader)  # noqa: S506 - a safe loader
        except yaml.YAMLError as err:
            raise errors.StalledError(f"not valid YAML ({err})", reason="InvalidStatusRecord", path=path) from err
        problems = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
        if problems:
            first = problems[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
            raise errors.StalledError(f"{where}: {first.message} (schemas/status-record.schema.json)",
                                      reason="InvalidStatusRecord", path=path)
        if known_valid is not None:
            known_valid.add(digest)
        files[name] = data
    return files


def status_tree(repo: pygit2.Repository, root: pygit2.Tree, files: dict[str, bytes],
                owns: Callable[[str], bool] | None = None) -> pygit2.Oid:
    """``root`` with ``.gitopsd/status/`` replaced by ``files`` (removed when empty); the rest kept.

    With ``owns`` (a sharded replica: which basePackNames are its own), records of other packs at
    the tip are kept as they are; only this replica's records are replaced or removed.
    """
    meta_entry = root[STATUS_ROOT] if STATUS_ROOT in root else None  # noqa: SIM401 - pygit2.Tree has no .get
    if meta_entry is not None and meta_entry.filemode != _TREE:
        raise errors.StalledError(f"{STATUS_ROOT} is a file in the config repo; gitopsd keeps its status in a "
                                  f"{STATUS_ROOT}/ folder: remove the file", reason="StatusPathTaken", path=STATUS_ROOT)
    status = repo.TreeBuilder()
    if owns is not None and STATUS_DIR in root:
        for entry in cast(pygit2.Tree, repo[root[STATUS_DIR].id]):
            assert entry.name is not None  # an entry of a tree always has a name
            if entry.name not in files and not owns(entry.name.removesuffix(".yaml")):
                status.insert(entry.name, entry.id, entry.filemode)
    for name in sorted(files):
        status.insert(name, repo.create_blob(files[name]), _BLOB)
    meta = repo.TreeBuilder(cast(pygit2.Tree, repo[meta_entry.id])) if meta_entry is not None else repo.TreeBuilder()
    if len(status):
        meta.insert("status", status.write(), _TREE)
    elif meta.get("status") is not None:
        meta.remove("status")
    top = repo.TreeBuilder(root)
    if len(meta):
        top.insert(STATUS_ROOT, meta.write(), _TREE)
    elif meta_entry is not None:
        top.remove(STATUS_ROOT)
    return top.write()


def _status_id(root: pygit2.Tree) -> str:
    try:
        return str(root[STATUS_DIR].id)
    except KeyError:
        return ""


def _status_blobs(repo: pygit2.Repository, root: pygit2.Tree) -> set[str]:
    try:
        folder = root[STATUS_DIR]
    except KeyError:
        return set()
    tree = repo[folder.id]
    return {str(entry.id) for entry in tree} if isinstance(tree, pygit2.Tree) else set()


class GitStatusWriter:
    """``ports.StatusWriter`` over a :class:`Branch`."""

    def __init__(self, branch: Branch, key: keys.SigningKey, *, identity: Identity | None = None, attempts: int = 8,
                 backoff: float = 0.1, max_backoff: float = 4.0, sleep: Callable[[float], None] = time.sleep,
                 before_publish: Callable[[str], None] | None = None, owns: Callable[[str], bool] | None = None) -> None:
        self.branch = branch
        self.owns = owns  # sharding: the basePackNames whose records this writer replaces (default: all)
        self.key = key
        self.identity = identity or Identity()
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.before_publish = before_publish  # called with the commit id between building and pushing it
        self.last: Outcome | None = None
        self._valid: set[str] = set()  # blob ids of records that passed the schema
        self._written: str | None = None  # the id of .gitopsd/status as last written (or found equal)


    def in_place(self) -> bool:
        """True while the branch's tip holds the status this writer last wrote (or found there): a
        commit that edited the records, or a force-push that dropped them, makes it False."""
        if self._written is None:
            return False
        _repo, tip = self.branch.tip()
        return _status_id(tip.tree) == self._written

    def write(self, records: Iterable[tuple[str, bytes]], message: str) -> str | None:
        started = time.perf_counter()
        records = list(records)
        self._written = None
        repo, tip = self.branch.tip()
        committed = _status_blobs(repo, tip.tree)
        known = self._valid | committed
        files = validate(records, known_valid=known)
        self._valid |= known - committed
        for attempt in range(1, self.attempts + 1):
            tree = status_tree(repo, tip.tree, files, self.owns)
            if tree == tip.tree_id:
                self._written = _status_id(tip.tree)
                self.last = Outcome(None, str(tip.id), attempt, time.perf_counter() - started)
                log.info("status unchanged", branch=self.branch.display, tip=str(tip.id))
                return None
            commit = self._commit(repo, tree, tip.id, message)
            if self.before_publish is not None:
                self.before_publish(str(commit))
            if self.branch.publish(repo, commit, tip.id):
                self._written = _status_id(cast(pygit2.Tree, repo[tree]))
                self.last = Outcome(str(commit), str(tip.id), attempt, time.perf_counter() - started)
                log.info("status committed", commit=str(commit), parent=str(tip.id), attempts=attempt,
                         branch=self.branch.display)
                return str(commit)
            log.info("status push raced, rebuilding on the new tip", attempt=attempt, branch=self.branch.display)
            if attempt < self.attempts:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                self.sleep(delay * random.uniform(0.5, 1.0))
                repo, tip = self.branch.refresh()
        raise errors.TransientError(
            f"status commit not pushed to {self.branch.display}: the branch moved on each of {self.attempts} attempts; "
            "the next pass writes it",
            reason="StatusPushRejected",
        )

    def _commit(self, repo: pygit2.Repository, tree: pygit2.Oid, parent: pygit2.Oid, message: str) -> pygit2.Oid:
        who = pygit2.Signature(self.identity.name, self.identity.email, int(time.time()), 0)
        text = repo.create_commit_string(who, who, message, tree, [parent])
        # the ignore below: pygit2's stub says create_commit_string returns an Oid; it returns the commit text
        signed = sshsig.sign_commit_buffer(self.key, text.encode("utf-8"))  # type: ignore[attr-defined]
        return repo.odb.write(pygit2.enums.ObjectType.COMMIT, signed)


class WorkTreeBranch:
    """The checked-out branch of a local work tree (``--write-status`` on a folder REPO).

    The branch moves by compare-and-swap like a push; then the index and the files under
    ``.gitopsd/status/`` follow the new commit so ``git status`` stays clean. Refused when
    ``.gitopsd/`` has local changes (they would be overwritten) or HEAD is not on a branch.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.display = f"work tree {path}"

    def tip(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        try:
            repo = pygit2.Repository(str(self.path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        except pygit2.GitError as err:
            raise errors.UsageError(f"{errors.setting('status')}: {self.path} is not a Git work tree; run git init and "
                                    "commit first", setting="status", reason=errors.UsageReason.NOT_A_GIT_REPO) from err
        if repo.is_bare or repo.workdir is None:
            raise errors.UsageError(f"{errors.setting('status')}: {self.path} is not a work tree", setting="status",
                                    reason=errors.UsageReason.NOT_A_GIT_REPO)
        if repo.head_is_unborn:
            raise errors.StalledError(f"{self.path}: the branch has no commit yet; commit the config first",
                                      reason="EmptyRepository")
        if repo.head_is_detached:
            raise errors.UsageError(f"{errors.setting('status')}: HEAD of {self.path} is detached; check out a branch",
                                    setting="status", reason=errors.UsageReason.DETACHED_HEAD)
        dirty = sorted(p for p, flags in repo.status().items()
                       if (p == STATUS_ROOT or p.startswith(f"{STATUS_ROOT}/")) and flags != pygit2.enums.FileStatus.CURRENT)
        if dirty:
            raise errors.StalledError(
                f"{self.path} has local changes under {STATUS_ROOT}/ ({', '.join(dirty[:5])}); commit or discard them: "
                "gitopsd writes its status there",
                reason="WorkTreeDirty",
            )
        return repo, repo.head.peel(pygit2.Commit)

    def refresh(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        return self.tip()

    def publish(self, repo: pygit2.Repository, commit: pygit2.Oid, parent: pygit2.Oid) -> bool:
        ref = repo.lookup_reference(repo.head.name)
        if not gitmirror.swap_ref(ref, commit, parent, where=f"{repo.head.shorthand} in {self.path}", rejected=_REJECTED):
            return False
        self._follow(repo, repo[parent].tree, repo[commit].tree)
        return True

    def _follow(self, repo: pygit2.Repository, old: pygit2.Tree, new: pygit2.Tree) -> None:
        workdir = pathlib.Path(repo.workdir)
        index = repo.index
        index.read()
        for delta in repo.diff(old, new).deltas:  # type: ignore[call-overload]  # no (Tree, Tree) overload in pygit2's stub
            if delta.status == pygit2.enums.DeltaStatus.DELETED:
                path = delta.old_file.path
                (workdir / path).unlink(missing_ok=True)
                if path in index:
                    index.remove(path)
                parent = (workdir / path).parent
                while parent != workdir and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent
            else:
                path = delta.new_file.path
                target = workdir / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(cast(pygit2.Blob, repo[delta.new_file.id]).data)
                index.add(path)
        index.write()
