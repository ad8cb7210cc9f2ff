"""``assemble.pass_env`` builds the Env of a pass from Settings: flags reach the steps that read them."""

from __future__ import annotations

import pathlib

import pytest

from gitopsd import reconcile
from gitopsd.cli import main as cli
from gitopsd.wiring import assemble
from gitopsd.wiring import settings as wiring_settings


def parse(*argv: str) -> wiring_settings.Settings:
    return wiring_settings.Settings.from_args(cli.parser().parse_args(argv), environ={})


def two_passes(examples: pathlib.Path, state_dir: pathlib.Path, *flags: str) -> tuple[reconcile.PassState, reconcile.PassState]:
    """Two passes of one ``gitopsd reconcile`` Env (as after renders left running), on a reconciled state dir."""
    settings = parse("reconcile", str(examples), "--state-dir", str(state_dir), *flags)
    with assemble.pass_env(settings, state_dir, repo=str(examples), dry_run=False) as wired:
        return reconcile.run(wired.env), reconcile.run(wired.env)


@pytest.mark.parametrize(("flags", "second_plans_every_pack"), [((), False), (("--full",), True)],
                         ids=["incremental", "full"])
def test_full_makes_every_pass_of_reconcile_plan_every_pack(examples: pathlib.Path, tmp_path: pathlib.Path,
                                                            flags: tuple[str, ...], second_plans_every_pack: bool) -> None:
    state_dir = tmp_path / "state"
    two_passes(examples, state_dir)  # the store now holds everything: the passes below write nothing
    first, second = two_passes(examples, state_dir, *flags)
    bases = {build.base_pack_name for build in first.builds}
    assert len(bases) > 1 and first.replanned == len(bases)  # a new process has no plan to start from
    assert second.replanned == (len(bases) if second_plans_every_pack else 0)
    assert second.plan == first.plan and not second.plan.writes  # the same plan, however it was made
