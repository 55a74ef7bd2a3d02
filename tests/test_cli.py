"""The ``asset-worker`` command as users run it: real processes, real signals, the simulator on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli_env(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    """An environment pointing the CLI at the simulator, with a store and destination in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSET_WORKER_", "CLOUDLAYER_"))}
    env.update(
        ASSET_WORKER_STORE=f"sqlite:///{tmp_path / 'cli.db'}",
        ASSET_WORKER_DEST=f"file://{tmp_path / 'assets'}",
        ASSET_WORKER_POLL_INITIAL_S="0.05",
        ASSET_WORKER_POLL_MAX_S="0.2",
        ASSET_WORKER_CLAIM_INTERVAL_S="0.05",
        ASSET_WORKER_RETRY_INITIAL_S="0.05",
        ASSET_WORKER_RETRY_MAX_S="0.2",
        CLOUDLAYER_API_KEY=sim.api_key,
        CLOUDLAYER_BASE_URL=sim.url,
    )
    return env


async def start(env: Mapping[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        *args,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def cli(env: Mapping[str, str], *args: str, timeout_s: float = 60) -> Result:
    """Run the CLI to completion while this event loop keeps serving the simulator."""
    proc = await start(env, *args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def wait_for_part_file(root: Path, min_bytes: int, timeout_s: float = 20) -> Path:
    """Wait until a transfer is visibly under way: a temp file with at least ``min_bytes``."""
    async with asyncio.timeout(timeout_s):
        while True:
            parts = [p for p in files_under(root) if p.name.endswith(".part")]
            if parts and parts[0].stat().st_size >= min_bytes:
                return parts[0]
            await asyncio.sleep(0.02)


async def status_json(env: Mapping[str, str], *keys: str) -> list[dict[str, Any]]:
    result = await cli(env, "status", "--json", *keys)
    assert result.code == 0, result.err
    parsed: list[dict[str, Any]] = json.loads(result.out)
    return parsed


async def test_submit_run_status_round_trip(sim: Simulator, cli_env: dict[str, str], tmp_path: Path) -> None:
    """submit prints keys, a duplicate creates no second job, run --until-idle stores everything."""
    jobs = [sim.add_cloudlayer_job(id=f"cli-{i}", pending_s=0.1, size=100_000 + i) for i in range(3)]
    first = await cli(cli_env, "submit", "cloudlayer:cli-0", "cloudlayer:cli-1")
    assert first.code == 0, first.err
    assert first.out.split() == ["cloudlayer:cli-0", "cloudlayer:cli-1"]
    again = await cli(cli_env, "submit", "cloudlayer:cli-1", "cloudlayer:cli-2")
    assert again.out.split() == ["cloudlayer:cli-1", "cloudlayer:cli-2"]
    run = await cli(cli_env, "run", "--until-idle")
    assert run.code == 0, run.err
    # stdout is not a terminal here: every log line is one JSON object.
    events = [json.loads(line) for line in run.out.splitlines()]
    assert sum(e["event"] == "job_finished" for e in events) == 3
    assert all("timestamp" in e and e["timestamp"].endswith("Z") for e in events)
    assert sim.api_key not in run.out
    statuses = await status_json(cli_env)
    assert [s["key"] for s in statuses] == ["cloudlayer:cli-0", "cloudlayer:cli-1", "cloudlayer:cli-2"]
    for status, job in zip(statuses, jobs, strict=True):
        assert status["state"] == "done"
        (asset,) = status["assets"]
        assert asset["sha256"] == content_sha256(job.seed, job.size)
    table = await cli(cli_env, "status", "cloudlayer:cli-2")
    assert "cloudlayer:cli-2" in table.out and "done" in table.out and "cli-0" not in table.out


async def test_force_requeues_a_finished_job(sim: Simulator, cli_env: dict[str, str]) -> None:
    """submit --force runs a finished job again; without it the job stays finished."""
    sim.add_cloudlayer_job(id="again", pending_s=0)
    await cli(cli_env, "submit", "cloudlayer:again")
    await cli(cli_env, "run", "--until-idle")
    await cli(cli_env, "submit", "cloudlayer:again")
    assert (await status_json(cli_env))[0]["state"] == "done"
    forced = await cli(cli_env, "submit", "--force", "cloudlayer:again")
    assert forced.code == 0 and forced.out.strip() == "cloudlayer:again"
    assert (await status_json(cli_env))[0]["state"] == "queued"
    await cli(cli_env, "run", "--until-idle")
    assert (await status_json(cli_env))[0]["state"] == "done"
    assert len([r for r in sim.requests("files") if r.status == 200]) == 2


@pytest.mark.parametrize(
    ("args", "env_extra", "fragment"),
    [
        (["submit", "nokey"], {}, "<provider>:<upstream id>"),
        (["submit", "cloudlayer:ok", "ftp:x"], {}, "unknown provider"),
        (["status"], {"ASSET_WORKER_CONCURENCY": "2"}, "ASSET_WORKER_CONCURENCY"),
        (["run"], {"ASSET_WORKER_POLL_INITIAL_S": "soon"}, "ASSET_WORKER_POLL_INITIAL_S"),
        (["frobnicate"], {}, "invalid choice"),
    ],
)
async def test_usage_and_config_errors_exit_2(
    cli_env: dict[str, str], args: list[str], env_extra: dict[str, str], fragment: str
) -> None:
    """Bad keys, unknown or malformed settings and unknown commands exit 2 with a clear message."""
    result = await cli({**cli_env, **env_extra}, *args)
    assert result.code == 2
    assert fragment in result.err
    assert "Traceback" not in result.err
    # Nothing was written for a rejected submit, not even the valid key before the bad one.
    assert (await status_json(cli_env)) == []


async def test_status_of_unknown_key_exits_1(cli_env: dict[str, str]) -> None:
    """Asking for a job that does not exist is a failure the caller can see."""
    result = await cli(cli_env, "status", "cloudlayer:missing")
    assert result.code == 1
    assert "unknown job cloudlayer:missing" in result.err


async def test_sigterm_lets_inflight_transfer_finish(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM during a transfer stops claiming but lets the transfer finish within the grace period."""
    big = sim.add_cloudlayer_job(id="drain", pending_s=0, size=300 * 1024 * 1024)
    sim.add_cloudlayer_job(id="later", pending_s=30)
    await cli(cli_env, "submit", "cloudlayer:drain", "cloudlayer:later")
    proc = await start({**cli_env, "ASSET_WORKER_GRACE_S": "60"}, "run")
    await wait_for_part_file(tmp_path / "assets", 1)
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    drain, later = await status_json(cli_env, "cloudlayer:drain", "cloudlayer:later")
    assert drain["state"] == "done"
    assert later["state"] in ("queued", "polling")
    final = tmp_path / "assets/cloudlayer/drain" / f"{big.asset_id}.pdf"
    assert [p.name for p in files_under(tmp_path / "assets")] == [final.name]
    assert b"runner_draining" in out


async def test_sigterm_after_grace_releases_and_cleans_up(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """When the grace period runs out the transfer is cancelled: no temp file, lease released, exit 0."""
    sim.add_cloudlayer_job(id="huge", pending_s=0, size=8 * 1024 * 1024 * 1024)
    await cli(cli_env, "submit", "cloudlayer:huge")
    proc = await start({**cli_env, "ASSET_WORKER_GRACE_S": "0.2"}, "run")
    await wait_for_part_file(tmp_path / "assets", 1 << 20)
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert files_under(tmp_path / "assets") == []
    (status,) = await status_json(cli_env)
    assert status["state"] == "downloading"
    assert status["attempts"] == 0  # a clean shutdown does not count against max attempts
    assert b"job_released" in out


async def test_killed_worker_is_recovered_by_the_next(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL mid-download: the next worker waits out the lease, removes the orphaned temp file and
    stores a verified copy."""
    job = sim.add_cloudlayer_job(id="killed", pending_s=0, size=1024 * 1024 * 1024)
    env = {**cli_env, "ASSET_WORKER_LEASE_S": "1"}
    await cli(env, "submit", "cloudlayer:killed")
    proc = await start(env, "run")
    part = await wait_for_part_file(tmp_path / "assets", 8 << 20)
    proc.kill()
    await proc.wait()
    assert part.exists()  # the dead worker could not clean up after itself
    final = tmp_path / "assets/cloudlayer/killed" / f"{job.asset_id}.pdf"
    assert not final.exists()
    rerun = await cli(env, "run", "--until-idle", timeout_s=120)
    assert rerun.code == 0, rerun.err
    assert files_under(tmp_path / "assets") == [final]
    digest = hashlib.sha256()
    with final.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == content_sha256(job.seed, job.size)
    (status,) = await status_json(env)
    assert status["state"] == "done" and status["attempts"] == 2
