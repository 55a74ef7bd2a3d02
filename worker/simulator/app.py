"""Assembling and running the simulator: ``build_app``, ``build_layers_app``, ``start_simulator`` (tests),
``serve`` (CLI).

One simulator listens on two loopback ports sharing one state: the main one (cloudlayer API, file host,
control API) and the Layers one, because api.layers.com is a host of its own and both vendors serve
``GET /v1/jobs/:id``. The Layers port serves exactly the production paths, plus the same file host for its
media URLs.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from worker.simulator.account_helpers import AccountHelpers
from worker.simulator.cloudlayer import setup_cloudlayer
from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.cloudlayer_list import setup_cloudlayer_list
from worker.simulator.control import setup_control
from worker.simulator.control_accounts import setup_control_accounts
from worker.simulator.faults import FaultRule
from worker.simulator.files import setup_files
from worker.simulator.filestore import signed_url
from worker.simulator.layers import setup_layers
from worker.simulator.layers_content import LayersAsset, LayersContainer
from worker.simulator.layers_jobs import LayersJob
from worker.simulator.layers_list import setup_layers_list
from worker.simulator.middleware import ERROR_RENDERERS_KEY, upstream_middleware
from worker.simulator.requestlog import RequestRecord
from worker.simulator.state import (
    DEFAULT_CLOUDLAYER_KEY,
    DEFAULT_LAYERS_KEY,
    DEFAULT_LAYERS_SCOPES,
    STATE_KEY,
    SimulatorState,
)

__all__ = ["Simulator", "SimulatorState", "build_app", "build_layers_app", "serve", "start_simulator"]

# How long stopping waits for in-flight requests (a stalled or streaming one) before cancelling them:
# short, because the simulator's clients are tests and benchmarks that are already finished with it.
_SHUTDOWN_TIMEOUT_S = 0.5


def build_app(state: SimulatorState) -> web.Application:
    """The aiohttp application serving ``state``: cloudlayer API, file host and control API."""
    app = web.Application(middlewares=[upstream_middleware])
    app[STATE_KEY] = state
    app[ERROR_RENDERERS_KEY] = {}
    setup_cloudlayer(app)
    setup_cloudlayer_list(app)
    setup_files(app)
    setup_control(app)
    setup_control_accounts(app)
    return app


def build_layers_app(state: SimulatorState) -> web.Application:
    """The Layers host serving ``state``: the Layers API under ``/v1`` and the file host for its media."""
    app = web.Application(middlewares=[upstream_middleware])
    app[STATE_KEY] = state
    app[ERROR_RENDERERS_KEY] = {}
    setup_layers(app)
    setup_layers_list(app)
    setup_files(app)
    return app


@dataclass(frozen=True, slots=True)
class Simulator(AccountHelpers):
    """A running simulator: its base URLs, its state, and helpers for tests in the same event loop (those
    for whole accounts, mirror mode, come from ``AccountHelpers``)."""

    url: str  # cloudlayer API, file host and the /_sim/ control API
    state: SimulatorState
    layers_url: str  # the Layers host, the counterpart of https://api.layers.com (paths /v1/...)

    @property
    def host_network(self) -> str:
        """The simulator's address as a one-address network (``127.0.0.1/32``), for
        ``ASSET_WORKER_ALLOW_NETWORKS``: its file host is on loopback, which the egress policy
        refuses unless allowed."""
        host = urlsplit(self.url).hostname or "127.0.0.1"
        return str(ipaddress.ip_network(host))

    @property
    def api_key(self) -> str:
        """One accepted cloudlayer API key (the lowest, so it is stable when several are accepted)."""
        return min(self.state.cloudlayer_api_keys)

    def add_cloudlayer_job(self, **spec: object) -> SimJob:
        """Create a job exactly as ``POST /_sim/cloudlayer/jobs`` would; raises ``SpecError``."""
        return self.state.add_cloudlayer_job(spec)

    @property
    def layers_api_key(self) -> str:
        """One accepted Layers API key: the default one while accepted, else the lowest."""
        keys = self.state.layers_api_keys
        return DEFAULT_LAYERS_KEY if DEFAULT_LAYERS_KEY in keys else min(keys)

    def add_layers_container(self, **spec: object) -> LayersContainer:
        """Create a container exactly as ``POST /_sim/layers/containers`` would; raises ``SpecError``."""
        return self.state.add_layers_container(spec)

    def add_layers_job(self, **spec: object) -> LayersJob:
        """Create a job exactly as ``POST /_sim/layers/jobs`` would; raises ``SpecError``."""
        return self.state.add_layers_job(spec)

    def regenerate_layers_container(self, container_id: str, **opts: object) -> LayersContainer:
        """Replace a container's assets as ``POST /_sim/layers/containers/:id/regenerate`` would."""
        return self.state.regenerate_layers_container(container_id, opts)

    def layers_container(self, container_id: str) -> LayersContainer:
        """The container's current state (a regeneration replaces the object); ``KeyError`` if unknown."""
        container = self.state.layers.container(container_id)
        if container is None:
            raise KeyError(container_id)
        return container

    def set_layers_key(self, key: str, scopes: list[str] | None = None) -> None:
        """Accept ``key`` with ``scopes`` (default: content:read, jobs:read) as ``PUT /_sim/layers/keys``."""
        self.state.set_layers_key({"key": key, "scopes": scopes})

    def set_layers_rate(self, reads_per_min: int | None, *, tier: str = "standard") -> None:
        """Set the read limit per key (None: unlimited) on ``tier``'s other limits; buckets start full."""
        self.state.layers_rate.configure({"tier": tier, "reads_per_min": reads_per_min})

    def set_layers_tier(self, tier: str) -> None:
        """Use a documented tier's limits ("standard", "pilot", "partner"); buckets start full."""
        self.state.layers_rate.configure({"tier": tier})

    def layers_media_url(self, asset: LayersAsset) -> str:
        """A fresh signed media URL for ``asset``, as its container would show once completed."""
        ttl_s = self.layers_container(asset.container_id).url_ttl_s
        return signed_url(self.layers_url, asset.file_name, self.state.clock(), ttl_s)

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
        """Forget jobs, containers, files, fault rules, rate-limit usage and the log."""
        self.state.reset()


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _listen(stack: AsyncExitStack, app: web.Application, host: str, port: int) -> str:
    """Serve ``app`` on ``host:port`` until ``stack`` closes; returns its base URL."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, host, port).start()
    return _base_url(host, int(runner.addresses[0][1]))


@asynccontextmanager
async def start_simulator(
    host: str = "127.0.0.1", port: int = 0, state: SimulatorState | None = None, *, layers_port: int = 0
) -> AsyncIterator[Simulator]:
    """Serve the simulator on ``host:port`` and its Layers host on ``host:layers_port`` (0: any free port)
    for the duration of the block."""
    state = state if state is not None else SimulatorState()
    async with AsyncExitStack() as stack:
        url = await _listen(stack, build_app(state), host, port)
        layers_url = await _listen(stack, build_layers_app(state), host, layers_port)
        yield Simulator(url=url, state=state, layers_url=layers_url)


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = DEFAULT_CLOUDLAYER_KEY,
    *,
    layers_api_key: str = DEFAULT_LAYERS_KEY,
    layers_port: int = 0,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until cancelled (or until ``stop`` is set), announcing the URLs and keys on stdout.

    The first line is exactly ``simulator listening on <url>`` so a parent process can read the port it got
    for ``port=0``; then the cloudlayer key, ``layers listening on <url>`` and the Layers key, one a line.
    """
    state = SimulatorState(
        cloudlayer_api_keys={api_key}, layers_api_keys={layers_api_key: set(DEFAULT_LAYERS_SCOPES)}
    )
    async with start_simulator(host, port, state, layers_port=layers_port) as simulator:
        print(f"simulator listening on {simulator.url}", flush=True)
        print(f"cloudlayer X-API-Key: {api_key}", flush=True)
        print(f"layers listening on {simulator.layers_url}", flush=True)
        print(f"Layers bearer key: {layers_api_key}", flush=True)
        await (stop or asyncio.Event()).wait()
