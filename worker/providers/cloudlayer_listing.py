"""cloudlayer's asset objects and the walk of its account list, ``GET /{v}/assets?limit=&offset=`` (pure
but for the page reader the walk is given).

The list is a bare JSON array, newest first, paged by offset. Offsets move under a walk: assets added at
the head push the unread ones to higher offsets (read twice, harmless: the store dedupes by key), and
assets that vanish *behind* the walk (expired, deleted) pull them to lower offsets, so an item can fall
between two pages. Hence pages overlap (read ``PAGE_LIMIT``, advance ``PAGE_LIMIT - OVERLAP``) and the
overlap is verified: the next page must hold an id of the previous page (of its overlap tail, unless
the list moved forward). If it holds none, the list moved back by more than the overlap since the
last read, and the walk steps back a stride and reads
again (at most ``MAX_STEP_BACKS`` times a page; after that it carries on and logs
``listing_moved_too_fast``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from worker.errors import ConfigError, InvalidJob, UpstreamRejected
from worker.models import AssetRef, JobKey
from worker.providers.base import Listed, ListPage

log = structlog.get_logger("worker.providers.cloudlayer")

# The vendor's maximum page (contract, section 3).
PAGE_LIMIT = 100
# Items each page shares with the one before: a walk tolerates the list moving back by fewer than
# this many items between two reads without a re-read. 20 % of a page: a few extra reads per walk.
OVERLAP = 20
# Re-reads of one page, a stride back each, when its overlap is missing; bounded so that a list
# shrinking faster than we read cannot hold the walk forever.
MAX_STEP_BACKS = 3

ASSET_PREFIX = "asset/"
# JobKey ids are at most 256 characters; an asset key spends 6 of them on the prefix.
MAX_ASSET_ID = 256 - len(ASSET_PREFIX)

# Job types end in their output kind ("html-pdf"); asset types are "pdf", "application/pdf", "image".
_EXT_BY_TYPE = {"pdf": "pdf", "application/pdf": "pdf"}

SCOPE_HINT = "cloudlayer mirrors the whole account: use `cloudlayer`, not `cloudlayer:<x>`"


def positive_int(value: object) -> int | None:
    """A published size as an int, or None when absent or nonsense (never crash on a field)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def ext_of_type(kind: object) -> str | None:
    """The extension a job or asset ``type`` implies, when it implies one."""
    return _EXT_BY_TYPE.get(str(kind or "").rsplit("-", 1)[-1])


# The times a stored one may hold: from 1970 to the end of year 9999 (what ``datetime`` can show).
_LATEST_S = 253402300799.0


def parse_timestamp(value: object) -> float | None:
    """A cloudlayer ``timestamp`` as UNIX seconds: unix milliseconds, ``{"_seconds", "_nanoseconds"}``
    (Firestore) or ISO 8601; None when absent, unreadable or out of any sane range (never crash on
    an optional field: a vendor's nonsense must not stop a walk, nor ``mirror --status`` later)."""
    try:
        seconds = _seconds(value)
    except (OverflowError, ValueError):
        return None
    if seconds is None or not 0.0 <= seconds <= _LATEST_S:
        return None
    return seconds


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value / 1000.0
    if isinstance(value, dict):
        seconds, nanos = value.get("_seconds"), value.get("_nanoseconds", 0)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            return float(seconds) + (nanos / 1e9 if isinstance(nanos, int | float) else 0.0)
        return None
    if isinstance(value, str):
        when = datetime.fromisoformat(value.strip())
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return None


def asset_id_of(upstream_id: str) -> str | None:
    """The asset id of an asset key's upstream id (``asset/<assetId>``); None for a job id."""
    return upstream_id[len(ASSET_PREFIX) :] if upstream_id.startswith(ASSET_PREFIX) else None


def check_asset_id(asset_id: str) -> None:
    """Refuse (``InvalidJob``) an asset id that cannot follow ``asset/`` in a key."""
    if not asset_id or "/" in asset_id or len(asset_id) > MAX_ASSET_ID:
        raise InvalidJob(
            f"cloudlayer asset key {ASSET_PREFIX + asset_id!r}: expected cloudlayer:asset/<assetId>, "
            f"one id of 1-{MAX_ASSET_ID} characters without '/'"
        )


def asset_ref(asset_id: str, body: dict[str, Any]) -> AssetRef | None:
    """The file of an asset object (``GET /assets/:id`` or a list item); None when it names no url."""
    url = text(body.get("url"))
    if url is None:
        return None
    # size 0 is what some SDK versions report when the size is unknown; never verify against it.
    size = positive_int(body.get("size"))
    ext = text(body.get("ext")) or ext_of_type(body.get("type"))
    return AssetRef(asset_id=asset_id, url=url, expected_size=size or None, ext=ext)


def check_mirror_scope(scope: str) -> None:
    """cloudlayer lists one thing, the whole account: the scope is empty."""
    if scope != "":
        raise ConfigError(SCOPE_HINT)


def parse_asset_page(body: object, url: str) -> tuple[Listed, ...]:
    """A list answer as ``Listed`` items; ``malformed_response`` for anything but an array of assets."""
    if not isinstance(body, list):
        raise UpstreamRejected(
            f"GET {url}: expected a JSON array of assets, got {type(body).__name__}",
            url=url,
            code="malformed_response",
        )
    return tuple(_listed(item, url) for item in body)


def _listed(item: object, url: str) -> Listed:
    asset_id = text(item.get("id")) if isinstance(item, dict) else None
    if asset_id is None or not isinstance(item, dict):
        raise UpstreamRejected(
            f"GET {url}: a list item is not an asset object with a string id",
            url=url,
            code="malformed_response",
        )
    try:
        check_asset_id(asset_id)
        key = JobKey.parse(f"cloudlayer:{ASSET_PREFIX}{asset_id}")
    except InvalidJob as exc:
        raise UpstreamRejected(f"GET {url}: {exc.message}", url=url, code="malformed_response") from None
    ref = asset_ref(asset_id, item)
    return Listed(
        key=key,
        item_id=asset_id,
        created_at=parse_timestamp(item.get("timestamp")),
        assets=(ref,) if ref is not None else (),
        aliases=_job_alias(item),
    )


def _job_alias(item: dict[str, Any]) -> tuple[JobKey, ...]:
    """The job that produced the asset, as a user would have submitted it (``cloudlayer:<jobId>``):
    a copy made through it is a copy of this asset."""
    job_id = text(item.get("jobId"))
    if job_id is None:
        return ()
    try:
        return (JobKey.parse(f"cloudlayer:{job_id}"),)
    except InvalidJob:
        return ()


# Reads the page at an offset (PAGE_LIMIT items asked for).
PageReader = Callable[[int], Awaitable[tuple[Listed, ...]]]


def _stride() -> int:
    # Read at call time, so a test can change the constants of one walk.
    return PAGE_LIMIT - OVERLAP


def first_offset(start: str | None) -> int:
    """Where a walk begins: the top, or one stride before a saved resume offset, as insurance against
    the list having moved back while no walk watched it (an unreadable one: the top)."""
    if start is None:
        return 0
    try:
        saved = int(start)
    except ValueError:
        log.warning("listing_resume_ignored", provider="cloudlayer", start=start[:40])
        return 0
    return max(0, saved - _stride())


def has_gap(previous: tuple[Listed, ...], page: tuple[Listed, ...]) -> bool:
    """Whether something may lie unread between ``previous`` and the ``page`` read after it.

    No gap when the page holds an id of the previous page's overlap tail (contiguity: everything
    after that id is in this page or later ones), or an earlier id of it (the list moved forward:
    re-reads, never skips). Without an overlap there is nothing to verify against.
    """
    if OVERLAP <= 0 or not previous:
        return False
    ids = {item.item_id for item in page}
    return not any(item.item_id in ids for item in previous)


async def read_verified(
    read: PageReader, offset: int, previous: tuple[Listed, ...] | None
) -> tuple[int, tuple[Listed, ...]]:
    """The page at ``offset`` (or a stride or a few before it, when the list moved back past the
    overlap since ``previous`` was read), and the offset it was read at."""
    page = await read(offset)
    if previous is None:
        return offset, page
    step_backs = 0
    while offset > 0 and has_gap(previous, page):
        if step_backs >= MAX_STEP_BACKS:
            log.warning("listing_moved_too_fast", provider="cloudlayer", offset=offset, step_backs=step_backs)
            break
        offset = max(0, offset - _stride())
        step_backs += 1
        page = await read(offset)
    return offset, page


async def walk_by_offset(read: PageReader, *, start: str | None) -> AsyncIterator[ListPage]:
    """Every page of the list from the top (or ``start``); a short page is the end (some deployments
    return fewer than asked, or everything at once: never assume a total)."""
    offset = first_offset(start)
    previous: tuple[Listed, ...] | None = None
    while True:
        offset, page = await read_verified(read, offset, previous)
        if len(page) < PAGE_LIMIT:
            yield ListPage(page, None)
            return
        yield ListPage(page, str(offset + _stride()))
        previous = page
        offset += _stride()
