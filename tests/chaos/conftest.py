"""The chaos suite prints what it survived at the end of the run, whatever pytest captured."""

from __future__ import annotations

import pytest

REPORT: list[str] = []


@pytest.fixture
def chaos_report() -> list[str]:
    """Lines for the run's summary: seed, faults fired, kills, outages, and the outcome."""
    return REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("chaos: what the worker survived")
        for line in REPORT:
            terminalreporter.write_line(line)
