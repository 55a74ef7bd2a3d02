"""A Layers project's content list: bulk containers, forbidden projects, churn, filters and cursors (pure).

``GET /v1/projects/:projectId/content`` lists the project's containers newest first. The order is
``(createdAt, registration order)``, both descending, so it is total even when containers share a
timestamp (a bulk with no spacing, churn on a still clock). A cursor encodes that key of the last item
served, not an offset: containers added at the head while a walk runs never shift it, which is what
"cursors bound to the sort" promises. A cursor also carries a fingerprint of the query's filters, so
reusing it with other filters is refused (422) instead of silently paging something else.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.simulator.layers_book import LayersBook
from worker.simulator.layers_content import FORMATS, OUTCOMES, LayersContainer
from worker.simulator.layers_json import UrlMinter, container_json
from worker.simulator.specs import SpecError, SpecReader

__all__ = [
    "BULK_STATUSES",
    "LIST_STATUSES",
    "ContentQuery",
    "LayersAccount",
    "QueryError",
    "bulk_container_specs",
    "content_page",
    "list_item",
    "parse_content_query",
    "project_containers",
]

DEFAULT_LIMIT = 25
MAX_LIMIT = 200
DEFAULT_SPACING_S = 60.0
MAX_BULK_COUNT = 100_000
# Statuses a list can be filtered on: the API's, with the older "generating" for "processing".
LIST_STATUSES = ("queued", "processing", "generating", "completed", "failed", "canceled")
BULK_STATUSES = ("queued", "processing", *OUTCOMES)
# A "queued" bulk container stays queued for this long: for a test, forever.
_FOREVER_S = 10 * 365 * 24 * 3600.0
# Fields of the list item, as the contract lists them: a walk must read each container for its assets.
_ITEM_FIELDS = (
    "id",
    "status",
    "format",
    "caption",
    "approvalStatus",
    "createdAt",
    "completedAt",
    "primaryAsset",
    "preview",
    "creativeType",
)
# Spec fields the bulk call decides itself (a per-container value would contradict it).
_BULK_OWNED = ("id", "project_id", "format", "queued_s", "processing_s", "outcome")


class QueryError(ValueError):
    """A list query the API refuses (422 VALIDATION); the message says why."""


def _statuses(raw: object) -> list[str]:
    """``status`` as one status or a list cycled over the containers (to interleave them)."""
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(s, str) and s in BULK_STATUSES for s in items):
        raise SpecError(f"layers containers: 'status' must be one of {list(BULK_STATUSES)} or a list of them")
    return [str(s) for s in items]


def _timing(status: str) -> dict[str, object]:
    """The container spec fields that make a container show ``status`` from its creation on."""
    if status == "queued":
        return {"queued_s": _FOREVER_S, "processing_s": None}
    if status == "processing":
        return {"queued_s": 0.0, "processing_s": None}
    return {"queued_s": 0.0, "processing_s": 0.0, "outcome": status}


def bulk_container_specs(
    project_id: str, raw: Mapping[str, object], *, now: float
) -> list[tuple[float, dict[str, object]]]:
    """(creation time, container spec) pairs, oldest first, from ``{"count", "status", "format", "size",
    "slides", "start_age_s", "spacing_s", "container"}``: the oldest created ``start_age_s`` ago (default
    ``count * spacing_s``), each next ``spacing_s`` later; ``container`` holds further container spec
    fields (e.g. ``legacy``, ``url_ttl_s``) for all of them. Raises ``SpecError``."""
    reader = SpecReader(raw, "layers containers")
    count = reader.integer("count", 1, minimum=1)
    statuses = _statuses(reader.opt_raw("status") or "completed")
    fmt = reader.choice("format", FORMATS, "video")
    size = reader.opt_integer("size", minimum=0)
    slides = reader.opt_integer("slides", minimum=1)
    spacing_s = reader.number("spacing_s", DEFAULT_SPACING_S)
    start_age_s = reader.number("start_age_s", count * spacing_s)
    extra = reader.opt_object("container") or {}
    reader.finish()
    if count > MAX_BULK_COUNT:
        raise SpecError(f"layers containers: 'count' must be <= {MAX_BULK_COUNT}, got {count}")
    if start_age_s < (count - 1) * spacing_s:
        raise SpecError(
            f"layers containers: 'start_age_s' ({start_age_s}) must be >= (count - 1) * spacing_s "
            f"({(count - 1) * spacing_s})"
        )
    if owned := sorted(set(extra) & set(_BULK_OWNED)):
        raise SpecError(f"layers containers: 'container' must not set {owned}: the bulk call decides them")
    base: dict[str, object] = {**extra, "project_id": project_id, "format": fmt}
    if size is not None:
        base["size"] = size
    if slides is not None:
        base["slides"] = slides
    return [
        (now - start_age_s + i * spacing_s, {**base, **_timing(statuses[i % len(statuses)])})
        for i in range(count)
    ]


@dataclass(slots=True)
class _ProjectChurn:
    add: int
    every: int
    lists: int = 0


@dataclass(slots=True)
class LayersAccount:
    """Which projects a key may not list, and the churn per project."""

    # project id -> keys refused (None: every key)
    forbidden: dict[str, set[str] | None] = field(default_factory=dict)
    churn: dict[str, _ProjectChurn] = field(default_factory=dict)

    def forbid(self, project_id: str, key: str | None = None) -> None:
        """Refuse ``key`` (None: every key) the project's list."""
        if key is None:
            self.forbidden[project_id] = None
            return
        keys = self.forbidden.setdefault(project_id, set())
        if keys is not None:
            keys.add(key)

    def allow(self, project_id: str) -> bool:
        """Lift every refusal on the project; False when there was none."""
        return self.forbidden.pop(project_id, False) is not False

    def readable(self, project_id: str, key: str) -> bool:
        """Whether ``key`` may list the project."""
        if project_id not in self.forbidden:
            return True
        keys = self.forbidden[project_id]
        return keys is not None and key not in keys

    def set_churn(self, project_id: str, add: int, every: int = 1) -> None:
        """Every ``every``-th list request of the project first adds ``add`` completed containers; 0 stops."""
        if add <= 0:
            self.churn.pop(project_id, None)
        else:
            self.churn[project_id] = _ProjectChurn(add=add, every=every)

    def churn_due(self, project_id: str) -> int:
        """Count one list request of the project; how many containers to add before answering it."""
        churn = self.churn.get(project_id)
        if churn is None:
            return 0
        churn.lists += 1
        return churn.add if churn.lists % churn.every == 0 else 0

    def clear(self) -> None:
        """Forget refusals and churn."""
        self.forbidden.clear()
        self.churn.clear()


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentQuery:
    """A validated list query."""

    project_id: str
    statuses: frozenset[str]
    since: float | None
    until: float | None
    limit: int
    after: tuple[float, int] | None  # sort key of the last item already served

    @property
    def fingerprint(self) -> str:
        """What a cursor is bound to besides the sort: the project and the filters (not the limit)."""
        text = json.dumps([self.project_id, sorted(self.statuses), self.since, self.until])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parse_time(name: str, raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise QueryError(f"'{name}' must be an ISO 8601 timestamp, got {raw!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # the API's times are UTC
    return parsed.timestamp()


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise QueryError(f"'limit' must be an integer, got {raw!r}") from None
    if limit < 1:
        raise QueryError(f"'limit' must be >= 1, got {limit}")
    return min(limit, MAX_LIMIT)  # clamped, as the vendor's "max 200" reads [ours]


def encode_cursor(key: tuple[float, int], fingerprint: str) -> str:
    """An opaque cursor: the sort key of the last item served and the query it belongs to."""
    text = json.dumps({"t": key[0], "s": key[1], "q": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(raw: str, fingerprint: str) -> tuple[float, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        key = (float(data["t"]), int(data["s"]))
        bound_to = data["q"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise QueryError("'cursor' is not a cursor this API issued") from None
    if bound_to != fingerprint:
        raise QueryError("'cursor' belongs to a query with other filters")
    return key


def parse_content_query(project_id: str, params: Mapping[str, str], statuses: Sequence[str]) -> ContentQuery:
    """Validate the query string (``statuses``: every ``status`` value given); raises ``QueryError``."""
    wanted = {s.strip() for value in statuses for s in value.split(",") if s.strip()}
    if unknown := sorted(wanted - set(LIST_STATUSES)):
        raise QueryError(f"'status' must be among {list(LIST_STATUSES)}, got {unknown}")
    query = ContentQuery(
        project_id=project_id,
        statuses=frozenset(wanted),
        since=_parse_time("since", params.get("since")),
        until=_parse_time("until", params.get("until")),
        limit=_parse_limit(params.get("limit")),
        after=None,
    )
    cursor = params.get("cursor")
    return dataclasses.replace(query, after=_decode_cursor(cursor, query.fingerprint)) if cursor else query


def _status_matches(container: LayersContainer, wanted: frozenset[str], now: float) -> bool:
    if not wanted:
        return True
    state = container.state_at(now)
    # "processing" and the older "generating" name one state: either filter finds it.
    names = {"processing", "generating"} if state == "processing" else {state}
    return bool(names & wanted)


def content_page(
    book: LayersBook, query: ContentQuery, now: float
) -> tuple[list[LayersContainer], str | None]:
    """One page of the project's containers, newest first, and the cursor of the next (None at the end).

    ``since`` is inclusive and ``until`` exclusive on ``createdAt`` [ours: the docs do not say].
    """
    rows = []
    for seq, container in enumerate(book.containers.values()):
        key = (container.created_at, seq)
        if container.project_id != query.project_id or (query.after is not None and key >= query.after):
            continue
        if query.since is not None and container.created_at < query.since:
            continue
        if query.until is not None and container.created_at >= query.until:
            continue
        if _status_matches(container, query.statuses, now):
            rows.append((key, container))
    rows.sort(key=lambda row: row[0], reverse=True)
    page = rows[: query.limit]
    more = len(rows) > query.limit
    cursor = encode_cursor(page[-1][0], query.fingerprint) if more else None
    return [container for _, container in page], cursor


def project_containers(book: LayersBook, project_id: str, now: float) -> list[LayersContainer]:
    """Every container of the project, newest first, as an unfiltered walk would find them."""
    query = ContentQuery(
        project_id=project_id, statuses=frozenset(), since=None, until=None, limit=0, after=None
    )
    return content_page(book, dataclasses.replace(query, limit=len(book.containers)), now)[0]


def list_item(container: LayersContainer, now: float, mint: UrlMinter) -> dict[str, object]:
    """A container as the list shows it: the container's fields without ``assets``."""
    body = container_json(container, now, mint)
    return {name: body[name] for name in _ITEM_FIELDS}
