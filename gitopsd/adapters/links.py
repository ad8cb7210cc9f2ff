"""Symlinks inside a config repo, followed the way the operating system would, without leaving the repo.

Why this exists: a link's text means something only where it is read. ``paths.resolve_link`` joins
the text to the link's folder as a string, which is wrong once an earlier component of the path is
itself a link (``b -> .`` then ``a -> b/../../../etc``: the string stays in the repo, the file system
does not). :func:`resolve` walks a path one component at a time over any ``ports.Tree`` (a Git
commit or a folder), follows each link it meets, and says where the path really ends, or that it
leaves the repo or loops.

Neighbours: ``adapters.render`` (checks every link a renderer could meet), ``adapters.gittree``
and ``adapters.fstree`` (an export for an external renderer holds no link that leaves the folder
exported).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from gitopsd import errors, ports
from gitopsd.core import paths

MAX_HOPS = 40  # links followed while resolving one path, as Linux allows


def resolve(tree: ports.Tree, path: str) -> str | None:
    """``path`` with every symlink in it followed: a repo path holding no link (the last component may
    not exist). ``None`` when a step leaves the repo (``..`` above the root, an absolute target) or
    the links loop."""
    pending = collections.deque(part for part in path.split("/") if part)
    done: list[str] = []
    hops = 0
    while pending:
        name = pending.popleft()
        if name == ".":
            continue
        if name == "..":
            if not done:
                return None
            done.pop()
            continue
        current = "/".join([*done, name])
        kind = tree.kind(current)
        if kind is ports.EntryKind.LINK:
            hops += 1
            target = tree.readlink(current)
            if hops > MAX_HOPS or target.startswith("/"):
                return None
            pending.extendleft(reversed([part for part in target.split("/") if part]))
            continue
        done.append(name)
        if kind is None and pending:
            return "/".join([*done, *pending])  # a missing folder: nothing below it exists either
    return "/".join(done)


def first_link(tree: ports.Tree, path: str) -> str | None:
    """The first component of ``path`` (a prefix of it) that is a symlink, else ``None``."""
    parts = [part for part in path.split("/") if part]
    for index in range(1, len(parts) + 1):
        prefix = "/".join(parts[:index])
        kind = tree.kind(prefix)
        if kind is ports.EntryKind.LINK:
            return prefix
        if kind is None:
            return None
    return None


def shown(text: str) -> str:
    return text if text.isprintable() else repr(text)[1:-1]


def export_target(tree: ports.Tree, link: str, root: str) -> tuple[str, ports.EntryKind]:
    """Where the link at ``link`` leads inside the exported folder ``root``, and what it is there.

    Raises ``SpecError`` (``PathEscape``) when it leads outside ``root``, nowhere, or to a folder that
    holds the link itself (an export would never end)."""
    target = resolve(tree, link)
    text = shown(tree.readlink(link))
    if target is None or not paths.is_within(target, root):
        where = "outside the config repo" if target is None else f"outside the folder {root or '.'} a renderer reads"
        raise errors.SpecError(
            f"{link} is a symlink to {text!r}, {where}; copy the file into {root or 'the repo'} instead",
            path=link,
            reason="PathEscape",
        )
    kind = tree.kind(target)
    if kind is None:
        raise errors.SpecError(f"{link} is a symlink to {text!r}, which does not exist; fix or remove the link",
                               path=link, reason="PathEscape")
    if kind is ports.EntryKind.DIR and paths.is_within(link, target):
        raise errors.SpecError(f"{link} is a symlink to {text!r}, a folder that holds the link itself (a loop); "
                               "remove the link", path=link, reason="PathEscape")
    assert kind is not ports.EntryKind.LINK
    return target, kind


def walk(tree: ports.Tree, root: str) -> Iterator[tuple[str, str, ports.EntryKind]]:
    """Every entry below ``root`` as (path, name, kind), folders included and entered after they are
    yielded, links not followed (the renderers' checks and the raw renderer's read all go this way)."""
    stack = [root]
    while stack:
        current = stack.pop()
        for name, kind in tree.listdir(current):
            sub = f"{current}/{name}" if current else name
            yield sub, name, kind
            if kind is ports.EntryKind.DIR:
                stack.append(sub)


def check_export(tree: ports.Tree, root: str) -> None:
    """Refuse the export of ``root`` when a link below it leads outside ``root``, nowhere, or loops."""
    for sub, _, kind in walk(tree, root):
        if kind is ports.EntryKind.LINK:
            export_target(tree, sub, root)
