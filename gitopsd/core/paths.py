"""Repo-relative paths: joining a PackBuild's relative paths and refusing any escape from the repo.

Paths inside the config repo are POSIX strings relative to the repo root (``packs/web/base``).
A path in a PackBuild is relative to the PackBuild's folder; after normalization it must not start
with ``..`` nor be absolute. Symlink targets are checked the same way by the tree adapters.
"""

from __future__ import annotations

import posixpath

from gitopsd import errors

PACKS = "packs"  # every pack is a folder packs/<name> holding its PackBuild


def join(base_dir: str, relative: str, *, file: str, field: str) -> str:
    """``base_dir`` + ``relative``, normalized; raises SpecError when it leaves the repo."""
    if relative.startswith("/") or (len(relative) > 1 and relative[1] == ":"):
        raise errors.SpecError(
            f"field {field!r}: absolute path {relative!r} is not allowed; use a path relative to {file}",
            path=file,
            reason="PathEscape",
        )
    joined = posixpath.normpath(posixpath.join(base_dir, relative)) if base_dir else posixpath.normpath(relative)
    if joined == ".." or joined.startswith("../"):
        raise errors.SpecError(
            f"field {field!r}: path {relative!r} leaves the config repo; keep sources inside the repo",
            path=file,
            reason="PathEscape",
        )
    return "" if joined == "." else joined


def resolve_link(link_path: str, target: str) -> str | None:
    """Where a symlink at ``link_path`` points, as a repo path; ``None`` when it leaves the repo."""
    if target.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if joined == ".." or joined.startswith("../"):
        return None
    return "" if joined == "." else joined


def is_within(path: str, folder: str) -> bool:
    return folder in ("", path) or path.startswith(folder + "/")


def pack_folder(path: str) -> str | None:
    """``packs/<name>`` when ``path`` is that folder or below it, else ``None``."""
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] == PACKS and parts[1]:
        return f"{PACKS}/{parts[1]}"
    return None
