"""A large file in a Git source (issue item 4): sizes come from object headers before anything is
read, so a pass that meets one fails only that pack and stays small. The repo is served over Git's
smart HTTP protocol (as a Git server would serve it to the in-cluster Deployment)."""

from __future__ import annotations

import json
import pathlib

import pytest

from tests import gitutil
from tests.reliability import harness

pytestmark = pytest.mark.slow

BIG = 96 * 1024 * 1024  # over the 64 MiB cap of one file and the 16 MiB cap of one pack
MAX_RSS_MIB = 200  # a pass that read the file whole would need several times BIG

PACKS = {
    "raw": ("category: raw\nrawSource: {path: manifests}\n", "manifests/big.yaml"),
    "kustomize": ("category: kustomize\nkustomizeSource: {path: base}\n", "base/big.yaml"),
    "helm": ("category: helm\nhelmSource: {chart: chart, version: 0.1.0}\n", "chart/templates/big.yaml"),
}
EXPECTED = {
    "raw": ("PackTooLarge", "packs/big-raw/packbuild.yaml: field 'rawSource.path': the files under "
                            "packs/big-raw/manifests hold more than 16 MiB of YAML, the limit of one pack; split it into "
                            "several packs"),
    "kustomize": ("FileTooLarge", "packs/big-kustomize/packbuild.yaml: field 'kustomizeSource.path': "
                                  f"packs/big-kustomize/base/big.yaml: file is {BIG} bytes, over the 67108864-byte limit; "
                                  "keep large files out of the config repo"),
    "helm": ("FileTooLarge", "packs/big-helm/packbuild.yaml: field 'helmSource.chart': "
                             f"packs/big-helm/chart/templates/big.yaml: file is {BIG} bytes, over the 67108864-byte "
                             "limit; keep large files out of the config repo"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("large")
    bare, _ = gitutil.make_remote(root, examples=True)
    files = {}
    unit = "  k: " + "x" * 200 + "\n"
    big = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n" + unit * (BIG // len(unit))
    big += "#" * (BIG - len(big)) if len(big) < BIG else ""
    for kind, (source, path) in PACKS.items():
        files[f"packs/big-{kind}/packbuild.yaml"] = (f"name: big-{kind}\nversion: 1.0.0\nbasePackName: big-{kind}\n"
                                                     f"{source}targetClusters: [dev]\n")
        files[f"packs/big-{kind}/{path}"] = big[:BIG]
    files["packs/big-kustomize/base/kustomization.yaml"] = "resources: [big.yaml]\n"
    files["packs/big-helm/chart/Chart.yaml"] = "apiVersion: v2\nname: big\nversion: 0.1.0\n"
    gitutil.fast_import(bare, files)
    return str(bare), root


@pytest.mark.parametrize("kind", list(PACKS), ids=list(PACKS))
def test_a_pass_that_meets_a_large_file_fails_only_that_pack_and_stays_small(
        zygotes: harness.ZygotePool, served: tuple[str, pathlib.Path], tmp_path: pathlib.Path, kind: str,
        run_once: dict[str, harness.Run]) -> None:
    run = run_once["run"]
    errors = {e["pack"]: (e["reason"], e["message"]) for e in json.loads(run.stdout)["errors"]}
    assert errors[f"big-{kind}"] == EXPECTED[kind]
    assert sorted(errors) == ["big-helm", "big-kustomize", "big-raw"]
    assert run.max_rss_mib < MAX_RSS_MIB, run.describe()


@pytest.fixture(scope="module")
def run_once(zygotes: harness.ZygotePool, served: tuple[str, pathlib.Path]) -> dict[str, harness.Run]:
    bare, root = served
    with gitutil.GitHttpServer(pathlib.Path(bare).parent, "robot", "token") as server:
        run = zygotes.run("reconcile", f"{server.url}/{pathlib.Path(bare).name}", "--state-dir", str(root / "state"),
                          "--git-credentials-env", "GIT_TOKEN", "--no-status", "-o", "json", cwd=root, timeout=300,
                          env={"GIT_TOKEN": "robot:token"})
    print(f"\npeak RSS of a pass meeting three {BIG // (1024 * 1024)} MiB files: {run.max_rss_mib:.0f} MiB")
    harness.MEMORY.append((f"{BIG // (1024 * 1024)} MiB files in Git (http)", run.max_rss_mib, run.seconds))
    return {"run": run}
