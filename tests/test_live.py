"""The live progress display, on a real pseudo-terminal: `run` draws its own downloads, and
`submit --wait` draws those the store reports, whichever process does them."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.cli_support import cli, cli_environment, start
from worker.simulator.app import Simulator
from worker.statusview import human_bytes

BIG = 64 << 20
# The file host sends half of it, then nothing for this long, then the rest: long enough for the
# display to draw the download under way, however fast the machine.
STALL_S = 3.0
# rich's cursor movements and colours, so the text can be searched.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


async def on_terminal(env: Mapping[str, str], *args: str, timeout_s: float = 60) -> tuple[int, str]:
    """Run the CLI with its standard output and error on a pseudo-terminal; its exit status and
    everything it drew (escape sequences removed)."""
    leader, follower = os.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        *args,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "100"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    os.set_blocking(leader, False)
    drawn = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except BlockingIOError:
                    chunk = None
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if chunk == b"":
                    break
                if chunk:
                    drawn += chunk
                else:
                    await asyncio.sleep(0.02)
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(leader)
    return code, _ESCAPES.sub("", drawn.decode(errors="replace"))


async def test_run_on_a_terminal_draws_each_download_under_the_log(sim: Simulator, tmp_path: Path) -> None:
    sim.add_cloudlayer_job(id="big", pending_s=0, size=BIG)
    sim.add_fault(route="files", kind="stall_body", delay_s=STALL_S, count=1)
    env = cli_environment(tmp_path, sim)
    assert (await cli(env, "submit", "cloudlayer:big")).code == 0
    code, drawn = await on_terminal(env, "run", "--until-idle", "--no-http")
    assert code == 0, drawn
    whole = f"/{human_bytes(BIG)}"
    bars = [line for line in drawn.splitlines() if line.startswith("cloudlayer:big") and whole in line]
    assert bars, drawn  # a row with the bytes so far of the whole size
    assert any(re.search(r"\d+% +[\d.]+ [kMG]?B/s", line) for line in bars), bars
    assert "job_finished" in drawn  # the log scrolled above the display
    assert "1 done" in drawn


async def test_submit_wait_on_a_terminal_draws_a_download_another_process_does(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_cloudlayer_job(id="big", pending_s=0, size=BIG)
    sim.add_fault(route="files", kind="stall_body", delay_s=STALL_S, count=1)
    env = cli_environment(tmp_path, sim)
    env["ASSET_WORKER_PROGRESS_INTERVAL_S"] = "0.1"
    worker = await start(env, "run", "--until-idle", "--no-http")
    try:
        code, drawn = await on_terminal(env, "submit", "--wait", "cloudlayer:big")
    finally:
        await worker.communicate()
    assert code == 0, drawn
    whole = f"/{human_bytes(BIG)}"
    assert any(line.startswith("cloudlayer:big") and whole in line for line in drawn.splitlines()), drawn
    assert drawn.rstrip().endswith("asset-worker: 1 job: 1 done"), drawn[-500:]
