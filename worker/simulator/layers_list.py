"""``GET /v1/projects/:projectId/content``: a project's containers, newest first, ``{items, nextCursor}``.

See upstream-contract.md, section 3; the order, cursors and filters live in ``layers_account``. The
request passes the usual gate (key, read rate limit, ``content:read``), then the project check: a project
the key may not read answers 403 ``FORBIDDEN_SCOPE`` naming the project. A bad query is 422
``VALIDATION``. Before answering, the request gives the project's churn knob its turn.
"""

from __future__ import annotations

from aiohttp import web

from worker.simulator.layers import CONTENT_READ, gate, layers_error, minter, presented_key
from worker.simulator.layers_account import QueryError, content_page, list_item, parse_content_query
from worker.simulator.layers_json import API_ROOT
from worker.simulator.state import STATE_KEY

__all__ = ["list_project_content", "setup_layers_list"]


async def list_project_content(request: web.Request) -> web.Response:
    """``GET /v1/projects/:projectId/content?cursor=&limit=&status=&since=&until=``."""
    if (denied := gate(request, CONTENT_READ)) is not None:
        return denied
    state = request.app[STATE_KEY]
    project_id = request.match_info["project_id"]
    if not state.layers_account.readable(project_id, presented_key(request) or ""):
        return layers_error(
            403,
            "FORBIDDEN_SCOPE",
            f"API key may not read project {project_id}",
            {"projectId": project_id, "requiredScope": CONTENT_READ},
        )
    try:
        query = parse_content_query(project_id, request.query, request.query.getall("status", []))
    except QueryError as exc:
        return layers_error(422, "VALIDATION", str(exc))
    state.churn_layers_list(project_id)
    now = state.clock()
    containers, cursor = content_page(state.layers, query, now)
    mint = minter(request, now)
    return web.json_response({"items": [list_item(c, now, mint) for c in containers], "nextCursor": cursor})


def setup_layers_list(app: web.Application) -> None:
    """Mount the project content list on ``app`` (beside ``setup_layers``, which registers the errors)."""
    app.router.add_get(
        f"{API_ROOT}/projects/{{project_id}}/content", list_project_content, name="layers.project_content"
    )
