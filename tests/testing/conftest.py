"""Fixtures for the API emulator's tests: a running emulator, the real client, the real kubectl."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from gitopsd.testing import kubeapi

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def emulator() -> Iterator[kubeapi.Emulator]:
    with kubeapi.Emulator(bookmark_interval=0.2) as emu:
        yield emu


@pytest.fixture
def kubeconfig(emulator: kubeapi.Emulator, tmp_path: Path) -> Path:
    return emulator.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    binary = shutil.which("kubectl")
    assert binary, "kubectl must be on PATH for these tests"
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}

    def run(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "kcache"), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, input=stdin)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    return run


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every test must leave no emulator or connection threads behind."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while (
        leaked := [t for t in set(threading.enumerate()) - before if t.is_alive()]
    ) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not leaked, f"threads left running: {leaked}"
