"""What `run` checks before any job meets the problem, through the real CLI: a provider without
its API key, and a destination this user cannot write. Both leave jobs waiting, never failed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.cli_support import cli, cli_environment, start, status_json
from worker.simulator.app import Simulator


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_a_provider_without_a_key_leaves_its_jobs_queued_and_says_which_variable(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_cloudlayer_job(id="keyless", pending_s=0, size=4096)
    env = cli_environment(tmp_path, sim)
    keyless = {k: v for k, v in env.items() if k != "CLOUDLAYER_API_KEY"}
    assert (await cli(keyless, "submit", "cloudlayer:keyless")).code == 0
    first = await cli({**keyless, "ASSET_WORKER_LOG_FORMAT": "json"}, "run", "--until-idle", "--no-http")
    assert first.code == 0, first.err
    warnings = [e for e in _events(first.out) if e["event"] == "provider_not_configured"]
    assert [(w["provider"], w["set"]) for w in warnings] == [("cloudlayer", "CLOUDLAYER_API_KEY")]
    (status,) = await status_json(env, "cloudlayer:keyless")
    assert status["state"] == "queued" and status["error"] is None
    assert sim.requests("cloudlayer.job") == []  # nothing was sent without a key
    second = await cli(env, "run", "--until-idle", "--no-http")
    assert second.code == 0, second.err
    (status,) = await status_json(env, "cloudlayer:keyless")
    assert status["state"] == "done"


@contextlib.contextmanager
def writes_denied(directory: Path) -> Iterator[None]:
    """Really deny writes in ``directory``: root passes any mode, so as root the directory is made
    immutable (EPERM for everyone); otherwise its mode is taken away (EACCES)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)


async def test_a_destination_it_cannot_write_is_reported_at_start_and_its_jobs_wait(
    sim: Simulator, tmp_path: Path
) -> None:
    job = sim.add_cloudlayer_job(id="denied", pending_s=0, size=4096)
    env = cli_environment(tmp_path, sim)
    env.update(ASSET_WORKER_DEST_RETRY_MAX_S="0.3", ASSET_WORKER_LOG_FORMAT="json")
    assets = tmp_path / "assets"
    assets.mkdir()
    assert (await cli(env, "submit", "cloudlayer:denied")).code == 0
    log = b""
    with writes_denied(assets):
        proc = await start(env, "run", "--no-http")
        try:
            assert proc.stdout is not None
            lines: list[dict[str, object]] = []

            async def read_until(event: str, **fields: object) -> None:
                nonlocal log
                while not any(
                    e["event"] == event and all(e.get(k) == v for k, v in fields.items()) for e in lines
                ):
                    line = await proc.stdout.readline()  # type: ignore[union-attr]
                    assert line, "run ended early"
                    log += line
                    if line.startswith(b"{"):
                        lines.append(json.loads(line))

            async with asyncio.timeout(30):
                await read_until("destination_not_writable")
                await read_until("destination_unavailable")
            (status,) = await status_json(env, "cloudlayer:denied")
            assert status["state"] == "downloading", status  # waiting, not failed
            assert status["error"]["code"] == "dest_not_writable"
        except BaseException:
            proc.kill()
            await proc.communicate()
            raise
    # An operator fixes it: the waiting job goes through on its next try.
    try:

        async def done() -> bool:
            (status,) = await status_json(env, "cloudlayer:denied")
            return bool(status["state"] == "done")

        async with asyncio.timeout(30):
            while True:
                if await done():
                    break
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    warning = next(e for e in _events((log + out).decode()) if e["event"] == "destination_not_writable")
    assert "not writable" in str(warning["problem"])
    stored = assets / "cloudlayer/denied" / f"{job.asset_id}.pdf"
    assert stored.stat().st_size == 4096
