"""Settings is the one reading of flags and environment; the wiring builds the same Env from the same Settings."""

from __future__ import annotations

import ast
import pathlib

import pytest

from gitopsd import reconcile
from gitopsd.cli import main as cli
from gitopsd.delivery import runner
from gitopsd.wiring import assemble, compose, kube
from gitopsd.wiring import settings as wiring_settings

ROOT = pathlib.Path(__file__).resolve().parents[2]


def parse(*argv: str, environ: dict[str, str] | None = None) -> wiring_settings.Settings:
    return wiring_settings.Settings.from_args(cli.parser().parse_args(argv), environ={} if environ is None else environ)


ENVIRONMENTS = {
    "nothing-set": ({"HOME": "/home/u"}, ("/home/u/.local/state", "", "")),
    "xdg-state-home": ({"HOME": "/home/u", "XDG_STATE_HOME": "/var/state"}, ("/var/state", "", "")),
    "render-workers-stripped": ({"HOME": "/h", "GITOPSD_RENDER_WORKERS": " 3 "}, ("/h/.local/state", "3", "")),
    "pod-namespace": ({"HOME": "/h", "POD_NAMESPACE": "tenant-a"}, ("/h/.local/state", "", "tenant-a")),
}


@pytest.mark.parametrize(("environ", "expected"), ENVIRONMENTS.values(), ids=ENVIRONMENTS.keys())
def test_settings_take_the_environment_they_are_given(environ: dict[str, str], expected: tuple[str, str, str]) -> None:
    settings = wiring_settings.Settings.from_environ(environ)
    assert (settings.state_home, settings.render_workers_env, settings.pod_namespace) == expected


def test_the_default_state_dir_is_under_the_given_xdg_state_home(tmp_path: pathlib.Path) -> None:
    settings = parse("get", "packs", str(tmp_path), environ={"XDG_STATE_HOME": "/var/state"})
    state_dir = compose.state_dir(settings)
    assert state_dir.parent == pathlib.Path("/var/state/gitopsd") and state_dir.name.startswith(f"{tmp_path.name}-")
    assert compose.state_dir(parse("get", "packs", "--state-dir", "/srv/s")) == pathlib.Path("/srv/s")


LEASE_NAMESPACES = {
    "flag-wins": (("--lease-namespace", "ns-flag"), {"POD_NAMESPACE": "ns-pod"}, "ns-flag"),
    "pod-namespace": ((), {"POD_NAMESPACE": "ns-pod"}, "ns-pod"),
    "default": ((), {}, "seam-system"),
}


@pytest.mark.parametrize(("argv", "environ", "expected"), LEASE_NAMESPACES.values(), ids=LEASE_NAMESPACES.keys())
def test_the_lease_namespace_is_the_flag_then_pod_namespace_then_the_default(
        argv: tuple[str, ...], environ: dict[str, str], expected: str) -> None:
    options = kube.options(parse("reconcile", "repo", "--kubeconfig", "kc", *argv, environ=environ))
    assert options is not None and options.lease_namespace == expected


def test_flags_a_command_does_not_have_take_their_defaults() -> None:
    get = parse("get", "packs")
    assert (get.command, get.what, get.render_wait, get.delivery, get.kube, get.git) == (
        "get", "packs", None, wiring_settings.DeliveryFlags(), wiring_settings.KubeFlags(), wiring_settings.GitOptions())
    reconcile_settings = parse("reconcile", "repo", "--cluster-kubeconfig", "a=/k/a", "--registry", "r.example/p")
    assert reconcile_settings.render_wait == 5.0 and reconcile_settings.delivery.cluster_kubeconfig == ("a=/k/a",)
    assert reconcile_settings.registry.options() == wiring_settings.RegistryOptions(url="r.example/p")
    assert parse("dry-run", "repo").render_wait is None  # dry-run and diff wait for every render


def _facts(env: reconcile.Env) -> dict[str, object]:
    """What an Env is made of, as comparable values."""
    assert isinstance(env.deliverer, runner.Runner) and env.signer is not None
    return {
        "source": (type(env.source).__name__, env.source.path),  # type: ignore[attr-defined]
        "cluster": type(env.cluster).__name__,
        "registry": type(env.registry).__name__,
        "registry_url": env.registry_url,
        "dry_run": env.dry_run,
        "render_workers": env.render_workers,
        "render_wait": env.render_wait,
        "signer": env.signer.public_key().openssh(),
        "status_writer": env.status_writer,
        "deliverer": (env.deliverer.reach.folder, env.deliverer.reach.files, env.deliverer.workers),
        "pack_filter": env.pack_filter,
    }


def test_the_wiring_builds_the_same_env_from_the_same_settings_whatever_the_environment_says(
        examples: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfigs = tmp_path / "kubeconfigs"
    kubeconfigs.mkdir()
    settings = parse("reconcile", str(examples), "--state-dir", str(tmp_path / "state"), "--kubeconfig-dir", str(kubeconfigs),
                     "--delivery-workers", "2", "--registry-url", "registry.example/packs",
                     environ={"GITOPSD_RENDER_WORKERS": "3"})

    def built() -> dict[str, object]:
        with assemble.pass_env(settings, tmp_path / "state", repo=str(examples), dry_run=False) as wired:
            return _facts(wired.env)

    first = built()
    assert first["render_workers"] == 3 and first["render_wait"] == 5.0 and first["cluster"] == "LocalStore"
    assert first["deliverer"] == (kubeconfigs, {}, 2)
    # the process's environment changes after the command line was read: the Env does not
    monkeypatch.setenv("GITOPSD_RENDER_WORKERS", "not a number")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("POD_NAMESPACE", "elsewhere")
    assert built() == first


def test_only_settings_reads_the_environment_and_the_parsed_command_line() -> None:
    readers = []
    for path in sorted([*(ROOT / "gitopsd" / "cli").glob("*.py"), *(ROOT / "gitopsd" / "wiring").glob("*.py")]):
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "Namespace"):
                readers.append(f"{path.name}:{node.lineno} {node.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                readers.append(f"{path.name}:{node.lineno} getattr")
    assert readers == []
