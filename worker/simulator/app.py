"""Assembling and running the simulator: ``build_app``, ``start_simulator`` (tests), ``serve`` (CLI)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from worker.simulator.cloudlayer import setup_cloudlayer
from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.control import setup_control
from worker.simulator.faults import FaultRule
from worker.simulator.files import setup_files
from worker.simulator.filestore import signed_url
from worker.simulator.middleware import ERROR_RENDERERS_KEY, upstream_middleware
from worker.simulator.requestlog import RequestRecord
from worker.simulator.state import DEFAULT_CLOUDLAYER_KEY, STATE_KEY, SimulatorState

__all__ = ["Simulator", "SimulatorState", "build_app", "serve", "start_simulator"]

# How long stopping waits for in-flight requests (a stalled or streaming one) before cancelling them:
# short, because the simulator's clients are tests and benchmarks that are already finished with it.
_SHUTDOWN_TIMEOUT_S = 0.5


def build_app(state: SimulatorState) -> web.Application:
    """The aiohttp application serving ``state``: cloudlayer API, file host and control API."""
    app = web.Application(middlewares=[upstream_middleware])
    app[STATE_KEY] = state
    app[ERROR_RENDERERS_KEY] = {}
    setup_cloudlayer(app)
    setup_files(app)
    setup_control(app)
    return app


@dataclass(frozen=True, slots=True)
class Simulator:
    """A running simulator: its base URL, its state, and helpers for tests in the same event loop."""

    url: str
    state: SimulatorState

    @property
    def api_key(self) -> str:
        """One accepted cloudlayer API key (the lowest, so it is stable when several are accepted)."""
        return min(self.state.cloudlayer_api_keys)

    def add_cloudlayer_job(self, **spec: object) -> SimJob:
        """Create a job exactly as ``POST /_sim/cloudlayer/jobs`` would; raises ``SpecError``."""
        return self.state.add_cloudlayer_job(spec)

    def add_fault(self, **rule: object) -> FaultRule:
        """Activate a fault rule exactly as ``POST /_sim/faults`` would; raises ``SpecError``."""
        return self.state.faults.add(rule)

    def clear_faults(self) -> int:
        """Drop every fault rule; returns how many were active."""
        return self.state.faults.clear()

    def requests(self, route: str | None = None) -> list[RequestRecord]:
        """Copies of the request log (optionally one route, e.g. "files"), in arrival order."""
        return self.state.log.snapshot(route)

    def file_url(self, job: SimJob) -> str:
        """A fresh signed URL for ``job``'s asset, as the job would show once finished."""
        return signed_url(self.url, job.file_name, self.state.clock(), job.url_ttl_s)

    def reset(self) -> None:
        """Forget jobs, files, fault rules and the log."""
        self.state.reset()


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@asynccontextmanager
async def start_simulator(
    host: str = "127.0.0.1", port: int = 0, state: SimulatorState | None = None
) -> AsyncIterator[Simulator]:
    """Serve the simulator on ``host:port`` (0: any free port) for the duration of the block."""
    state = state if state is not None else SimulatorState()
    runner = web.AppRunner(
        build_app(state), access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield Simulator(url=_base_url(host, bound_port), state=state)
    finally:
        await runner.cleanup()


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEFAULT_CLOUDLAYER_KEY,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until cancelled (or until ``stop`` is set), announcing the URL and key on stdout.

    The first line is exactly ``simulator listening on <url>`` so a parent process can read the port it got
    for ``port=0``; the key follows on a second line to keep that first line trivially parseable.
    """
    state = SimulatorState(cloudlayer_api_keys={api_key})
    async with start_simulator(host, port, state) as simulator:
        print(f"simulator listening on {simulator.url}", flush=True)
        print(f"cloudlayer X-API-Key: {api_key}", flush=True)
        await (stop or asyncio.Event()).wait()
