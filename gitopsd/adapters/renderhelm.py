"""The helm renderer: templates and ``crds/`` with the pinned Helm SDK of the ``helm`` extra.

Hooks are kept (with their annotations), test hooks and NOTES dropped. The SDK is Go code loaded
in-process, which no timeout or memory limit could stop, so it runs in a child process
(``python -c ... helm_child()``) under the watchdog. Values files must be regular files of the
repo; a chart is read from the repo only (no chart URLs: compiles are offline and reproducible).

Neighbours: ``adapters.renderinputs`` (the checks and the chart's export), ``adapters.boundedrun``
(the watchdog), ``adapters.render`` (the renderers by category).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from collections.abc import Callable

from gitopsd import errors, ports
from gitopsd.adapters import boundedrun, renderinputs
from gitopsd.core import yamlload
from gitopsd.model import pack, spec


class HelmRenderer(renderinputs.ReadsSources):
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
        renderinputs.check_path(tree, source.chart, file=build.path, field="helmSource.chart")
        renderinputs.check_own(tree, build, source.chart, field="helmSource.chart")
        values = json.loads(source.values_json)
        if source.values_file:
            renderinputs.check_path(tree, source.values_file, file=build.path, field="helmSource.valuesFile")
            renderinputs.check_own(tree, build, source.values_file, field="helmSource.valuesFile")
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
            renderinputs.check_links(tree, source.chart, build=build, field="helmSource.chart")
            renderinputs.check_export(tree, source.chart, build=build, field="helmSource.chart")
            request["chartDir"] = str(renderinputs.materialize(tree, source.chart, build=build, field="helmSource.chart"))
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
            child = [sys.executable, "-c", "from gitopsd.adapters import renderhelm; renderhelm.helm_child()"]
            result = boundedrun.run_bounded(child, stdin=child_input, max_output=2 * boundedrun.MAX_PACK_BYTES + (1 << 20))
            if result.stopped is not None:
                raise boundedrun.stopped_error(result, tool="helm", what=source.chart, build=build, field="helmSource")
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
            if sum(len(t) for t in rendered.values()) + sum(len(c["data"]) for c in crds) > boundedrun.MAX_PACK_BYTES:
                raise boundedrun.too_big(build, "helmSource", f"helm rendered {source.chart} into")
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
