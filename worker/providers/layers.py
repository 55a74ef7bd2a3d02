"""Layers partner API: a generation job (``job_...``) or a content container (``cnt_<uuid>``).

A job is polled with ``If-None-Match`` until it completes, then its container; a container until
``completed``, then each of its assets' descriptors, in order (slide order for a slideshow). The
descriptor, not the container's summary, is authoritative for the URL, size, checksum and expiry.

Errors come in one envelope, ``{"error": {"code", "message", "requestId", "details"}}``; the code
is what we branch on and report (lower-cased), never the message. Every read of this provider goes
through one ``RateLimiter``, because the vendor's read budget is per API key, not per job: a
project's content list too (mirror mode; the query and pages in ``layers_listing``, ids and times in
``layers_ids``).

A little over 400 lines: the vendor's whole protocol (jobs, containers, descriptors, errors, the
walk) and its spec, kept in the one module the registry names.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

from worker.envvars import PREFIX, Var, http_url, optional_text, positive_float, section
from worker.errors import AssetSetChanged, InvalidJob, UpstreamRejected
from worker.httpbase import default_error_reader
from worker.jsonbody import try_parse_json
from worker.models import AssetRef, Failed, Job, Pending, PollOutcome, Ready
from worker.naming import choose_ext
from worker.providers.base import ListPage, ProviderContext, ProviderSpec, Schedule
from worker.providers.layers_ids import Target as Target
from worker.providers.layers_ids import parse_target as parse_target
from worker.providers.layers_ids import parse_time as parse_time
from worker.providers.layers_ids import text as _text
from worker.providers.layers_listing import check_mirror_scope, content_path, parse_content_page
from worker.ratelimit import RateLimiter

if TYPE_CHECKING:  # the client (aiohttp) is loaded only by a worker that builds providers
    from worker.httpclient import HttpClient

log = structlog.get_logger("worker.providers.layers")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# "generating" is the older docs' name for "processing"; both mean "poll again".
_CONTAINER_PENDING = frozenset({"queued", "processing", "generating"})


# The vendor's codes by HTTP status, for error bodies that carry none (a proxy's page, a bare 503).
_CODE_BY_STATUS = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    422: "validation",
    429: "rate_limited",
    500: "internal",
}


def read_error(status: int, body: bytes) -> tuple[str, str]:
    """Layers' error envelope as (code lower-cased, message with a hint and the requestId).

    A body that is not the envelope (a proxy's error page) falls back to the status's meaning.
    """
    fallback_code = _CODE_BY_STATUS.get(status) or ("unavailable" if status >= 500 else "upstream_rejected")
    parsed = try_parse_json(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return fallback_code, default_error_reader(status, body)[1]
    code = (_text(error.get("code")) or fallback_code).lower()
    message = _text(error.get("message")) or f"HTTP {status}"
    if code == "forbidden_scope":
        message = _forbidden_message(error.get("details"))
    elif code == "unauthenticated":
        message = f"{message}: check LAYERS_API_KEY"
    request_id = _text(error.get("requestId"))
    # Layers support can look a request up by this id; it is the one thing worth quoting to them.
    return code, f"{message} (requestId {request_id})" if request_id else message


def _forbidden_message(details: object) -> str:
    """What to do about a FORBIDDEN_SCOPE: a project the key may not read (a mirror's list), or a
    scope the key lacks."""
    details = details if isinstance(details, dict) else {}
    project = _text(details.get("projectId"))
    if project is not None:
        return (
            f"the Layers API key in LAYERS_API_KEY may not read project {project}: mirror a project of "
            "the key's account, or use a key that can read it"
        )
    scope = _text(details.get("requiredScope"))
    return (
        f"the Layers API key lacks the scope {scope or '(not named)'}: grant "
        f"{scope or 'content:read and jobs:read'} to the key in LAYERS_API_KEY, or set a key that has it"
    )


def asset_ref(descriptor: dict[str, Any], *, where: str) -> AssetRef:
    """An ``AssetRef`` from an asset descriptor; optional fields the vendor left out stay None."""
    asset_id = _text(descriptor.get("assetId"))
    url = _text(descriptor.get("url"))
    if asset_id is None or url is None:
        raise UpstreamRejected(f"{where}: asset descriptor without assetId or url", code="malformed_response")
    size = descriptor.get("sizeBytes")
    checksum = _text(descriptor.get("checksumSha256"))
    checksum = checksum.lower() if checksum else None
    mime = _text(descriptor.get("mimeType"))
    return AssetRef(
        asset_id=asset_id,
        url=url,
        expected_size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        # A malformed checksum could never match; verifying against it would fail a good file forever.
        expected_sha256=checksum if checksum and _SHA256.match(checksum) else None,
        content_type=mime,
        ext=_ext(mime, url),
        expires_at=parse_time(descriptor.get("expiresAt")),
    )


def _ext(mime: str | None, url: str) -> str | None:
    # The mime type is the vendor's statement; the URL path (a signed media name) only a hint.
    for ext in (
        choose_ext(hint=None, url=None, content_type=mime),
        choose_ext(hint=None, url=url, content_type=None),
    ):
        if ext != "bin":
            return ext
    return None


def _status(body: dict[str, Any], where: str) -> str:
    status = _text(body.get("status"))
    if status is None:
        raise UpstreamRejected(f"{where}: response has no status", code="malformed_response")
    return status.strip().lower()


def _vendor_error(error: object, *, default_code: str, default_message: str) -> tuple[str, str]:
    """(code lower-cased, message) of an ``{code, message}`` object that may be null or partial."""
    if not isinstance(error, dict):
        return default_code, default_message
    code = _text(error.get("code"))
    return (code.lower() if code else default_code), _text(error.get("message")) or default_message


def _asset_ids(body: dict[str, Any], where: str) -> list[str]:
    assets = body.get("assets")
    if not isinstance(assets, list):
        raise UpstreamRejected(f"{where}: completed without an assets list", code="malformed_response")
    ids = [_text(a.get("assetId")) if isinstance(a, dict) else None for a in assets]
    if any(i is None for i in ids):
        raise UpstreamRejected(f"{where}: an asset without an assetId", code="malformed_response")
    return [i for i in ids if i is not None]


DEFAULT_BASE_URL = "https://api.layers.com"


@dataclass(frozen=True, slots=True, kw_only=True)
class LayersSettings:
    """The Layers partner API: key, base URL and the read budget of the key."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    reads_per_min: float = 120.0


VARIABLES = (
    Var("LAYERS_API_KEY", "api_key", optional_text),
    Var("LAYERS_BASE_URL", "base_url", http_url(DEFAULT_BASE_URL)),
    Var(f"{PREFIX}LAYERS_READS_PER_MIN", "reads_per_min", positive_float),
)


class LayersProvider:
    name = "layers"

    def __init__(
        self,
        http: HttpClient,
        settings: LayersSettings,
        schedule: Schedule | None = None,
        *,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._http = http
        self._settings = settings
        self.schedule = schedule or SPEC.schedule
        # No limiter passed in: keep to the configured read budget on our own rather than to none.
        self._limiter = limiter or RateLimiter(per_minute=settings.reads_per_min)
        self._warned_statuses: set[str] = set()

    # -- Provider -----------------------------------------------------------------------------

    async def poll(self, job: Job) -> PollOutcome:
        target = parse_target(job.key.upstream_id)
        container_id = self._known_container(job)
        if container_id is not None:
            return await self._poll_container(container_id)
        return await self._poll_job(job, target.id)

    async def refresh(self, job: Job, ref: AssetRef) -> AssetRef:
        container_id = self._known_container(job) or await self._container_of_job(job)
        # Two rounds: a descriptor 404 means a regenerate landed between the two reads, and the
        # container read again names the set that is current now.
        for attempt in (1, 2):
            body, status = await self._container(container_id)
            where = f"Layers container {container_id}"
            if status in ("failed", "canceled"):
                code, message = _vendor_error(
                    body.get("lastError"), default_code="upstream_error", default_message="no lastError"
                )
                code = "canceled" if status == "canceled" else code
                raise UpstreamRejected(f"{where} is {status}: {message}", code=code)
            if status != "completed":
                raise AssetSetChanged(f"{where} went back to {status!r}; poll it again", assets=None)
            ids = _asset_ids(body, where)
            try:
                if ref.asset_id in ids:
                    return await self._descriptor(container_id, ref.asset_id)
                fresh = await self._descriptors(container_id, ids)
            except UpstreamRejected as exc:
                if exc.code != "not_found" or attempt == 2:
                    raise
                continue
            raise AssetSetChanged(
                f"{where} was regenerated: asset {ref.asset_id} is gone, now {', '.join(ids)}", assets=fresh
            )
        raise AssertionError("unreachable: the second round returns or raises")  # pragma: no cover

    def folder(self, job: Job) -> str:
        known = self._known_container(job)
        if known is not None:
            return known
        try:
            return parse_target(job.key.upstream_id).id
        except InvalidJob:
            return job.key.upstream_id

    # -- Lister (mirror mode) -----------------------------------------------------------------

    async def walk(self, scope: str, *, start: str | None, since: float | None) -> AsyncIterator[ListPage]:
        """The project's completed containers, newest first, by cursor; every page is a read from
        the same budget (``self._limiter``) as the polls."""
        check_mirror_scope(scope)
        where = f"Layers project {scope} content list"
        cursor, resumed = start, start is not None
        while True:
            try:
                _, body, _ = await self._get(content_path(scope, cursor=cursor, since=since), {})
            except UpstreamRejected as exc:
                if not resumed or exc.code != "validation":
                    raise
                # A saved cursor the API no longer takes (bound to other filters, or expired): start
                # over from the top, which only re-lists what the store already knows.
                log.warning("listing_resume_refused", provider=self.name, project=scope)
                cursor, resumed = None, False
                continue
            resumed = False
            items, next_cursor = parse_content_page(body, where)
            if next_cursor is not None and next_cursor == cursor:
                # The same page again would loop forever.
                raise UpstreamRejected(
                    f"{where}: nextCursor repeats the cursor sent", code="malformed_response"
                )
            yield ListPage(items, next_cursor)
            if next_cursor is None:
                return
            cursor = next_cursor

    # -- jobs ---------------------------------------------------------------------------------

    async def _poll_job(self, job: Job, job_id: str) -> PollOutcome:
        previous = job.provider_state.get("etag")
        headers = {"If-None-Match": previous} if isinstance(previous, str) and previous else {}
        status_code, body, etag = await self._get(f"jobs/{quote(job_id, safe='')}", headers)
        if status_code == 304:
            # Nothing changed since the last poll: the job is still running, and the body was empty.
            return Pending("running", dict(job.provider_state))
        where = f"Layers job {job_id}"
        status = _status(body, where)
        if status == "completed":
            return await self._poll_container(self._result_container(body, where))
        if status in ("failed", "canceled"):
            code, message = _vendor_error(
                body.get("error"), default_code="upstream_error", default_message=f"{where} {status}"
            )
            return Failed("canceled" if status == "canceled" else code, message)
        if status != "running":
            self._warn_unknown(status, where)
        return Pending(status, {"etag": etag} if etag else {})

    async def _container_of_job(self, job: Job) -> str:
        """The container of a job whose provider_state lost it (read from the job, no ETag)."""
        job_id = parse_target(job.key.upstream_id).id
        _, body, _ = await self._get(f"jobs/{quote(job_id, safe='')}", {})
        where = f"Layers job {job_id}"
        if _status(body, where) != "completed":
            raise AssetSetChanged(f"{where} is no longer completed; poll it again", assets=None)
        return self._result_container(body, where)

    @staticmethod
    def _result_container(body: dict[str, Any], where: str) -> str:
        result = body.get("result")
        container_id = _text(result.get("containerId")) if isinstance(result, dict) else None
        listed = body.get("containerIds")
        if container_id is None and isinstance(listed, list) and listed:
            container_id = _text(listed[0])
        if container_id is None:
            raise UpstreamRejected(f"{where}: completed without a containerId", code="malformed_response")
        try:
            return parse_target(container_id).id
        except InvalidJob as exc:
            raise UpstreamRejected(f"{where}: {exc.message}", code="malformed_response") from exc

    # -- containers ---------------------------------------------------------------------------

    async def _poll_container(self, container_id: str) -> PollOutcome:
        state = {"container_id": container_id}
        where = f"Layers container {container_id}"
        for attempt in (1, 2):
            body, status = await self._container(container_id)
            if status in ("failed", "canceled"):
                code, message = _vendor_error(
                    body.get("lastError"), default_code="upstream_error", default_message=f"{where} {status}"
                )
                return Failed("canceled" if status == "canceled" else code, message)
            if status != "completed":
                if status not in _CONTAINER_PENDING:
                    self._warn_unknown(status, where)
                return Pending(status, state)
            try:
                refs = await self._descriptors(container_id, _asset_ids(body, where))
            except UpstreamRejected as exc:
                # Regenerated between the container read and a descriptor read: read it again.
                if exc.code != "not_found" or attempt == 2:
                    raise
                continue
            return Ready(refs, state)
        raise AssertionError("unreachable: the second round returns or raises")  # pragma: no cover

    async def _container(self, container_id: str) -> tuple[dict[str, Any], str]:
        _, body, _ = await self._get(f"content/{quote(container_id, safe='')}", {})
        return body, _status(body, f"Layers container {container_id}")

    async def _descriptors(self, container_id: str, asset_ids: list[str]) -> tuple[AssetRef, ...]:
        # One at a time, in listed order: the limiter paces them anyway, and order is slide order.
        return tuple([await self._descriptor(container_id, asset_id) for asset_id in asset_ids])

    async def _descriptor(self, container_id: str, asset_id: str) -> AssetRef:
        path = f"content/{quote(container_id, safe='')}/assets/{quote(asset_id, safe='')}"
        _, body, _ = await self._get(path, {})
        return asset_ref(body, where=f"Layers asset {container_id}/{asset_id}")

    # -- shared -------------------------------------------------------------------------------

    def _known_container(self, job: Job) -> str | None:
        target = parse_target(job.key.upstream_id)
        if target.kind == "container":
            return target.id
        known = job.provider_state.get("container_id")
        return known if isinstance(known, str) and known else None

    def _warn_unknown(self, status: str, where: str) -> None:
        # A new intermediate status upstream must not fail jobs that will still succeed.
        if status not in self._warned_statuses:
            self._warned_statuses.add(status)
            log.warning("unknown_upstream_status", provider=self.name, status=status, where=where)

    async def _get(self, path: str, extra_headers: dict[str, str]) -> tuple[int, dict[str, Any], str | None]:
        """(HTTP status, JSON object or {} for a 304, ETag) of ``GET {base}/v1/{path}``."""
        if not self._settings.api_key:
            raise UpstreamRejected("no Layers API key configured: set LAYERS_API_KEY", code="unauthenticated")
        url = f"{self._settings.base_url}/v1/{path}"
        response = await self._http.get_json(
            url,
            headers={"Authorization": f"Bearer {self._settings.api_key}", **extra_headers},
            error_reader=read_error,
            limiter=self._limiter,
        )
        etag = next((v for k, v in response.headers.items() if k.lower() == "etag"), None)
        if response.status == 304:
            return 304, {}, etag
        if not isinstance(response.body, dict):
            raise UpstreamRejected(f"GET {url}: expected a JSON object", url=url, code="malformed_response")
        return response.status, response.body, etag


def _load(env: Mapping[str, str]) -> LayersSettings:
    return LayersSettings(**section(env, VARIABLES))


def _build(context: ProviderContext, settings: LayersSettings, schedule: Schedule) -> LayersProvider:
    # One limiter for every Layers read of this process: the budget is per API key.
    return LayersProvider(
        context.http,
        settings,
        schedule,
        limiter=RateLimiter(per_minute=settings.reads_per_min),
    )


def _check_id(upstream_id: str) -> None:
    parse_target(upstream_id)


# What parse_target accepts, as a JSON Schema pattern (for the HTTP API's document): job_ and up to
# 252 characters of an id, or a container's uuid in either case, with or without cnt_.
_HEX = "[0-9A-Fa-f]"
ID_PATTERN = (
    r"job_[^\s\x00-\x1f\x7f-\x9f]{1,252}"
    rf"|(cnt_)?{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
)


SPEC = ProviderSpec(
    name="layers",
    key_example="layers:cnt_<uuid>",
    variables=VARIABLES,
    load=_load,
    # Layers jobs finish in seconds to minutes: polled more often than cloudlayer's, gently growing.
    schedule=Schedule(initial_s=2.0, max_s=10.0, multiplier=1.3),
    check_id=_check_id,
    id_pattern=ID_PATTERN,
    build=_build,
    secrets=lambda settings: (settings.api_key,),
    missing=lambda settings: None if settings.api_key else "LAYERS_API_KEY",
    mirror_scope=check_mirror_scope,
    mirror_example="layers:PROJECT_ID",
)
