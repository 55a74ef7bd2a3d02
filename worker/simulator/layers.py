"""The Layers partner API routes: job, container and asset reads (see upstream-contract.md, section 2).

Served on the simulator's Layers port (``Simulator.layers_url``) with the production paths ``/v1/...``.
Every request passes one gate in the vendor's order: API key (Bearer, or X-Api-Key as older docs have
it) → read rate limit per key → scope. Handlers stay thin: the model and its JSON live in
``layers_content``, ``layers_jobs`` and ``layers_json``; media URLs point at the file host mounted on the
same port, which serves the shared ``FileStore``.
"""

from __future__ import annotations

import asyncio
import math
import secrets

from aiohttp import web

from worker.simulator.filestore import signed_url
from worker.simulator.layers_content import asset_sha256, wrong_sha256
from worker.simulator.layers_json import API_ROOT, UrlMinter, asset_descriptor, container_json, etag, job_json
from worker.simulator.middleware import ERROR_RENDERERS_KEY
from worker.simulator.state import STATE_KEY

__all__ = [
    "CONTENT_READ",
    "JOBS_READ",
    "error_code",
    "gate",
    "layers_error",
    "minter",
    "presented_key",
    "render_layers_error",
    "setup_layers",
]

CONTENT_READ = "content:read"
JOBS_READ = "jobs:read"
_CODES = {
    400: "VALIDATION",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN_SCOPE",
    404: "NOT_FOUND",
    409: "CONFLICT",
    422: "VALIDATION",
    429: "RATE_LIMITED",
    500: "INTERNAL",
}


def error_code(status: int) -> str:
    """The Layers error code for an HTTP status; other 5xx are UNAVAILABLE, other 4xx ``HTTP_<status>``."""
    return _CODES.get(status) or ("UNAVAILABLE" if status >= 500 else f"HTTP_{status}")


def layers_error(
    status: int, code: str, message: str, details: dict[str, object] | None = None
) -> web.Response:
    """Layers' error envelope ``{"error": {code, message, requestId, details?}}`` with a fresh request id."""
    request_id = f"req_{secrets.token_hex(12)}"
    error: dict[str, object] = {"code": code, "message": message, "requestId": request_id}
    if details is not None:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers={"X-Request-Id": request_id})


def _rate_limited(retry_after_s: int) -> web.Response:
    response = layers_error(
        429, "RATE_LIMITED", f"Rate limit exceeded; retry in {retry_after_s} s", {"retryAfter": retry_after_s}
    )
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def render_layers_error(status: int, message: str) -> web.Response:
    """The envelope for a fault-injected status; a 429 always carries Retry-After (1 s unless the fault
    rule sets its own, which the middleware writes over it)."""
    if status == 429:
        return _rate_limited(1)
    return layers_error(status, error_code(status), message)


def presented_key(request: web.Request) -> str | None:
    """The bearer token, else the X-Api-Key header; None when neither is there."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-Api-Key")


def gate(request: web.Request, scope: str) -> web.Response | None:
    """The error answer for a request that may not be served (401, 429 or 403), else None."""
    state = request.app[STATE_KEY]
    key = presented_key(request)
    scopes = None if key is None else state.layers_api_keys.get(key)
    if key is None or scopes is None:
        response = layers_error(401, "UNAUTHENTICATED", "Missing or invalid API key")
        response.headers["WWW-Authenticate"] = 'Bearer realm="layers"'
        return response
    wait_s = state.layers_rate.take(key, "read", state.clock())
    if wait_s is not None:
        # Whole seconds, rounded up: sleeping exactly Retry-After must find a token (float noise ignored).
        return _rate_limited(max(1, math.ceil(round(wait_s, 6))))
    if scope not in scopes:
        return layers_error(
            403, "FORBIDDEN_SCOPE", f"API key lacks the required scope {scope}", {"requiredScope": scope}
        )
    return None


def _not_found(what: str) -> web.Response:
    return layers_error(404, "NOT_FOUND", f"{what} not found")


def minter(request: web.Request, now: float) -> UrlMinter:
    """Signed media URLs on the host the client reached us at, so they work behind any bound address."""
    base = f"{request.scheme}://{request.host}"

    def mint(name: str, ttl_s: float | None) -> str:
        return signed_url(base, name, now, ttl_s)

    return mint


def _etag_matches(header: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` or ``*`` (weak comparison, as RFC 9110 asks here)."""
    if header is None:
        return False
    return any(c.strip() == "*" or c.strip().removeprefix("W/") == tag for c in header.split(","))


async def get_job(request: web.Request) -> web.Response:
    """``GET /v1/jobs/:jobId`` with a strong ETag; a matching ``If-None-Match`` answers 304, no body."""
    if (denied := gate(request, JOBS_READ)) is not None:
        return denied
    state = request.app[STATE_KEY]
    job = state.layers.jobs.get(request.match_info["job_id"])
    if job is None:
        return _not_found("Job")
    body = job_json(job, state.layers.containers[job.container_uuid], state.clock())
    tag = etag(body)
    if _etag_matches(request.headers.get("If-None-Match"), tag):
        return web.Response(status=304, headers={"ETag": tag})
    return web.json_response(body, headers={"ETag": tag})


async def get_container(request: web.Request) -> web.Response:
    """``GET /v1/content/:containerId`` (``cnt_<uuid>`` or a bare uuid)."""
    if (denied := gate(request, CONTENT_READ)) is not None:
        return denied
    state = request.app[STATE_KEY]
    container = state.layers.container(request.match_info["container_id"])
    if container is None:
        return _not_found("Container")
    now = state.clock()
    return web.json_response(container_json(container, now, minter(request, now)))


async def get_asset(request: web.Request) -> web.Response:
    """``GET /v1/content/:containerId/assets/:assetId``: only the current generation's assets, once the
    container has completed; each read mints a fresh URL and ``expiresAt``."""
    if (denied := gate(request, CONTENT_READ)) is not None:
        return denied
    state = request.app[STATE_KEY]
    now = state.clock()
    container = state.layers.container(request.match_info["container_id"])
    asset = None if container is None else container.asset(request.match_info["asset_id"])
    if container is None or asset is None or container.state_at(now) != "completed":
        return _not_found("Asset")
    checksum = None
    if container.wrong_checksum:
        checksum = wrong_sha256(asset)
    elif not container.legacy:
        # Off the event loop: the first hash of a GiB asset takes seconds; later reads hit the cache.
        checksum = await asyncio.to_thread(asset_sha256, asset.seed, asset.size)
    return web.json_response(asset_descriptor(container, asset, now, minter(request, now), checksum))


def setup_layers(app: web.Application) -> None:
    """Mount the Layers API and its error shape on ``app``."""
    router = app.router
    router.add_get(f"{API_ROOT}/jobs/{{job_id}}", get_job, name="layers.job")
    router.add_get(f"{API_ROOT}/content/{{container_id}}", get_container, name="layers.container")
    router.add_get(f"{API_ROOT}/content/{{container_id}}/assets/{{asset_id}}", get_asset, name="layers.asset")
    app[ERROR_RENDERERS_KEY]["layers"] = render_layers_error
