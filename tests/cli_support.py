"""Driving ``asset-worker`` as users run it: a real process, its environment pointed at the
simulator, its status JSON, its files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from worker.simulator.app import Simulator


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_environment(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    """An environment pointing the CLI at the simulator, with a store and destination in tmp_path.

    HTTP listens on a free loopback port (the default 8080 would collide between tests, and with
    anything else on the machine); ``listening_port`` reads the one it got from the log.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSET_WORKER_", "CLOUDLAYER_"))}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)  # a test run under systemd must not notify systemd
    env.update(
        ASSET_WORKER_STORE=f"sqlite:///{tmp_path / 'cli.db'}",
        ASSET_WORKER_DEST=f"file://{tmp_path / 'assets'}",
        ASSET_WORKER_POLL_INITIAL_S="0.05",
        ASSET_WORKER_POLL_MAX_S="0.2",
        ASSET_WORKER_CLAIM_INTERVAL_S="0.05",
        ASSET_WORKER_RETRY_INITIAL_S="0.05",
        ASSET_WORKER_RETRY_MAX_S="0.2",
        ASSET_WORKER_LISTEN="127.0.0.1:0",
        # The simulator's file host is on loopback: allow exactly its address, nothing more.
        ASSET_WORKER_ALLOW_NETWORKS=sim.host_network,
        CLOUDLAYER_API_KEY=sim.api_key,
        CLOUDLAYER_BASE_URL=sim.url,
    )
    return env


# Every CLI process a test started; the ones still running when it ends are killed and reaped
# (``kill_leftover_processes``), so a test that fails half-way leaves no worker behind, and no
# process object is collected unreaped (a ResourceWarning, an error here, in some later test).
STARTED: list[asyncio.subprocess.Process] = []
STARTED_BLOCKING: list[subprocess.Popen[bytes]] = []


def worker_command(*args: str) -> list[str]:
    """The command line of ``asset-worker ARGS``, run by this interpreter."""
    return [sys.executable, "-m", "worker.cli", *args]


async def start(env: Mapping[str, str], *args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *worker_command(*args),
        env=dict(env),
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    STARTED.append(proc)
    return proc


def popen(env: Mapping[str, str], log: IO[bytes], *args: str) -> subprocess.Popen[bytes]:
    """The CLI as a blocking ``Popen``, its output to ``log``: for tests that must hold the event
    loop (and with it the simulator) while the worker runs. A file, not a pipe: a pipe nobody reads
    while the loop is held could fill and block the worker."""
    proc = subprocess.Popen(
        worker_command(*args),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    STARTED_BLOCKING.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()


async def kill_leftover_processes() -> None:
    """Kill and reap every process ``start`` or ``popen`` made that is still running."""
    while STARTED:
        proc = STARTED.pop()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    while STARTED_BLOCKING:
        await asyncio.to_thread(stop, STARTED_BLOCKING.pop())


async def cli(
    env: Mapping[str, str], *args: str, timeout_s: float = 60, stdin: bytes | None = None
) -> Result:
    """Run the CLI to completion while this event loop keeps serving the simulator; ``stdin`` is
    what its standard input reads (nothing, by default)."""
    proc = await start(env, *args, stdin=stdin is not None)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def sha256_of(path: Path) -> str:
    """The sha256 of a file on disk, read in 4 MiB blocks (files in tests reach GiBs)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def only_resume_parts(root: Path) -> bool:
    """Nothing under ``root`` but, at most, the hidden parts an interrupted download keeps for the
    next holder (``.<name>.resume.part`` and its record): no file under a final name, no other
    temp file."""
    return all(p.name.endswith((".resume.part", ".resume.json")) for p in files_under(root))


async def wait_for_part_file(root: Path, min_bytes: int, timeout_s: float = 20) -> Path:
    """Wait until a transfer is visibly under way: a temp file with at least ``min_bytes``."""
    async with asyncio.timeout(timeout_s):
        while True:
            for part in (p for p in files_under(root) if p.name.endswith(".part")):
                # A part can be gone between the listing and the stat: a transfer that restarts
                # removes its temp file and opens another.
                with contextlib.suppress(FileNotFoundError):
                    if part.stat().st_size >= min_bytes:
                        return part
            await asyncio.sleep(0.005)


async def status_json(env: Mapping[str, str], *keys: str) -> list[dict[str, Any]]:
    result = await cli(env, "status", "--json", *keys)
    assert result.code == 0, result.err
    parsed: list[dict[str, Any]] = json.loads(result.out)
    return parsed
