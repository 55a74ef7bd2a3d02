"""Wiring: build a whole worker (store, session, providers, sink, engine, runner, metrics) from
settings, and run it as a service (HTTP, systemd notifications, drain)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from worker.aio import finish_cleanups
from worker.clock import Clock, SystemClock
from worker.config import Settings, secret_values
from worker.destinations import SinkRouter
from worker.egress import EgressPolicy
from worker.egress_session import new_upstream_session
from worker.engine import Engine, EngineSettings
from worker.errors import ConfigError, StoreUnavailable
from worker.http.binding import HttpBinding
from worker.http.server import serve
from worker.http.state import Service
from worker.httpclient import HttpClient, new_api_session
from worker.lease import Sleep
from worker.metrics import Metrics
from worker.mirror import Mirror
from worker.policy import Backoff
from worker.providers import PROVIDERS
from worker.providers.base import Lister, Provider, ProviderContext
from worker.redaction import register_secrets
from worker.runner import Runner, RunnerSettings
from worker.sdnotify import Notifier
from worker.sinks import sink_for
from worker.store import Store, open_store
from worker.transfer import TransferOptions

log = structlog.get_logger("worker.app")


@dataclass(frozen=True, slots=True)
class Worker:
    settings: Settings
    store: Store
    engine: Engine
    runner: Runner
    metrics: Metrics
    clock: Clock
    mirror: Mirror


def build_providers(settings: Settings, http: Callable[[str], HttpClient]) -> dict[str, Provider]:
    """One provider per configured one, each with its settings, schedule and API client."""
    providers: dict[str, Provider] = {}
    for name, config in settings.providers.items():
        spec = PROVIDERS.get(name)
        if spec is None:
            raise ConfigError(f"settings name provider {name!r}, which is not registered")
        providers[name] = spec.build(ProviderContext(http(name)), config.options, config.schedule)
    return providers


async def open_store_when_reachable(settings: Settings, *, stop: asyncio.Event) -> Store | None:
    """Open the store, waiting out a database that cannot be reached yet (it is restarting, failing
    over, or starting along with us), with backoff up to 30 s; None if ``stop`` is set first.

    A long-lived worker must not crash-loop because it started a moment before its database.
    Configuration errors (bad URL, wrong password, unknown database) are raised at once, and so is
    ``StoreUnusable`` (a damaged or read-only SQLite file): waiting would never end.
    """
    backoff = Backoff(initial_s=0.5, max_s=30.0, jitter=0.2)
    attempt = 0
    while not stop.is_set():
        try:
            return await open_store(settings.store_url, pool_size=settings.pg_pool_size)
        except StoreUnavailable as exc:
            delay = backoff.delay(attempt, random.random)
            attempt += 1
            log.warning("store_unavailable", error=exc.message, retry_in_s=round(delay, 2))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
    return None


@asynccontextmanager
async def open_worker(
    settings: Settings,
    *,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    rand: Callable[[], float] = random.random,
    store: Store | None = None,
) -> AsyncIterator[Worker]:
    """A ready-to-run worker; everything it opened is closed on exit.

    ``sleep`` is what retries wait with (request retries, asset retries); tests pass one that
    records the delays. Schedules and leases use ``clock``. ``store``, if given, is an open store
    the worker takes over (and closes).
    """
    clock = clock or SystemClock()
    sleep = sleep or clock.sleep
    # From here on no configured secret appears in a log line, an error or an API answer.
    register_secrets(secret_values(settings))
    limits = settings.limits
    egress = EgressPolicy(limits.allow_networks)
    if store is None:
        store = await open_store(settings.store_url, pool_size=settings.pg_pool_size)
    try:
        async with (
            contextlib.AsyncExitStack() as stack,
            # Two sessions: the vendors' APIs at the configured base URLs (trusted as configured),
            # and the URLs their answers hand us, under the egress policy.
            new_api_session(settings.http) as api_session,
            new_upstream_session(settings.http, egress, read_bufsize=settings.chunk_bytes) as upstream,
        ):
            metrics = Metrics()

            def http(provider: str) -> HttpClient:
                # One client per provider over the one session, so retries are counted per provider.
                return HttpClient(
                    api_session,
                    settings.http,
                    max_response_bytes=limits.max_response_bytes,
                    sleep=sleep,
                    wall_clock=clock.now,
                    rand=rand,
                    on_retry=metrics.retry_observer(provider),
                )

            providers = build_providers(settings, http)
            # The destination, with the periodic clean-up it needs (its client imported only now).
            opened = await stack.enter_async_context(
                sink_for(settings.dest_url).open(settings.sink_settings())
            )
            problem = None if opened.check is None else await opened.check()
            if problem is not None:
                log.warning(
                    "destination_not_writable",
                    dest=settings.dest_url,
                    problem=problem,
                    message="jobs that reach their transfer wait (dest_not_writable) until this is fixed",
                )
            engine = Engine(
                store=store,
                providers=providers,
                sinks=SinkRouter(opened.sink, settings.dest_url),
                session=upstream,
                settings=EngineSettings(
                    path_template=settings.path_template,
                    max_attempts=settings.max_attempts,
                    transfer=TransferOptions(
                        chunk_bytes=settings.chunk_bytes,
                        max_asset_bytes=limits.max_asset_bytes,
                        min_speed_bps=limits.min_speed_bps,
                        min_speed_window_s=limits.min_speed_window_s,
                        egress=egress,
                    ),
                    destination_backoff=Backoff(
                        initial_s=min(1.0, limits.dest_retry_max_s), max_s=limits.dest_retry_max_s
                    ),
                    retry_backoff=Backoff(
                        initial_s=settings.http.backoff_initial_s,
                        max_s=settings.http.backoff_max_s,
                        jitter=0.5,
                    ),
                ),
                clock=clock,
                sleep=sleep,
                rand=rand,
                metrics=metrics,
            )
            unconfigured = settings.unconfigured_providers()
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
                    progress_interval_s=settings.progress_interval_s,
                    progress_log_interval_s=settings.progress_log_interval_s,
                    unconfigured=unconfigured,
                    served=tuple(name for name in settings.providers if name not in unconfigured),
                ),
                clock=clock,
                housekeeping=opened.housekeeping,
            )
            metrics.track_in_flight(runner.in_flight_by_phase)
            mirror = Mirror(
                store=store,
                listers={
                    name: provider
                    for name, provider in providers.items()
                    if isinstance(provider, Lister) and name not in unconfigured
                },
                settings=settings.mirror,
                clock=clock,
                owner=settings.worker_id,
                yield_to_polls=runner.wait_for_poll_room,
                wake=runner.wake,
            )
            try:
                yield Worker(settings, store, engine, runner, metrics, clock, mirror)
            finally:
                # Releases and aborts interrupted by a second signal still need the store.
                await finish_cleanups(timeout_s=5.0)
    finally:
        await store.close()


def http_service(worker: Worker, *, draining: Callable[[], bool]) -> Service:
    """What the HTTP handlers need of a worker."""
    return Service(
        store=worker.store,
        clock=worker.clock,
        metrics=worker.metrics,
        dest_url=worker.settings.dest_url,
        draining=draining,
        destination_ready=lambda: worker.engine.destination.ready(worker.clock.now()),
        wake=worker.runner.wake,
        abandon=worker.runner.abandon,
    )


async def run_service(
    worker: Worker,
    *,
    stop: asyncio.Event,
    until_idle: bool = False,
    binding: HttpBinding | None,
    notifier: Notifier | None = None,
) -> None:
    """Run ``worker`` as a service until ``stop`` is set (or idle, with ``until_idle``).

    Order: HTTP listening (unless ``binding`` is None), then ``READY=1`` and the watchdog pings;
    on ``stop``, ``STOPPING=1`` and ``/readyz`` 503 while the runner drains (HTTP keeps serving:
    ``/healthz`` stays 200, metrics stay scrapable); HTTP closes only after the runner is done.
    """
    notifier = notifier or Notifier(None)
    async with contextlib.AsyncExitStack() as stack:
        status = "working the queue, no HTTP"
        if binding is not None:
            service = http_service(worker, draining=stop.is_set)
            host, port = await stack.enter_async_context(
                serve(
                    service,
                    host=binding.host,
                    port=binding.port,
                    api_token=binding.api_token,
                    header_timeout_s=worker.settings.http_header_timeout_s,
                    max_connections=worker.settings.http_max_connections,
                )
            )
            status = f"working the queue, HTTP on {host}:{port}"
        notifier.notify("READY=1", f"STATUS={status}")
        async with asyncio.TaskGroup() as group:
            helpers = [group.create_task(_announce_stop(stop, notifier))]
            if worker.settings.systemd.watchdog_s is not None:
                # Half the period, as sd_watchdog_enabled(3) advises; from the loop on purpose.
                interval = worker.settings.systemd.watchdog_s / 2
                helpers.append(group.create_task(notifier.watchdog(interval, worker.clock.sleep)))
            sources = worker.settings.mirror.sources
            try:
                if sources and until_idle:
                    # Everything the sources hold becomes jobs first, then the queue is worked dry.
                    await _unless_stopped(worker.mirror.walk_all(sources), stop)
                elif sources:
                    helpers.append(group.create_task(worker.mirror.run(sources, stop=stop)))
                await worker.runner.run(stop=stop, until_idle=until_idle)
            finally:
                for task in helpers:
                    task.cancel()


async def _unless_stopped(work: Awaitable[object], stop: asyncio.Event) -> None:
    """Run ``work`` until it ends or ``stop`` is set (then it is cancelled, and cleans up)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            # Waited for, not awaited: its own cancellation is not ours to raise or to swallow.
            await asyncio.wait([task])
    if not task.cancelled():
        task.result()  # what the work raised, raised here


async def _announce_stop(stop: asyncio.Event, notifier: Notifier) -> None:
    await stop.wait()
    notifier.notify("STOPPING=1", "STATUS=draining")
