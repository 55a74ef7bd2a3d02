"""Below the application: how connections are accepted, timed and refused.

aiohttp answers some requests itself, before any middleware runs: a request line or header it
cannot parse, one over its size limits, an ``Expect`` it does not meet. ``JsonErrorsHandler``
and the server's outer ``answer_errors`` give those the service's JSON error shape too.

Against hostile clients:

- A connection must send a whole request head within ``header_timeout_s`` of opening (or of its
  previous answer), else it is closed. aiohttp's keep-alive timer does exactly this: it starts
  when the connection opens, partial data does not push it forward, and it closes a connection
  still waiting for a complete head.
- At most ``max_connections`` are open at once; one more is closed as soon as it is accepted, so
  a flood of stalled connections runs into the cap and the header timeout, not into the
  process's file descriptor limit.
- A request body must arrive within ``Service.body_timeout_s`` (``jobs._read_json``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from worker.errors import describe
from worker.http.errors import answer_errors, error_response

log = structlog.get_logger("worker.http")

# aiohttp's defaults, stated so that the error message can name them.
MAX_LINE_BYTES = 8190
MAX_HEADERS = 128


class JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, answering what it refuses itself with the JSON error shape."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp does: part of a response is out, so no other can follow; the caller closes.
            raise ConnectionError("a response was partly sent; the connection is broken")
        code, text = protocol_error(status, exc)
        if code == "internal_error":
            log.error("http_internal_error", error=describe(exc) if exc else message, exc_info=exc)
        else:
            # Any client can send garbage at will: no traceback, and below the default level.
            log.debug("http_bad_request", code=code, error=describe(exc) if exc else message)
        response = error_response(code, text)
        response.force_close()  # the parser's state after the error is unknown
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # After our 400 for a body it cannot decode, aiohttp meets the error again while discarding
        # the rest, and logs it as an "Unhandled exception" with a traceback: any client could
        # fill the log with those.
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError):
            log.debug("http_bad_request", code="bad_request", error=describe(exc))
            return
        super().log_exception(*args, **kw)


def protocol_error(status: int, exc: BaseException | None) -> tuple[str, str]:
    """The code and message for what aiohttp refused with ``status``. The message never repeats
    the client's bytes, which aiohttp's own does."""
    if status >= 500:
        return "internal_error", "the request failed unexpectedly; the worker logged why"
    too_many = isinstance(exc, BadHttpMessage) and exc.message == "Too many headers received"
    if isinstance(exc, LineTooLong) or too_many:
        return "header_too_large", (
            f"the request line or a header is longer than {MAX_LINE_BYTES} bytes, "
            f"or there are more than {MAX_HEADERS} headers"
        )
    return "bad_request", "the request is not valid HTTP/1.1"


RequestHandlerFn = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class GuardedServer(web.Server):
    """``base`` (the application's server) with ``JsonErrorsHandler`` connections, at most
    ``max_connections`` of them open."""

    def __init__(self, base: web.Server, *, max_connections: int, handler_args: Mapping[str, Any]) -> None:
        super().__init__(_json_errors(base.request_handler), request_factory=base.request_factory)
        self._handler_args = dict(handler_args)
        self._max_connections = max_connections
        self._refusing = False

    def __call__(self) -> RequestHandler:
        return JsonErrorsHandler(self, loop=self._loop, **self._handler_args)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self.connections) >= self._max_connections:
            handler.force_close()  # closes the transport; the handler then serves nothing
            if not self._refusing:  # once per episode: a flood must not flood the log too
                log.warning("http_connection_limit", max_connections=self._max_connections)
            self._refusing = True
            return
        self._refusing = False
        super().connection_made(handler, transport)


def _json_errors(handler: RequestHandlerFn) -> RequestHandlerFn:
    """The application's handler, with what escapes it (an unmet ``Expect`` is refused before
    the middlewares run) answered as JSON too."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        return await answer_errors(request, lambda: handler(request))

    return handle


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` serving through ``GuardedServer`` with our connection handler settings."""

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections: int,
        handler_args: Mapping[str, Any],
        shutdown_timeout: float,
    ) -> None:
        super().__init__(app, shutdown_timeout=shutdown_timeout)
        self._max_connections = max_connections
        self._handler_args = handler_args

    async def _make_server(self) -> web.Server:
        # The base server starts the application up; we keep its entry points, not its settings.
        base = await super()._make_server()
        return GuardedServer(base, max_connections=self._max_connections, handler_args=self._handler_args)


def handler_args(*, header_timeout_s: float) -> dict[str, Any]:
    """What every connection handler gets (``aiohttp.web_protocol.RequestHandler``)."""
    return {
        "access_log": None,
        # Starts at connection_made and is not pushed forward by partial data: a slow-header
        # client is closed after this, and so is an idle keep-alive connection.
        "keepalive_timeout": header_timeout_s,
        # After an answer sent before the body was read (401, 408, 413) aiohttp keeps reading and
        # discarding it for this long; no longer than a request head may take.
        "lingering_time": header_timeout_s,
        "max_line_size": MAX_LINE_BYTES,
        "max_field_size": MAX_LINE_BYTES,
        "max_headers": MAX_HEADERS,
    }
