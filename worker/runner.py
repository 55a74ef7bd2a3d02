"""The long-lived loop: claim due jobs, run them with bounded concurrency, renew leases, drain.

Two independent pools: polls (cheap, many) and transfers (heavy, few), so a backlog of pending
jobs never delays the download of a finished one, and a few large downloads never stop polling.
Every task lives in one ``TaskGroup``.

Shutdown has two phases. When ``stop`` is set the runner stops claiming and lets in-flight work
finish for up to ``grace_s``; what is still running then is cancelled, which removes temp files
and releases the leases so another worker (or the next start) resumes those jobs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass, field

import structlog

from worker.aio import shielded
from worker.clock import Clock
from worker.engine import Engine
from worker.errors import LeaseLost
from worker.models import Job, JobError, JobKey
from worker.store.base import Phase, Store

log = structlog.get_logger("worker.runner")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerSettings:
    owner: str
    concurrency: int
    poll_concurrency: int
    lease_s: float
    claim_interval_s: float
    grace_s: float


@dataclass(slots=True)
class _Active:
    job: Job
    phase: Phase
    task: asyncio.Task[None] | None = None
    last_progress: float = 0.0
    lost: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Runner:
    def __init__(self, *, store: Store, engine: Engine, settings: RunnerSettings, clock: Clock) -> None:
        self._store = store
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._active: dict[JobKey, _Active] = {}
        self._wake = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    async def run(self, *, stop: asyncio.Event, until_idle: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``until_idle``, until no job is left unfinished)."""
        log.info("runner_started", owner=self._settings.owner, until_idle=until_idle)
        async with asyncio.TaskGroup() as group:
            heartbeat = group.create_task(self._heartbeat())
            try:
                await self._claim_loop(group, stop, until_idle)
                await self._drain()
            finally:
                heartbeat.cancel()
        log.info("runner_stopped", owner=self._settings.owner)

    async def _claim_loop(self, group: asyncio.TaskGroup, stop: asyncio.Event, until_idle: bool) -> None:
        while not stop.is_set():
            self._wake.clear()
            claimed = await self._claim(group, Phase.TRANSFER, self._settings.concurrency)
            claimed += await self._claim(group, Phase.POLL, self._settings.poll_concurrency)
            count, next_due = await self._store.unfinished()
            if until_idle and count == 0 and not self._active:
                log.info("runner_idle")
                return
            timeout = self._settings.claim_interval_s
            if next_due is not None:
                timeout = min(timeout, max(next_due - self._clock.now(), 0.0))
            if claimed and timeout == 0.0:
                continue
            await _wait_any([self._wake.wait(), stop.wait()], timeout_s=max(timeout, 0.01))

    async def _claim(self, group: asyncio.TaskGroup, phase: Phase, limit: int) -> int:
        running = sum(1 for a in self._active.values() if a.phase is phase)
        free = limit - running
        if free <= 0:
            return 0
        jobs = await self._store.claim(
            owner=self._settings.owner,
            phase=phase,
            now=self._clock.now(),
            lease_s=self._settings.lease_s,
            limit=free,
        )
        for job in jobs:
            active = _Active(job=job, phase=phase, last_progress=self._clock.now())
            self._active[job.key] = active
            active.task = group.create_task(self._run_job(active), name=f"{phase.value}:{job.key}")
        return len(jobs)

    async def _run_job(self, active: _Active) -> None:
        job, owner = active.job, self._settings.owner

        def touch() -> None:
            active.last_progress = self._clock.now()

        try:
            if active.phase is Phase.POLL:
                if await self._engine.poll(job, owner=owner, touch=touch):
                    self._wake.set()
            else:
                await self._engine.transfer(job, owner=owner, touch=touch)
        except asyncio.CancelledError:
            if not active.lost:
                await shielded(self._store.release(job.key, owner=owner, now=self._clock.now()))
                log.info("job_released", job=str(job.key))
            raise
        except LeaseLost:
            log.warning("lease_lost", job=str(job.key))
        except Exception as exc:
            # A bug or an unexpected library error: record it, back off, never crash the runner.
            log.exception("job_crashed", job=str(job.key), error=repr(exc))
            with contextlib.suppress(LeaseLost):
                await self._store.retry_later(
                    job.key,
                    owner=owner,
                    now=self._clock.now(),
                    due_at=self._clock.now() + max(self._settings.claim_interval_s, 5.0),
                    error=JobError("internal_error", repr(exc)),
                )
        finally:
            self._active.pop(job.key, None)
            active.done.set()
            self._wake.set()

    async def _heartbeat(self) -> None:
        """Renew the leases of jobs that made progress within the last lease period.

        A job that is stuck (no bytes, no poll answer, no deliberate wait) for a whole lease
        period is not renewed: its lease runs out and another worker may take it over.
        """
        interval = self._settings.lease_s / 3
        while True:
            await self._clock.sleep(interval)
            now = self._clock.now()
            for key, active in list(self._active.items()):
                if now - active.last_progress > self._settings.lease_s:
                    continue
                try:
                    await self._store.renew(
                        key, owner=self._settings.owner, now=now, lease_s=self._settings.lease_s
                    )
                except LeaseLost:
                    log.warning("lease_lost", job=str(key))
                    active.lost = True
                    if active.task is not None:
                        active.task.cancel()

    async def _drain(self) -> None:
        """Phase one: let in-flight jobs finish within the grace period; phase two: cancel them."""
        tasks = [a.task for a in self._active.values() if a.task is not None]
        if not tasks:
            return
        log.info("runner_draining", in_flight=len(tasks), grace_s=self._settings.grace_s)
        _done, still_running = await asyncio.wait(tasks, timeout=self._settings.grace_s)
        if still_running:
            log.warning("runner_grace_expired", cancelled=len(still_running))
            for task in still_running:
                task.cancel()
            await asyncio.wait(still_running)


async def _wait_any(aws: list[Awaitable[object]], *, timeout_s: float) -> None:
    """Wait until any of ``aws`` completes or ``timeout_s`` passes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
