"""An error as the ``gitopsd`` command shows it: the settings its message names spelled as flags."""

from __future__ import annotations

import functools

from gitopsd import errors
from gitopsd.cli import main as cli


@functools.cache
def _flags() -> dict[str, str]:
    return cli.flag_names(cli.parser())


def shown(err: errors.GitopsdError) -> str:
    return err.render(_flags().__getitem__)
