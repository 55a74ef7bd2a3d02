"""Progress of a download as the store, the status JSON, the log and ``status`` show it, and what
a crash leaves behind: a real worker (in process and as a CLI subprocess) against the simulator."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from structlog.testing import capture_logs

from tests.cli_support import cli, cli_environment, start, wait_for_part_file
from tests.conftest import SettingsFactory
from tests.http_support import eventually
from worker.app import open_worker
from worker.models import JobKey
from worker.simulator.app import Simulator
from worker.statusview import job_to_json

BIG = 4 << 30  # served from memory by the simulator; far more than a test waits for


async def test_a_download_reports_bytes_size_and_rate_to_the_store_and_the_log(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    sim.add_cloudlayer_job(id="big", pending_s=0, size=BIG)
    key = JobKey("cloudlayer", "big")
    settings = make_settings(progress_interval_s=0.1, progress_log_interval_s=0.3)
    with capture_logs() as events:
        async with open_worker(settings) as worker:
            await worker.store.submit(key, now=worker.clock.now())
            stop = asyncio.Event()
            running = asyncio.create_task(worker.runner.run(stop=stop))
            try:
                async with asyncio.timeout(30):
                    while True:
                        (job,) = await worker.store.get([key])
                        if job.progress is not None and job.progress.bytes > 0 and job.progress.rate_bps > 0:
                            break
                        await asyncio.sleep(0.05)
                ((live_key, live),) = worker.runner.transfers()
                assert live_key == key and live.total == BIG
                status = job_to_json(job, worker.clock.now())
                assert status["activity"] == "running" and status["state"] == "downloading"
                progress = status["assets"][0]["progress"]
                assert progress["total"] == BIG and 0 < progress["bytes"] < BIG
                assert progress["rate_bps"] > 0 and progress["eta_s"] > 0
                await eventually(lambda: any(e["event"] == "transfer_progress" for e in events))
            finally:
                stop.set()
                await running
    line = next(e for e in events if e["event"] == "transfer_progress")
    assert line["job"] == "cloudlayer:big" and line["total"] == BIG
    assert 0 < line["bytes"] < BIG and 0 < line["percent"] < 100 and line["rate_bps"] > 0
    stopped = next(e for e in events if e["event"] == "runner_stopped")
    assert stopped["store_transactions"] > 0


async def test_status_shows_a_download_under_way_and_a_crashed_one_as_retrying(
    sim: Simulator, tmp_path: Path
) -> None:
    """Through the CLI: while `run` downloads, another process's `status` shows bytes, size,
    percentage and rate; after `run` is killed (SIGKILL: no release) and its lease runs out, the
    job reads `retrying`, its JSON activity `interrupted`, and no stale progress."""
    sim.add_cloudlayer_job(id="big", pending_s=0, size=BIG)
    env = cli_environment(tmp_path, sim)
    env.update(ASSET_WORKER_PROGRESS_INTERVAL_S="0.1", ASSET_WORKER_LEASE_S="2")
    assert (await cli(env, "submit", "cloudlayer:big")).code == 0
    proc = await start(env, "run", "--no-http")
    try:
        await wait_for_part_file(tmp_path / "assets", 64 << 20, timeout_s=30)
        async with asyncio.timeout(20):
            while True:
                table = await cli(env, "status")
                if "%" in table.out:
                    break
                await asyncio.sleep(0.1)
        (row,) = [line for line in table.out.splitlines() if line.startswith("cloudlayer:big")]
        assert " downloading " in row and "/4 GiB " in row and "B/s" in row, table.out
        (status,) = json.loads((await cli(env, "status", "--json")).out)
        assert status["activity"] == "running"
        assert status["assets"][0]["progress"]["total"] == BIG
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.communicate()
    await asyncio.sleep(2.2)  # the dead worker's lease runs out
    table = await cli(env, "status")
    (row,) = [line for line in table.out.splitlines() if line.startswith("cloudlayer:big")]
    assert " retrying " in row and "%" not in row, table.out
    (status,) = json.loads((await cli(env, "status", "--json")).out)
    assert status["state"] == "downloading" and status["activity"] == "interrupted"
    assert status["assets"][0]["progress"] is None
