"""Resuming across restarts of ``asset-worker run`` as a real process: SIGKILL or a drain mid-download,
then ``run --until-idle`` continues from the bytes on disk instead of downloading them again.

The simulator serving the file runs on this test's event loop: between the moment the test sees
enough bytes on disk and the signal there is no await, so the simulator sends nothing more and the
download cannot finish behind the test's back, however fast the machine (see tests/test_drain.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.cli_support import (
    cli,
    cli_environment,
    files_under,
    popen,
    sha256_of,
    start,
    status_json,
    stop,
    wait_for_part_file,
)
from tests.http_support import logged_events
from worker.simulator.app import Simulator
from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.content import content_sha256

SIZE = 128 * 1024 * 1024
MIB = 1 << 20


@pytest.fixture
def env(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    return cli_environment(tmp_path, sim)


def events_of(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and line.endswith("}")]


async def rerun_and_check(
    env: dict[str, str], sim: Simulator, job: SimJob, tmp_path: Path, kept: int
) -> None:
    """``run --until-idle`` resumes from the ``kept`` bytes: logged, asked for with Range, the file
    whole and verified, nothing else left."""
    before = len(sim.requests("files"))
    rerun = await cli(env, "run", "--until-idle", timeout_s=120)
    assert rerun.code == 0, rerun.err
    (resumed,) = [e for e in events_of(rerun.out) if e["event"] == "transfer_resumed_from_disk"]
    assert resumed["bytes_saved"] == kept > 0
    # The first answer names the file (its body dropped), the second continues after the kept bytes.
    ranges = [r.range for r in sim.requests("files")[before:]]
    assert ranges == [None, f"bytes={kept}-"]
    final = tmp_path / "assets/cloudlayer" / job.id / f"{job.asset_id}.pdf"
    assert files_under(tmp_path / "assets") == [final]
    assert await asyncio.to_thread(sha256_of, final) == content_sha256(job.seed, job.size)
    (status,) = await status_json(env, f"cloudlayer:{job.id}")
    assert status["state"] == "done"


async def test_a_killed_worker_is_resumed_from_its_bytes_on_disk(
    sim: Simulator, env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL with some MiB on disk: the next run waits out the lease, re-hashes those bytes and
    downloads only the rest."""
    job = sim.add_cloudlayer_job(id="killed", pending_s=0, size=SIZE)
    env = {**env, "ASSET_WORKER_LEASE_S": "1"}
    assert (await cli(env, "submit", "cloudlayer:killed")).code == 0
    proc = await start(env, "run")
    part = await wait_for_part_file(tmp_path / "assets", 4 * MIB)
    proc.kill()  # no await since the size was seen: the simulator sent nothing more
    await proc.wait()
    assert part.name.endswith(".resume.part")
    kept = part.stat().st_size
    assert 4 * MIB <= kept < SIZE
    await rerun_and_check(env, sim, job, tmp_path, kept)


async def test_a_drained_worker_is_resumed_from_its_bytes_on_disk(
    sim: Simulator, env: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM with a 1 s grace cancels the transfer: the part is kept (flushed, unlocked) and the
    lease released, so the next run takes the job at once and continues from the part."""
    job = sim.add_cloudlayer_job(id="drained", pending_s=0, size=SIZE)
    assert (await cli(env, "submit", "cloudlayer:drained")).code == 0
    log_path = tmp_path / "first.log"
    with log_path.open("wb") as log:
        first = popen({**env, "ASSET_WORKER_GRACE_S": "1"}, log, "run")
    try:
        part = await wait_for_part_file(tmp_path / "assets", 4 * MIB)
        # Blocking, so the transfer cannot finish while the grace runs out.
        first.send_signal(signal.SIGTERM)
        code = first.wait(30)
    finally:
        stop(first)
    assert code == 0
    events = {e["event"] for e in logged_events(log_path)}
    assert {"runner_grace_expired", "resume_part_kept", "job_released"} <= events
    kept = part.stat().st_size
    assert kept >= 4 * MIB
    assert [p.name for p in files_under(tmp_path / "assets")] == [
        f".{job.asset_id}.pdf.resume.json",
        f".{job.asset_id}.pdf.resume.part",
    ]
    await rerun_and_check(env, sim, job, tmp_path, kept)
