"""cloudlayer.io: ``GET /{v}/jobs/:id`` until ``success`` or ``error``, then the job's one file; or
one asset by its id (``cloudlayer:asset/<assetId>``, ``GET /{v}/assets/:id``); and the account's
asset list for mirror mode (``cloudlayer_listing``).

Statuses per the upstream contract: the SDKs' ``pending``/``success``/``error`` plus the newer
docs' aliases. An unknown status keeps the job polling (logged once per status), because a new
intermediate state upstream must not fail jobs that will still succeed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

from worker.envvars import Var, choice, http_url, optional_text, section
from worker.errors import UpstreamRejected
from worker.httpbase import default_error_reader
from worker.models import AssetRef, Failed, Job, Pending, PollOutcome, Ready
from worker.providers.base import ANY_ID_PATTERN, Listed, ListPage, ProviderContext, ProviderSpec, Schedule
from worker.providers.cloudlayer_listing import (
    ASSET_PREFIX,
    MAX_ASSET_ID,
    PAGE_LIMIT,
    asset_id_of,
    asset_ref,
    check_asset_id,
    check_mirror_scope,
    ext_of_type,
    parse_asset_page,
    walk_by_offset,
)
from worker.providers.cloudlayer_listing import positive_int as positive_int
from worker.providers.cloudlayer_listing import text as _text

if TYPE_CHECKING:  # the client (aiohttp) is loaded only by a worker that builds providers
    from worker.httpclient import HttpClient

log = structlog.get_logger("worker.providers.cloudlayer")

_PENDING = frozenset({"pending", "processing", "queued"})
_SUCCESS = frozenset({"success", "completed"})
_ERROR = frozenset({"error", "failed"})


def classify_status(status: str) -> str:
    """``pending``, ``success``, ``error`` or ``unknown`` for any status string (pure)."""
    normal = status.strip().lower()
    if normal in _PENDING:
        return "pending"
    if normal in _SUCCESS:
        return "success"
    if normal in _ERROR:
        return "error"
    return "unknown"


def read_error(status: int, body: bytes) -> tuple[str, str]:
    """cloudlayer's ``{"statusCode", "message"}`` errors, with a hint where one helps."""
    code, message = default_error_reader(status, body)
    if status == 401:
        message = f"cloudlayer refused the API key ({message}): check CLOUDLAYER_API_KEY"
    return code, message


DEFAULT_BASE_URL = "https://api.cloudlayer.io"
# The vendor asks for no polling faster than every 2 s ("each poll is a database read").
VENDOR_MIN_POLL_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudlayerSettings:
    api_key: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    api_version: str = "v2"


VARIABLES = (
    Var("CLOUDLAYER_API_KEY", "api_key", optional_text),
    Var("CLOUDLAYER_BASE_URL", "base_url", http_url(DEFAULT_BASE_URL)),
    Var("CLOUDLAYER_API_VERSION", "api_version", choice("v1", "v2")),
)


class CloudlayerProvider:
    name = "cloudlayer"

    def __init__(self, http: HttpClient, settings: CloudlayerSettings, schedule: Schedule) -> None:
        self._http = http
        self._settings = settings
        self.schedule = schedule
        self._warned_statuses: set[str] = set()

    async def poll(self, job: Job) -> PollOutcome:
        asset_id = asset_id_of(job.key.upstream_id)
        if asset_id is not None:
            return Ready((await self._asset(asset_id),))
        body = await self._get(f"jobs/{quote(job.key.upstream_id, safe='')}")
        status = body.get("status")
        if not isinstance(status, str):
            raise UpstreamRejected(
                f"cloudlayer job {job.key.upstream_id}: response has no status", code="malformed_response"
            )
        kind = classify_status(status)
        if kind == "error":
            message = (
                _text(body.get("error")) or f"cloudlayer reported status {status!r} without an error text"
            )
            return Failed("upstream_error", message)
        if kind == "success":
            ref = await self._resolve(job, body)
            return Ready((ref,))
        if kind == "unknown" and status not in self._warned_statuses:
            self._warned_statuses.add(status)
            log.warning("unknown_upstream_status", provider=self.name, status=status, job=str(job.key))
        return Pending(status)

    def folder(self, job: Job) -> str:
        # Assets copied by id have no job to group them under: cloudlayer/assets/<assetId>.<ext>.
        return "assets" if asset_id_of(job.key.upstream_id) is not None else job.key.upstream_id

    async def refresh(self, job: Job, ref: AssetRef) -> AssetRef:
        asset_id = asset_id_of(job.key.upstream_id)
        if asset_id is not None:
            return await self._asset(asset_id)
        body = await self._get(f"jobs/{quote(job.key.upstream_id, safe='')}")
        if classify_status(str(body.get("status", ""))) != "success":
            raise UpstreamRejected(
                f"cloudlayer job {job.key.upstream_id} is no longer successful "
                f"(status {body.get('status')!r})",
                code="source_gone",
            )
        return await self._resolve(job, body)

    # -- Lister (mirror mode) -----------------------------------------------------------------

    async def walk(self, scope: str, *, start: str | None, since: float | None) -> AsyncIterator[ListPage]:
        """The account's assets, newest first (``cloudlayer_listing`` says how offsets are kept
        honest). ``since`` is not a filter the vendor offers: the walk's caller decides when an
        incremental walk has gone far enough and stops iterating."""
        check_mirror_scope(scope)
        async for page in walk_by_offset(self._list_page, start=start):
            yield page

    async def _list_page(self, offset: int) -> tuple[Listed, ...]:
        url = self._url(f"assets?limit={PAGE_LIMIT}&offset={offset}")
        return parse_asset_page(await self._request(url), url)

    # -- shared -------------------------------------------------------------------------------

    async def _asset(self, asset_id: str) -> AssetRef:
        """One asset by its id, with a URL fresh from the API (a 404 fails the job: not_found)."""
        body = await self._get(f"assets/{quote(asset_id, safe='')}")
        ref = asset_ref(asset_id, body)
        if ref is None:
            raise UpstreamRejected(f"cloudlayer asset {asset_id} names no url", code="malformed_response")
        return ref

    async def _resolve(self, job: Job, body: dict[str, Any]) -> AssetRef:
        asset_id = _text(body.get("assetId"))
        size = positive_int(body.get("size"))
        ext = ext_of_type(body.get("type"))
        url = _text(body.get("assetUrl"))
        if url is None and asset_id is not None:
            asset = await self._get(f"assets/{quote(asset_id, safe='')}")
            url = _text(asset.get("url"))
            size = positive_int(asset.get("size")) if size is None else size
            ext = _text(asset.get("ext")) or ext
        if url is None:
            raise UpstreamRejected(
                f"cloudlayer job {job.key.upstream_id} succeeded but names no assetUrl or usable assetId",
                code="malformed_response",
            )
        # size 0 is what some SDK versions report when the size is unknown; never verify against it.
        return AssetRef(
            asset_id=asset_id or job.key.upstream_id, url=url, expected_size=size or None, ext=ext
        )

    def _url(self, path: str) -> str:
        return f"{self._settings.base_url}/{self._settings.api_version}/{path}"

    async def _get(self, path: str) -> dict[str, Any]:
        url = self._url(path)
        body = await self._request(url)
        if not isinstance(body, dict):
            raise UpstreamRejected(f"GET {url}: expected a JSON object", url=url, code="malformed_response")
        return body

    async def _request(self, url: str) -> Any:
        """The parsed JSON answer of ``GET url`` (every read, polls and list pages, through the one
        client: the same retries and the same answer bound)."""
        if not self._settings.api_key:
            raise UpstreamRejected(
                "no cloudlayer API key configured: set CLOUDLAYER_API_KEY", code="unauthenticated"
            )
        response = await self._http.get_json(
            url, headers={"X-API-Key": self._settings.api_key}, error_reader=read_error
        )
        return response.body


def _load(env: Mapping[str, str]) -> CloudlayerSettings:
    return CloudlayerSettings(**section(env, VARIABLES))


def _build(context: ProviderContext, settings: CloudlayerSettings, schedule: Schedule) -> CloudlayerProvider:
    return CloudlayerProvider(context.http, settings, schedule)


def _advice(settings: CloudlayerSettings, schedule: Schedule) -> tuple[tuple[str, dict[str, object]], ...]:
    if schedule.initial_s < VENDOR_MIN_POLL_S and settings.base_url == DEFAULT_BASE_URL:
        fields: dict[str, object] = {"poll_initial_s": schedule.initial_s, "minimum_s": VENDOR_MIN_POLL_S}
        return (("poll_interval_below_vendor_minimum", fields),)
    return ()


def _check_id(upstream_id: str) -> None:
    # Job ids are opaque: any id JobKey accepts. "asset/<assetId>" names one asset instead.
    asset_id = asset_id_of(upstream_id)
    if asset_id is not None:
        check_asset_id(asset_id)


# What _check_id accepts, as a JSON Schema (ECMA 262) pattern: an asset key with one id, or any other
# id JobKey accepts that does not start with "asset/".
ID_PATTERN = rf"{ASSET_PREFIX}[^\s\x00-\x1f\x7f-\x9f/]{{1,{MAX_ASSET_ID}}}|(?!{ASSET_PREFIX}){ANY_ID_PATTERN}"


SPEC = ProviderSpec(
    name="cloudlayer",
    key_example="cloudlayer:<jobId> (or cloudlayer:asset/<assetId>)",
    variables=VARIABLES,
    load=_load,
    schedule=Schedule(initial_s=2.0, max_s=30.0, multiplier=2.0),
    check_id=_check_id,
    id_pattern=ID_PATTERN,
    build=_build,
    secrets=lambda settings: (settings.api_key,),
    missing=lambda settings: None if settings.api_key else "CLOUDLAYER_API_KEY",
    mirror_scope=check_mirror_scope,
    mirror_example="cloudlayer",
    advice=_advice,
)
