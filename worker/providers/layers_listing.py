"""A Layers project's content list, ``GET /v1/projects/:projectId/content`` (pure): the query a walk
sends, and a page of ``{items, nextCursor}`` as ``Listed`` containers.

Cursors are bound to the sort (newest first), so containers created while a walk runs never shift it:
no overlap is needed, unlike cloudlayer's offsets. Each listed container becomes the container job
polled as today (the list items carry no asset URLs), so the listing names no assets.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from worker.errors import ConfigError, InvalidJob, UpstreamRejected
from worker.models import JobKey
from worker.providers.base import Listed
from worker.providers.layers_ids import format_time, parse_target, parse_time, text

# The vendor's maximum page (contract, section 3).
LIST_LIMIT = 200
# An incremental walk asks for containers created since its last one, less this margin: ``since``
# filters on createdAt, and a container created (queued) before the last walk may complete only
# after it, when that walk's status=completed filter did not list it yet. A day covers any
# generation by far; a container that completes later still is found by the next full walk.
SINCE_MARGIN_S = 24 * 3600.0
# Project ids go into a URL path segment; the API's are "prj_<ULID>", but we only refuse what could
# never be one (a path separator, spaces, control characters), not other vendor spellings.
_MAX_PROJECT_ID = 256

SCOPE_HINT = "Layers mirrors one project: use layers:<projectId>"


def check_mirror_scope(scope: str) -> None:
    """A Layers mirror names one project (``prj_...``); refuse what cannot be a project id."""
    if not scope:
        raise ConfigError(SCOPE_HINT)
    if scope != scope.strip() or any(c.isspace() or not c.isprintable() for c in scope):
        raise ConfigError(f"Layers project id {scope!r} has spaces or control characters: {SCOPE_HINT}")
    if "/" in scope or len(scope) > _MAX_PROJECT_ID:
        raise ConfigError(
            f"Layers project id {scope[:40]!r} must be one id of at most {_MAX_PROJECT_ID} characters "
            f"without '/': {SCOPE_HINT}"
        )


def content_path(project_id: str, *, cursor: str | None, since: float | None) -> str:
    """The path and query of one page (relative to ``/v1``): completed containers only, created
    since ``since`` less ``SINCE_MARGIN_S`` when given."""
    query = [("limit", str(LIST_LIMIT)), ("status", "completed")]
    if since is not None:
        query.append(("since", format_time(since - SINCE_MARGIN_S)))
    if cursor is not None:
        query.append(("cursor", cursor))
    return f"projects/{quote(project_id, safe='')}/content?{urlencode(query)}"


def parse_content_page(body: dict[str, object], where: str) -> tuple[tuple[Listed, ...], str | None]:
    """The completed containers of a page and the next cursor (None at the end); raises
    ``UpstreamRejected`` (``malformed_response``) for anything but ``{items: [...], nextCursor}``."""
    items = body.get("items")
    cursor = body.get("nextCursor")
    if not isinstance(items, list) or not (cursor is None or isinstance(cursor, str)):
        raise UpstreamRejected(
            f"{where}: expected {{items: [...], nextCursor}}, got keys {sorted(body)[:10]}",
            code="malformed_response",
        )
    listed = tuple(entry for item in items if (entry := _listed(item, where)) is not None)
    return listed, cursor or None


def _listed(item: object, where: str) -> Listed | None:
    """A completed container as a ``Listed``; None for one of another status (a deployment that
    ignored the filter would otherwise make jobs of failed containers)."""
    raw_id = text(item.get("id")) if isinstance(item, dict) else None
    if raw_id is None or not isinstance(item, dict):
        raise UpstreamRejected(
            f"{where}: a list item is not a container with a string id", code="malformed_response"
        )
    try:
        target = parse_target(raw_id)
    except InvalidJob as exc:
        raise UpstreamRejected(f"{where}: {exc.message}", code="malformed_response") from None
    if target.kind != "container":
        raise UpstreamRejected(f"{where}: list item {raw_id!r} is not a container", code="malformed_response")
    status = text(item.get("status"))
    if status is not None and status.strip().lower() != "completed":
        return None
    return Listed(
        key=JobKey("layers", target.id),
        item_id=target.id,
        created_at=parse_time(item.get("createdAt")),
    )
