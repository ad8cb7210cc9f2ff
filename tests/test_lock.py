"""The locks install exactly what pyproject.toml asks for: every dependency and extra is pinned in
them with hashes, at a version pyproject.toml allows (a lock left stale by a pyproject edit fails
here, not on a fresh machine)."""

from __future__ import annotations

import pathlib
import re
import tomllib

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(lock: str) -> dict[str, tuple[str, str]]:
    """name -> (version, the pin's whole entry) of a lock written by tools/lock."""
    text = (ROOT / lock).read_text()
    found = {}
    for match in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\\n((?:    .*\n)+)", text, re.MULTILINE):
        found[re.sub(r"[-_.]+", "-", match[1]).lower()] = (match[2], match[3])
    return found


def wanted(extras: list[str]) -> list[Requirement]:
    names = list(PYPROJECT["dependencies"])
    for extra in extras:
        names += PYPROJECT["optional-dependencies"][extra]
    return [Requirement(n) for n in names]


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("requirements.lock", ["helm", "kubectl"]), ("requirements-test.lock", ["helm", "kubectl", "test"])],
    ids=["runtime", "test"],
)
def test_every_dependency_is_pinned_with_hashes_at_an_allowed_version(lock: str, extras: list[str]) -> None:
    locked = pins(lock)
    for requirement in wanted(extras):
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in locked, f"{lock} lacks {requirement.name}: run tools/lock"
        version, entry = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), f"{lock}: {name}=={version} is not {requirement}"
        assert "--hash=sha256:" in entry
    assert {"setuptools", "wheel"} <= locked.keys()  # gitopsd itself builds without fetching anything
