"""Input safety of the renderers: what a PackBuild may read, checked before anything is rendered.

Why this exists: hostile sources are stopped before they cost anything. Every renderer refuses
symlinks that leave the repo and any read of another pack's folder (a pack reads its own folder
and shared folders outside ``packs/``); every path component is checked; a kustomization's
remote bases are refused before kustomize runs; a folder handed to an external renderer is
exported only after its links were checked (``materialize``). :func:`source_folders` lists what a
build reads besides its own folder (part of its cache key), and :class:`ReadsSources` gives each
renderer that list as its ``inputs``.

Neighbours: ``adapters.links`` (the one symlink policy), ``adapters.renderraw``,
``adapters.renderkustomize`` and ``adapters.renderhelm`` (the renderers that call these checks).
"""

from __future__ import annotations

import pathlib

from gitopsd import errors, ports
from gitopsd.adapters import links
from gitopsd.core import paths, yamlload
from gitopsd.model import spec

_REMOTE_MARKERS = ("://", "git@", "github.com/", "gitlab.com/", "bitbucket.org/", "?ref=", "?version=")


def shown_name(name: str) -> str:
    """A file name as it may appear in a one-line message: control characters escaped."""
    return name if name.isprintable() else repr(name)[1:-1]


def _check_name(sub: str, name: str, *, file: str, field: str) -> None:
    if not name.isprintable():
        raise errors.SpecError(
            f"field {field!r}: file name {shown_name(sub)!r} holds control characters; rename it",
            path=file,
            reason="InvalidFileName",
        )


def check_links(tree: ports.Tree, folder: str, *, build: spec.PackBuild, field: str) -> None:
    """Refuse any symlink under ``folder`` that points outside the config repo or into another
    pack's folder, and file names with control characters (they would break one-line messages)."""
    for sub, name, kind in links.walk(tree, folder):
        _check_name(sub, name, file=build.path, field=field)
        if kind is ports.EntryKind.LINK:
            target = links.resolve(tree, sub)
            if target is None:
                raise errors.SpecError(
                    f"field {field!r}: {sub} is a symlink to {shown_name(tree.readlink(sub))!r}, outside the config repo; "
                    "copy the file into the repo instead",
                    path=build.path,
                    reason="PathEscape",
                )
            check_own(tree, build, target, field=f"{field} (symlink {sub})")


def other_pack(tree: ports.Tree, build: spec.PackBuild, path: str) -> str | None:
    """The PackBuild of another pack whose folder ``path`` is in (or holds), else ``None``."""
    own = build.folder
    if paths.is_within(path, own):
        return None
    owner = paths.pack_folder(path)
    candidates: list[str]
    if owner is not None:
        candidates = [owner]
    elif paths.is_within(paths.PACKS, path):  # the repo root or packs/ itself: every pack is below
        if tree.kind(paths.PACKS) is not ports.EntryKind.DIR:
            return None
        candidates = [f"{paths.PACKS}/{name}" for name, kind in tree.listdir(paths.PACKS) if kind is ports.EntryKind.DIR]
    else:
        return None
    for folder in candidates:
        if folder == own:
            continue
        for name in ("packbuild.yaml", "packbuild.yml"):
            if tree.kind(f"{folder}/{name}") is not None:
                return f"{folder}/{name}"
    return None


def check_own(tree: ports.Tree, build: spec.PackBuild, path: str, *, field: str) -> None:
    """Refuse reading ``path`` when it is (or holds) another pack's folder: one pack's files
    belong to its own PackBuild, and editing them must never change a second pack."""
    other = other_pack(tree, build, path)
    if other is not None:
        where = "is in" if paths.is_within(path, other.rpartition("/")[0]) else "holds"
        raise errors.SpecError(
            f"field {field!r}: {path or '.'} {where} the folder of another pack ({other}); a pack reads only its "
            "own folder and shared folders outside packs/: move the shared files out of packs/",
            path=build.path,
            reason="ForeignPackFolder",
        )


def check_export(tree: ports.Tree, root: str, *, build: spec.PackBuild, field: str) -> None:
    """Refuse to hand ``root`` to an external renderer when a symlink below it leads outside ``root``:
    an exported folder lives under the state dir, where the link's text would lead somewhere else
    (the state dir's own keys, any host file). A renderer never reads a path outside its folder."""
    try:
        links.check_export(tree, root)
    except errors.SpecError as err:
        raise errors.SpecError(f"field {field!r}: {err}", path=build.path, reason=err.reason) from None


def materialize(tree: ports.Tree, root: str, *, build: spec.PackBuild, field: str) -> pathlib.Path:
    """``tree.materialize(root)``, with a refusal (a file over the size cap, a link) naming the
    PackBuild and its field."""
    try:
        return tree.materialize(root)
    except errors.SpecError as err:
        raise errors.SpecError(f"field {field!r}: {err}", path=build.path, reason=err.reason) from None


def check_path(tree: ports.Tree, path: str, *, file: str, field: str) -> None:
    """Refuse a path with a symlink in any component but the last: ``ext -> /outside`` and then
    ``ext/sub`` would read outside the repo although ``ext/sub`` itself is no link."""
    parts = path.split("/")
    link = links.first_link(tree, "/".join(parts[:-1])) if len(parts) > 1 else None
    if link is not None:
        raise errors.SpecError(
            f"field {field!r}: {shown_name(path)} goes through {shown_name(link)}, a symlink to "
            f"{shown_name(tree.readlink(link))!r}; "
            "a path must name real folders: point the field at the folder itself",
            path=file,
            reason="PathEscape",
        )


def need_dir(tree: ports.Tree, path: str, *, file: str, field: str) -> None:
    check_path(tree, path, file=file, field=field)
    kind = tree.kind(path)
    if kind is ports.EntryKind.LINK:
        raise errors.SpecError(f"field {field!r}: {path} is a symlink; point the field at a real folder", path=file,
                               reason="PathEscape")
    if kind is not ports.EntryKind.DIR:
        what = "does not exist" if kind is None else "is a file, not a folder"
        raise errors.SpecError(f"field {field!r}: {path or '.'} {what}; fix the path (relative to {file})", path=file,
                               reason="SourceNotFound")


class ReadsSources:
    def inputs(self, tree: ports.Tree, build: spec.PackBuild) -> list[str]:
        return source_folders(tree, build)


def kustomization_file(tree: ports.Tree, folder: str) -> str | None:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = f"{folder}/{name}" if folder else name
        if tree.kind(path) is ports.EntryKind.FILE:
            return path
    return None


def kustomize_inputs(tree: ports.Tree, folder: str, *, build: spec.PackBuild) -> tuple[list[str], list[str]]:
    """Every local folder a kustomization uses (itself, its bases and components, recursively), and
    the files it names as resources outside those folders.

    Remote bases (URLs, ``github.com/...``, ``?ref=``) are refused: compiles are offline and exact.
    So are paths that leave the repo and paths into another pack's folder.
    """
    file = build.path
    seen: list[str] = []
    files: list[str] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.append(current)
        kfile = kustomization_file(tree, current)
        if kfile is None:
            raise errors.SpecError(
                f"field 'kustomizeSource.path': {current or '.'} has no kustomization.yaml; add one or fix the path",
                path=file,
                reason="SourceNotFound",
            )
        doc = yamlload.load_one(tree.read(kfile), kfile)
        if not isinstance(doc, dict):
            raise errors.SpecError("a kustomization must be a mapping", path=kfile, reason="InvalidSpec")
        for field in ("helmCharts", "helmChartInflationGenerator", "helmGlobals"):
            if doc.get(field):
                raise errors.SpecError(
                    f"field {field!r}: kustomize's Helm chart inflation is not run (it would run helm and fetch "
                    "charts at build time); render the chart as its own pack with category: helm",
                    path=kfile,
                    reason="HelmInKustomize",
                )
        for field in ("resources", "bases", "components"):
            entries = doc.get(field) or []
            if not isinstance(entries, list):
                raise errors.SpecError(f"field {field!r}: must be a list of paths", path=kfile, reason="InvalidSpec")
            for index, entry in enumerate(entries):
                if not isinstance(entry, str):
                    continue
                if any(marker in entry for marker in _REMOTE_MARKERS):
                    raise errors.SpecError(
                        f"field '{field}[{index}]': remote base {yamlload.short(entry)} is refused (compiles are offline "
                        "and reproducible); vendor it into the config repo",
                        path=kfile,
                        reason="RemoteBase",
                    )
                target = paths.join(current, entry, file=kfile, field=f"{field}[{index}]")
                check_path(tree, target, file=kfile, field=f"{field}[{index}]")
                other = other_pack(tree, build, target)
                if other is not None:
                    raise errors.SpecError(
                        f"field '{field}[{index}]': {target} is in the folder of another pack ({other}); a pack reads "
                        f"only its own folder and shared folders outside packs/ (PackBuild {file})",
                        path=kfile,
                        reason="ForeignPackFolder",
                    )
                kind = tree.kind(target)
                if kind is ports.EntryKind.DIR:
                    stack.append(target)
                elif kind is None:
                    raise errors.SpecError(
                        f"field '{field}[{index}]': {yamlload.short(entry)} does not exist; fix the path", path=kfile,
                        reason="SourceNotFound"
                    )
                elif not any(paths.is_within(target, f) for f in seen) and target not in files:
                    files.append(target)
    return seen, files


def kustomize_folders(tree: ports.Tree, folder: str, *, build: spec.PackBuild) -> list[str]:
    return kustomize_inputs(tree, folder, build=build)[0]


def common_folder(folders: list[str]) -> str:
    if not folders:
        return ""
    parts = [f.split("/") if f else [] for f in folders]
    prefix: list[str] = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        prefix.append(items[0])
    return "/".join(prefix)


def source_folders(tree: ports.Tree, build: spec.PackBuild) -> list[str]:
    """The repo folders (and files) a build reads besides its own folder: part of its cache key.

    A source under ``packs/<other>/`` that is no pack's folder (no PackBuild there) is allowed;
    ``packs/<other>`` is then an input too, so that a PackBuild appearing there is noticed.
    """
    src = build.source
    found: list[str]
    for p, field in ((getattr(src, "path", None), "rawSource.path" if isinstance(src, spec.RawSource) else
                      "kustomizeSource.path"), (getattr(src, "chart", None), "helmSource.chart"),
                     (getattr(src, "values_file", None), "helmSource.valuesFile")):
        if p and "://" not in p:
            check_path(tree, p, file=build.path, field=field)
    if isinstance(src, spec.KustomizeSource):
        check_own(tree, build, src.path, field="kustomizeSource.path")
        if tree.kind(src.path) is ports.EntryKind.DIR:
            folders, files = kustomize_inputs(tree, src.path, build=build)
            found = folders + files
        else:
            found = [src.path]
    elif isinstance(src, spec.HelmSource):
        found = [p for p in (src.chart, src.values_file) if p and "://" not in p]
        for p, field in ((src.chart, "helmSource.chart"), (src.values_file, "helmSource.valuesFile")):
            if p and "://" not in p:
                check_own(tree, build, p, field=field)
    else:
        check_own(tree, build, src.path, field="rawSource.path")
        found = [src.path]
    owners = sorted({o for p in found if (o := paths.pack_folder(p)) is not None and o != build.folder} - set(found))
    return found + owners
