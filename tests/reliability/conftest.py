"""Prints the memory figures the reliability tests measured (peak RSS of each bomb case)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability import harness


@pytest.fixture(scope="session")
def zygotes() -> Iterator[harness.ZygotePool]:
    """Pre-imported gitopsd processes that fork one child per command (see zygote.py)."""
    pool = harness.ZygotePool(harness.WORKERS)
    yield pool
    pool.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if harness.CHAOS:
        terminalreporter.section("chaos trials")
        terminalreporter.write_line(f"{'scenario':<44} {'trials':>6} {'failures':>8} {'lost items':>10}")
        for scenario, trials, failures, lost in harness.CHAOS:
            terminalreporter.write_line(f"{scenario:<44} {trials:>6} {failures:>8} {lost:>10}")
    if not harness.MEMORY:
        return
    terminalreporter.section("peak RSS of hostile inputs (gitopsd reconcile, one process per case, children included)")
    for what, mib, seconds in sorted(harness.MEMORY):
        terminalreporter.write_line(f"{what:<40} {mib:8.1f} MiB  {seconds:6.2f}s")
