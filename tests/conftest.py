"""Shared fixtures: a private copy of examples-repo and a runner for the real CLI."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

pytest.register_assert_rewrite("tests.registry_fixture")
pytest_plugins = ["tests.registry_fixture"]  # a real OCI registry (Debian's docker-registry) on loopback

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples-repo"


@pytest.fixture
def examples(tmp_path: pathlib.Path) -> pathlib.Path:
    """A writable copy of examples-repo (a plain folder)."""
    dest = tmp_path / "repo"
    shutil.copytree(EXAMPLES, dest)
    return dest


@pytest.fixture
def state_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "state"


class Cli:
    """Runs ``python -m gitopsd`` in a subprocess, as a user would."""

    def __init__(self, cwd: pathlib.Path) -> None:
        self.cwd = cwd

    def __call__(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "gitopsd", *args], capture_output=True, text=True, cwd=self.cwd, timeout=300
        )
        if check is not None and proc.returncode != check:
            raise AssertionError(
                f"gitopsd {' '.join(args)} exited {proc.returncode}, expected {check}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str, check: int | None = 0) -> dict:
        return json.loads(self(*args, "-o", "json", check=check).stdout)


@pytest.fixture
def cli(tmp_path: pathlib.Path) -> Cli:
    return Cli(tmp_path)
