"""Every error the HTTP service answers is ``{"error": {"code": "...", "message": "..."}}`` with a
stable code from ``ERROR_CODES``, never a traceback or aiohttp's HTML page.

Handlers raise ``ApiError``; the middleware also turns aiohttp's own refusals (unknown route,
wrong method, body too large), a body that cannot be decoded, a store that cannot be reached and
any unexpected exception (a bug: logged with its traceback, answered ``internal_error``) into that
shape. What aiohttp answers before any middleware runs (a request it cannot parse, an ``Expect``
it does not meet) gets the same shape from ``worker.http.protocol``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from worker.errors import StoreUnavailable, StoreUnusable, WorkerError, describe

log = structlog.get_logger("worker.http")

# code -> HTTP status. openapi.json lists the same codes (a test checks both directions).
ERROR_CODES: Mapping[str, int] = {
    "invalid_json": 400,
    "invalid_request": 400,
    "invalid_job_key": 400,
    "invalid_dest": 400,
    "duplicate_key": 400,
    "too_many_jobs": 400,
    "invalid_state": 400,
    "invalid_limit": 400,
    "invalid_cursor": 400,
    "bad_request": 400,  # not valid HTTP: request line, headers, chunking or content-encoding
    "unauthorized": 401,
    "not_found": 404,
    "job_not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "job_in_progress": 409,
    "job_already_final": 409,
    "body_too_large": 413,
    "expectation_failed": 417,
    "header_too_large": 431,
    "internal_error": 500,
    "store_unavailable": 503,
    "store_unusable": 503,
    "draining": 503,
    "destination_unavailable": 503,
}

# After these the connection is closed: the rest of the request may still be on its way, or the
# stream is broken.
_CLOSE_AFTER = frozenset({"request_timeout", "bad_request"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(WorkerError):
    """A request the service refuses; ``code`` is one of ``ERROR_CODES``, which gives the status."""

    def __init__(self, code: str, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown API error code {code!r}")  # a bug: every code is documented
        super().__init__(message, code=code)
        self.status = ERROR_CODES[code]
        self.headers = dict(headers or {})


def error_response(code: str, message: str, *, headers: Mapping[str, str] | None = None) -> web.Response:
    response = web.json_response(
        {"error": {"code": code, "message": message}}, status=ERROR_CODES[code], headers=headers
    )
    if code in _CLOSE_AFTER:
        response.force_close()
    return response


# aiohttp's own refusals, raised before or around our handlers.
_AIOHTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    417: "expectation_failed",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await answer_errors(request, lambda: handler(request))


async def answer_errors(
    request: web.BaseRequest, call: Callable[[], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``call()``'s response, or the JSON error for what it raised."""
    try:
        return await call()
    except ApiError as exc:
        return error_response(exc.code, exc.message, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _AIOHTTP_CODES.get(exc.status, "invalid_request")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = {
            "not_found": f"no such resource: {request.path}",
            "method_not_allowed": f"{request.method} is not allowed on {request.path}",
            "body_too_large": "the request body is larger than allowed",
            "expectation_failed": "the only Expect this service meets is 100-continue",
        }.get(code, exc.reason)
        return error_response(code, message, headers=headers)
    except RequestPayloadError:
        # Bad chunking or content-encoding: the client's fault, not a bug worth a traceback.
        return error_response("bad_request", "the request body is not valid (chunking or content-encoding)")
    except ConnectionResetError:
        # The client left mid-request; nobody reads this answer, and a traceback per hang-up
        # would let any client flood the log.
        log.debug("http_client_gone", method=request.method, path=request.path)
        return error_response("bad_request", "the connection closed before the request was read")
    except StoreUnavailable as exc:
        log.warning("store_unavailable", path=request.path, error=exc.message)
        return error_response("store_unavailable", "the job store cannot be reached; try again shortly")
    except StoreUnusable as exc:
        # The store refuses for good (corrupt, read-only): say so, the operator must act.
        log.error("store_unusable", path=request.path, error=exc.message)
        return error_response("store_unusable", "the job store refuses to work (see the worker's log)")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("http_internal_error", method=request.method, path=request.path, error=describe(exc))
        return error_response("internal_error", "the request failed unexpectedly; the worker logged why")
