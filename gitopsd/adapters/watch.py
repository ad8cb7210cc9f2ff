"""``gitopsd run --watch``: react to local changes with watchfiles, debounced.

A Git work tree is reconciled at HEAD, so only HEAD and refs moving can change what a pass reads:
watch those. A plain folder is read as it is: watch its files, minus ``.git/``, ``.gitopsd/`` and
editor scratch files. The daemon (``gitopsd.daemon``) receives one trigger per batch of changes.
"""

from __future__ import annotations

import fnmatch
import pathlib
import threading
from collections.abc import Callable

import structlog

from gitopsd.adapters import fstree, gittree

log = structlog.get_logger()

_IGNORED_NAMES = ("*.swp", "*.swx", "*~", ".#*", "4913", ".DS_Store")  # editor scratch files


def _git_dirs(repo: pathlib.Path) -> list[pathlib.Path]:
    """The folders holding HEAD and the refs of a work tree (two for a linked work tree)."""
    dot_git = repo / ".git"
    if dot_git.is_dir():
        return [dot_git.resolve()]
    text = dot_git.read_text(encoding="utf-8").strip()
    git_dir = (repo / text.removeprefix("gitdir:").strip()).resolve()
    dirs = [git_dir]
    common = git_dir / "commondir"
    if common.is_file():
        dirs.append((git_dir / common.read_text(encoding="utf-8").strip()).resolve())
    return dirs


def watch_plan(repo: pathlib.Path, export_dir: pathlib.Path) -> tuple[list[pathlib.Path], Callable[[object, str], bool], str]:
    """What ``--watch`` watches: (paths, filter, description).

    A Git work tree is reconciled at HEAD, so only HEAD and refs moving can change what a pass
    reads: watch those. A plain folder is read as it is: watch its files, minus ``.git/``,
    ``.gitopsd/`` (never desired state) and editor scratch files.
    """
    if gittree.open_worktree(repo, export_dir) is not None:
        roots = _git_dirs(repo)

        def git_filter(_: object, path: str) -> bool:
            p = pathlib.Path(path)
            if p.name.endswith(".lock"):
                return False
            return any(p == root / "HEAD" or p == root / "packed-refs" or root / "refs" in p.parents for root in roots)

        return roots, git_filter, "git work tree: commits, checkouts and resets"

    root = repo.resolve()

    def folder_filter(_: object, path: str) -> bool:
        p = pathlib.Path(path)
        try:
            parts = p.relative_to(root).parts
        except ValueError:
            return False
        if any(part in fstree.SKIP for part in parts):
            return False
        return not any(fnmatch.fnmatch(p.name, pattern) for pattern in _IGNORED_NAMES)

    return [root], folder_filter, "plain folder: saved edits"


def watch(paths: list[pathlib.Path], keep: Callable[[object, str], bool], *, debounce: float, stop: threading.Event,
          trigger: Callable[[str], bool]) -> None:
    """Trigger a pass for each batch of changes until ``stop`` is set. Runs in its own thread."""
    import watchfiles  # noqa: PLC0415 - only --watch needs it

    step = max(int(debounce * 1000), 1)
    try:
        for changes in watchfiles.watch(*paths, watch_filter=keep, step=step, debounce=max(step * 10, 1600),
                                        stop_event=stop, rust_timeout=1000, raise_interrupt=False):
            names = sorted(pathlib.Path(p).name for _, p in changes)
            log.info("files changed", count=len(names), files=names[:5])
            if not trigger("watch"):
                return
    except Exception as err:  # noqa: BLE001 - a dead watch must not go unnoticed
        log.error("watch stopped", error=str(err), paths=[str(p) for p in paths])


