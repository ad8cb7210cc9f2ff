"""Semantic versions: parsing and precedence (semver 2.0.0 §11), for Upgrade vs Rollback."""

from __future__ import annotations

import dataclasses
import re

_PATTERN = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()
    build: str = ""

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += "-" + ".".join(self.pre)
        if self.build:
            text += "+" + self.build
        return text

    def key(self) -> tuple[object, ...]:
        """Sort key with semver precedence: a pre-release sorts before its release; build is ignored."""
        pre: tuple[object, ...]
        if not self.pre:
            pre = ((2, 0, ""),)
        else:
            pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, not self.pre, pre)


def parse(text: str) -> Version:
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.0 or v1.4.0-rc.1)")
    pre = tuple(match["pre"].split(".")) if match["pre"] else ()
    return Version(int(match["major"]), int(match["minor"]), int(match["patch"]), pre, match["build"] or "")


def normalize(text: str) -> str:
    """Drop a leading ``v``: ``v1.2.0`` and ``1.2.0`` name the same version."""
    return str(parse(text))


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` has lower, equal or higher precedence than ``b``."""
    ka, kb = parse(a).key(), parse(b).key()
    return (ka > kb) - (ka < kb)
