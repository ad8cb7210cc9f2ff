"""Renderers: turn a PackBuild's sources into YAML bytes (design.md §Compile 1).

raw reads every ``*.yaml``/``*.yml`` under the path in name order; kustomize runs a ``kustomize``
binary or ``kubectl kustomize`` offline (remote bases are refused before it runs); helm renders
templates and ``crds/`` with the pinned Helm SDK of the ``helm`` extra, keeping hooks (with their
annotations), dropping test hooks and NOTES. ``gitopsd.core.compile`` takes the bytes from here.

Hostile sources are stopped here, before they cost anything: every renderer refuses symlinks that
leave the repo and any read of another pack's folder (a pack reads its own folder and shared
folders outside ``packs/``); raw packs are capped at ``MAX_PACK_BYTES`` as they are read; the two
external renderers run as child processes under a watchdog (``run_bounded``) that kills them past
``RENDER_TIMEOUT``, ``RENDER_MAX_RSS`` resident memory or ``MAX_PACK_BYTES`` of output, so a
template or base that multiplies never takes the daemon down. Helm runs in a child process for
that reason (``python -c ... helm_child()``): the SDK is Go code loaded in-process, which no
timeout or memory limit could otherwise stop.

The two external renderers also offer ``prepare`` (``ports.Preparing``): the checks and the export
of the sources happen in the caller's thread, and the call it returns (the child process and the
reading of its answer) touches no Tree, so ``reconcile.compile_packs`` runs several at once.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import os
import pathlib
import posixpath
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from gitopsd import errors, ports
from gitopsd.adapters import links
from gitopsd.core import compile as compile_core
from gitopsd.core import paths, yamlload
from gitopsd.model import pack, spec

RENDER_TIMEOUT = 120  # seconds a kustomize build or a helm render may take
KUSTOMIZE_TIMEOUT = RENDER_TIMEOUT
RENDER_MAX_RSS = 384 * 1024 * 1024  # resident memory of a renderer process
MAX_PACK_BYTES = compile_core.MAX_PACK_BYTES  # rendered YAML of one pack
_REMOTE_MARKERS = ("://", "git@", "github.com/", "gitlab.com/", "bitbucket.org/", "?ref=", "?version=")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _shown(name: str) -> str:
    """A file name as it may appear in a one-line message: control characters escaped."""
    return name if name.isprintable() else repr(name)[1:-1]


def _check_name(sub: str, name: str, *, file: str, field: str) -> None:
    if not name.isprintable():
        raise errors.SpecError(
            f"field {field!r}: file name {_shown(sub)!r} holds control characters; rename it",
            path=file,
            reason="InvalidFileName",
        )


def check_links(tree: ports.Tree, folder: str, *, build: spec.PackBuild, field: str) -> None:
    """Refuse any symlink under ``folder`` that points outside the config repo or into another
    pack's folder, and file names with control characters (they would break one-line messages)."""
    stack = [folder]
    while stack:
        current = stack.pop()
        for name, kind in tree.listdir(current):
            sub = f"{current}/{name}" if current else name
            _check_name(sub, name, file=build.path, field=field)
            if kind is ports.EntryKind.DIR:
                stack.append(sub)
            elif kind is ports.EntryKind.LINK:
                target = links.resolve(tree, sub)
                if target is None:
                    raise errors.SpecError(
                        f"field {field!r}: {sub} is a symlink to {_shown(tree.readlink(sub))!r}, outside the config repo; "
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
            f"field {field!r}: {_shown(path)} goes through {_shown(link)}, a symlink to {_shown(tree.readlink(link))!r}; "
            "a path must name real folders: point the field at the folder itself",
            path=file,
            reason="PathEscape",
        )


def _need_dir(tree: ports.Tree, path: str, *, file: str, field: str) -> None:
    check_path(tree, path, file=file, field=field)
    kind = tree.kind(path)
    if kind is ports.EntryKind.LINK:
        raise errors.SpecError(f"field {field!r}: {path} is a symlink; point the field at a real folder", path=file,
                               reason="PathEscape")
    if kind is not ports.EntryKind.DIR:
        what = "does not exist" if kind is None else "is a file, not a folder"
        raise errors.SpecError(f"field {field!r}: {path or '.'} {what}; fix the path (relative to {file})", path=file,
                               reason="SourceNotFound")


def _too_big(build: spec.PackBuild, field: str, what: str) -> errors.RenderError:
    return errors.RenderError(
        f"field {field!r}: {what} more than {MAX_PACK_BYTES // (1024 * 1024)} MiB of YAML, the limit of one pack; "
        "split it into several packs",
        path=build.path,
        reason="PackTooLarge",
    )


class _Renderer:
    def inputs(self, tree: ports.Tree, build: spec.PackBuild) -> list[str]:
        return source_folders(tree, build)


class RawRenderer(_Renderer):
    def render(self, tree: ports.Tree, build: spec.PackBuild) -> ports.Rendered:
        assert isinstance(build.source, spec.RawSource)
        root = build.source.path
        field = "rawSource.path"
        _need_dir(tree, root, file=build.path, field=field)
        check_own(tree, build, root, field=field)
        check_links(tree, root, build=build, field=field)
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
                        target = links.resolve(tree, sub)
                        if target is None or tree.kind(target) is not ports.EntryKind.FILE:
                            where = "outside the config repo" if target is None else "not a regular file"
                            raise errors.SpecError(
                                f"field {field!r}: {sub} is a symlink to {_shown(tree.readlink(sub))!r}, {where}; "
                                "copy the file into the repo instead",
                                path=build.path,
                                reason="PathEscape",
                            )
                    files.append(sub)
        total = 0
        for sub in sorted(files):
            target = sub
            if tree.kind(sub) is ports.EntryKind.LINK:
                target = links.resolve(tree, sub) or sub
            size = getattr(tree, "size", None)
            if size is not None and total + size(target) > MAX_PACK_BYTES:  # told before anything is read
                raise _too_big(build, field, f"the files under {root or '.'} hold")
            data = tree.read(target)
            total += len(data)
            if total > MAX_PACK_BYTES:
                raise _too_big(build, field, f"the files under {root or '.'} hold")
            documents.append((sub, data))
        return ports.Rendered(documents=tuple(documents), renderers=(("raw", "1"),))


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


@functools.cache
def _kustomize_command() -> tuple[tuple[str, ...], str]:
    binary = shutil.which("kustomize")
    if binary:
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30, check=False).stdout.strip()
        return (binary, "build"), f"kustomize {out or 'unknown'}"
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
        try:
            info = json.loads(out)
            version = f"kubectl {info['clientVersion']['gitVersion']} kustomize {info.get('kustomizeVersion', '?')}"
        except (ValueError, KeyError):
            version = "kubectl unknown"
        return (kubectl, "kustomize"), version
    raise errors.ConfigError(
        "kustomize packs need 'kustomize' or 'kubectl' on the PATH; install one of them", reason="ToolMissing"
    )


class Bounded:
    """What a child process left: exit code, stdout, the tail of stderr, and why it was stopped."""

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes, stopped: str | None) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.stopped = stopped  # "timeout", "memory", "output" or None

    def last_error_line(self) -> str:
        lines = [line for line in self.stderr.decode("utf-8", "replace").strip().splitlines() if line.strip()]
        return " ".join(lines[-1].split()) if lines else f"exit code {self.returncode}"


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def run_bounded(argv: list[str], *, stdin: bytes = b"", cwd: str | os.PathLike[str] | None = None,
                env: dict[str, str] | None = None, timeout: float = RENDER_TIMEOUT, max_rss: int = RENDER_MAX_RSS,
                max_output: int = MAX_PACK_BYTES) -> Bounded:
    """Run a renderer as a child under a watchdog: killed (with its process group) past ``timeout``
    seconds, ``max_rss`` bytes resident or ``max_output`` bytes on stdout."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                            env=env, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    def feed() -> None:
        try:
            proc.stdin.write(stdin)  # type: ignore[union-attr]  # Popen(stdin=PIPE): stdin is set
            proc.stdin.close()  # type: ignore[union-attr]  # Popen(stdin=PIPE): stdin is set
        except OSError:
            pass  # the child exited or was killed: its exit code tells

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out, err = bytearray(), bytearray()
    stopped: str | None = None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        open_streams = 2
        while open_streams and stopped is None:
            for key, _ in sel.select(timeout=0.02):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                buffer: bytearray = key.data
                buffer += chunk
                if buffer is err and len(err) > 1 << 16:
                    del err[: len(err) - (1 << 16)]
            if len(out) > max_output:
                stopped = "output"
            elif _rss(proc.pid) > max_rss:
                stopped = "memory"
            elif time.monotonic() > deadline:
                stopped = "timeout"
    if stopped is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 5))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
        stopped = stopped or "timeout"
    writer.join(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    return Bounded(returncode, bytes(out), bytes(err), stopped)


def _stopped_error(result: Bounded, *, tool: str, what: str, build: spec.PackBuild, field: str) -> errors.RenderError:
    if result.stopped == "output":
        return _too_big(build, field, f"{tool} rendered {what} into")
    if result.stopped == "memory":
        detail = f"used over {RENDER_MAX_RSS // (1024 * 1024)} MiB of memory rendering {what}"
    else:
        detail = f"did not finish rendering {what} within {RENDER_TIMEOUT}s"
    return errors.RenderError(f"field {field!r}: {tool} {detail} and was stopped; the source expands too much: "
                              "make it smaller", path=build.path, reason="RenderTooLarge")


_KLOG_BLOCK = re.compile(r'err=<\n(?P<text>.*?)\n\s*>\s*$', re.S)
_KLOG_QUOTED = re.compile(r'err="(?P<text>(?:[^"\\]|\\.)*)"')
_CONFIG_DUMP = re.compile(r"with config: `.*?`:", re.S)


def kustomize_error(stderr: bytes, fallback: str, *, exported: str = "", shown: str = ".") -> str:
    """The one line that says why kustomize failed, from kubectl's klog block (``err=<...>`` or
    ``err="..."``) or kustomize's ``Error: ...``, without the YAML config it echoes; paths under
    the export folder ``exported`` are shown as repo paths under ``shown`` (before the line is cut)."""
    text = stderr.decode("utf-8", "replace")
    if exported:
        text = text.replace(exported, shown)
    match = _KLOG_BLOCK.search(text) or _KLOG_QUOTED.search(text)
    if match is not None:
        detail = match.group("text").replace('\\"', '"')
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        errors_only = [line for line in lines if line.startswith("Error:")]
        detail = (errors_only or lines or [fallback])[-1].removeprefix("Error:")
    detail = " ".join(_CONFIG_DUMP.sub("with config:", detail).split())
    return detail if len(detail) <= 300 else detail[:297] + "..."


class KustomizeRenderer(_Renderer):
    def render(self, tree: ports.Tree, build: spec.PackBuild) -> ports.Rendered:
        return self.prepare(tree, build)()

    def prepare(self, tree: ports.Tree, build: spec.PackBuild) -> Callable[[], ports.Rendered]:
        """Checks and the export of the sources here; kustomize itself in the call returned
        (``ports.Preparing``)."""
        assert isinstance(build.source, spec.KustomizeSource)
        folder = build.source.path
        field = "kustomizeSource.path"
        _need_dir(tree, folder, file=build.path, field=field)
        check_own(tree, build, folder, field=field)
        folders, files = kustomize_inputs(tree, folder, build=build)
        for f in folders:
            check_links(tree, f, build=build, field=field)
        root = common_folder(folders + files)
        check_export(tree, root, build=build, field=field)
        on_disk = materialize(tree, root, build=build, field=field)
        relative = posixpath.relpath(folder, root) if root else folder
        command, version = _kustomize_command()
        target = on_disk / relative if relative != "." else on_disk
        argv = [*command, str(target)]
        child_env = {**os.environ, "KUSTOMIZE_PLUGIN_HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0"}

        def finish() -> ports.Rendered:
            result = run_bounded(argv, env=child_env, cwd=on_disk)
            if result.stopped is not None:
                raise _stopped_error(result, tool="kustomize", what=folder, build=build, field=field)
            if result.returncode != 0:
                detail = kustomize_error(result.stderr, f"exit code {result.returncode}", exported=str(on_disk),
                                         shown=root or ".")
                raise errors.RenderError(f"field {field!r}: kustomize build of {folder} failed: {detail}", path=build.path)
            return ports.Rendered(documents=((f"{folder} (kustomize)", result.stdout),), renderers=(("kustomize", version),))

        return finish


class HelmRenderer(_Renderer):
    def render(self, tree: ports.Tree, build: spec.PackBuild) -> ports.Rendered:
        return self.prepare(tree, build)()

    def prepare(self, tree: ports.Tree, build: spec.PackBuild) -> Callable[[], ports.Rendered]:
        """Checks, values and the chart's export here; the helm child and the reading of its
        answer in the call returned (``ports.Preparing``)."""
        assert isinstance(build.source, spec.HelmSource)
        source = build.source
        if importlib.util.find_spec("helm_python") is None:
            raise errors.ConfigError(
                f"{build.path}: helm packs need the helm extra; install it with: pip install 'gitopsd[helm]'",
                reason="HelmExtraMissing",
            )
        if "://" in source.chart:
            raise errors.SpecError(
                f"field 'helmSource.chart': chart URL {yamlload.short(source.chart)} is not fetched (compiles are "
                "offline and reproducible); vendor the chart folder or .tgz into the config repo",
                path=build.path,
                reason="RemoteChart",
            )
        check_path(tree, source.chart, file=build.path, field="helmSource.chart")
        check_own(tree, build, source.chart, field="helmSource.chart")
        values = json.loads(source.values_json)
        if source.values_file:
            check_path(tree, source.values_file, file=build.path, field="helmSource.valuesFile")
            check_own(tree, build, source.values_file, field="helmSource.valuesFile")
            kind = tree.kind(source.values_file)
            if kind is ports.EntryKind.LINK:
                raise errors.SpecError(f"field 'helmSource.valuesFile': {source.values_file} is a symlink; point the field at "
                                       "a regular file in the repo", path=build.path, reason="PathEscape")
            if kind is not ports.EntryKind.FILE:
                raise errors.SpecError(f"field 'helmSource.valuesFile': {source.values_file} is not a file in the repo; "
                                       "fix the path", path=build.path, reason="SourceNotFound")
            from_file = yamlload.load_one(tree.read(source.values_file), source.values_file) or {}
            if not isinstance(from_file, dict):
                raise errors.SpecError("a values file must be a mapping", path=source.values_file, reason="InvalidSpec")
            values = merge_user_values(from_file, values)
        request: dict[str, object] = {
            "values": values,
            "name": build.base_pack_name,
            "namespace": source.namespace or build.namespace or "default",
            "version": source.version,
        }
        kind = tree.kind(source.chart)
        if kind is ports.EntryKind.DIR:
            check_links(tree, source.chart, build=build, field="helmSource.chart")
            check_export(tree, source.chart, build=build, field="helmSource.chart")
            request["chartDir"] = str(materialize(tree, source.chart, build=build, field="helmSource.chart"))
        elif kind is ports.EntryKind.FILE and source.chart.endswith((".tgz", ".tar.gz")):
            request["archive"] = base64.b64encode(tree.read(source.chart)).decode("ascii")
        else:
            raise errors.SpecError(
                f"field 'helmSource.chart': {source.chart} is not a chart folder or .tgz in the repo; fix the path",
                path=build.path,
                reason="SourceNotFound",
            )
        child_input = json.dumps(request).encode("utf-8")

        def finish() -> ports.Rendered:
            result = run_bounded([sys.executable, "-c", "from gitopsd.adapters import render; render.helm_child()"],
                                 stdin=child_input, max_output=2 * MAX_PACK_BYTES + (1 << 20))
            if result.stopped is not None:
                raise _stopped_error(result, tool="helm", what=source.chart, build=build, field="helmSource")
            try:
                answer = json.loads(result.stdout)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise errors.RenderError(f"field 'helmSource': helm could not render {source.chart}: "
                                         f"{result.last_error_line()}", path=build.path)
            if answer.get("error") == "version":
                raise errors.SpecError(
                    f"field 'helmSource.version': chart {answer['chart']} is version {answer['chartVersion']}, not "
                    f"{source.version}; update the field or the chart",
                    path=build.path,
                    reason="ChartVersionMismatch",
                )
            if answer.get("error") == "dependencies":
                names = ", ".join(answer["missing"])
                raise errors.RenderError(
                    f"field 'helmSource.chart': chart {answer['chart']} declares dependencies missing from its charts/ "
                    f"folder: {names}; vendor them (helm dependency build) and commit charts/ too (a chart's "
                    ".gitignore often excludes charts/*, so git add -A leaves them out)",
                    path=build.path,
                    reason="ChartDependencyMissing",
                )
            if answer.get("error"):
                raise errors.RenderError(f"field 'helmSource': helm could not render {source.chart}: {answer['error']}",
                                         path=build.path)
            rendered: dict[str, str] = answer["rendered"]
            crds: list[dict[str, str]] = answer["crds"]
            if sum(len(t) for t in rendered.values()) + sum(len(c["data"]) for c in crds) > MAX_PACK_BYTES:
                raise _too_big(build, "helmSource", f"helm rendered {source.chart} into")
            documents, dropped = helm_documents(rendered, crds)
            sdk = str(answer["sdk"])
            info = pack.ChartInfo(name=str(answer["chart"]), version=str(answer["chartVersion"]), url=source.chart,
                                  helm_version=sdk)
            return ports.Rendered(documents=documents, renderers=(("helm", sdk),), chart=info, dropped_hooks=dropped,
                                  reproducible=bool(answer.get("reproducible", True)))

        return finish


MAX_HELM_ERROR = 2000  # characters of a Helm error shown in the message


def helm_error_text(text: str) -> str:
    """A Helm error in full on one readable line: its lines joined with ' | ', runs of blanks
    folded, cut past ``MAX_HELM_ERROR`` characters with the count of what was left out."""
    lines = [" ".join(line.split()) for line in text.strip().splitlines()]
    joined = " | ".join(line for line in lines if line)
    if len(joined) > MAX_HELM_ERROR:
        joined = f"{joined[:MAX_HELM_ERROR]}... ({len(joined) - MAX_HELM_ERROR} more characters)"
    return joined


def missing_dependencies(metadata: dict[str, object], loaded: list[dict[str, object]]) -> list[str]:
    """Dependencies ``Chart.yaml`` declares that are not in the chart's ``charts/`` folder (Helm's
    install refuses the chart for them, whatever their ``condition``)."""
    have = {str(d.get("name")) for d in loaded}
    declared = metadata.get("dependencies") or []
    names = [str(d.get("name")) for d in declared if isinstance(d, dict)] if isinstance(declared, list) else []
    return [n for n in names if n not in have]


def helm_child() -> None:
    """The helm render, in its own process (see ``HelmRenderer``): a JSON request on stdin, a JSON
    answer on stdout (``rendered``, ``crds``, chart name and version, SDK version, whether two
    renders agreed, or ``error``)."""
    import helm_python  # noqa: PLC0415 - only this child loads the Go library

    request = json.loads(sys.stdin.buffer.read())
    answer: dict[str, object]
    try:
        if "chartDir" in request:
            chart = helm_python.Chart.load(request["chartDir"])
        else:
            chart = helm_python.Chart.load_archive(base64.b64decode(request["archive"]))
        answer = {"chart": chart.name, "chartVersion": str(chart.version), "sdk": helm_python.helm_sdk_version()}
        wanted = request.get("version")
        missing = missing_dependencies(chart.metadata, chart.dependencies)
        if wanted and str(wanted).lstrip("v") != str(chart.version).lstrip("v"):
            answer["error"] = "version"
        elif missing:
            answer["error"] = "dependencies"
            answer["missing"] = missing
        else:
            def once() -> dict[str, str]:
                # the user's values as given (nulls included): the render coalesces them with the
                # chart's defaults as an install does, and a null deletes the default
                return chart.render(request["values"], name=request["name"], namespace=request["namespace"],
                                    is_install=True)

            first = once()
            answer["rendered"] = first
            answer["reproducible"] = once() == first
            answer["crds"] = chart.crds
    except helm_python.HelmError as err:
        answer = {"error": helm_error_text(str(err)) or type(err).__name__}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()


_TEST_HOOKS = frozenset({"test", "test-success", "test-failure"})


def _hook_phases(doc: object) -> tuple[str, ...]:
    if not isinstance(doc, dict):
        return ()
    metadata = doc.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    value = annotations.get("helm.sh/hook") if isinstance(annotations, dict) else None
    return tuple(p.strip() for p in value.split(",") if p.strip()) if isinstance(value, str) else ()


def helm_documents(rendered: dict[str, str], crds: list[dict[str, str]]) -> tuple[tuple[tuple[str, bytes], ...], tuple[str, ...]]:
    """Helm's render output read as Helm's install reads it: each template cut into documents where
    Helm cuts them, each document trimmed and ended with one newline (a block scalar at the end of a
    template keeps its final newline), NOTES left out, test hooks dropped (returned as
    ``Kind/name (test)``), every other hook kept with its annotations. Errors name the template
    and the line in it."""
    documents: list[tuple[str, bytes]] = []
    dropped: list[str] = []
    for crd in sorted(crds, key=lambda c: c["filename"]):
        documents.append((crd["filename"], crd["data"].encode("utf-8")))
    for name in sorted(rendered):
        text = rendered[name]
        if name.endswith("NOTES.txt") or not text.strip():
            continue
        kept: list[object] = []
        for offset, chunk in yamlload.split_documents(text):
            lead = len(chunk) - len(chunk.lstrip())
            first_line = offset + 1 + chunk[:lead].count("\n")
            for doc in yamlload.load_all((chunk.strip() + "\n").encode("utf-8"), name, first_line=first_line):
                phases = _hook_phases(doc)
                if phases and all(p in _TEST_HOOKS for p in phases):
                    assert isinstance(doc, dict)  # _hook_phases finds phases on a mapping only
                    meta = doc.get("metadata")
                    dropped.append(f"{doc.get('kind')}/{meta.get('name') if isinstance(meta, dict) else '?'} (test)")
                    continue
                kept.append(doc)
        if kept:
            documents.append((name, "".join(f"---\n{pack.canonical_json(d)}\n" for d in kept).encode("utf-8")))
    return tuple(documents), tuple(sorted(dropped))


def merge_user_values(base: dict[str, object], override: dict[str, object]) -> dict[str, object]:
    """``valuesFile`` then inline ``values``, merged as Helm merges ``-f`` files and ``--set``: maps
    key by key, anything else replaced, and ``null`` kept, so that Helm's coalescing with the
    chart's defaults then deletes the key wherever it was set (chart defaults or the values file)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_user_values(out[key], value)  # type: ignore[arg-type]  # both are dicts: checked on the line above
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
