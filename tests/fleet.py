"""A fleet of ``asset-worker run`` processes on one store, as replicas of a Deployment: started,
SIGKILLed and replaced by the tests that need real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.errors import StoreUnavailable
from worker.store import Store


@dataclass
class Replica:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path


class Fleet:
    """Replicas of ``asset-worker run`` on one store; each logs to its own file."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self._env = dict(env)
        self._log_dir = log_dir
        self.replicas: list[Replica] = []

    async def start(self) -> Replica:
        name = f"replica-{len(self.replicas)}"
        log_path = self._log_dir / f"{name}.log"
        env = dict(self._env, ASSET_WORKER_WORKER_ID=name)
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker.cli",
                "run",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        replica = Replica(name, proc, log_path)
        self.replicas.append(replica)
        return replica

    @property
    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.proc.returncode is None]

    def check(self) -> None:
        """Fail at once, with its log, if a replica exited that this test did not kill."""
        for replica in self.replicas:
            code = replica.proc.returncode
            if code is not None and code != -signal.SIGKILL:
                tail = replica.log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"{replica.name} exited with {code}:\n{tail}")

    async def stop(self) -> dict[str, int]:
        """SIGTERM every live replica once it runs (a replica still importing has no handler yet
        and would die of the signal, which says nothing about the drain); their exit codes."""
        codes: dict[str, int] = {}
        async with asyncio.timeout(60):
            while not all(_started(replica) for replica in self.alive):
                self.check()
                await asyncio.sleep(0.05)
        for replica in self.alive:
            replica.proc.send_signal(signal.SIGTERM)
        for replica in self.alive:
            codes[replica.name] = await asyncio.wait_for(replica.proc.wait(), 60)
        return codes

    async def kill_all(self) -> None:
        for replica in self.alive:
            replica.proc.kill()
            await replica.proc.wait()


def _started(replica: Replica) -> bool:
    """Whether the replica's runner started (its signal handlers are installed by then)."""
    return '"runner_started"' in replica.log_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def fleet_of(env: Mapping[str, str], log_dir: Path, size: int) -> AsyncIterator[Fleet]:
    fleet = Fleet(env, log_dir)
    try:
        for _ in range(size):
            await fleet.start()
        yield fleet
    finally:
        await fleet.kill_all()


def has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open (read from /proc)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    return True
    return False


async def until_finished(store: Store, fleet: Fleet) -> None:
    """Wait until no job in ``store`` is unfinished, failing at once if a replica died on its own.
    A store that does not answer for a moment (a database restarting) is asked again."""
    while True:
        fleet.check()
        with contextlib.suppress(StoreUnavailable):
            busy, _ = await store.unfinished()
            if not busy:
                return
        await asyncio.sleep(0.2)
