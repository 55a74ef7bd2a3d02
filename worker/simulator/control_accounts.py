"""The control API for whole accounts (mirror mode): bulk assets and containers, expiry, retention, churn,
forbidden projects, and the ground truth a test compares a mirror with.

Same conventions as ``control``: JSON bodies, no auth, 400/404/409 for spec mistakes, route names under
``sim.`` so nothing here is logged or faulted. Every handler is one call of a ``SimulatorState`` method,
the one the ``Simulator`` helpers call too.
"""

from __future__ import annotations

from aiohttp import web

from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.control import object_body, spec_errors
from worker.simulator.state import STATE_KEY

__all__ = ["setup_control_accounts"]


def _asset_json(job: SimJob) -> dict[str, object]:
    """What a test needs to check a mirrored copy: ids, seed and size (sha256 is ``content_sha256``)."""
    return {
        "id": job.asset_id,
        "job_id": job.id,
        "seed": job.seed,
        "size": job.size,
        "ext": job.ext,
        "created_at": job.finished_at,
    }


@spec_errors
async def create_cloudlayer_assets(request: web.Request) -> web.Response:
    """``POST /_sim/cloudlayer/assets``: ``count`` succeeded assets spread into the past, oldest first."""
    jobs = request.app[STATE_KEY].add_cloudlayer_assets(await object_body(request))
    return web.json_response({"assets": [_asset_json(job) for job in jobs]}, status=201)


async def get_cloudlayer_assets(request: web.Request) -> web.Response:
    """``GET /_sim/cloudlayer/assets``: the ids alive now (newest first) and those expired so far."""
    state = request.app[STATE_KEY]
    expired = state.cloudlayer_account.expired(state.cloudlayer, state.clock())
    return web.json_response(
        {
            "alive": [job.asset_id for job in state.cloudlayer_assets()],
            "expired": [j.asset_id for j in expired],
        }
    )


@spec_errors
async def expire_cloudlayer_assets(request: web.Request) -> web.Response:
    """``POST /_sim/cloudlayer/assets/expire`` ``{"oldest": N}`` or ``{"ids": [...]}``."""
    expired = request.app[STATE_KEY].expire_cloudlayer_assets(await object_body(request))
    return web.json_response({"expired": expired})


@spec_errors
async def set_cloudlayer_churn(request: web.Request) -> web.Response:
    """``PUT`` (or ``POST``) ``/_sim/cloudlayer/churn`` ``{"add_per_list", "expire_per_list",
    "expire_where", "every", "size"}``; ``DELETE`` stops it."""
    body = {} if request.method == "DELETE" else await object_body(request)
    return web.json_response({"churn": request.app[STATE_KEY].set_cloudlayer_churn(body)})


@spec_errors
async def set_cloudlayer_retention(request: web.Request) -> web.Response:
    """``PUT /_sim/cloudlayer/retention`` ``{"retention_s": N | null}``."""
    retention_s = request.app[STATE_KEY].set_cloudlayer_retention(await object_body(request))
    return web.json_response({"retention_s": retention_s})


@spec_errors
async def create_layers_containers(request: web.Request) -> web.Response:
    """``POST /_sim/layers/projects/:projectId/containers``: ``count`` containers, oldest first."""
    state = request.app[STATE_KEY]
    containers = state.add_layers_containers(request.match_info["project_id"], await object_body(request))
    return web.json_response({"ids": [c.id for c in containers]}, status=201)


async def get_layers_containers(request: web.Request) -> web.Response:
    """``GET /_sim/layers/projects/:projectId/containers``: every container id, newest first."""
    containers = request.app[STATE_KEY].layers_project_containers(request.match_info["project_id"])
    return web.json_response({"ids": [c.id for c in containers]})


@spec_errors
async def forbid_layers_project(request: web.Request) -> web.Response:
    """``POST /_sim/layers/projects/:projectId/forbid`` ``{"key"?}``; ``DELETE`` lifts every refusal."""
    state = request.app[STATE_KEY]
    project_id = request.match_info["project_id"]
    if request.method == "DELETE":
        return web.json_response({"lifted": state.layers_account.allow(project_id)})
    state.forbid_layers_project(project_id, await object_body(request))
    keys = state.layers_account.forbidden[project_id]
    return web.json_response({"projectId": project_id, "keys": None if keys is None else sorted(keys)})


@spec_errors
async def set_layers_churn(request: web.Request) -> web.Response:
    """``PUT`` (or ``POST``) ``/_sim/layers/projects/:projectId/churn`` ``{"add_per_list", "every"}``;
    ``DELETE`` stops it."""
    body = {} if request.method == "DELETE" else await object_body(request)
    request.app[STATE_KEY].set_layers_churn(request.match_info["project_id"], body)
    return web.json_response(body)


def setup_control_accounts(app: web.Application) -> None:
    """Mount the account control routes (names under ``sim.``: neither logged nor faulted)."""
    router = app.router
    router.add_post("/_sim/cloudlayer/assets", create_cloudlayer_assets, name="sim.cloudlayer_assets")
    router.add_get("/_sim/cloudlayer/assets", get_cloudlayer_assets, name="sim.cloudlayer_assets")
    router.add_post("/_sim/cloudlayer/assets/expire", expire_cloudlayer_assets, name="sim.cloudlayer_expire")
    for method in ("PUT", "POST", "DELETE"):
        router.add_route(method, "/_sim/cloudlayer/churn", set_cloudlayer_churn, name="sim.cloudlayer_churn")
    router.add_put("/_sim/cloudlayer/retention", set_cloudlayer_retention, name="sim.cloudlayer_retention")
    project = "/_sim/layers/projects/{project_id}"
    router.add_post(f"{project}/containers", create_layers_containers, name="sim.layers_project_containers")
    router.add_get(f"{project}/containers", get_layers_containers, name="sim.layers_project_containers")
    for method in ("POST", "DELETE"):
        router.add_route(method, f"{project}/forbid", forbid_layers_project, name="sim.layers_project_forbid")
    for method in ("PUT", "POST", "DELETE"):
        router.add_route(method, f"{project}/churn", set_layers_churn, name="sim.layers_project_churn")
