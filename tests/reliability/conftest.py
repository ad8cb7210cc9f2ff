"""Prints the memory figures the reliability tests measured (peak RSS of each bomb case)."""

from __future__ import annotations

import pytest

from tests.reliability import harness


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not harness.MEMORY:
        return
    terminalreporter.section("peak RSS of hostile inputs (gitopsd reconcile in a subprocess)")
    for what, mib, seconds in sorted(harness.MEMORY):
        terminalreporter.write_line(f"{what:<40} {mib:8.1f} MiB  {seconds:6.2f}s")
