"""The job API: submit, read, list (keyset pages), retry and cancel.

Every job in a submit is validated before any is written (as ``asset-worker submit`` does), and
unknown fields are refused rather than ignored, so a typo (``"dst"``) never silently drops a
destination. A job's status object is exactly the ``status --json`` contract
(``statusview.job_to_json``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from worker.destinations import parse_dest
from worker.errors import ConfigError, InvalidJob
from worker.http.errors import ApiError
from worker.http.state import (
    DEFAULT_PAGE,
    MAX_BODY_BYTES,
    MAX_DEST_CHARS,
    MAX_JOBS_PER_REQUEST,
    MAX_PAGE,
    SERVICE,
)
from worker.jsonbody import BodyRefused, parse_json
from worker.models import Job, JobKey, JobState
from worker.providers import parse_key
from worker.statusview import job_to_json
from worker.store.base import Cursor

# openapi.json states the same: urlsafe base64 without padding. The longest cursor encode_cursor
# makes (a 256-character id of 4-byte characters) is about 1,440 characters.
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,2048}")
# A cursor's time is a submission time in epoch seconds; anything outside is not ours (and a
# 400-digit integer would overflow the float the store compares with).
_MAX_CURSOR_TIME = 1e11
# ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses.
_LIMIT = re.compile(r"[0-9]{1,4}")


async def submit_jobs(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await _read_json(request, timeout_s=service.body_timeout_s)
    if not isinstance(body, dict):
        raise ApiError("invalid_request", 'the body must be a JSON object: {"jobs": [{"key": ...}]}')
    _no_unknown_fields(body, {"jobs"}, "the body")
    items = body.get("jobs")
    if not isinstance(items, list) or not items:
        raise ApiError("invalid_request", '"jobs" must be a non-empty array of {"key", "dest"} objects')
    if len(items) > MAX_JOBS_PER_REQUEST:
        raise ApiError(
            "too_many_jobs", f"{len(items)} jobs in one request; at most {MAX_JOBS_PER_REQUEST} are allowed"
        )
    wanted: list[tuple[JobKey, str | None]] = []
    seen: set[JobKey] = set()
    for index, item in enumerate(items):
        where = f"jobs[{index}]"
        if not isinstance(item, dict):
            raise ApiError("invalid_request", f'{where} must be an object {{"key": ..., "dest": ...}}')
        _no_unknown_fields(item, {"key", "dest"}, where)
        raw_key, raw_dest = item.get("key"), item.get("dest")
        if not isinstance(raw_key, str):
            raise ApiError("invalid_request", f"{where}.key must be a string <provider>:<upstream id>")
        try:
            key = parse_key(raw_key)
        except InvalidJob as exc:
            raise ApiError("invalid_job_key", f"{where}.key: {exc.message}") from exc
        if key in seen:
            raise ApiError("duplicate_key", f"{where}.key: {key} appears more than once")
        seen.add(key)
        dest: str | None = None
        if raw_dest is not None:
            if not isinstance(raw_dest, str):
                raise ApiError("invalid_request", f"{where}.dest must be a string or null")
            dest = _dest(raw_dest, service.dest_url, where)
        wanted.append((key, dest))
    now = service.clock.now()
    # One batch per destination named (usually one): a transaction each, not one per job.
    by_dest: dict[str | None, list[JobKey]] = {}
    for key, dest in wanted:
        by_dest.setdefault(dest, []).append(key)
    submitted = {}
    for dest, keys in by_dest.items():
        for result in await service.store.submit_many(keys, now=now, dest=dest):
            submitted[result.job.key] = result
    results = []
    for key, _ in wanted:
        result = submitted[key]
        # dest is the job's as stored: a job that already existed keeps its own.
        job = job_to_json(result.job, service.clock.now())
        results.append({"created": result.created, "dest": result.job.dest, "job": job})
    service.wake()
    return web.json_response({"results": results})


async def get_job(request: web.Request) -> web.Response:
    job = await _existing(request)
    return web.json_response(job_to_json(job, request.app[SERVICE].clock.now()))


async def list_jobs(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    query = request.query
    _no_unknown_fields(query, {"state", "limit", "cursor"}, "the query")
    states = _states(query.getall("state", []))
    limit = _limit(query.getall("limit", []))
    cursors = query.getall("cursor", [])
    if len(cursors) > 1:
        raise ApiError("invalid_cursor", "give at most one cursor")
    after = decode_cursor(cursors[0]) if cursors else None
    # One more than a page tells whether there is a next page without a second query.
    jobs = await service.store.list_jobs(states=states, limit=limit + 1, after=after)
    page = jobs[:limit]
    next_cursor = encode_cursor(page[-1]) if len(jobs) > limit else None
    now = service.clock.now()
    return web.json_response({"jobs": [job_to_json(j, now) for j in page], "next_cursor": next_cursor})


async def retry_job(request: web.Request) -> web.Response:
    """Requeue a finished job (done, failed or canceled) as ``submit --force`` would, keeping its
    destination; a job still in progress is refused (409), never restarted under its worker."""
    service = request.app[SERVICE]
    job = await _existing(request)
    if not job.state.is_final:
        message = f"{job.key} is {job.state.value}; only a finished job can be retried"
        raise ApiError("job_in_progress", message)
    result = await service.store.submit(job.key, now=service.clock.now(), force=True, dest=job.dest)
    if not result.requeued:  # someone else requeued it between our read and our write
        raise ApiError("job_in_progress", f"{job.key} is {result.job.state.value} already")
    service.wake()
    return web.json_response(job_to_json(result.job, service.clock.now()))


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel an unfinished job. The worker holding it loses its lease and abandons the work (temp
    file removed, upload aborted). Canceling a canceled job is a no-op; a done or failed one is 409."""
    service = request.app[SERVICE]
    key = _key(request)
    job = await service.store.cancel(key, now=service.clock.now())
    if job is None:
        raise ApiError("job_not_found", f"no job {key}")
    if job.state is not JobState.CANCELED:
        raise ApiError("job_already_final", f"{key} is already {job.state.value}")
    service.abandon(key)
    return web.json_response(job_to_json(job, service.clock.now()))


def encode_cursor(job: Job) -> str:
    """Opaque to clients: where a page ended, as urlsafe base64 of the store's ``Cursor``."""
    # UTF-8 rather than \u escapes: an id of 256 non-ASCII characters must still fit _CURSOR.
    raw = json.dumps(
        {"submitted_at": job.submitted_at, "key": str(job.key)}, separators=(",", ":"), ensure_ascii=False
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    invalid = ApiError("invalid_cursor", "the cursor is not one this API returned")
    # urlsafe_b64decode would skip characters outside the alphabet rather than refuse them.
    if not _CURSOR.fullmatch(text):
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = parse_json(raw)
    except (binascii.Error, BodyRefused):
        raise invalid from None
    if not isinstance(data, dict) or set(data) != {"submitted_at", "key"}:
        raise invalid
    submitted_at, key = data["submitted_at"], data["key"]
    # Compared, never converted: NaN fails both comparisons, and a huge int compares exactly.
    in_range = isinstance(submitted_at, int | float) and 0 <= submitted_at <= _MAX_CURSOR_TIME
    if isinstance(submitted_at, bool) or not in_range or not isinstance(key, str):
        raise invalid
    try:
        job_key = JobKey.parse(key)  # the store compares it with keys: a NUL or surrogate must not reach it
    except InvalidJob:
        raise invalid from None
    return Cursor(submitted_at=float(submitted_at), key=str(job_key))


def _key(request: web.Request) -> JobKey:
    try:
        return JobKey.parse(request.match_info["key"])
    except InvalidJob as exc:
        raise ApiError("invalid_job_key", exc.message) from exc


async def _existing(request: web.Request) -> Job:
    key = _key(request)
    jobs = await request.app[SERVICE].store.get([key])
    if not jobs:
        raise ApiError("job_not_found", f"no job {key}")
    return jobs[0]


def _dest(raw: str, base_url: str, where: str) -> str:
    if len(raw) > MAX_DEST_CHARS:
        raise ApiError("invalid_dest", f"{where}.dest is longer than {MAX_DEST_CHARS} characters")
    try:
        return parse_dest(raw, base_url=base_url).url
    except ConfigError as exc:
        raise ApiError("invalid_dest", f"{where}.dest: {exc.message}") from exc


async def _read_json(request: web.Request, *, timeout_s: float) -> Any:
    # A declared length over the limit is refused before a byte is read; without one, aiohttp
    # stops reading at client_max_size (the same limit) and raises 413.
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError("body_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
    # A client trickling its body would otherwise hold the connection (and a handler) forever.
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise ApiError("request_timeout", f"the body did not arrive within {timeout_s:g} s") from None
    try:
        return parse_json(raw)  # bounded nesting, as for the vendors' answers
    except BodyRefused:
        raise ApiError("invalid_json", "the body is not valid JSON") from None


def _no_unknown_fields(given: Mapping[str, object], known: set[str], where: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        listed = f"{', '.join(unknown)}; known: {', '.join(sorted(known))}"
        raise ApiError("invalid_request", f"{where} has unknown field(s) {listed}")


def _states(values: list[str]) -> list[JobState] | None:
    """``state=queued&state=polling`` or ``state=queued,polling``; None (every state) when absent."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    valid = {state.value: state for state in JobState}
    if not names or any(name not in valid for name in names):
        raise ApiError("invalid_state", f"state must be one or more of {', '.join(valid)}")
    return [valid[name] for name in names]


def _limit(values: list[str]) -> int:
    if not values:
        return DEFAULT_PAGE
    if len(values) == 1 and _LIMIT.fullmatch(values[0]) and 1 <= int(values[0]) <= MAX_PAGE:
        return int(values[0])
    raise ApiError("invalid_limit", f"limit must be a whole number from 1 to {MAX_PAGE}")
