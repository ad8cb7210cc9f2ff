"""The kustomize renderer: a ``kustomize`` binary or ``kubectl kustomize``, offline, under the watchdog.

The checks and the export of the sources run in the caller's thread; the call ``prepare`` returns
(``ports.Preparing``) runs kustomize and reads its answer without touching the Tree, so
``reconcile`` runs several at once. A failure is reported as the one line that says why.

Neighbours: ``adapters.renderinputs`` (what a kustomization may read, remote bases refused),
``adapters.boundedrun`` (the watchdog), ``adapters.render`` (the renderers by category).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import shutil
import subprocess
from collections.abc import Callable

from gitopsd import errors, ports
from gitopsd.adapters import boundedrun, renderinputs
from gitopsd.model import spec


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


_KLOG_BLOCK = re.compile(r'err=<\n(?P<text>.*?)\n\s*>\s*$', re.S)


_KLOG_QUOTED = re.compile(r'err="(?P<text>(?:[^"\\]|\\.)*)"')


_CONFIG_DUMP = re.compile(r"with config: `.*?`:", re.S)


_ERROR_LINE = re.compile(r"^(?:Error|error): ", re.M)


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
        # kustomize's "Error: ..." (kubectl's "error: ...") runs on over the lines of the config it
        # echoes: the message is everything from the last such line on
        starts = [m.end() for m in _ERROR_LINE.finditer(text)]
        lines = [line for line in text.splitlines() if line.strip()]
        detail = text[starts[-1]:] if starts else (lines or [fallback])[-1]
    detail = " ".join(_CONFIG_DUMP.sub("with config:", detail).split())
    return detail if len(detail) <= 300 else detail[:297] + "..."


class KustomizeRenderer(renderinputs.ReadsSources):
    def render(self, tree: ports.Tree, build: spec.PackBuild) -> ports.Rendered:
        return self.prepare(tree, build)()

    def prepare(self, tree: ports.Tree, build: spec.PackBuild) -> Callable[[], ports.Rendered]:
        """Checks and the export of the sources here; kustomize itself in the call returned
        (``ports.Preparing``)."""
        assert isinstance(build.source, spec.KustomizeSource)
        folder = build.source.path
        field = "kustomizeSource.path"
        renderinputs.need_dir(tree, folder, file=build.path, field=field)
        renderinputs.check_own(tree, build, folder, field=field)
        folders, files = renderinputs.kustomize_inputs(tree, folder, build=build)
        for f in folders:
            renderinputs.check_links(tree, f, build=build, field=field)
        root = renderinputs.common_folder(folders + files)
        renderinputs.check_export(tree, root, build=build, field=field)
        on_disk = renderinputs.materialize(tree, root, build=build, field=field)
        relative = posixpath.relpath(folder, root) if root else folder
        command, version = _kustomize_command()
        target = on_disk / relative if relative != "." else on_disk
        argv = [*command, str(target)]
        child_env = {**os.environ, "KUSTOMIZE_PLUGIN_HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0"}

        def finish() -> ports.Rendered:
            result = boundedrun.run_bounded(argv, env=child_env, cwd=on_disk)
            if result.stopped is not None:
                raise boundedrun.stopped_error(result, tool="kustomize", what=folder, build=build, field=field)
            if result.returncode != 0:
                detail = kustomize_error(result.stderr, f"exit code {result.returncode}", exported=str(on_disk),
                                         shown=root or ".")
                raise errors.RenderError(f"field {field!r}: kustomize build of {folder} failed: {detail}", path=build.path)
            return ports.Rendered(documents=((f"{folder} (kustomize)", result.stdout),), renderers=(("kustomize", version),))

        return finish
