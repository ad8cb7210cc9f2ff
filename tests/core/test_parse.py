"""PackBuild, cluster and gitopsd.yaml parsing: good input gives typed values, bad input one clear line."""

from __future__ import annotations

import pytest
import yaml

from gitopsd import errors
from gitopsd.adapters import schemafiles
from gitopsd.core import parse
from gitopsd.model import spec

FILE = "packs/web/packbuild.yaml"
GOOD = {
    "name": "web",
    "version": "v1.2.0",
    "basePackName": "web",
    "category": "raw",
    "rawSource": {"path": "manifests"},
    "targetClusters": ["prod", {"matchLabels": {"env": "prod"}}],
}


def parse_build(**changes: object) -> spec.PackBuild:
    raw = {**GOOD, **changes}
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
    return parse.parse_packbuild(raw, schemafiles.schemas(), file=FILE)


def test_good_packbuild_gives_typed_values_with_repo_paths() -> None:
    build = parse_build()
    assert build.version == "1.2.0"
    assert build.source == spec.RawSource("packs/web/manifests")
    assert build.cluster_pack_name == "web-v1.2.0"
    assert build.targets[0] == spec.ClusterTarget(name="prod")
    assert str(build.targets[1].selector) == "env=prod"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"replicas": 3}, "field 'replicas': unknown key in PackBuild"),
        ({"rawSource": {"path": "m", "paht": "x"}}, "field 'rawSource.paht': unknown key in PackBuild; did you mean 'path'?"),
        ({"verison": "1.0.0"}, "did you mean 'version'?"),
        ({"version": "1.2"}, "field 'version': '1.2' has the wrong format"),
        ({"version": "1.0.0+build.5"}, "has build metadata"),
        ({"name": None}, "field 'name': required but missing"),
        ({"rawSource": None}, "field 'rawSource': category raw needs 'rawSource' (none is set)"),
        ({"kustomizeSource": {"path": "k"}}, "exactly one source is allowed"),
        ({"category": "kustomize"}, "category kustomize needs 'kustomizeSource' (found 'rawSource')"),
        ({"category": "jsonnet"}, "field 'category': 'jsonnet' is not one of: raw, kustomize, helm"),
        ({"rawSource": {"path": "../../../etc"}}, "leaves the config repo"),
        ({"rawSource": {"path": "/etc"}}, "absolute path '/etc' is not allowed"),
        ({"priority": -1}, "field 'priority'"),
        ({"targetClusters": ["Prod_EU"]}, "is neither a cluster name"),
        ({"license": "GPL"}, "is not one of"),
    ],
    ids=["unknown-key", "nested-unknown-key", "misspelt-key", "bad-semver", "build-metadata", "missing-name",
         "no-source", "two-sources", "wrong-source", "bad-category", "dotdot-escape", "absolute-path",
         "negative-priority", "bad-cluster-name", "bad-license"],
)
def test_bad_packbuild_gives_one_line_naming_file_and_field(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(errors.SpecError) as caught:
        parse_build(**changes)
    text = str(caught.value)
    assert text.startswith(FILE + ": ")
    assert expected in text
    assert "\n" not in text


def test_helm_source_paths_and_inline_values() -> None:
    build = parse_build(category="helm", rawSource=None, helmSource={"chart": "chart", "valuesFile": "v.yaml", "values": {"b": 1, "a": 2}})
    assert build.source == spec.HelmSource(chart="packs/web/chart", values_file="packs/web/v.yaml", values_json='{"a":2,"b":1}')


def test_config_defaults_and_unknown_keys() -> None:
    assert parse.parse_config(None, schemafiles.schemas()).namespace == "seam-system"
    cfg = parse.parse_config(yaml.safe_load("namespace: packs\npolicies: {keepVersions: 3}"), schemafiles.schemas())
    assert (cfg.namespace, cfg.keep_versions) == ("packs", 3)
    with pytest.raises(errors.SpecError, match=r"field 'namespce': unknown key in gitopsd\.yaml; did you mean 'namespace'"):
        parse.parse_config({"namespce": "x"}, schemafiles.schemas())


def test_config_crds_give_scopes_of_crds_installed_outside_gitopsd() -> None:
    cfg = parse.parse_config(yaml.safe_load(
        "crds:\n- {group: kyverno.io, kind: ClusterPolicy, scope: Cluster}\n"
        "- {group: example.com, kind: Gadget, scope: Namespaced}\n"), schemafiles.schemas())
    assert cfg.crds == (("example.com/Gadget", "Namespaced"), ("kyverno.io/ClusterPolicy", "Cluster"))


@pytest.mark.parametrize(
    ("crds", "message"),
    [
        ("[{group: kyverno.io, kind: ClusterPolicy, scope: Cluster}, {group: kyverno.io, kind: ClusterPolicy, scope: Namespaced}]",
         "gitopsd.yaml: field 'crds[1]': kyverno.io/ClusterPolicy is listed again (first at crds[0]); keep one"),
        ("[{group: rbac.authorization.k8s.io, kind: Role, scope: Cluster}]",
         "gitopsd.yaml: field 'crds[0].group': rbac.authorization.k8s.io/Role is a Kubernetes kind, its scope is known; "
         "list only custom resources' CRDs here"),
    ],
    ids=["listed-twice", "built-in-kind"],
)
def test_config_crds_refuse_what_cannot_be_meant(crds: str, message: str) -> None:
    with pytest.raises(errors.SpecError) as caught:
        parse.parse_config(yaml.safe_load(f"crds: {crds}"), schemafiles.schemas())
    assert str(caught.value) == message


def test_config_crds_scope_must_be_cluster_or_namespaced() -> None:
    with pytest.raises(errors.SpecError) as caught:
        parse.parse_config(yaml.safe_load("crds: [{group: kyverno.io, kind: ClusterPolicy, scope: cluster}]"),
                           schemafiles.schemas())
    assert str(caught.value) == "gitopsd.yaml: field 'crds[0].scope': 'cluster' is not one of: Cluster, Namespaced"


def test_cluster_labels_are_checked() -> None:
    c = parse.parse_cluster({"name": "eu", "labels": {"env": "prod"}}, schemafiles.schemas(), file="clusters/eu.yaml")
    assert c.labels == (("env", "prod"),)
    with pytest.raises(errors.SpecError, match=r"clusters/eu\.yaml: field 'labels\.bad key'"):
        parse.parse_cluster({"name": "eu", "labels": {"bad key": "x"}}, schemafiles.schemas(), file="clusters/eu.yaml")


def test_a_cluster_name_refused_after_valid_ones_gets_the_same_error_every_time() -> None:
    """The validators remember accepted targetClusters strings; a refused one is checked again each time."""
    schemas = schemafiles.schemas()
    good = {"name": "p", "version": "1.0.0", "basePackName": "p", "category": "raw", "rawSource": {"path": "m"},
            "targetClusters": ["c001", "c002"]}
    bad = {**good, "targetClusters": ["c001", "Bad_Name"]}
    messages = []
    for document in (good, bad, good, bad):
        try:
            parse.check(schemas.packbuild, document, file="packs/p/packbuild.yaml", kind="PackBuild")
            messages.append("ok")
        except errors.SpecError as err:
            messages.append(str(err))
    assert messages[0] == messages[2] == "ok"
    assert messages[1] == messages[3] and "targetClusters[1]" in messages[1]


def test_packbuilds_listing_the_same_clusters_share_one_targets_tuple() -> None:
    """A fleet's packs mostly target the same clusters: 10,000 PackBuilds hold one tuple of targets."""
    clusters = [f"c{i}" for i in range(3)] + [{"matchLabels": {"env": "prod"}}]
    a = parse_build(targetClusters=clusters)
    b = parse_build(targetClusters=[*clusters], name="api", basePackName="api")
    assert a.targets == b.targets and a.targets is b.targets
    assert parse_build(targetClusters=["c9"]).targets == (spec.ClusterTarget(name="c9"),)
