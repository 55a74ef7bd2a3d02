"""The simulated storage host: ``GET /files/<name>?X-Amz-Signature=..&exp=..`` like an S3 pre-signed URL.

Bodies are streamed from ``content.iter_content`` in 1 MiB writes, so a GiB asset costs flat memory and
moves at loopback speed. Single ``Range`` requests are honoured (206/416) so resumed downloads can be
tested, and the file-only faults (truncate, wrong_bytes, short_body, expired, replaced, stall_body) are
applied here. ``stall_body`` sends half the body, then nothing for ``delay_s``, then the rest: a file host
that stalls mid-transfer; ``reset_body`` sends half, then resets the connection (RST).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from xml.sax.saxutils import escape

from aiohttp import web

from worker.simulator.content import iter_content
from worker.simulator.faults import FaultRule
from worker.simulator.filestore import FileEntry
from worker.simulator.middleware import ERROR_RENDERERS_KEY, FAULT_KEY, RECORD_KEY, abort_connection
from worker.simulator.state import STATE_KEY

__all__ = ["ByteRange", "RangeNotSatisfiable", "parse_range", "s3_error", "setup_files"]

_log = logging.getLogger(__name__)
_WRITE_SIZE = 1 << 20
_S3_CODES = {
    403: "AccessDenied",
    404: "NoSuchKey",
    416: "InvalidRange",
    500: "InternalError",
    503: "SlowDown",
}


class RangeNotSatisfiable(ValueError):
    """The Range header asks for bytes the file does not have: answered 416."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Half-open byte interval ``[start, stop)`` of the file."""

    start: int
    stop: int


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range asked for, or None to serve the whole file.

    Headers we do not understand (other units, several ranges, bad syntax) are ignored, which RFC 9110 allows;
    a syntactically valid range that misses the file raises ``RangeNotSatisfiable``.
    """
    if header is None or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header.removeprefix("bytes=").strip().partition("-")
    if not sep or not (first.isdigit() or last.isdigit()):
        return None
    if not first:  # suffix range: the last N bytes
        if not last.isdigit():
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - suffix), size)
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    if last and int(last) < start:
        return None  # "bytes=5-3" is invalid syntax, not unsatisfiable
    stop = int(last) + 1 if last else size
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(stop, size))


def s3_error(status: int, message: str, code: str | None = None) -> web.Response:
    """An S3-style XML error, as a storage host answers."""
    code = code or _S3_CODES.get(status, "ServiceUnavailable" if status >= 500 else "InvalidRequest")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        "<RequestId>SIMULATOR</RequestId></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


def _expired_response(style: str) -> web.Response:
    if style == "410":
        return s3_error(410, "The requested resource is no longer available", code="Gone")
    return s3_error(403, "Request has expired", code="AccessDenied")


def _url_expired(exp: str | None, now: float) -> bool:
    # A TTL'd file needs a parseable expiry: a URL stripped of it is refused like a tampered S3 URL.
    try:
        return exp is None or now > float(exp)
    except ValueError:
        return True


def _etag(entry: FileEntry, size: int) -> str:
    # Identifies the content cheaply (hashing a GiB per request would throttle the benchmarks).
    return '"' + hashlib.sha256(f"{entry.seed}:{size}".encode()).hexdigest()[:32] + '"'


def _flip_byte(chunk: bytes, index: int) -> bytes:
    return chunk[:index] + bytes([chunk[index] ^ 0xFF]) + chunk[index + 1 :]


async def _stream(
    request: web.Request, response: web.StreamResponse, seed: int, span: ByteRange, rule: FaultRule | None
) -> web.StreamResponse:
    """Write ``span`` of the content, damaged as the fault rule says; a vanished client ends it quietly."""
    response.content_length = span.stop - span.start
    try:
        await response.prepare(request)
    except ConnectionError:
        return response  # the client went away before the headers (a killed worker)
    if request.method == "HEAD":
        return response
    kind = rule.kind if rule is not None else None
    half = span.start + (span.stop - span.start) // 2
    stop = half if kind in ("truncate", "reset_body") else span.stop
    flip_at = half if kind == "wrong_bytes" and span.stop > span.start else None
    stall_at = half if kind == "stall_body" and rule is not None else None
    position = span.start
    record = request.get(RECORD_KEY)

    async def send(data: bytes) -> None:
        nonlocal position
        await response.write(data)
        position += len(data)
        if record is not None:
            record.body_bytes += len(data)

    try:
        for chunk in iter_content(seed, stop, span.start, _WRITE_SIZE):
            if flip_at is not None and position <= flip_at < position + len(chunk):
                chunk = _flip_byte(chunk, flip_at - position)
            if stall_at is not None and rule is not None and position <= stall_at < position + len(chunk):
                cut = stall_at - position
                await send(chunk[:cut])
                await asyncio.sleep(rule.delay_s)
                chunk, stall_at = chunk[cut:], None
            await send(chunk)
        if kind == "truncate" and request.transport is not None:
            # close() (not abort) flushes the half already written, then FIN: Content-Length is left unmet.
            request.transport.close()
        if kind == "reset_body":
            # Give the half a moment to leave, then RST: the client sees a reset mid-body.
            await asyncio.sleep(0.05)
            abort_connection(request)
    except ConnectionError:
        _log.debug("client went away at byte %d of %s", position, request.raw_path.split("?", 1)[0])
    return response


async def get_file(request: web.Request) -> web.StreamResponse:
    """Serve one file (or part of it), or the storage host's error for it."""
    state = request.app[STATE_KEY]
    rule = request.get(FAULT_KEY)
    kind = rule.kind if rule is not None else None
    if rule is not None and kind == "expired":
        return _expired_response(rule.style)
    if kind == "replaced":
        return s3_error(404, "The specified key does not exist.")
    now = state.clock()
    entry = state.files.get(request.match_info["name"])
    if entry is None or not entry.exists(now):
        return s3_error(404, "The specified key does not exist.")
    if entry.url_ttl_s is not None and _url_expired(request.query.get("exp"), now):
        return _expired_response("403")
    size = entry.size
    if rule is not None and kind == "short_body":
        size = max(0, size - rule.missing_bytes)  # a consistent file that is simply shorter
    headers = {"Accept-Ranges": "bytes", "Content-Type": entry.content_type, "ETag": _etag(entry, size)}
    try:
        wanted = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable:
        response = s3_error(416, "The requested range is not satisfiable")
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    if wanted is None:
        span, status = ByteRange(0, size), 200
    else:
        span, status = wanted, 206
        headers["Content-Range"] = f"bytes {wanted.start}-{wanted.stop - 1}/{size}"
    return await _stream(request, web.StreamResponse(status=status, headers=headers), entry.seed, span, rule)


def setup_files(app: web.Application) -> None:
    """Mount the file host and its error shape on ``app``."""
    app.router.add_get("/files/{name}", get_file, name="files")
    app[ERROR_RENDERERS_KEY]["files"] = s3_error
