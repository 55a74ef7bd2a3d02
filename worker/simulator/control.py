"""The control API under ``/_sim/`` (JSON, no auth): create jobs and containers, set keys, rate limits and
faults, read the request log, reset.

It exists for the demo and for tests or benchmarks running in another process; in-process tests use the
``Simulator`` helpers, which call the same ``SimulatorState`` methods. Bad bodies answer 400 with a JSON
error (409 for a conflict with existing state, 404 for an unknown container).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.layers_content import LayersContainer, asset_sha256
from worker.simulator.specs import SpecConflict, SpecError, SpecNotFound
from worker.simulator.state import STATE_KEY

__all__ = ["control_error", "object_body", "setup_control", "spec_errors"]

Handler = Callable[[web.Request], Awaitable[web.Response]]

# Above this size an asset's sha256 is left out of the creation answer rather than computed there (about
# 3 s per GiB); tests with big assets use ``content_sha256`` themselves, and the descriptor has it.
_EAGER_SHA256_MAX_BYTES = 64 << 20


def control_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def object_body(request: web.Request) -> dict[str, object]:
    """The body as a JSON object; ``SpecError`` otherwise."""
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise SpecError(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SpecError("body must be a JSON object")
    return body


def spec_errors(handler: Handler) -> Handler:
    """Turn spec mistakes into 400/409 JSON answers instead of tracebacks."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except SpecConflict as exc:
            return control_error(409, str(exc))
        except SpecNotFound as exc:
            return control_error(404, str(exc))
        except SpecError as exc:
            return control_error(400, str(exc))

    return wrapped


def _cloudlayer_job_json(job: SimJob) -> dict[str, object]:
    """What a test needs to aim at the job and check its asset: the seed of a simulator-hosted asset, or
    the external URL it was given (whose bytes the simulator knows nothing about)."""
    origin: dict[str, object] = {"seed": job.seed} if job.asset_url is None else {"asset_url": job.asset_url}
    return {"id": job.id, "asset_id": job.asset_id, **origin, "size": job.size, "ext": job.ext}


@spec_errors
async def create_cloudlayer_job(request: web.Request) -> web.Response:
    """``POST /_sim/cloudlayer/jobs``: a job with full control over its timing, outcome and shape."""
    job = request.app[STATE_KEY].add_cloudlayer_job(await object_body(request))
    return web.json_response(_cloudlayer_job_json(job), status=201)


async def _layers_assets_json(container: LayersContainer) -> dict[str, object]:
    """The container's id and current assets with everything a test needs to aim at and check them."""
    assets = []
    for asset in container.generation.assets:
        entry: dict[str, object] = {
            "assetId": asset.asset_id,
            "kind": asset.kind,
            "seed": asset.seed,
            "size": asset.size,
            "mimeType": asset.mime_type,
        }
        if asset.size <= _EAGER_SHA256_MAX_BYTES:
            entry["sha256"] = await asyncio.to_thread(asset_sha256, asset.seed, asset.size)
        assets.append(entry)
    return {"id": container.id, "assets": assets}


@spec_errors
async def create_layers_container(request: web.Request) -> web.Response:
    """``POST /_sim/layers/containers``: a container with its timing, outcome, assets and quirks."""
    container = request.app[STATE_KEY].add_layers_container(await object_body(request))
    return web.json_response(await _layers_assets_json(container), status=201)


@spec_errors
async def create_layers_job(request: web.Request) -> web.Response:
    """``POST /_sim/layers/jobs``: a job with a new container (``container``) or an existing one."""
    state = request.app[STATE_KEY]
    job = state.add_layers_job(await object_body(request))
    return web.json_response({"jobId": job.id, "containerId": f"cnt_{job.container_uuid}"}, status=201)


@spec_errors
async def regenerate_layers_container(request: web.Request) -> web.Response:
    """``POST /_sim/layers/containers/:id/regenerate``: the new asset list."""
    state = request.app[STATE_KEY]
    container = state.regenerate_layers_container(
        request.match_info["container_id"], await object_body(request)
    )
    return web.json_response(await _layers_assets_json(container))


@spec_errors
async def put_layers_key(request: web.Request) -> web.Response:
    """``PUT /_sim/layers/keys``: accept a key with the given scopes (default: content:read, jobs:read)."""
    body = await object_body(request)
    scopes = request.app[STATE_KEY].set_layers_key(body)
    return web.json_response({"key": body["key"], "scopes": sorted(scopes)})


@spec_errors
async def put_layers_rate(request: web.Request) -> web.Response:
    """``PUT /_sim/layers/rate``: ``{"tier"?, "reads_per_min"?}``; null reads_per_min disables the limit."""
    limits = request.app[STATE_KEY].layers_rate.configure(await object_body(request))
    return web.json_response(limits)


async def get_layers_rate(request: web.Request) -> web.Response:
    """``GET /_sim/layers/rate``: the limits in force."""
    return web.json_response(request.app[STATE_KEY].layers_rate.to_json())


@spec_errors
async def add_fault(request: web.Request) -> web.Response:
    """``POST /_sim/faults``."""
    rule = request.app[STATE_KEY].faults.add(await object_body(request))
    return web.json_response({"id": rule.id}, status=201)


async def list_faults(request: web.Request) -> web.Response:
    """``GET /_sim/faults``: the active rules with how often each fired."""
    return web.json_response([rule.to_json() for rule in request.app[STATE_KEY].faults.rules()])


async def clear_faults(request: web.Request) -> web.Response:
    """``DELETE /_sim/faults``."""
    return web.json_response({"cleared": request.app[STATE_KEY].faults.clear()})


async def delete_fault(request: web.Request) -> web.Response:
    """``DELETE /_sim/faults/:id``."""
    if not request.app[STATE_KEY].faults.remove(request.match_info["fault_id"]):
        return control_error(404, "no such fault rule")
    return web.json_response({"cleared": 1})


async def list_requests(request: web.Request) -> web.Response:
    """``GET /_sim/requests[?route=files]``: every upstream request served, in arrival order."""
    records = request.app[STATE_KEY].log.snapshot(request.query.get("route"))
    return web.json_response([record.to_json() for record in records])


async def clear_requests(request: web.Request) -> web.Response:
    """``DELETE /_sim/requests``."""
    request.app[STATE_KEY].log.clear()
    return web.json_response({"cleared": True})


async def reset(request: web.Request) -> web.Response:
    """``POST /_sim/reset``: forget jobs, containers, files, faults, rate-limit usage and the log."""
    request.app[STATE_KEY].reset()
    return web.json_response({"reset": True})


def setup_control(app: web.Application) -> None:
    """Mount the control API; route names start with ``sim.`` so the middleware neither logs nor faults them.

    Methods on one path share the name: aiohttp then reuses the resource instead of adding an unnamed one.
    """
    router = app.router
    router.add_post("/_sim/cloudlayer/jobs", create_cloudlayer_job, name="sim.cloudlayer_jobs")
    router.add_post("/_sim/layers/containers", create_layers_container, name="sim.layers_containers")
    router.add_post(
        "/_sim/layers/containers/{container_id}/regenerate",
        regenerate_layers_container,
        name="sim.layers_regen",
    )
    router.add_post("/_sim/layers/jobs", create_layers_job, name="sim.layers_jobs")
    router.add_put("/_sim/layers/keys", put_layers_key, name="sim.layers_keys")
    router.add_put("/_sim/layers/rate", put_layers_rate, name="sim.layers_rate")
    router.add_get("/_sim/layers/rate", get_layers_rate, name="sim.layers_rate")
    router.add_post("/_sim/faults", add_fault, name="sim.faults")
    router.add_get("/_sim/faults", list_faults, name="sim.faults")
    router.add_delete("/_sim/faults", clear_faults, name="sim.faults")
    router.add_delete("/_sim/faults/{fault_id}", delete_fault, name="sim.fault")
    router.add_get("/_sim/requests", list_requests, name="sim.requests")
    router.add_delete("/_sim/requests", clear_requests, name="sim.requests")
    router.add_post("/_sim/reset", reset, name="sim.reset")
