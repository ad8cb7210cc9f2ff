"""Renderers: turn a PackBuild's sources into YAML bytes (design.md §Compile 1).

raw reads every ``*.yaml``/``*.yml`` under the path in name order; kustomize runs a ``kustomize``
binary or ``kubectl kustomize`` offline (remote bases are refused before it runs); helm renders
templates and ``crds/`` with the pinned Helm SDK of the ``helm`` extra, dropping hooks, tests and
NOTES. Every renderer refuses symlinks that leave the repo. ``gitopsd.core.compile`` takes the
bytes from here.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import shutil
import subprocess

from gitopsd import errors, ports
from gitopsd.core import paths, yamlload
from gitopsd.model import pack, spec

KUSTOMIZE_TIMEOUT = 120
_REMOTE_MARKERS = ("://", "git@", "github.com/", "gitlab.com/", "bitbucket.org/", "?ref=", "?version=")


def check_links(tree: ports.Tree, folder: str, *, file: str, field: str) -> None:
    """Refuse any symlink under ``folder`` that points outside the config repo."""
    stack = [folder]
    while stack:
        current = stack.pop()
        for name, kind in tree.listdir(current):
            sub = f"{current}/{name}" if current else name
            if kind is ports.EntryKind.DIR:
                stack.append(sub)
            elif kind is ports.EntryKind.LINK and paths.resolve_link(sub, tree.readlink(sub)) is None:
                raise errors.SpecError(
                    f"field {field!r}: {sub} is a symlink to {tree.readlink(sub)!r}, outside the config repo; "
                    "copy the file into the repo instead",
                    path=file,
                    reason="PathEscape",
                )


def _need_dir(tree: ports.Tree, path: str, *, file: str, field: str) -> None:
    kind = tree.kind(path)
    if kind is ports.EntryKind.LINK:
        raise errors.SpecError(f"field {field!r}: {path} is a symlink; point the field at a real folder", path=file, reason="PathEscape")
    if kind is not ports.EntryKind.DIR:
        what = "does not exist" if kind is None else "is a file, not a folder"
        raise errors.SpecError(f"field {field!r}: {path or '.'} {what}; fix the path (relative to {file})", path=file, reason="SourceNotFound")


class _Renderer:
    def inputs(self, tree: ports.Tree, build: spec.PackBuild) -> list[str]:
        return source_folders(tree, build)


class RawRenderer(_Renderer):
    def render(self, tree: ports.Tree, build: spec.PackBuild) -> ports.Rendered:
        assert isinstance(build.source, spec.RawSource)
        root = build.source.path
        _need_dir(tree, root, file=build.path, field="rawSource.path")
        documents: list[tuple[str, bytes]] = []
        stack = [root]
        files: list[str] = []
        while stack:
            current = stack.pop()
            for name, kind in tree.listdir(current):
                sub = f"{current}/{name}" if current else name
                if kind is ports.EntryKind.DIR:
                    stack.append(sub)
                elif name.endswith((".yaml", ".yml")) and sub != build.path:
                    if kind is ports.EntryKind.LINK:
                        target = paths.resolve_link(sub, tree.readlink(sub))
                        if target is None or tree.kind(target) is not ports.EntryKind.FILE:
                            where = "outside the config repo" if target is None else "not a regular file"
                            raise errors.SpecError(
                                f"field 'rawSource.path': {sub} is a symlink to {tree.readlink(sub)!r}, {where}; "
                                "copy the file into the repo instead",
                                path=build.path,
                                reason="PathEscape",
                            )
                    files.append(sub)
        for sub in sorted(files):
            target = sub
            if tree.kind(sub) is ports.EntryKind.LINK:
                target = paths.resolve_link(sub, tree.readlink(sub)) or sub
            documents.append((sub, tree.read(target)))
        return ports.Rendered(documents=tuple(documents), renderers=(("raw", "1"),))


def kustomization_file(tree: ports.Tree, folder: str) -> str | None:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = f"{folder}/{name}" if folder else name
        if tree.kind(path) is ports.EntryKind.FILE:
            return path
    return None


def kustomize_folders(tree: ports.Tree, folder: str, *, file: str) -> list[str]:
    """Every local folder a kustomization uses (itself, its bases and components, recursively).

    Remote bases (URLs, ``github.com/...``, ``?ref=``) are refused: compiles are offline and exact.
    """
    seen: list[str] = []
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
        for field in ("resources", "bases", "components"):
            for index, entry in enumerate(doc.get(field) or []):
                if not isinstance(entry, str):
                    continue
                if any(marker in entry for marker in _REMOTE_MARKERS):
                    raise errors.SpecError(
                        f"field '{field}[{index}]': remote base {entry!r} is refused (compiles are offline and "
                        "reproducible); vendor it into the config repo",
                        path=kfile,
                        reason="RemoteBase",
                    )
                target = paths.join(current, entry, file=kfile, field=f"{field}[{index}]")
                kind = tree.kind(target)
                if kind is ports.EntryKind.DIR:
                    stack.append(target)
                elif kind is None:
                    raise errors.SpecError(
                        f"field '{field}[{index}]': {entry!r} does not exist; fix the path", path=kfile, reason="SourceNotFound"
                    )
    return seen


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


@functools.cache
def _kustomize_command() -> tuple[tuple[str, ...], str]:
    binary = shutil.which("kustomize")
    if binary:
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
        return (binary, "build"), f"kustomize {out or 'unknown'}"
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30).stdout
        try:
            info = json.loads(out)
            version = f"kubectl {info['clientVersion']['gitVersion']} kustomize {info.get('kustomizeVersion', '?')}"
        except (ValueError, KeyError):
            version = "kubectl unknown"
        return (kubectl, "kustomize"), version
    raise errors.ConfigError(
        "kustomize packs need 'kustomize' or 'kubectl' on the PATH; install one of them", reason="ToolMissing"
    )


class KustomizeRenderer(_Renderer):
    def render(self, tree: ports.Tree, build: spec.PackBuild) -> ports.Rendered:
        assert isinstance(build.source, spec.KustomizeSource)
        folder = build.source.path
        _need_dir(tree, folder, file=build.path, field="kustomizeSource.path")
        folders = kustomize_folders(tree, folder, file=build.path)
        for f in folders:
            check_links(tree, f, file=build.path, field="kustomizeSource.path")
        root = common_folder(folders)
        on_disk = tree.materialize(root)
        relative = posixpath.relpath(folder, root) if root else folder
        command, version = _kustomize_command()
        target = on_disk / relative if relative != "." else on_disk
        try:
            proc = subprocess.run(
                [*command, str(target)],
                capture_output=True,
                timeout=KUSTOMIZE_TIMEOUT,
                env={**os.environ, "KUSTOMIZE_PLUGIN_HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0"},
                cwd=on_disk,
            )
        except subprocess.TimeoutExpired as err:
            raise errors.RenderError(f"kustomize did not finish within {KUSTOMIZE_TIMEOUT}s", path=build.path) from err
        if proc.returncode != 0:
            message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = message[-1] if message else f"exit code {proc.returncode}"
            detail = detail.replace(str(on_disk), root or ".")
            raise errors.RenderError(f"field 'kustomizeSource.path': kustomize build of {folder} failed: {detail}", path=build.path)
        return ports.Rendered(documents=((f"{folder} (kustomize)", proc.stdout),), renderers=(("kustomize", version),))


class HelmRenderer(_Renderer):
    def render(self, tree: ports.Tree, build: spec.PackBuild) -> ports.Rendered:
        assert isinstance(build.source, spec.HelmSource)
        source = build.source
        try:
            import helm_python
        except ImportError as err:
            raise errors.ConfigError(
                f"{build.path}: helm packs need the helm extra; install it with: pip install 'gitopsd[helm]'",
                reason="HelmExtraMissing",
            ) from err
        if "://" in source.chart:
            raise errors.SpecError(
                f"field 'helmSource.chart': chart URL {source.chart!r} is not fetched (compiles are offline and "
                "reproducible); vendor the chart folder or .tgz into the config repo",
                path=build.path,
                reason="RemoteChart",
            )
        values = json.loads(source.values_json)
        if source.values_file:
            kind = tree.kind(source.values_file)
            if kind is not ports.EntryKind.FILE:
                raise errors.SpecError(f"field 'helmSource.valuesFile': {source.values_file} is not a file in the repo; fix the path", path=build.path, reason="SourceNotFound")
            from_file = yamlload.load_one(tree.read(source.values_file), source.values_file) or {}
            if not isinstance(from_file, dict):
                raise errors.SpecError("a values file must be a mapping", path=source.values_file, reason="InvalidSpec")
            values = deep_merge(from_file, values)
        try:
            kind = tree.kind(source.chart)
            if kind is ports.EntryKind.DIR:
                check_links(tree, source.chart, file=build.path, field="helmSource.chart")
                chart = helm_python.Chart.load(str(tree.materialize(source.chart)))
            elif kind is ports.EntryKind.FILE and source.chart.endswith((".tgz", ".tar.gz")):
                chart = helm_python.Chart.load_archive(tree.read(source.chart))
            else:
                raise errors.SpecError(
                    f"field 'helmSource.chart': {source.chart} is not a chart folder or .tgz in the repo; fix the path",
                    path=build.path,
                    reason="SourceNotFound",
                )
            if source.version and source.version.lstrip("v") != str(chart.version).lstrip("v"):
                raise errors.SpecError(
                    f"field 'helmSource.version': chart {chart.name} is version {chart.version}, not {source.version}; "
                    "update the field or the chart",
                    path=build.path,
                    reason="ChartVersionMismatch",
                )
            namespace = source.namespace or build.namespace or "default"
            rendered = chart.render(
                chart.merge_values(values), name=build.base_pack_name, namespace=namespace, is_install=True
            )
            crds = chart.crds
        except helm_python.HelmError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise errors.RenderError(f"field 'helmSource': helm could not render {source.chart}: {first}", path=build.path) from err
        documents: list[tuple[str, bytes]] = []
        for crd in sorted(crds, key=lambda c: c["filename"]):
            documents.append((crd["filename"], crd["data"].encode("utf-8")))
        for name in sorted(rendered):
            if name.endswith("NOTES.txt") or not rendered[name].strip():
                continue
            kept = [doc for doc in yamlload.load_all(rendered[name].encode("utf-8"), name) if not _is_hook(doc)]
            if kept:
                documents.append((name, "".join(f"---\n{pack.canonical_json(d)}\n" for d in kept).encode("utf-8")))
        sdk = helm_python.helm_sdk_version()
        info = pack.ChartInfo(name=chart.name, version=str(chart.version), url=source.chart, helm_version=sdk)
        return ports.Rendered(documents=tuple(documents), renderers=(("helm", sdk),), chart=info)


def _is_hook(doc: object) -> bool:
    if not isinstance(doc, dict):
        return False
    metadata = doc.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return isinstance(annotations, dict) and "helm.sh/hook" in annotations


def deep_merge(base: dict[str, object], override: dict[str, object]) -> dict[str, object]:
    """Helm's values coalescing: maps merge key by key, anything else is replaced; ``null`` deletes."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)  # type: ignore[arg-type]
        else:
            out[key] = value
    return out


def renderers() -> dict[spec.Category, ports.Renderer]:
    return {
        spec.Category.RAW: RawRenderer(),
        spec.Category.KUSTOMIZE: KustomizeRenderer(),
        spec.Category.HELM: HelmRenderer(),
    }


def source_folders(tree: ports.Tree, build: spec.PackBuild) -> list[str]:
    """The repo folders (and files) a build reads besides its own folder: part of its cache key."""
    src = build.source
    if isinstance(src, spec.KustomizeSource):
        if tree.kind(src.path) is ports.EntryKind.DIR:
            return kustomize_folders(tree, src.path, file=build.path)
        return [src.path]
    if isinstance(src, spec.HelmSource):
        return [p for p in (src.chart, src.values_file) if p and "://" not in p]
    return [src.path]
