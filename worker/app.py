"""Wiring: build a whole worker (store, session, providers, sink, engine, runner) from settings."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from worker.aio import finish_cleanups
from worker.clock import Clock, SystemClock
from worker.config import Settings, dest_path
from worker.engine import Engine, EngineSettings
from worker.errors import WorkerError
from worker.httpclient import HttpClient, new_session
from worker.lease import Sleep
from worker.policy import Backoff
from worker.providers.base import Provider
from worker.providers.cloudlayer import CloudlayerProvider
from worker.providers.layers import LayersProvider
from worker.ratelimit import RateLimiter
from worker.runner import Housekeeping, Runner, RunnerSettings
from worker.sinks.base import Sink
from worker.sinks.file import FileSink
from worker.store import Store, open_store
from worker.transfer import TransferOptions

log = structlog.get_logger("worker.app")


@dataclass(frozen=True, slots=True)
class Worker:
    settings: Settings
    store: Store
    engine: Engine
    runner: Runner


@asynccontextmanager
async def _open_sink(settings: Settings) -> AsyncIterator[tuple[Sink, Housekeeping | None]]:
    """The destination: files on disk, or S3 (one client per process, imported only when used),
    with the periodic clean-up it needs."""
    if settings.s3 is None:
        yield FileSink(dest_path(settings.dest_url)), None
        return
    from worker.sinks.s3 import open_s3_sink

    async with open_s3_sink(settings.s3) as s3_sink:

        async def janitor() -> None:
            report = await s3_sink.abort_stale_uploads()
            log.info(
                "s3_janitor", aborted_uploads=report.aborted_uploads, removed_staged=report.removed_staged
            )

        # Once now, then (in the runner) four times per janitor age: a dead worker's uploads are
        # gone within 1.25 ages.
        try:
            await janitor()
        except WorkerError as exc:
            log.warning("housekeeping_failed", error=exc.code, message=exc.message)
        yield s3_sink, (janitor, settings.s3.janitor_age_s / 4)


@asynccontextmanager
async def open_worker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    rand: Callable[[], float] = random.random,
) -> AsyncIterator[Worker]:
    """A ready-to-run worker; everything it opened is closed on exit.

    ``sleep`` is what retries wait with (request retries, asset retries); tests pass one that
    records the delays. Schedules and leases use ``clock``.
    """
    clock = clock or SystemClock()
    sleep = sleep or clock.sleep
    store = await open_store(settings.store_url)
    try:
        async with (
            contextlib.AsyncExitStack() as stack,
            new_session(settings.http, read_bufsize=settings.chunk_bytes) as session,
        ):
            http = HttpClient(session, settings.http, sleep=sleep, wall_clock=clock.now, rand=rand)
            providers: dict[str, Provider] = {
                "cloudlayer": CloudlayerProvider(http, settings.cloudlayer, settings.poll),
                # One limiter for every Layers read of this process: the budget is per API key.
                "layers": LayersProvider(
                    http,
                    settings.layers,
                    limiter=RateLimiter(per_minute=settings.layers.reads_per_min),
                    wall_clock=clock.now,
                ),
            }
            sink, housekeeping = await stack.enter_async_context(_open_sink(settings))
            engine = Engine(
                store=store,
                providers=providers,
                sink=sink,
                session=session,
                settings=EngineSettings(
                    path_template=settings.path_template,
                    poll_deadline_s=settings.poll.deadline_s,
                    max_attempts=settings.max_attempts,
                    transfer=TransferOptions(chunk_bytes=settings.chunk_bytes),
                    expiry_margin_s=settings.layers.expiry_margin_s,
                    retry_backoff=Backoff(
                        initial_s=settings.http.backoff_initial_s,
                        max_s=settings.http.backoff_max_s,
                        jitter=0.5,
                    ),
                ),
                clock=clock,
                sleep=sleep,
                rand=rand,
            )
            runner = Runner(
                store=store,
                engine=engine,
                settings=RunnerSettings(
                    owner=settings.worker_id,
                    concurrency=settings.concurrency,
                    poll_concurrency=settings.poll_concurrency,
                    lease_s=settings.lease_s,
                    claim_interval_s=settings.claim_interval_s,
                    grace_s=settings.grace_s,
                ),
                clock=clock,
                housekeeping=housekeeping,
            )
            try:
                yield Worker(settings, store, engine, runner)
            finally:
                # Releases and aborts interrupted by a second signal still need the store.
                await finish_cleanups(timeout_s=5.0)
    finally:
        await store.close()
