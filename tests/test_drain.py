"""Graceful drain of ``asset-worker run`` as a real process: SIGTERM with a 200 MiB transfer in flight.

The simulator serving the file runs on this test's event loop. Where a test must be sure the
transfer is still in flight (probing /readyz during the drain, letting a 1 s grace run out), it
works in plain blocking calls between two awaits: while the loop does not run, the simulator sends
no byte, so the transfer cannot finish behind the test's back, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli_support import (
    cli,
    cli_environment,
    files_under,
    popen,
    sha256_of,
    status_json,
    stop,
    wait_for_part_file,
)
from tests.http_support import eventually, listening_port, logged_events, probe
from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256

SIZE = 200 * 1024 * 1024
# Longer than any test here runs: a stalled body is still stalled when the test ends.
STALL_S = 120.0


@pytest.fixture
def env(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    # A lease far longer than any test: a job only moves to another process because it was released.
    return {**cli_environment(tmp_path, sim), "ASSET_WORKER_LEASE_S": "600"}


def _terminate_and_probe_while_held(
    proc: subprocess.Popen[bytes], port: int
) -> tuple[int, dict[str, object]]:
    """SIGTERM, then /readyz until the worker reports draining, and /healthz; blocking (see the
    module docstring), so the transfer is held mid-way throughout."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while True:
        status, body = probe(f"http://127.0.0.1:{port}/readyz")
        if status != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.01)  # the signal is handled on the worker's next loop iteration
    assert (status, body) == (503, {"error": {"code": "draining", "message": body["error"]["message"]}})
    return probe(f"http://127.0.0.1:{port}/healthz")


async def test_sigterm_lets_the_inflight_transfer_finish(
    sim: Simulator, env: dict[str, str], tmp_path: Path
) -> None:
    """Stop claiming, report not ready (while staying alive), finish the 200 MiB transfer within
    the grace, exit 0; the job still pending upstream is left for the next worker."""
    big = sim.add_cloudlayer_job(id="drain", pending_s=0, size=SIZE)
    sim.add_cloudlayer_job(id="later", pending_s=30)
    assert (await cli(env, "submit", "cloudlayer:drain", "cloudlayer:later")).code == 0
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = popen(env, log, "run")
    try:
        port = await listening_port(log_path)
        await wait_for_part_file(tmp_path / "assets", 1)
        health = _terminate_and_probe_while_held(proc, port)
        assert health == (200, {"status": "ok"})
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        stop(proc)
    events = logged_events(log_path)
    (draining,) = [e for e in events if e["event"] == "runner_draining"]
    assert draining["in_flight"] == 1 and draining["grace_s"] == 25  # the default grace
    assert not any(e["event"] == "runner_grace_expired" for e in events)
    drain, later = await status_json(env, "cloudlayer:drain", "cloudlayer:later")
    assert drain["state"] == "done" and later["state"] in ("queued", "polling")
    final = tmp_path / "assets/cloudlayer/drain" / f"{big.asset_id}.pdf"
    assert files_under(tmp_path / "assets") == [final]
    assert await asyncio.to_thread(sha256_of, final) == content_sha256(big.seed, big.size)


async def test_after_a_short_grace_another_process_completes_the_transfer(
    sim: Simulator, env: dict[str, str], tmp_path: Path
) -> None:
    """With a 1 s grace the transfer is cancelled: its part kept for resuming (hidden, beside the
    target), lease released, exit 0; a second process takes the job at once (the lease is 600 s),
    resumes the part and stores the file verified."""
    big = sim.add_cloudlayer_job(id="handover", pending_s=0, size=SIZE)
    assert (await cli(env, "submit", "cloudlayer:handover")).code == 0
    log_path = tmp_path / "first.log"
    with log_path.open("wb") as log:
        first = popen({**env, "ASSET_WORKER_GRACE_S": "1"}, log, "run")
    try:
        await wait_for_part_file(tmp_path / "assets", 1)
        # Blocking, so the transfer cannot finish while the grace runs out.
        first.send_signal(signal.SIGTERM)
        code = first.wait(30)
    finally:
        stop(first)
    assert code == 0
    events = {e["event"] for e in logged_events(log_path)}
    assert {"runner_grace_expired", "job_released"} <= events
    folder = tmp_path / "assets/cloudlayer/handover"
    kept = [folder / f".{big.asset_id}.pdf.resume.json", folder / f".{big.asset_id}.pdf.resume.part"]
    assert files_under(tmp_path / "assets") == kept  # nothing under a final name
    (status,) = await status_json(env, "cloudlayer:handover")
    assert status["state"] == "downloading" and status["attempts"] == 0

    second = await cli(env, "run", "--until-idle", timeout_s=60)
    assert second.code == 0, second.err
    (status,) = await status_json(env, "cloudlayer:handover")
    assert status["state"] == "done" and status["attempts"] == 1
    final = tmp_path / "assets/cloudlayer/handover" / f"{big.asset_id}.pdf"
    assert files_under(tmp_path / "assets") == [final]
    assert await asyncio.to_thread(sha256_of, final) == content_sha256(big.seed, big.size)


async def test_a_second_signal_stops_at_once_without_a_partial_file(
    sim: Simulator, env: dict[str, str], tmp_path: Path
) -> None:
    """A second SIGTERM during a long grace cancels right away; the lease is released, nothing
    appears under the final name (only the hidden part kept for resuming); the exit code says it
    was forced."""
    sim.add_cloudlayer_job(id="forced", pending_s=0, size=SIZE)
    # The file host sends half the file and then nothing for longer than the test: the transfer is
    # still under way at both signals, however fast the machine (and however full its disk).
    sim.add_fault(route="files", kind="stall_body", delay_s=STALL_S, count=1)
    assert (await cli(env, "submit", "cloudlayer:forced")).code == 0
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = popen({**env, "ASSET_WORKER_GRACE_S": "600"}, log, "run")
    try:
        await wait_for_part_file(tmp_path / "assets", 1 << 20)
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: any(e["event"] == "runner_draining" for e in logged_events(log_path)))
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        stop(proc)
    assert code == 1
    assert "shutdown_forced" in {e["event"] for e in logged_events(log_path)}
    assert [p.name.endswith((".resume.json", ".resume.part")) for p in files_under(tmp_path / "assets")] == [
        True,
        True,
    ]
    (status,) = await status_json(env, "cloudlayer:forced")
    assert status["state"] == "downloading" and status["attempts"] == 0
