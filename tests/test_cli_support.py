"""The CLI harness itself: no process a test starts outlives it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.cli_support import STARTED, STARTED_BLOCKING, kill_leftover_processes, popen, start


async def test_processes_left_running_are_killed_and_reaped(tmp_path: Path) -> None:
    """What the autouse fixture does after every test: both kinds of CLI process a test left
    running are killed, and reaped (a process object collected unreaped is a ResourceWarning, an
    error in this suite, in whichever later test the collector runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_WORKER_")}
    serve = ("simulate", "--port", "0", "--layers-port", "0", "--log-format", "json")
    with (tmp_path / "blocking.log").open("wb") as log:
        blocking = popen(env, log, *serve)
    running = await start(env, *serve)
    await asyncio.sleep(0.2)
    assert blocking.poll() is None and running.returncode is None
    await kill_leftover_processes()
    assert blocking.returncode is not None and running.returncode is not None
    assert STARTED == [] and STARTED_BLOCKING == []
