"""The job API (``/v1/``) requires ``Authorization: Bearer <ASSET_WORKER_API_TOKEN>``.

The token is compared in constant time (``hmac.compare_digest``), so response timing tells an
attacker nothing about how much of a guess was right. Health, readiness, metrics and the OpenAPI
document need no token: probes and scrapers carry none, and they reveal no job data. Without a
configured token the service only ever listens on loopback (``config.http_binding``), and the API
is open to local callers there.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from worker.http.errors import ApiError, Handler

PROTECTED_PREFIX = "/v1/"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="asset-worker"'}


def auth_middleware(token: str | None) -> Middleware:
    expected = token.encode() if token is not None else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and (request.path + "/").startswith(PROTECTED_PREFIX):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                raise ApiError("unauthorized", "a bearer token is required", headers=_CHALLENGE)
            # aiohttp decodes header bytes that are not UTF-8 as surrogates; give them back as
            # they came (a plain encode() would raise, and answer 500).
            if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected):
                raise ApiError("unauthorized", "the bearer token is not valid", headers=_CHALLENGE)
        return await handler(request)

    return middleware
