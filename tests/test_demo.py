"""The demo, as the first README command runs it: every job as planned, in an 80-column terminal,
alive while it runs, and ending with what to do next."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from worker.config import from_env
from worker.demo import HEARTBEAT_S, WIDTH, run_demo


def demo_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("ASSET_WORKER_", "CLOUDLAYER_", "LAYERS_"))
    }


async def run_cli(cwd: Path, *args: str) -> tuple[int, list[tuple[float, str]], str]:
    """Run ``asset-worker`` in ``cwd``; each stdout line with the moment it arrived, and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        *args,
        cwd=cwd,
        env=demo_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.create_task(proc.stderr.read())
    lines: list[tuple[float, str]] = []
    async with asyncio.timeout(300):
        while raw := await proc.stdout.readline():
            lines.append((time.monotonic(), raw.decode().rstrip("\n")))
        code = await proc.wait()
    return code, lines, (await errors).decode()


async def test_the_demo_fits_80_columns_marks_injected_faults_and_says_what_next(tmp_path: Path) -> None:
    """Run as a user runs it: exit 0; no line wider than 80 columns; a line per job as it finishes,
    never silent for long; injected faults named as injected; next steps whose commands work."""
    code, timed, err = await run_cli(tmp_path, "demo", "--jobs", "12", "--dir", "demo")
    out = [line for _, line in timed]
    assert code == 0, "\n".join(out) + err
    assert err == ""  # the injected faults' warnings are not repeated as log lines
    too_wide = [line for line in out if len(line) > WIDTH]
    assert too_wide == []
    rows = [line for line in out if re.match(r"^\s*\d+/16  ", line)]
    assert [int(r.split("/")[0]) for r in rows] == list(range(1, 17))
    assert any(r.endswith("injected fault: truncate, survived") for r in rows)
    assert any(r.endswith("injected fault: http_503, survived") for r in rows)
    assert sum(r.endswith("upstream failure (injected)") for r in rows) == 2
    assert sum(r.endswith("verified") for r in rows) >= 5
    # Alive while it runs: from the header on, no gap between lines much longer than a heartbeat.
    start = next(i for i, line in enumerate(out) if line.lstrip().startswith("done  job"))
    moments = [t for t, _ in timed[start:]]
    assert max(b - a for a, b in itertools.pairwise(moments)) < HEARTBEAT_S + 2.0
    assert "16 jobs in" in " ".join(out) and "0 surprises." in " ".join(out)
    steps = out[out.index("Next steps:") :]
    assert "    asset-worker status --store sqlite:///demo/asset-worker.db" in steps
    assert "    asset-worker verify --store sqlite:///demo/asset-worker.db" in steps
    assert "    ls -R demo/assets" in steps
    assert steps[-2:] == ["  Clean up:", "    rm -r demo"]
    # The commands it suggests work from where it ran.
    code, status, _ = await run_cli(tmp_path, "status", "--store", "sqlite:///demo/asset-worker.db")
    assert code == 0 and status[-1][1] == "16 jobs: 14 done, 2 failed"
    code, verify, _ = await run_cli(tmp_path, "verify", "--store", "sqlite:///demo/asset-worker.db")
    assert code == 0 and verify[-1][1].startswith("checked 16 files,")


async def test_the_demo_as_json_and_a_shared_directory_is_not_removed_whole(tmp_path: Path) -> None:
    """--json prints one document of every job (progress goes to stderr); a directory that held
    other files before the demo is cleaned of the demo's own things only."""
    (tmp_path / "mine.txt").write_text("keep me")
    code, timed, err = await run_cli(tmp_path, "demo", "--jobs", "4", "--dir", ".", "--json")
    assert code == 0, err
    document = json.loads("\n".join(line for _, line in timed))
    assert len(document["jobs"]) == 8 and document["surprises"] == 0
    assert all(job["as_planned"] for job in document["jobs"])
    assert {job["injected_fault"] for job in document["jobs"]} >= {"truncate", "expired"}
    assert "injected fault: truncate, survived" in err
    assert "    rm -r ./assets ./asset-worker.db*" in err.splitlines()


@pytest.mark.parametrize("jobs", ["0", "-3"])
async def test_a_demo_of_no_jobs_is_a_usage_error(tmp_path: Path, jobs: str) -> None:
    code, _, err = await run_cli(tmp_path, "demo", "--jobs", jobs)
    assert code == 2 and "must be at least 1" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "(see asset-worker demo --help)" in err, err
    assert not (tmp_path / "asset-worker-demo").exists()


async def test_the_demo_verifies_everything_and_wide_shows_whole_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's own check passes: every file re-read from disk matches the simulator's bytes;
    --wide shows the whole table with full keys."""
    code = await run_demo(from_env({}), directory=str(tmp_path / "demo"), jobs=12, wide=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 surprises" in out and "cloudlayer:" in out
    assert re.search(r"layers:cnt_[0-9a-f-]{36}\s", out)  # a whole Layers key, not shortened
    assert "SHA256" in out  # the full table
