"""Leases as the code working on a job sees them: fencing tokens, progress, deliberate waits.

The unit tests pin ``Progress``, ``deliberate_sleep``, ``new_token`` and ``Lease``; the runner tests
drive a real ``Runner`` on a real SQLite store with a scripted engine and a clock the test moves,
so a lease expires (or does not) exactly when the test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest

from worker.engine import Engine
from worker.errors import LeaseLost
from worker.lease import Lease, Progress, current_progress, deliberate_sleep, new_token
from worker.models import Job, JobKey, JobState
from worker.runner import Runner, RunnerSettings
from worker.store import Store, open_store

A = JobKey("layers", "job-a")
LEASE_S = 10.0


class ManualClock:
    """Wall time that moves only when the test moves it. ``sleep`` (only the runner's heartbeat
    calls it) yields briefly and counts; the test moves time at the heartbeat's next sleep, between
    two renewal rounds, so no renewal decided before a move lands after it."""

    def __init__(self, now: float) -> None:
        self.t = now
        self.sleeps = 0
        self._move_to: float | None = None
        self._slept = asyncio.Condition()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        del seconds
        async with self._slept:
            if self._move_to is not None:
                self.t, self._move_to = self._move_to, None
            self.sleeps += 1
            self._slept.notify_all()
        await asyncio.sleep(0.002)

    async def move_to(self, t: float) -> None:
        """Set the time to ``t`` at the heartbeat's next sleep, and wait until it is."""
        async with self._slept:
            self._move_to = t
            await self._slept.wait_for(lambda: self._move_to is None)

    async def heartbeats(self, count: int) -> None:
        """Wait until the heartbeat has gone to sleep ``count`` more times (after a move, two mean
        a whole renewal round ran at the new time)."""
        target = self.sleeps + count
        async with self._slept:
            await self._slept.wait_for(lambda: self.sleeps >= target)


class RecordingSleep:
    """A sleep that records its delays and whether the current job was alive during each."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.alive_during: list[bool] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        progress = current_progress.get()
        # Far beyond any window, while the sleep is still running.
        self.alive_during.append(progress is not None and progress.alive(progress.last + 1e6, 1.0))


# -- Progress -------------------------------------------------------------------------------


def test_progress_starts_now_and_touch_moves_it() -> None:
    """A new job counts as having progressed when its Progress is made; touch moves that moment."""
    clock = ManualClock(100.0)
    progress = Progress(clock.now)
    assert progress.last == 100.0
    clock.t = 130.0
    progress.touch()
    assert progress.last == 130.0


def test_progress_alive_window_boundaries() -> None:
    """Alive while the last progress is at most ``window_s`` old (inclusive), dead just after."""
    progress = Progress(lambda: 1000.0)
    assert progress.alive(1000.0, 10.0)
    assert progress.alive(1009.5, 10.0)
    assert progress.alive(1010.0, 10.0)
    assert not progress.alive(1010.001, 10.0)
    assert not progress.alive(5000.0, 10.0)


def test_lease_touch_counts_as_progress() -> None:
    """Lease.touch (bytes arrived) restarts the silence window of its progress."""
    clock = ManualClock(0.0)
    lease = Lease("w1/00", Progress(clock.now), _never_confirmed)
    clock.t = 50.0
    assert not lease.progress.alive(50.0, 10.0)
    lease.touch()
    assert lease.progress.last == 50.0
    assert lease.progress.alive(60.0, 10.0)


def test_waiting_keeps_a_silent_job_alive_and_counts_as_progress_when_it_ends() -> None:
    """Inside ``waiting`` the job is alive however long nothing moves; nested waits count until
    the last ends; the end of a wait is progress, so the window starts afresh from it."""
    clock = ManualClock(0.0)
    progress = Progress(clock.now)
    with progress.waiting():
        assert progress.alive(1e9, 10.0)
        with progress.waiting():
            assert progress.alive(1e9, 10.0)
        clock.t = 500.0
        assert progress.alive(1e9, 10.0)  # the outer wait still runs
        clock.t = 600.0
    assert progress.last == 600.0
    assert progress.alive(610.0, 10.0)
    assert not progress.alive(610.5, 10.0)


def test_a_wait_that_fails_still_ends() -> None:
    """A wait left by an exception stops keeping the job alive (no leaked wait count)."""
    progress = Progress(lambda: 0.0)
    with contextlib.suppress(RuntimeError), progress.waiting():
        raise RuntimeError("boom")
    assert not progress.alive(11.0, 10.0)


# -- deliberate_sleep -----------------------------------------------------------------------


async def test_deliberate_sleep_marks_the_current_job_waiting() -> None:
    """With a current job, the sleep runs inside a deliberate wait (alive throughout) and its end
    is progress."""
    clock = ManualClock(0.0)
    progress = Progress(clock.now)
    sleep = RecordingSleep()
    clock.t = 42.0
    token = current_progress.set(progress)
    try:
        await deliberate_sleep(sleep, 25.0)
    finally:
        current_progress.reset(token)
    assert sleep.delays == [25.0]
    assert sleep.alive_during == [True]
    assert progress.last == 42.0
    assert not progress.alive(52.5, 10.0)  # the wait is over: silence counts again


async def test_deliberate_sleep_without_a_job_just_sleeps() -> None:
    """Outside a job (no current progress) the sleep is the plain sleep, for the full delay."""
    sleep = RecordingSleep()
    await deliberate_sleep(sleep, 3.5)
    assert sleep.delays == [3.5]
    assert sleep.alive_during == [False]


# -- tokens ---------------------------------------------------------------------------------


def test_every_token_is_new_and_names_its_worker() -> None:
    """Each claim's token is distinct, even from one worker id, and reads as the worker id
    followed by eight hex digits."""
    tokens = [new_token("w1") for _ in range(200)]
    assert len(set(tokens)) == len(tokens)
    assert all(re.fullmatch(r"w1/[0-9a-f]{8}", t) for t in tokens)
    assert new_token("w2").startswith("w2/")


async def test_lease_carries_its_token_progress_and_fence() -> None:
    """A Lease hands out the token and progress it was made with, and confirm() runs its fence."""
    calls: list[str] = []

    async def confirm() -> None:
        calls.append("confirmed")

    progress = Progress(lambda: 0.0)
    lease = Lease("w1/abcd0123", progress, confirm)
    assert lease.token == "w1/abcd0123"
    assert lease.progress is progress
    await lease.confirm()
    assert calls == ["confirmed"]


async def _never_confirmed() -> None:
    raise AssertionError("not expected to confirm")


# -- the runner's use of leases -------------------------------------------------------------


class ScriptedEngine:
    """Stands in for the Engine: every poll runs the next script, given the job and its lease."""

    def __init__(self, store: Store, *scripts: Callable[[Job, Lease], Awaitable[None]]) -> None:
        self._store = store
        self._scripts = list(scripts)
        self.leases: list[Lease] = []
        self._polled = asyncio.Condition()

    async def polls(self, count: int) -> None:
        """Wait until ``count`` polls have started."""
        async with self._polled:
            await self._polled.wait_for(lambda: len(self.leases) >= count)

    async def poll(self, job: Job, lease: Lease) -> bool:
        async with self._polled:
            self.leases.append(lease)
            self._polled.notify_all()
        if self._scripts:
            await self._scripts.pop(0)(job, lease)
        else:
            # A poll nobody expected: end the job, so a test whose expectation broke ends quickly.
            await self._store.finish(job.key, owner=lease.token, now=job.due_at, state=JobState.FAILED)
        return False

    async def transfer(self, job: Job, lease: Lease) -> None:
        raise AssertionError("no transfer in these tests")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path}/s.db")
    try:
        yield s
    finally:
        await s.close()


def make_runner(store: Store, engine: ScriptedEngine, clock: ManualClock) -> Runner:
    settings = RunnerSettings(
        owner="w1", concurrency=1, poll_concurrency=2, lease_s=LEASE_S, claim_interval_s=0.005, grace_s=1.0
    )
    return Runner(store=store, engine=cast(Engine, engine), settings=settings, clock=clock)


@contextlib.asynccontextmanager
async def running(runner: Runner) -> AsyncIterator[asyncio.Task[None]]:
    """The runner working until idle in a task, stopped if the test leaves early (a failure)."""
    task = asyncio.create_task(runner.run(stop=asyncio.Event(), until_idle=True))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_job_reclaimed_by_the_same_runner_gets_a_new_token(store: Store) -> None:
    """A task stuck past its lease is fenced off by the next claim of its job, even in the same
    process: the new claim's token differs, so the stale task's writes and fence raise LeaseLost,
    while the new holder's succeed."""
    clock = ManualClock(100.0)
    await store.submit(A, now=100.0)
    stale_cancelled = asyncio.Event()
    go = asyncio.Event()

    async def stuck(job: Job, lease: Lease) -> None:
        try:
            await asyncio.Event().wait()  # a silent socket: no progress, ever
        except asyncio.CancelledError:
            stale_cancelled.set()
            raise

    async def finish_when_told(job: Job, lease: Lease) -> None:
        await go.wait()
        await store.finish(job.key, owner=lease.token, now=clock.now(), state=JobState.DONE)

    engine = ScriptedEngine(store, stuck, finish_when_told)
    runner = make_runner(store, engine, clock)
    async with asyncio.timeout(30), running(runner) as run:
        await engine.polls(1)
        await clock.move_to(100.0 + LEASE_S + 1)  # silent for longer than the lease: taken back
        await engine.polls(2)
        first, second = engine.leases
        assert first.token != second.token
        assert first.token.startswith("w1/") and second.token.startswith("w1/")
        (job,) = await store.get([A])
        assert job.lease_owner == second.token
        with pytest.raises(LeaseLost):
            await store.reschedule(
                A, owner=first.token, now=clock.now(), due_at=999.0, polls=9, provider_state={}
            )
        with pytest.raises(LeaseLost):
            await first.confirm()
        await second.confirm()  # the new holder's fence holds
        await stale_cancelled.wait()
        go.set()
        await run
    (job,) = await store.get([A])
    assert (job.state, job.polls, job.due_at) == (JobState.DONE, 0, 100.0)


async def test_a_deliberate_wait_longer_than_the_lease_keeps_the_job(store: Store) -> None:
    """A job sleeping on purpose (a Retry-After) for longer than the lease, silent all along, is
    renewed throughout: nobody takes it over, and its write after the wait succeeds."""
    clock = ManualClock(100.0)
    await store.submit(A, now=100.0)
    expiries: list[float] = []

    async def slow_wait(seconds: float) -> None:
        # Wall time passes in steps; at each, the heartbeat gets to renew (or not).
        for _ in range(int(seconds // 2)):
            await clock.move_to(clock.now() + 2.0)
            await clock.heartbeats(2)
            (job,) = await store.get([A])
            expiries.append((job.lease_expires_at or 0.0) - clock.now())

    async def wait_then_finish(job: Job, lease: Lease) -> None:
        await deliberate_sleep(slow_wait, 3 * LEASE_S)
        await store.finish(job.key, owner=lease.token, now=clock.now(), state=JobState.DONE)

    engine = ScriptedEngine(store, wait_then_finish)
    runner = make_runner(store, engine, clock)
    async with asyncio.timeout(30):
        await runner.run(stop=asyncio.Event(), until_idle=True)
    assert len(engine.leases) == 1  # never claimed a second time
    assert len(expiries) == 15
    assert all(left > 0 for left in expiries), expiries  # the lease never ran out
    (job,) = await store.get([A])
    assert job.state is JobState.DONE
