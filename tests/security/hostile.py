"""A hostile upstream on loopback: an API and file host that answer whatever a test scripts, and
listeners on other loopback addresses that must never see a connection.

The worker talks to ``Hostile`` as it would to a compromised or impersonated vendor: the API base
URL is the operator's (trusted as configured), everything its answers contain is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from worker.config import HttpSettings, LimitSettings, Settings
from worker.providers.cloudlayer import CloudlayerSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_KEY = "cl-hostile-test-key-7f3a9c"


@dataclass
class Hostile:
    """One aiohttp server on 127.0.0.1; ``routes`` maps a path to the handler that answers it."""

    url: str = ""
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    # Bytes each streaming handler managed to hand to the transport, by path.
    sent: dict[str, int] = field(default_factory=dict)

    def json(self, path: str, body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        async def answer(_request: web.Request) -> web.StreamResponse:
            return web.json_response(body, status=status, headers=headers)

        self.routes[path] = answer

    def redirect(self, path: str, location: str, *, status: int = 302) -> None:
        async def answer(_request: web.Request) -> web.StreamResponse:
            return web.Response(status=status, headers={"Location": location})

        self.routes[path] = answer

    def job(self, job_id: str, **fields: Any) -> None:
        """A cloudlayer job answer at ``/v2/jobs/<id>`` (``status: success`` unless given)."""
        self.json(f"/v2/jobs/{job_id}", {"id": job_id, "status": "success", **fields})

    def count(self, path: str) -> int:
        return self.seen.count(path)


@contextlib.asynccontextmanager
async def run_hostile() -> AsyncIterator[Hostile]:
    hostile = Hostile()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        hostile.seen.append(request.path)
        handler = hostile.routes.get(request.path)
        if handler is None:
            return web.json_response({"statusCode": 404, "message": "Not Found"}, status=404)
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hostile.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield hostile
    finally:
        await runner.cleanup()


@dataclass
class Listener:
    """A TCP listener that records every connection it accepts (and answers nothing)."""

    host: str
    port: int
    connections: int = 0

    @property
    def origin(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def listening(host: str) -> AsyncIterator[Listener]:
    """A listener on ``host`` (e.g. 127.0.0.2 or ::1) at a free port."""
    listener = Listener(host, 0)

    async def accepted(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.connections += 1
        writer.close()

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = await asyncio.start_server(accepted, host, 0, family=family)
    listener.port = server.sockets[0].getsockname()[1]
    try:
        yield listener
    finally:
        server.close()
        await server.wait_closed()


def hostile_settings(tmp_path: Path, hostile: Hostile, **changes: Any) -> Settings:
    """A worker whose cloudlayer API is ``hostile``, with the default egress policy (nothing
    internal allowed) unless ``limits`` says otherwise; fast polls and retries."""
    base = Settings(
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        dest_url=str(tmp_path / "assets"),
        claim_interval_s=0.05,
        lease_s=5.0,
        grace_s=2.0,
        worker_id="hostile-test",
        max_attempts=3,
        http=HttpSettings(request_attempts=2, backoff_initial_s=0.02, backoff_max_s=0.05, read_timeout_s=5.0),
    ).with_schedule(initial_s=0.05, max_s=0.2, multiplier=1.5, deadline_s=20.0)
    base = base.with_options(
        "cloudlayer", CloudlayerSettings(api_key=API_KEY, base_url=hostile.url, api_version="v2")
    )
    return dataclasses.replace(base, **changes)


def hostile_environment(tmp_path: Path, hostile: Hostile, **extra: str) -> dict[str, str]:
    """The environment of an ``asset-worker`` process whose cloudlayer API is ``hostile``, with a
    store and destination in ``tmp_path``, fast polls and retries, and ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSET_WORKER_", "CLOUDLAYER_", "AWS_"))}
    env.update(
        ASSET_WORKER_STORE=f"sqlite:///{tmp_path / 'store.db'}",
        ASSET_WORKER_DEST=str(tmp_path / "assets"),
        ASSET_WORKER_POLL_INITIAL_S="0.05",
        ASSET_WORKER_POLL_MAX_S="0.1",
        ASSET_WORKER_CLAIM_INTERVAL_S="0.05",
        ASSET_WORKER_RETRY_INITIAL_S="0.02",
        ASSET_WORKER_RETRY_MAX_S="0.05",
        CLOUDLAYER_API_KEY=API_KEY,
        CLOUDLAYER_BASE_URL=hostile.url,
    )
    env.update(extra)
    return env


def allowing(*networks: str, **limits: Any) -> LimitSettings:
    return LimitSettings(allow_networks=tuple(ipaddress.ip_network(n) for n in networks), **limits)
