"""``GET /v{1,2}/assets?limit=&offset=``: the account's assets, newest first, as a bare JSON array.

See upstream-contract.md, section 3. ``limit`` defaults to 25 and is clamped to 100; a limit or offset
that is not a non-negative integer (or a limit of 0) is cloudlayer's 400. Before answering, the request
gives the churn knob its turn, so offsets move under a walk exactly as the test set them to.
"""

from __future__ import annotations

from aiohttp import web

from worker.simulator.cloudlayer import cloudlayer_error, minter, unauthorized
from worker.simulator.cloudlayer_jobs import asset_json
from worker.simulator.state import STATE_KEY

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "list_assets", "setup_cloudlayer_list"]

DEFAULT_LIMIT = 25
MAX_LIMIT = 100


def _count(request: web.Request, name: str, default: int, minimum: int) -> int | None:
    """The query parameter as an integer >= ``minimum`` (``default`` when absent); None when it is not."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= minimum else None


async def list_assets(request: web.Request) -> web.Response:
    """``GET /v{1,2}/assets``: one page of the assets alive now, newest first."""
    if (denied := unauthorized(request)) is not None:
        return denied
    limit = _count(request, "limit", DEFAULT_LIMIT, 1)
    if limit is None:
        return cloudlayer_error(400, "limit must be a positive integer")
    offset = _count(request, "offset", 0, 0)
    if offset is None:
        return cloudlayer_error(400, "offset must be a non-negative integer")
    state = request.app[STATE_KEY]
    state.churn_cloudlayer_list()
    page = state.cloudlayer_assets()[offset : offset + min(limit, MAX_LIMIT)]
    mint = minter(request)
    return web.json_response([asset_json(job, mint) for job in page])


def setup_cloudlayer_list(app: web.Application) -> None:
    """Mount the asset list on ``app`` (beside ``setup_cloudlayer``, which registers the error shape)."""
    app.router.add_get("/{version:v[12]}/assets", list_assets, name="cloudlayer.assets")
