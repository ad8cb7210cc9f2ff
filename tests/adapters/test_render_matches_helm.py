"""gitopsd's helm render against Helm's own install, chart by chart (the fixtures of
``tests/helm_fixtures.py``): the objects gitopsd compiles must be the objects Helm installs.

Helm's side comes from the Helm SDK (``helm_python``) talking to a real kube-apiserver:

* ``Config.install(..., dry_run="server")`` gives the release manifest: every rendered object that
  is not a hook, as Helm cut, sorted and kept it (NOTES out, empty documents out);
* that summary carries neither the release's hooks nor ``crds/``, so hooks are the documents of
  Helm's cluster-aware render (``Config.render``, same values, name, namespace) that the install
  left out of its manifest (each must carry ``helm.sh/hook``), and CRDs are ``Chart.crds``, the
  files Helm's install creates before the manifest.

Both sides are read by ``kubectl create --dry-run=client -o json``: Kubernetes' own YAML decoder
(the one Helm's kube client uses), never gitopsd's, and the same release-namespace default for
both. The sets must be equal except for the test hooks, which gitopsd drops (and names).
"""

from __future__ import annotations

import collections
import difflib
import json
import pathlib
import re
import subprocess
import tarfile

import helm_python  # the helm extra: .ci/run installs it, a missing SDK fails the run
import pytest

from gitopsd.adapters import fstree, renderhelm
from gitopsd.model import spec
from tests import helm_fixtures
from tests.adapters.test_render import load, write

pytestmark = pytest.mark.slow

RANDOM = "<random>"


def small(templates: dict[str, str], values: str = "", packbuild: str = "helmSource: {chart: chart, namespace: apps}",
          extra: dict[str, str] | None = None, random: dict[str, list[str]] | None = None):
    files = helm_fixtures.small_pack(templates, values=values, packbuild=packbuild, extra=extra)
    return files, "packs/small/packbuild.yaml", random or {}


# id -> (repo files, PackBuild path, {Kind/name: path of a field whose value is random})
CASES = {
    "demo-values-file-and-inline-values": (helm_fixtures.DEMO_PACK, "packs/demo/packbuild.yaml", {}),
    "demo-from-a-tgz": (helm_fixtures.TGZ_PACK, "packs/demo/packbuild.yaml", {}),
    **{f"reads-{name}": small(templates, values, packbuild, extra)
       for name, (templates, values, packbuild, extra, _) in helm_fixtures.HELM_READS.items()},
    "random-value": small(helm_fixtures.REPRODUCIBILITY["random-value"][0], random={"Secret/s": ["stringData", "p"]}),
    "set-value": small(helm_fixtures.REPRODUCIBILITY["set-value"][0]),
}
_TEST_HOOKS = {"test", "test-success", "test-failure"}


def kube_read(text: str, *, namespace: str, kubeconfig: pathlib.Path) -> list[dict]:
    """YAML documents as Kubernetes reads them (kubectl's decoder, the release namespace as default)."""
    if not text.strip():
        return []
    proc = subprocess.run(["kubectl", "create", "--dry-run=client", "-o", "json", "--validate=false", "-f", "-",
                           "-n", namespace, "--kubeconfig", str(kubeconfig)],
                          input=text, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"kubectl could not read:\n{text}\n{proc.stderr}"
    decoder, out, pos = json.JSONDecoder(), [], 0
    body = proc.stdout
    while body[pos:].strip():
        pos += len(body[pos:]) - len(body[pos:].lstrip())
        obj, pos = decoder.raw_decode(body, pos)
        out.extend(obj["items"] if obj.get("kind") == "List" else [obj])
    return out


def merge(base: dict, override: dict) -> dict:
    """Helm's merge of ``-f file`` then ``-f inline``: maps key by key, the rest replaced, nulls kept."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def subject(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def masked(objs: list[dict], random: dict[str, list[str]]) -> list[dict]:
    for obj in objs:
        path = random.get(subject(obj))
        if path:
            holder = obj
            for key in path[:-1]:
                holder = holder[key]
            assert re.fullmatch(r"[A-Za-z0-9]{12}", holder[path[-1]]), holder[path[-1]]
            holder[path[-1]] = RANDOM
    return objs


def counted(objs: list[dict]) -> collections.Counter[str]:
    return collections.Counter(json.dumps(o, sort_keys=True) for o in objs)


def difference(ours: list[dict], helms: list[dict]) -> str:
    a = [json.dumps(json.loads(t), indent=1, sort_keys=True) for t in sorted(counted(ours).elements())]
    b = [json.dumps(json.loads(t), indent=1, sort_keys=True) for t in sorted(counted(helms).elements())]
    lines = difflib.unified_diff("\n".join(a).splitlines(), "\n".join(b).splitlines(), "gitopsd", "helm install",
                                 lineterm="")
    return "\n".join(lines)


def release(build: spec.PackBuild) -> tuple[str, str]:
    """Release name and namespace, as ``renderhelm.HelmRenderer`` passes them to Helm."""
    assert isinstance(build.source, spec.HelmSource)
    return build.base_pack_name, build.source.namespace or build.namespace or "default"


def hook_phases(obj: dict) -> set[str]:
    value = (obj.get("metadata", {}).get("annotations") or {}).get("helm.sh/hook", "")
    return {p.strip() for p in value.split(",") if p.strip()}


def helm_install(root: pathlib.Path, build: spec.PackBuild, kubeconfig: pathlib.Path,
                 random: dict[str, list[str]]) -> tuple[list[dict], list[dict], list[dict]]:
    """Helm's manifest objects, hooks and CRDs for the pack, as an install of it would have them
    (the ``random`` fields masked: the install and the render draw their own values)."""
    source = build.source
    assert isinstance(source, spec.HelmSource)
    values = {}
    if source.values_file:
        values = helm_python.values_from_yaml((root / source.values_file).read_text())
    values = merge(values, json.loads(source.values_json))
    name, namespace = release(build)
    chart_path = root / source.chart
    chart = (helm_python.Chart.load(str(chart_path)) if chart_path.is_dir()
             else helm_python.Chart.load_archive(chart_path.read_bytes()))
    with chart, helm_python.Config(kubeconfig_path=str(kubeconfig), namespace=namespace) as config:
        installed = config.install(chart, name, values, namespace=namespace, dry_run="server")
        rendered = config.render(chart, values, name=name, namespace=namespace, is_install=True)
        crds = chart.crds
    def read(text: str) -> list[dict]:
        return masked(kube_read(text, namespace=namespace, kubeconfig=kubeconfig), random)

    manifest = read(installed["manifest"])
    everything = [o for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt") for o in read(text)]
    left_out = counted(everything) - counted(manifest)
    assert not counted(manifest) - counted(everything), "the install's manifest holds objects its render did not"
    hooks = [json.loads(t) for t in left_out.elements()]
    assert all(hook_phases(h) for h in hooks), f"the install left out objects that are not hooks: {hooks}"
    return manifest, hooks, [o for crd in crds for o in read(crd["data"])]


@pytest.mark.parametrize(("files", "packbuild", "random"), CASES.values(), ids=CASES.keys())
def test_gitopsd_renders_the_objects_helm_installs(tmp_path: pathlib.Path, mgmt_kubeconfig: pathlib.Path,
                                                  files: dict[str, str], packbuild: str,
                                                  random: dict[str, list[str]]) -> None:
    write(tmp_path, files)
    if files is helm_fixtures.TGZ_PACK:
        with tarfile.open(tmp_path / helm_fixtures.TGZ_PATH, "w:gz") as tar:
            tar.add(tmp_path / helm_fixtures.TGZ_SOURCE, arcname="demo")
    build = load(tmp_path, packbuild)
    rendered = renderhelm.HelmRenderer().render(fstree.FsTree(tmp_path), build)
    namespace = release(build)[1]
    ours = masked([o for _, data in rendered.documents
                   for o in kube_read(data.decode(), namespace=namespace, kubeconfig=mgmt_kubeconfig)], random)

    manifest, hooks, crds = helm_install(tmp_path, build, mgmt_kubeconfig, random)
    helms = manifest + hooks + crds
    test_hooks = [h for h in helms if hook_phases(h) and hook_phases(h) <= _TEST_HOOKS]

    assert counted(ours) == counted(helms) - counted(test_hooks), (
        f"gitopsd's render of {packbuild} is not what Helm installs (Helm's test hooks aside):\n"
        f"{difference(ours, [h for h in helms if h not in test_hooks])}"
    )
    assert rendered.dropped_hooks == tuple(sorted(f"{subject(h)} (test)" for h in test_hooks))
