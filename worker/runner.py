"""The long-lived loop: claim due jobs, run them with bounded concurrency, renew leases, drain.

Two independent pools: polls (cheap, many) and transfers (heavy, few), so a backlog of pending
jobs never delays the download of a finished one, and a few large downloads never stop polling.
Every task lives in one ``TaskGroup``.

Shutdown has two phases. When ``stop`` is set the runner stops claiming and lets in-flight work
finish for up to ``grace_s``; what is still running then is cancelled, which removes temp files
and releases the leases so another worker (or the next start) resumes those jobs at once.

A store that becomes unusable (``StoreUnusable``: a damaged or read-only file), whether the claim
loop, a renewal or a job finds it out, ends the run the same way: no more claims, in-flight work
gets its grace period (a job ends at its next store write, which fails alike; one still running is
cancelled, its temp file removed), then ``run`` raises the store's error for the command to report.
Leases that could not be released expire, and a worker on the repaired store takes those jobs up
again, the interrupted transfer's attempt counted as after a crash.

A job canceled through the API loses its lease (the store drops it): the heartbeat's next renewal
raises ``LeaseLost`` and the task is cancelled, which removes its temp file or aborts its upload.
In the process that served the cancel, ``abandon`` does the same at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from worker.aio import shielded
from worker.clock import Clock
from worker.engine import Engine
from worker.errors import LeaseLost, StoreUnavailable, StoreUnusable, WorkerError, describe
from worker.lease import Lease, Progress, current_progress, new_token
from worker.models import Job, JobError, JobKey, TransferProgress
from worker.store.base import Phase, ProgressReport, Store

log = structlog.get_logger("worker.runner")

# How long a cancelled job's lease release may take before it is left to expire instead.
RELEASE_TIMEOUT_S = 3.0
# How long a task whose lease vanished may take to end by itself before it is cancelled.
SELF_RELEASE_GRACE_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerSettings:
    owner: str
    concurrency: int
    poll_concurrency: int
    lease_s: float
    claim_interval_s: float
    grace_s: float
    # How often downloads' progress is written to the store (0: never; the app passes
    # ASSET_WORKER_PROGRESS_INTERVAL_S) and logged as transfer_progress (0: never).
    progress_interval_s: float = 0.0
    progress_log_interval_s: float = 0.0
    # Providers this worker cannot serve yet, each with the variable to set (its API key): their
    # jobs are never claimed here, so they wait, queued, for a worker that has the key.
    unconfigured: Mapping[str, str] = field(default_factory=dict)
    # The providers it does serve (for counting one provider's waiting jobs by leaving out the rest).
    served: tuple[str, ...] = ()


# A destination's periodic clean-up and its interval in seconds (the S3 janitor).
Housekeeping = tuple[Callable[[], Awaitable[None]], float]


@dataclass(slots=True)
class _Active:
    job: Job
    phase: Phase
    lease: Lease
    task: asyncio.Task[None] | None = None
    lost: bool = False


class Runner:
    def __init__(
        self,
        *,
        store: Store,
        engine: Engine,
        settings: RunnerSettings,
        clock: Clock,
        housekeeping: Housekeeping | None = None,
    ) -> None:
        self._housekeeping = housekeeping
        self._store = store
        self._engine = engine
        self._settings = settings
        self._clock = clock
        self._active: dict[JobKey, _Active] = {}
        self._wake = asyncio.Event()
        # The first StoreUnusable a job or a renewal ran into: the claim loop ends the run with it.
        self._unusable: StoreUnusable | None = None

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def in_flight_by_phase(self) -> dict[Phase, int]:
        counts = dict.fromkeys(Phase, 0)
        for active in self._active.values():
            counts[active.phase] += 1
        return counts

    async def wait_for_poll_room(self) -> None:
        """Return once this process's poll pool has a free slot: a mirror walk waits here before
        each page, so the polls of submitted jobs spend the vendor's read budget first."""
        limit = self._settings.poll_concurrency
        while sum(1 for a in list(self._active.values()) if a.phase is Phase.POLL) >= limit:
            await self._clock.sleep(self._settings.claim_interval_s)

    def wake(self) -> None:
        """Look for due work now instead of at the next claim interval (a job was just submitted)."""
        self._wake.set()

    def abandon(self, key: JobKey) -> bool:
        """Stop working on ``key`` without touching its row (it was canceled: the lease is gone).

        The task is cancelled like one whose lease was lost: its temp file is removed or its upload
        aborted, and nothing is released. False when this process does not hold the job.
        """
        active = self._active.get(key)
        if active is None or active.lost or active.task is None or active.task.done():
            return False
        log.info("job_abandoned", job=str(key))
        active.lost = active.lease.revoked = True
        active.task.cancel()
        return True

    async def run(self, *, stop: asyncio.Event, until_idle: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``until_idle``, until no job is left unfinished).

        Raises ``StoreUnusable``, after draining, when the store became unusable.
        """
        log.info("runner_started", worker_id=self._settings.owner, until_idle=until_idle)
        await self._warn_unconfigured()
        async with asyncio.TaskGroup() as group:
            background = [group.create_task(self._heartbeat())]
            if self._settings.progress_interval_s > 0:
                background.append(group.create_task(self._report_progress()))
            if self._housekeeping is not None:
                background.append(group.create_task(self._housekeep(*self._housekeeping)))
            try:
                # Caught here, not left to the TaskGroup: it would cancel in-flight jobs without
                # their grace period and wrap the error in an ExceptionGroup.
                with contextlib.suppress(StoreUnusable):
                    await self._claim_loop(group, stop, until_idle)
                await self._drain()
            finally:
                for task in background:
                    task.cancel()
        if self._unusable is not None:
            log.error(
                "runner_stopped",
                worker_id=self._settings.owner,
                error=self._unusable.code,
                store_transactions=self._store.transactions,
            )
            raise self._unusable
        log.info(
            "runner_stopped", worker_id=self._settings.owner, store_transactions=self._store.transactions
        )

    @property
    def _skip(self) -> tuple[str, ...]:
        return tuple(self._settings.unconfigured)

    async def _warn_unconfigured(self) -> None:
        """Once, at start: each provider this worker cannot serve that has jobs waiting, with the
        variable that would let it (a missing key is otherwise found out by nobody, its jobs
        silently waiting). A store that cannot answer now only costs the warning."""
        for provider, variable in self._settings.unconfigured.items():
            # Every other provider's jobs are left out: what is left is this one's (and those of a
            # provider no worker knows, which fail at their first poll anyway).
            skip = [name for name in (*self._skip, *self._settings.served) if name != provider]
            try:
                waiting, _ = await self._store.unfinished(skip_providers=skip)
            except WorkerError as exc:
                log.warning("store_unavailable", error=exc.message)
                return
            if waiting:
                log.warning(
                    "provider_not_configured",
                    provider=provider,
                    set=variable,
                    message=f"{provider} jobs are waiting and this worker has no {variable}: they stay "
                    "queued until a worker that has it takes them",
                )

    def _store_unusable(self, exc: StoreUnusable, **context: str) -> None:
        """Note that the store refuses for good; the claim loop stops at its next turn."""
        log.error("store_unusable", error=exc.message, **context)
        if self._unusable is None:
            self._unusable = exc
        self._wake.set()

    async def _claim_loop(self, group: asyncio.TaskGroup, stop: asyncio.Event, until_idle: bool) -> None:
        store_was_down = False
        while not stop.is_set():
            if self._unusable is not None:
                raise self._unusable
            self._wake.clear()
            try:
                if store_was_down:
                    # Our leases may have run low during the outage: renew what is still working
                    # before claiming, or this very loop would take its own jobs back.
                    await self._renew_alive()
                claimed = await self._claim(group, Phase.TRANSFER, self._settings.concurrency)
                claimed += await self._claim(group, Phase.POLL, await self._poll_room())
                busy, next_due = await self._store.unfinished(skip_providers=self._skip)
            except StoreUnusable as exc:
                # Waiting cannot help (a damaged or read-only file): stop claiming and let the
                # command exit with the reason, rather than retry forever.
                self._store_unusable(exc)
                raise
            except Exception as exc:
                # Keep running whatever the store says: it may come back (a locked file, a restarted
                # or failed-over database), and a crash here would take every in-flight job with it.
                if isinstance(exc, StoreUnavailable):
                    log.warning("store_unavailable", error=exc.message)
                else:
                    log.exception("claim_failed", error=describe(exc))
                store_was_down = True
                await _wait_any([stop.wait()], timeout_s=self._settings.claim_interval_s)
                continue
            store_was_down = False
            if until_idle and not busy and not self._active:
                log.info("runner_idle")
                return
            timeout = self._settings.claim_interval_s
            if next_due is not None and claimed:
                timeout = min(timeout, max(next_due - self._clock.now(), 0.0))
            elif next_due is not None and next_due > self._clock.now():
                timeout = min(timeout, next_due - self._clock.now())
            # Due work that was not claimed waits for a free slot (the wake event) or the interval:
            # looping at once would only ask the store the same question again.
            if claimed and timeout == 0.0:
                continue
            await _wait_any([self._wake.wait(), stop.wait()], timeout_s=max(timeout, 0.01))

    async def _poll_room(self) -> int:
        """How many polls may run at once now: all of the poll pool, unless many jobs already polled
        ready are waiting for a transfer slot. Polling far ahead of the transfers only builds a
        queue of ready jobs while its polls take the CPU the transfers need (with 100,000 jobs
        queued, a worker had polled 9,800 ready by the time it had stored 1,000); so polls stop
        while a poll pool's worth of ready jobs wait (at least twice the transfer pool's), and the
        ones running carry on. A few long downloads never stop polling: that takes more ready jobs
        waiting than the poll pool holds."""
        ahead = max(2 * self._settings.concurrency, self._settings.poll_concurrency)
        waiting = await self._store.due_count(
            phase=Phase.TRANSFER, now=self._clock.now(), limit=ahead, skip_providers=self._skip
        )
        return self._settings.poll_concurrency if waiting < ahead else 0

    async def _claim(self, group: asyncio.TaskGroup, phase: Phase, limit: int) -> int:
        running = sum(1 for a in self._active.values() if a.phase is phase)
        free = limit - running
        if free <= 0:
            return 0
        token = new_token(self._settings.owner)
        jobs = await self._store.claim(
            owner=token,
            phase=phase,
            now=self._clock.now(),
            lease_s=self._settings.lease_s,
            limit=free,
            skip_providers=self._skip,
        )
        for job in jobs:
            stale = self._active.get(job.key)
            if stale is not None:
                # Our own earlier task let the lease run out (stuck on a silent socket) and the job
                # came back: the new claim's token fences the old task off; stop it too.
                log.warning("lease_expired_in_flight", job=str(job.key))
                stale.lost = stale.lease.revoked = True
                if stale.task is not None:
                    stale.task.cancel()
            lease = Lease(token, Progress(self._clock.now), functools.partial(self._confirm, job.key, token))
            active = _Active(job=job, phase=phase, lease=lease)
            self._active[job.key] = active
            active.task = group.create_task(self._run_job(active), name=f"{phase.value}:{job.key}")
        return len(jobs)

    async def _confirm(self, key: JobKey, token: str) -> None:
        await self._store.renew(key, owner=token, now=self._clock.now(), lease_s=self._settings.lease_s)

    async def _run_job(self, active: _Active) -> None:
        job, lease = active.job, active.lease
        current_progress.set(lease.progress)
        try:
            if active.phase is Phase.POLL:
                if await self._engine.poll(job, lease):
                    self._wake.set()
            else:
                await self._engine.transfer(job, lease)
        except asyncio.CancelledError:
            if not active.lost:
                release = self._store.release(job.key, owner=lease.token, now=self._clock.now())
                try:
                    # Bounded: with the store unreachable a release would wait out the store's retries,
                    # and a stop must not hang on it; an unreleased lease simply expires.
                    await shielded(asyncio.wait_for(release, timeout=RELEASE_TIMEOUT_S))
                    log.info("job_released", job=str(job.key))
                except (WorkerError, TimeoutError) as exc:
                    log.warning("job_release_failed", job=str(job.key), error=describe(exc))
            raise
        except LeaseLost:
            log.warning("lease_lost", job=str(job.key))
        except StoreUnavailable as exc:
            # The lease will expire and the job comes back; nothing else to do from here.
            log.warning("store_unavailable", job=str(job.key), error=exc.message)
        except StoreUnusable as exc:
            # Not this job's fault, and nothing can be recorded for it (not even a retry_later):
            # its lease expires, and the run ends.
            self._store_unusable(exc, job=str(job.key))
        except Exception as exc:
            # A bug or an unexpected library error: record it, back off, never crash the runner.
            log.exception("job_crashed", job=str(job.key), error=describe(exc))
            with contextlib.suppress(Exception):
                await self._store.retry_later(
                    job.key,
                    owner=lease.token,
                    now=self._clock.now(),
                    due_at=self._clock.now() + max(self._settings.claim_interval_s, 5.0),
                    error=JobError("internal_error", describe(exc)),
                )
        finally:
            if self._active.get(job.key) is active:
                del self._active[job.key]
            self._wake.set()

    async def _heartbeat(self) -> None:
        """Renew the leases of jobs that are alive: progress within the last lease period, or a
        deliberate wait. A job stuck for a whole lease period is not renewed: its lease runs out
        and another worker may take it over."""
        while True:
            await self._clock.sleep(self._settings.lease_s / 3)
            await self._renew_alive()

    async def _renew_alive(self) -> None:
        """Renew every live job's lease, all at once: one slow renewal (a store retrying through an
        outage) must not leave the others to expire."""
        now = self._clock.now()
        alive = [
            (key, active)
            for key, active in list(self._active.items())
            if active.task is not None
            and not active.task.done()
            and active.lease.progress.alive(now, self._settings.lease_s)
        ]
        await asyncio.gather(*(self._renew(key, active) for key, active in alive))

    async def _renew(self, key: JobKey, active: _Active) -> None:
        task = active.task
        try:
            # The clock is read per renewal: a renewal that waited out an outage must not write an
            # expiry that already passed.
            await self._store.renew(
                key, owner=active.lease.token, now=self._clock.now(), lease_s=self._settings.lease_s
            )
        except LeaseLost:
            if task is None:
                return
            # The task's own last write (finish, reschedule, hand-over to transfer) drops the lease
            # too, and may have committed just before this renewal: give it a moment to end by itself
            # rather than cancel it half-way through its last log line and metrics.
            await asyncio.wait([task], timeout=SELF_RELEASE_GRACE_S)
            if task.done():
                return
            log.warning("lease_lost", job=str(key))
            active.lost = active.lease.revoked = True
            task.cancel()
        except StoreUnavailable as exc:
            log.warning("store_unavailable", job=str(key), error=exc.message)
        except StoreUnusable as exc:
            self._store_unusable(exc, job=str(key))
        except Exception as exc:
            log.exception("lease_renewal_failed", job=str(key), error=describe(exc))

    def transfers(self) -> list[tuple[JobKey, TransferProgress]]:
        """Every download under way in this process, measured now (for a live display)."""
        return [
            (key, active.lease.meter.snapshot())
            for key, active in list(self._active.items())
            if active.lease.meter is not None and not active.lost
        ]

    async def _report_progress(self) -> None:
        """Write every download's progress to the store at the progress cadence (one transaction
        for all of them), so ``status`` and the API of any replica show it; log each download that
        has run a log interval with a ``transfer_progress`` line, every log interval.

        Progress is advisory: a store that cannot take it now is logged and tried next time, and
        never disturbs the transfers."""
        interval = self._settings.progress_interval_s
        log_every = self._settings.progress_log_interval_s
        next_log = self._clock.now() + log_every
        while True:
            await self._clock.sleep(interval)
            reports = [
                ProgressReport(key, active.lease.token, progress)
                for key, active in list(self._active.items())
                if active.lease.meter is not None and not active.lost
                for progress in [active.lease.meter.snapshot()]
            ]
            if not reports:
                continue
            try:
                await self._store.record_progress(reports)
            except StoreUnusable as exc:
                keys = [str(report.key) for report in reports]
                where = {"job": keys[0]} if len(keys) == 1 else {"jobs": ", ".join(keys)}
                self._store_unusable(exc, **where)
            except WorkerError as exc:
                log.warning("progress_not_recorded", error=exc.code, message=exc.message)
            now = self._clock.now()
            if log_every and now >= next_log:
                next_log = now + log_every
                for report in reports:
                    if now - report.progress.started_at >= log_every:
                        _log_progress(report)

    async def _housekeep(self, chore: Callable[[], Awaitable[None]], interval_s: float) -> None:
        """Run a destination's clean-up every ``interval_s`` (its first run happens when the
        destination opens); failures are logged, never fatal (the next round tries again)."""
        while True:
            await self._clock.sleep(interval_s)
            try:
                await chore()
            except WorkerError as exc:
                log.warning("housekeeping_failed", error=exc.code, message=exc.message)

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


def _log_progress(report: ProgressReport) -> None:
    progress = report.progress
    eta = progress.eta_s
    log.info(
        "transfer_progress",
        job=str(report.key),
        asset=progress.asset_id,
        bytes=progress.bytes,
        total=progress.total,
        percent=None if not progress.total else round(100 * progress.bytes / progress.total, 1),
        rate_bps=round(progress.rate_bps),
        eta_s=None if eta is None else round(eta, 1),
    )


async def _wait_any(aws: list[Awaitable[object]], *, timeout_s: float) -> None:
    """Wait until any of ``aws`` completes or ``timeout_s`` passes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
