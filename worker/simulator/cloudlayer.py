"""The cloudlayer.io API routes: conversion, job and asset reads (see upstream-contract.md, section 1).

Handlers stay thin: the job model and its JSON live in ``cloudlayer_jobs``; here we check the API key, look
things up and mint fresh signed file URLs bound to the host the client called.
"""

from __future__ import annotations

import json

from aiohttp import web

from worker.simulator.cloudlayer_jobs import SIM_UID, UrlMinter, asset_json, format_timestamp, job_json
from worker.simulator.filestore import signed_url
from worker.simulator.middleware import ERROR_RENDERERS_KEY
from worker.simulator.state import STATE_KEY

__all__ = ["cloudlayer_error", "minter", "setup_cloudlayer", "unauthorized"]

# imageType values cloudlayer accepts for image conversions, mapped to our file extensions.
_IMAGE_TYPES = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}


def cloudlayer_error(status: int, message: str) -> web.Response:
    """cloudlayer's error body: ``{"statusCode": .., "message": ..}``."""
    return web.json_response({"statusCode": status, "message": message}, status=status)


def unauthorized(request: web.Request) -> web.Response | None:
    """The 401 answer when the request lacks an accepted ``X-API-Key``, else None."""
    keys = request.app[STATE_KEY].cloudlayer_api_keys
    if request.headers.get("X-API-Key") in keys:
        return None
    return cloudlayer_error(401, "Unauthorized")


def minter(request: web.Request) -> UrlMinter:
    """Signed URLs on the host the client reached us at, so they work behind any bound address."""
    state = request.app[STATE_KEY]
    base = f"{request.scheme}://{request.host}"
    now = state.clock()

    def mint(name: str, ttl_s: float | None) -> str:
        return signed_url(base, name, now, ttl_s)

    return mint


async def get_job(request: web.Request) -> web.Response:
    """``GET /v{1,2}/jobs/:id``."""
    if (denied := unauthorized(request)) is not None:
        return denied
    state = request.app[STATE_KEY]
    job = state.cloudlayer.jobs.get(request.match_info["job_id"])
    if job is None:
        return cloudlayer_error(404, "Not Found")
    return web.json_response(job_json(job, state.clock(), minter(request)))


async def get_asset(request: web.Request) -> web.Response:
    """``GET /v{1,2}/assets/:id``; an asset exists once its job has succeeded, until it expires."""
    if (denied := unauthorized(request)) is not None:
        return denied
    state = request.app[STATE_KEY]
    job = state.cloudlayer.by_asset(request.match_info["asset_id"])
    if job is None or not state.cloudlayer_account.alive(job, state.clock()):
        return cloudlayer_error(404, "Not Found")
    return web.json_response(asset_json(job, minter(request)))


async def _json_body(request: web.Request) -> dict[str, object] | None:
    """The request's JSON object; ``{}`` when empty, None when it is not a JSON object."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def convert(request: web.Request) -> web.Response:
    """``POST /v2/{url|html|template}/{pdf|image}``: a new pending job with seeded size and duration."""
    if (denied := unauthorized(request)) is not None:
        return denied
    body = await _json_body(request)
    if body is None:
        return cloudlayer_error(400, "Request body must be a JSON object")
    state = request.app[STATE_KEY]
    source, fmt = request.match_info["source"], request.match_info["fmt"]
    ext = "pdf"
    if fmt == "image":
        ext = _IMAGE_TYPES.get(str(body.get("imageType", "png")).lower(), "png")
    spec = {
        "size": state.rng.randint(10_000, 2_000_000),
        "pending_s": round(state.rng.uniform(1.0, 4.0), 3),
        "ext": ext,
    }
    job = state.add_cloudlayer_job(spec, job_type=f"{source}-{fmt}")
    return web.json_response(
        {
            "id": job.id,
            "status": "pending",
            "uid": SIM_UID,
            "timestamp": format_timestamp("ms", job.created_at),
        },
        status=202,
    )


def setup_cloudlayer(app: web.Application) -> None:
    """Mount the cloudlayer API on ``app``."""
    app.router.add_get("/{version:v[12]}/jobs/{job_id}", get_job, name="cloudlayer.job")
    app.router.add_get("/{version:v[12]}/assets/{asset_id}", get_asset, name="cloudlayer.asset")
    app.router.add_post("/v2/{source:url|html|template}/{fmt:pdf|image}", convert, name="cloudlayer.convert")
    app[ERROR_RENDERERS_KEY]["cloudlayer"] = cloudlayer_error
