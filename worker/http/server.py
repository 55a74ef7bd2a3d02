"""The application (routes and middlewares) and serving it on a TCP address."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from aiohttp import web

from worker.errors import WorkerError
from worker.http import health, jobs
from worker.http.auth import auth_middleware
from worker.http.errors import error_middleware
from worker.http.protocol import GuardedRunner, handler_args
from worker.http.state import MAX_BODY_BYTES, SERVICE, Service

log = structlog.get_logger("worker.http")

# How long stopping the server waits for requests in progress (a scrape, a submit) to finish.
SHUTDOWN_TIMEOUT_S = 3.0


def build_app(service: Service, *, api_token: str | None) -> web.Application:
    # The error middleware is outermost, so a refused token gets the JSON shape too.
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(api_token)], client_max_size=MAX_BODY_BYTES
    )
    app[SERVICE] = service
    app.router.add_get("/healthz", health.healthz, allow_head=False)
    app.router.add_get("/readyz", health.readyz, allow_head=False)
    app.router.add_get("/metrics", health.metrics, allow_head=False)
    app.router.add_get("/openapi.json", health.openapi, allow_head=False)
    app.router.add_post("/v1/jobs", jobs.submit_jobs)
    app.router.add_get("/v1/jobs", jobs.list_jobs, allow_head=False)
    app.router.add_get("/v1/jobs/{key}", jobs.get_job, allow_head=False)
    app.router.add_post("/v1/jobs/{key}/retry", jobs.retry_job)
    app.router.add_post("/v1/jobs/{key}/cancel", jobs.cancel_job)
    return app


@asynccontextmanager
async def serve(
    service: Service,
    *,
    host: str,
    port: int,
    api_token: str | None,
    header_timeout_s: float = 10.0,
    max_connections: int = 512,
) -> AsyncIterator[tuple[str, int]]:
    """Serve on ``host:port`` until the block exits; yields the address bound (port 0 picks one).

    A connection that has not sent a whole request head within ``header_timeout_s`` is closed,
    and beyond ``max_connections`` open ones a new connection is closed at once (defaults: the
    settings' ``ASSET_WORKER_HTTP_HEADER_TIMEOUT_S`` and ``ASSET_WORKER_HTTP_MAX_CONNECTIONS``).

    A port that cannot be bound (in use, address not local) is a ``WorkerError`` with code
    ``listen_failed``: a runtime failure (exit 1, which systemd restarts), not a bad setting.
    """
    runner = GuardedRunner(
        build_app(service, api_token=api_token),
        max_connections=max_connections,
        handler_args=handler_args(header_timeout_s=header_timeout_s),
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise WorkerError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}", code="listen_failed"
            ) from exc
        bound_host, bound_port = runner.addresses[0][:2]
        log.info("http_listening", host=bound_host, port=bound_port, auth="bearer" if api_token else "none")
        yield bound_host, bound_port
    finally:
        await runner.cleanup()
