"""The README stays true to the code it documents."""

from __future__ import annotations

import re
from pathlib import Path

from worker.config import KNOWN_VARIABLES

README = Path(__file__).resolve().parent.parent / "README.md"


def test_configuration_table_lists_every_variable() -> None:
    """Every ASSET_WORKER_* variable the code accepts is in the README's table, and no other."""
    documented = set(re.findall(r"^\| `(ASSET_WORKER_[A-Z0-9_]+)` \|", README.read_text(), re.MULTILINE))
    assert documented == set(KNOWN_VARIABLES)


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs exactly the test command the README gives."""
    commands = re.findall(r"^```\n(.+)\n```", README.read_text(), re.MULTILINE)
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert commands[1] == ci
