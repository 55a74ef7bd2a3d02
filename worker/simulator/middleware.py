"""The one middleware every upstream request passes: record it, then inflict the fault rule that hits it, if
any.

Generic faults (status, reset, stall, malformed) are applied here, before the handler; file-only faults are
handed to the file host through ``FAULT_KEY`` because they need the body being served.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import socket
import struct
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from worker.simulator.faults import FILE_HOST_ROUTES, FaultRule
from worker.simulator.requestlog import RequestRecord
from worker.simulator.state import STATE_KEY, SimulatorState

__all__ = [
    "ERROR_RENDERERS_KEY",
    "FAULT_KEY",
    "RECORD_KEY",
    "ErrorRenderer",
    "abort_connection",
    "upstream_middleware",
]

_log = logging.getLogger(__name__)

# (status, message) -> the response body a given upstream uses for errors.
ErrorRenderer = Callable[[int, str], web.Response]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Keyed by route family: the part of the route name before the first dot ("cloudlayer", "files").
ERROR_RENDERERS_KEY = web.AppKey("simulator_error_renderers", dict[str, ErrorRenderer])
FAULT_KEY = web.RequestKey("simulator_fault", FaultRule)
# The record of the request being answered, so the file host can count the body bytes it sent.
RECORD_KEY = web.RequestKey("simulator_record", RequestRecord)
_CONTROL_PREFIX = "sim."


def abort_connection(request: web.Request) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a crashing load balancer would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _default_error(status: int, message: str) -> web.Response:
    # The shape cloudlayer uses; routes of an upstream with its own shape register a renderer instead.
    return web.json_response({"statusCode": status, "message": message}, status=status)


def _retry_after_header(value: str, now: float) -> str:
    if value.startswith("http-date:"):
        seconds = float(value.removeprefix("http-date:"))
        # Rounded up: an HTTP date has whole seconds and must not promise less than the rule asks.
        return email.utils.formatdate(math.ceil(now + seconds), usegmt=True)
    return value


def _status_response(
    request: web.Request, route: str, rule: FaultRule, state: SimulatorState
) -> web.Response:
    message = rule.message or HTTPStatus(rule.status).phrase
    renderers = request.app[ERROR_RENDERERS_KEY]
    renderer = renderers.get(route.split(".", 1)[0], _default_error)
    response = renderer(rule.status, message)
    if rule.retry_after is not None:
        response.headers["Retry-After"] = _retry_after_header(rule.retry_after, state.clock())
    return response


async def _answer(
    request: web.Request, handler: Handler, route: str, rule: FaultRule | None
) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if rule is None:
        return await handler(request)
    if rule.kind == "status":
        return _status_response(request, route, rule, state)
    if rule.kind == "reset":
        abort_connection(request)
        # Never sent: aiohttp finds the transport gone and drops the response quietly.
        return web.Response(status=500)
    if rule.kind == "malformed":
        return web.Response(status=200, text=rule.malformed_body, content_type="application/json")
    if rule.kind == "stall":
        await asyncio.sleep(rule.delay_s)
    return await handler(request)


@web.middleware
async def upstream_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log the request, apply its fault, record the status actually answered (None for a reset)."""
    route = request.match_info.route.name
    if route is not None and route.startswith(_CONTROL_PREFIX):
        return await handler(request)
    state = request.app[STATE_KEY]
    raw_path = request.raw_path.split("?", 1)[0]
    record = RequestRecord(
        t=state.clock(),
        method=request.method,
        path=raw_path,
        route=route or "unmatched",
        had_api_key="X-API-Key" in request.headers,
        had_authorization="Authorization" in request.headers,
        range=request.headers.get("Range"),
    )
    state.log.append(record)
    request[RECORD_KEY] = record
    rule = None
    if route is not None:
        paths = (raw_path, request.path)
        rule = state.faults.pick(route, paths, file_host=route in FILE_HOST_ROUTES)
    if rule is not None:
        record.fault = rule.kind
        request[FAULT_KEY] = rule
        _log.debug("fault %s (%s) on %s %s", rule.kind, rule.id, request.method, raw_path)
    try:
        response = await _answer(request, handler, record.route, rule)
    except web.HTTPException as exc:
        record.status = exc.status
        raise
    finally:
        # A streamed body is written before the handler returns: this is when the last byte went
        # out, or when the client went away.
        record.ended_t = state.clock()
    record.status = None if rule is not None and rule.kind == "reset" else response.status
    return response
