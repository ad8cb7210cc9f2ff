"""Helm charts the renderer tests use, shared by ``tests/adapters/test_render.py`` (what gitopsd
renders) and ``tests/adapters/test_render_matches_helm.py`` (that it is what Helm's install renders).

``CHART`` is a whole chart (values, ``crds/``, a hook, a test hook, NOTES); the small charts are
laid out by ``small_pack``: ``packs/small/chart`` with the given templates and values, and
``packs/small/packbuild.yaml``.
"""

from __future__ import annotations

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: demo\nversion: 1.2.3\n",
    "values.yaml": "replicas: 1\nimage: {repo: nginx, tag: '1.0'}\nextra: {keep: yes}\n",
    "crds/widget.yaml": "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec: {group: example.com, scope: Namespaced, names: {kind: Widget, plural: widgets}}\n",
    "templates/deploy.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: {{ .Release.Name }}, namespace: {{ .Release.Namespace }}}\nspec: {replicas: {{ .Values.replicas }}, template: {spec: {containers: [{name: c, image: \"{{ .Values.image.repo }}:{{ .Values.image.tag }}\"}]}}}\n",
    "templates/hook.yaml": "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate, annotations: {helm.sh/hook: pre-install}}\n",
    "templates/tests/test.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: smoke, annotations: {helm.sh/hook: test}}\n",
    "templates/NOTES.txt": "installed {{ .Release.Name }}\n",
}

# CHART as the demo pack: a values file and inline values over the chart's own, in namespace tools
DEMO_PACK = {
    **{f"packs/demo/chart/{k}": v for k, v in CHART.items()},
    "packs/demo/values-prod.yaml": "replicas: 2\nimage: {tag: '2.0'}\n",
    "packs/demo/packbuild.yaml": "name: demo\nversion: 1.0.0\nbasePackName: demo\ncategory: helm\ntargetClusters: [a]\n"
                                 "helmSource: {chart: chart, version: 1.2.3, valuesFile: values-prod.yaml, values: {replicas: 3}, namespace: tools}\n",
}

# CHART packed as packs/demo/demo-1.2.3.tgz (built from src/demo by the test), chart defaults only
TGZ_PACK = {
    **{f"src/demo/{k}": v for k, v in CHART.items()},
    "packs/demo/packbuild.yaml": "name: demo\nversion: 1.0.0\nbasePackName: demo\ncategory: helm\ntargetClusters: [a]\nhelmSource: {chart: demo-1.2.3.tgz}\n",
}
TGZ_SOURCE, TGZ_PATH = "src/demo", "packs/demo/demo-1.2.3.tgz"


def small_pack(templates: dict[str, str], *, values: str = "", chart_yaml: str = "",
               packbuild: str = "helmSource: {chart: chart, namespace: apps}",
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The repo files of the small pack: its chart, extra files in its folder, its PackBuild."""
    files = {"Chart.yaml": chart_yaml or "apiVersion: v2\nname: small\nversion: 0.1.0\n", "values.yaml": values}
    files.update({f"templates/{k}": v for k, v in templates.items()})
    out = {f"packs/small/chart/{k}": v for k, v in files.items()}
    out.update({f"packs/small/{k}": v for k, v in (extra or {}).items()})
    out["packs/small/packbuild.yaml"] = (
        f"name: small\nversion: 1.0.0\nbasePackName: small\ncategory: helm\ntargetClusters: [a]\n{packbuild}\n"
    )
    return out


CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\n"

# id -> (templates, values, packbuild, extra files, the objects gitopsd must render)
HELM_READS = {
    "null-deletes-chart-and-file-defaults": (
        {"cm.yaml": CM % "cm" + "data: {b: {{ .Values.b | toJson | quote }}}\n"},
        "b: {x: 1, z: 2, v: 5}\n",
        "helmSource: {chart: chart, valuesFile: prod.yaml, values: {b: {x: null, w: null}}}",
        {"prod.yaml": "b: {w: 3, v: 6}\n"},
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"b": '{"v":6,"w":null,"z":2}'}}],  # w: set only by the file; Helm keeps the null
    ),
    "block-scalar-at-the-end-keeps-its-newline": (
        {"cm.yaml": CM % "cm" + "data:\n  s: |\n    {}\n{{- /* trimmed */ -}}"},
        "", "helmSource: {chart: chart}", {},
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"s": "{}\n"}}],
    ),
    "comment-glued-to-a-separator": (
        {"two.yaml": CM % "one" + "{{- if true }}\n---# second\n" + CM % "two" + "{{- end }}\n"},
        "", "helmSource: {chart: chart}", {},
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "one"}},
         {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two"}}],
    ),
    "unquoted-equals-and-base-60": (
        {"cm.yaml": CM % "cm" + "data:\n  op: =\n  at: 1:30\n"},
        "", "helmSource: {chart: chart}", {},
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"op": "=", "at": "1:30"}}],
    ),
}

# id -> (templates, whether two renders agree)
REPRODUCIBILITY = {
    "random-value": ({"s.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {p: {{ randAlphaNum 12 }}}\n"}, False),
    "set-value": ({"s.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {p: {{ .Values.p | default \"fixed\" }}}\n"}, True),
}
