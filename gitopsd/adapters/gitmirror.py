"""The remote and its mirror: a bare clone in the state dir, fetched each pass; pushes never forced.

Why this exists: gitopsd reads a config repo at one revision without a checkout and tells cheaply
whether anything new arrived. :class:`GitRemote` owns the transport (pygit2/libgit2: local bare
repositories and ``file://``, ``ssh://``, ``https://``, ``http://``, ``git://`` URLs) and the
persistent clone cache: a bare mirror under ``<state-dir>/git/<name>.git``, fetched with a forced
refspec (a force-pushed upstream is logged as "upstream history rewritten" and followed), deleted
and cloned again when it is corrupt. It also pushes (:meth:`GitRemote.publish`): never forced; a
moved branch is a rejection the caller retries on top of the new tip.

libgit2 reports a rejected ref update and network trouble only as message text (pygit2 raises a
plain ``GitError`` for both), so :data:`_REJECTED` and :data:`_NETWORK` read those messages; they are
libgit2's, never gitopsd's own.

Neighbours: ``adapters.gitlocation`` (where the remote is, credentials), ``adapters.gitsource``
(reads the mirror), ``adapters.statuswriter`` (publishes status commits through it).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import cast

import pygit2
import structlog

from gitopsd import errors
from gitopsd.adapters import gitlocation

log = structlog.get_logger()

# libgit2 messages that mean "the server said no to this ref update": a retry on top of the new tip can succeed.
_REJECTED = ("non-fastforward", "non-fast-forward", "not present locally", "fetch first", "rejected",
             "failed to update ref", "stale info", "old reference value does not match", "failed to lock",
             "locked file")
# libgit2 messages of network and server trouble: never a reason to throw the local cache away.
_NETWORK = ("resolve", "connect", "timed out", "timeout", "network", "unreachable", "refused", "ssl", "tls",
            "certificate", "authentication", "auth", "401", "403", "404", "could not find repository",
            "unexpected http status", "no such host", "eof")


def configure_timeouts(connect_ms: int = 15_000, server_ms: int = 60_000) -> None:
    """Bound how long libgit2 waits for a server, so a hung remote becomes a transient error."""
    pygit2.settings.server_connect_timeout = connect_ms
    pygit2.settings.server_timeout = server_ms


# ---------------------------------------------------------------- the remote and its mirror


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The ref gitopsd follows, resolved against the remote's refs."""

    ref: str  # refs/heads/main or refs/tags/v1
    name: str  # main or v1: the left part of a revision string
    oid: str  # what the remote ref points at (a tag object for annotated tags)
    commit: str  # the commit it peels to

    @property
    def is_branch(self) -> bool:
        return self.ref.startswith("refs/heads/")


class GitRemote:
    """A remote repository and its bare mirror: list refs, fetch the followed ref, publish commits."""

    def __init__(self, location: gitlocation.Location, mirror: pathlib.Path, *, branch: str | None = None, tag: str | None = None,
                 auth: gitlocation.Auth | None = None) -> None:
        if branch and tag:
            raise errors.UsageError(f"give one of {errors.setting('branch')} and {errors.setting('tag')}", setting="branch")
        self.location = location
        self.mirror = mirror
        self.branch = branch
        self.tag = tag
        self.auth = auth or gitlocation.Auth()
        self.target: Target | None = None
        self._complete: set[str] = set()  # commits whose tree was checked complete in the mirror

    @property
    def display(self) -> str:
        return self.location.display

    # ---- the mirror

    def open(self) -> pygit2.Repository:
        """The mirror, created on first use and rebuilt when it cannot be opened."""
        if self.mirror.exists():
            try:
                repo = pygit2.Repository(str(self.mirror),
                                         pygit2.enums.RepositoryOpenFlag.NO_SEARCH | pygit2.enums.RepositoryOpenFlag.BARE)
                repo.references.get("HEAD")  # a garbage HEAD fails here
                if not repo.config.get_bool("core.bare"):  # and a garbage config here (we wrote core.bare = true)
                    raise ValueError("its config lost core.bare = true")
                return repo
            except (pygit2.GitError, ValueError, KeyError, OSError) as err:
                log.warning("git cache corrupt, rebuilding", path=str(self.mirror), error=gitlocation.one_line(err))
                self._discard()
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        return pygit2.init_repository(str(self.mirror), bare=True)

    def _discard(self) -> None:
        if not self.mirror.exists():
            return
        trash = self.mirror.with_name(f".{self.mirror.name}.broken-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(self.mirror, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # ---- talking to the remote

    def list_heads(self, repo: pygit2.Repository) -> list[pygit2.remotes.RemoteHead]:
        remote = repo.remotes.create_anonymous(self.location.url)
        try:
            return remote.list_heads(callbacks=gitlocation.Callbacks(self.auth))
        except gitlocation.AuthRejected as err:
            raise errors.TransientError(f"cannot read {self.display}: {err}", reason="SourceUnavailable") from None
        except (pygit2.GitError, OSError) as err:
            raise errors.TransientError(f"cannot reach {self.display}: {gitlocation.one_line(err)}",
                                        reason="SourceUnavailable") from None

    def resolve(self, heads: list[pygit2.remotes.RemoteHead]) -> Target:
        """The followed ref among the remote's refs; a missing branch or tag names its setting."""
        by_name = {head.name: head for head in heads if head.name is not None}  # every advertised ref has a name
        ref: str | None
        branches = sorted(name.removeprefix("refs/heads/") for name in by_name if name.startswith("refs/heads/"))
        if self.tag:
            ref = f"refs/tags/{self.tag}"
            if ref not in by_name:
                tags = sorted(n.removeprefix("refs/tags/") for n in by_name
                              if n.startswith("refs/tags/") and not n.endswith("^{}"))
                raise errors.UsageError(
                    f"{errors.setting('tag')} {self.tag}: no such tag in {self.display}; "
                    f"tags there: {', '.join(tags[:20]) or 'none'}",
                    setting="tag", reason=errors.UsageReason.TAG_NOT_FOUND,
                )
            peeled = by_name.get(f"{ref}^{{}}", by_name[ref])
            return Target(ref=ref, name=self.tag, oid=str(by_name[ref].oid), commit=str(peeled.oid))
        if self.branch:
            ref = f"refs/heads/{self.branch}"
            if ref not in by_name:
                raise errors.UsageError(
                    f"{errors.setting('branch')} {self.branch}: no such branch in {self.display}; "
                    f"branches there: {', '.join(branches[:20]) or 'none'}",
                    setting="branch", reason=errors.UsageReason.BRANCH_NOT_FOUND,
                )
            return Target(ref=ref, name=self.branch, oid=str(by_name[ref].oid), commit=str(by_name[ref].oid))
        if not branches:
            raise errors.StalledError(f"{self.display} has no branches yet; push a first commit", reason="EmptyRepository")
        head = by_name.get("HEAD")
        ref = head.symref_target if head is not None and head.symref_target else None
        if ref is None or ref not in by_name:  # no symref advertised: the branch HEAD points at, main/master first
            same = [f"refs/heads/{b}" for b in branches if head is not None and by_name[f"refs/heads/{b}"].oid == head.oid]
            preferred = [f"refs/heads/{b}" for b in ("main", "master") if b in branches]
            ref = (same + preferred + [f"refs/heads/{branches[0]}"])[0]
        oid = str(by_name[ref].oid)
        return Target(ref=ref, name=ref.removeprefix("refs/heads/"), oid=oid, commit=oid)

    def remote_tip(self, repo: pygit2.Repository) -> Target:
        self.target = self.resolve(self.list_heads(repo))
        return self.target

    def sync(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        """Bring the followed ref of the mirror up to the remote; the mirror's commit at its tip."""
        repo = self.open()
        target = self.remote_tip(repo)
        try:
            return repo, self._fetch_into(repo, target)
        except _CacheBroken as broken:
            log.warning("git cache corrupt, rebuilding", path=str(self.mirror), error=str(broken))
            self._discard()
            self._complete.clear()
            repo = self.open()
            try:
                return repo, self._fetch_into(repo, target)
            except _CacheBroken as again:
                raise errors.TransientError(f"cannot fetch {self.display}: {again}", reason="SourceUnavailable") from None

    def _fetch_into(self, repo: pygit2.Repository, target: Target) -> pygit2.Commit:
        local = repo.references.get(target.ref)
        before = str(local.target) if local is not None else None
        if before != target.oid or not has(repo, target.commit):
            remote = repo.remotes.create_anonymous(self.location.url)
            try:
                remote.fetch([f"+{target.ref}:{target.ref}"], callbacks=gitlocation.Callbacks(self.auth),
                             message=f"gitopsd: fetch {target.name}")
            except gitlocation.AuthRejected as err:
                raise errors.TransientError(f"cannot fetch {self.display}: {err}", reason="SourceUnavailable") from None
            except pygit2.GitError as err:
                message = gitlocation.one_line(err)
                if any(word in message.lower() for word in _NETWORK):
                    raise errors.TransientError(f"cannot fetch {self.display}: {message}", reason="SourceUnavailable") from None
                raise _CacheBroken(message) from None
        try:
            commit = repo.references[target.ref].peel(pygit2.Commit)
            if before is not None and before != str(commit.id) and has(repo, before):
                old = repo[before].peel(pygit2.Commit)
                if target.is_branch and not repo.descendant_of(commit.id, old.id):
                    log.warning("upstream history rewritten", ref=target.name, old=str(old.id), new=str(commit.id),
                                repo=self.display)
            self._check_complete(repo, commit)
        except (pygit2.GitError, KeyError, ValueError) as err:
            raise _CacheBroken(f"the mirror misses objects of {target.name} ({gitlocation.one_line(err)})") from None
        return commit

    def _check_complete(self, repo: pygit2.Repository, commit: pygit2.Commit) -> None:
        """Every tree and blob of the commit is in the mirror (once per commit and process)."""
        if str(commit.id) in self._complete:
            return
        seen: set[str] = set()
        stack = [commit.tree]
        while stack:
            tree = stack.pop()
            for entry in tree:
                key = str(entry.id)
                if key in seen or entry.filemode == 0o160000:
                    continue
                seen.add(key)
                if entry.filemode == 0o040000:
                    stack.append(cast(pygit2.Tree, repo[entry.id]))
                elif not repo.odb.exists(entry.id):
                    raise KeyError(f"object {key} is missing")
        self._complete.add(str(commit.id))

    def tip(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        """The mirror's commit at the followed branch (fetched when the mirror does not have it yet)."""
        repo = self.open()
        if self.target is not None:
            local = repo.references.get(self.target.ref)
            if local is not None:
                return repo, local.peel(pygit2.Commit)
        return self.sync()

    def refresh(self) -> tuple[pygit2.Repository, pygit2.Commit]:
        return self.sync()

    # ---- pushing

    def publish(self, repo: pygit2.Repository, commit: pygit2.Oid, parent: pygit2.Oid) -> bool:
        """Move the remote branch from ``parent`` to ``commit`` (a fast-forward); ``False`` when the branch
        is no longer at ``parent`` (someone pushed): the caller rebuilds on the new tip and retries."""
        if self.target is None or not self.target.is_branch:
            raise errors.UsageError(f"status write-back needs a branch; {errors.setting('tag')} pins a revision", setting="tag")
        accepted = self._publish_local(repo, commit, parent) if self.location.is_local else self._publish_remote(repo, commit)
        if accepted:
            repo.references.create(self.target.ref, commit, force=True)
        return accepted

    def _publish_local(self, repo: pygit2.Repository, commit: pygit2.Oid, parent: pygit2.Oid) -> bool:
        """A local bare repository: copy the new objects, then compare-and-swap the branch.

        libgit2's local transport checks fast-forward on the refs it listed and then writes the ref
        with force, so a push landing in between would be lost; updating the ref with the expected old
        value under git's own ref lock closes that window.
        """
        assert self.target is not None and self.location.local_path is not None
        try:
            remote = pygit2.Repository(str(self.location.local_path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        except pygit2.GitError as err:
            raise errors.TransientError(f"cannot open {self.display}: {gitlocation.one_line(err)}",
                                        reason="SourceUnavailable") from None
        _copy_objects(repo, remote, commit)
        ref = remote.references.get(self.target.ref)
        if ref is None:
            raise errors.StalledError(f"branch {self.target.name} was deleted from {self.display}", reason="BranchNotFound")
        return swap_ref(ref, commit, parent, where=f"{self.target.name} in {self.display}")

    def _publish_remote(self, repo: pygit2.Repository, commit: pygit2.Oid) -> bool:
        assert self.target is not None
        outgoing = "refs/gitopsd/outgoing"
        repo.references.create(outgoing, commit, force=True)
        callbacks = gitlocation.Callbacks(self.auth)
        remote = repo.remotes.create_anonymous(self.location.url)
        try:
            remote.push([f"{outgoing}:{self.target.ref}"], callbacks=callbacks)  # no '+': never forced
        except gitlocation.AuthRejected as err:
            raise errors.TransientError(f"cannot push to {self.display}: {err}", reason="StatusPushFailed") from None
        except pygit2.GitError as err:
            if any(word in str(err).lower() for word in _REJECTED):
                return False
            raise errors.TransientError(f"cannot push to {self.display}: {gitlocation.one_line(err)}",
                                        reason="StatusPushFailed") from None
        if callbacks.rejected:
            log.info("status push rejected", ref=self.target.name, reason=next(iter(callbacks.rejected.values())))
            return False
        return True


def swap_ref(ref: pygit2.Reference, commit: pygit2.Oid, parent: pygit2.Oid, *, where: str,
             rejected: tuple[str, ...] = _REJECTED) -> bool:
    """Move ``ref`` from ``parent`` to ``commit`` (compare-and-swap under git's ref lock).

    ``False`` when the ref moved meanwhile or a concurrent writer holds its lock (libgit2 reports a
    held lock as ``OSError``): the caller rebuilds on the new tip. Anything else is transient."""
    if ref.target != parent:
        return False
    try:
        ref.set_target(commit, "gitopsd: status")
    except (pygit2.GitError, OSError) as err:
        if any(word in str(err).lower() for word in rejected):
            return False
        raise errors.TransientError(f"cannot update {where}: {gitlocation.one_line(err)}", reason="StatusPushFailed") from None
    return True


class _CacheBroken(Exception):
    """The mirror is unusable (missing or corrupt objects): delete it and clone again."""


def has(repo: pygit2.Repository, oid: str) -> bool:
    try:
        return pygit2.Oid(hex=oid) in repo
    except (ValueError, pygit2.GitError):
        return False


def _copy_objects(source: pygit2.Repository, dest: pygit2.Repository, start: pygit2.Oid) -> None:
    """Copy ``start`` and what it reaches that ``dest`` lacks (parents are assumed present)."""
    stack = [start]
    while stack:
        oid = stack.pop()
        if oid in dest:
            continue
        kind, data = source.odb.read(oid)
        dest.odb.write(kind, data)
        obj = source[oid]
        if isinstance(obj, pygit2.Commit):
            stack.append(obj.tree_id)
        elif isinstance(obj, pygit2.Tree):
            stack.extend(entry.id for entry in obj if entry.filemode != 0o160000)
