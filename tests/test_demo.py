"""The demo, as the first README command runs it, ends with every job as planned."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import from_env
from worker.demo import run_demo


async def test_demo_verifies_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's own check passes: every file re-read from disk matches the simulator's bytes."""
    code = await run_demo(from_env({}), directory=str(tmp_path / "demo"), jobs=12)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 surprises" in out and "layers:" in out and "cloudlayer:" in out
