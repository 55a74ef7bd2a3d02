"""Stream one asset from its URL into a sink, hashing on the way, and commit only verified bytes.

Longer than most modules on purpose: request, redirects, resume, limits, verification and commit
share one attempt's state, and every check that guards a byte is in this one file.

The body is read on the event loop while the previous chunk is hashed (in a thread: hashlib
releases the GIL) and written (aiofiles, also a thread): receiving, hashing and writing overlap,
and memory stays at about two chunks whatever the file size. A body that breaks off is resumed
with ``Range`` when the file host supports it, so a reset near the end of a 1 GiB file does not
cost the whole download again. Across processes too: a destination that keeps a drained or killed
process's bytes (``ResumableUpload``) is asked, once the first answer names the file, whether it
holds bytes of exactly that file; those are read again into the hash and the rest is asked for with
``Range`` and ``If-Range``, so the file host itself confirms that the file has not changed.

The URL is a third party's, so nothing about it is trusted: the scheme must be http(s), every
redirect hop (at most ``MAX_REDIRECTS``, never https to http) is checked again, and the session's
egress policy refuses internal addresses at the socket. A size above ``max_asset_bytes`` or one
that contradicts the vendor's is refused before the body is read; a body is cut the moment it
passes the cap, the published size or its own ``Content-Length``; and a body slower than
``min_speed_bps`` over a whole window is broken off (and resumed) rather than holding a slot forever.

No API key is ever sent here: asset URLs are pre-signed and usually live on another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import structlog
from yarl import URL

from worker.aio import shielded
from worker.digest import Digest, normalise_sha256, verify
from worker.egress import MAX_REDIRECTS, EgressPolicy, blocked, redirect_refusal
from worker.egress_session import refusal_of
from worker.errors import (
    AssetTooLarge,
    DestinationBlocked,
    IncompleteTransfer,
    IntegrityError,
    SourceExpired,
    TransferError,
    TransferStalled,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
    describe,
    strip_query,
)
from worker.models import AssetRef
from worker.policy import SpeedFloor, is_expired_source_status, is_retryable_status, parse_retry_after
from worker.sinks.base import Committed, ResumableUpload, Sink, SourceEntity, Upload

log = structlog.get_logger("worker.transfer")

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# A file host's Retry-After is honoured up to this; the engine's own retries take over after it.
_RETRY_AFTER_MAX_S = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCopy:
    key: str
    committed: Committed
    size: int
    sha256: str
    upstream_verified: bool
    resumes: int
    # Bytes an earlier process left that were used instead of being downloaded again.
    reused_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferOptions:
    chunk_bytes: int = 1 << 20
    max_resumes: int = 3
    max_asset_bytes: int = 5 << 30
    # 0 turns the speed floor off.
    min_speed_bps: int = 1024
    min_speed_window_s: float = 60.0
    # Checked before each request (scheme, IP literals); the session enforces it at the socket.
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    # Files smaller than this are not kept for a later process to resume: fetching one again costs
    # less than keeping it (a lock, a record written and removed: about 7 % of the CPU of a run of
    # 2,000 files of 100 KiB, measured with py-spy).
    resume_min_bytes: int = 8 << 20


_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class _BodyBroke(Exception):
    """Internal: the body ended early after some bytes arrived; the caller may resume.

    ``args``: ("resumable" or "not resumable", what happened); ``stalled`` when it was the speed
    floor that broke it off.
    """

    def __init__(self, resumable: str, detail: str, *, stalled: bool = False) -> None:
        super().__init__(resumable, detail)
        self.stalled = stalled


@dataclass(frozen=True, slots=True)
class _Cap:
    """The most bytes the body may have, and the error for one byte more."""

    limit: int
    error: Callable[[int], TransferError]


@dataclass(slots=True)
class _Entity:
    """What the first response said about the file, so a resumed piece is provably the same file."""

    total: int | None = None
    validator: str | None = None  # ETag (strong) or Last-Modified, sent back as If-Range


async def fetch_to_sink(
    session: aiohttp.ClientSession,
    ref: AssetRef,
    sink: Sink,
    *,
    key_for: Callable[[str | None], str],
    options: TransferOptions,
    on_progress: Callable[[int], None] = lambda _n: None,
    on_start: Callable[[int | None, int], None] = lambda _total, _offset: None,
    keep_alive: Callable[[], None] = lambda: None,
    keep_on_cancel: Callable[[], bool] = lambda: True,
    before_commit: Callable[[], Awaitable[None]] | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> StoredCopy:
    """Download ``ref.url`` into ``sink`` under ``key_for(content_type)``; verify, then commit.

    ``on_start(total, offset)`` is called once per response, right before its body is read: the
    whole file's size when known, and how many of its bytes are already held (earlier responses,
    and bytes an earlier process left); ``on_progress(n)`` for every ``n`` bytes received;
    ``keep_alive()`` while bytes an earlier process left are read again (from that reading's
    thread: it may only note the time). ``keep_on_cancel()`` says, when the transfer is cancelled,
    whether its bytes are worth keeping for a later holder of the job (a drain) or not (the job
    was canceled, or taken over).
    ``before_commit`` runs after verification and before the object becomes visible (the lease
    fence). Raises ``SourceExpired`` (403/404/410: refresh the URL), ``UpstreamUnavailable``
    (429/5xx or no connection), ``IncompleteTransfer``/``TransferStalled``, ``IntegrityError``,
    ``DestinationBlocked`` (refused scheme, address or redirect), ``AssetTooLarge``, or what the
    sink raises (``StorageError``). Whatever happens, nothing is left under the key unless it
    verified; a cancelled (drained) transfer leaves what a later process can resume, when the
    destination and the file host allow it.
    """
    digest = Digest()
    upload: Upload | None = None
    entity = _Entity()
    resumes = 0
    # Bytes taken over from an earlier process: offered (not yet confirmed by the file host), then
    # reused once it answered 206 to If-Range.
    offered = reused = 0
    _refuse_oversized(ref.expected_size, ref, options)
    try:
        while True:
            offset = digest.size
            held = 0
            try:
                async with _get_following_redirects(
                    session, ref.url, _request_headers(offset, entity), options.egress
                ) as resp:
                    start = _check_response(resp, ref, offset, entity, wall_clock)
                    cap = _body_cap(ref, entity, options)
                    if upload is None:
                        upload = await sink.open(
                            key_for(resp.headers.get("Content-Type")),
                            content_type=resp.headers.get("Content-Type"),
                            # What the bytes will measure, published or announced: verification
                            # holds the copy to both, so a destination may rely on it.
                            expected_size=ref.expected_size or entity.total,
                            expected_sha256=normalise_sha256(ref.expected_sha256),
                        )
                        held = await _declare(upload, resp, entity, options.resume_min_bytes)
                    elif start == 0 and offset:
                        # The host sent the whole file again (it ignored Range, or If-Range found
                        # a different file): start over rather than splice.
                        await upload.restart()
                        digest = Digest()
                        if offered and not reused:
                            _log_disk_resume_refused(ref, upload, offered)
                        offered = reused = 0
                        await _declare(upload, resp, entity, options.resume_min_bytes)
                    elif offered and not reused:
                        reused = offered
                        _log_disk_resume(ref, upload, reused, entity)
                    if held:
                        # Bytes of this very file are on disk: this body is not needed from its
                        # start. Dropped now rather than held open while they are hashed again.
                        resp.close()
                    else:
                        on_start(ref.expected_size or entity.total, digest.size)
                        await _pump(resp, upload, digest, cap, options, on_progress)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Body errors became _BodyBroke in _pump; this one happened before any body byte
                # arrived (connect, reset, headers): a transient failure of the file host, unless
                # the egress policy refused the connection or the URL is not one at all.
                raise _connection_error(exc, ref.url) from exc
            except _BodyBroke as broke:
                if resumes >= options.max_resumes or not _resumable(broke):
                    url = strip_query(ref.url)
                    error = TransferStalled if broke.stalled else IncompleteTransfer
                    raise error(
                        f"body of {url} broke off after {digest.size} bytes: {broke.args[1]}",
                        expected=entity.total,
                        actual=digest.size,
                    ) from broke.__cause__
                resumes += 1
                log.info("transfer_resumed", url=strip_query(ref.url), offset=digest.size, resumes=resumes)
                continue
            if held:
                assert isinstance(upload, ResumableUpload)  # only such an upload holds bytes
                await upload.replay(_feeding(digest, keep_alive))
                offered = held
                if held == entity.total:
                    # The whole file was already there: nothing left to ask the host for.
                    reused = held
                    _log_disk_resume(ref, upload, reused, entity)
                    break
                continue
            break
        sha256 = digest.hexdigest()
        verified = verify(
            size=digest.size,
            sha256=sha256,
            content_length=entity.total,
            expected_size=ref.expected_size,
            expected_sha256=ref.expected_sha256,
        )
        assert upload is not None  # set on the first response
        if before_commit is not None:
            await before_commit()
        committed = await upload.commit(size=digest.size, sha256=sha256)
        return StoredCopy(
            key=upload.key,
            committed=committed,
            size=digest.size,
            sha256=sha256,
            upstream_verified=verified,
            resumes=resumes,
            reused_bytes=reused,
        )
    except asyncio.CancelledError:
        # A drain or a shutdown: the bytes are good, only this process is going away. A destination
        # that can keep them for the next holder of the job does; any other failure removes them.
        if upload is not None:
            if isinstance(upload, ResumableUpload) and keep_on_cancel():
                await shielded(upload.suspend())
            else:
                await shielded(upload.abort())
        raise
    except BaseException:
        if upload is not None:
            await shielded(upload.abort())
        raise


def _feeding(digest: Digest, keep_alive: Callable[[], None]) -> Callable[[bytes], None]:
    def feed(block: bytes) -> None:
        digest.update(block)
        keep_alive()

    return feed


async def _declare(upload: Upload, resp: aiohttp.ClientResponse, entity: _Entity, min_bytes: int) -> int:
    """Tell a resumable destination which file the bytes will be, when the file host could resume
    it for a later process (``Accept-Ranges: bytes``, a validator, a known size of at least
    ``min_bytes``); returns how many of its first bytes the destination already holds from an
    earlier process."""
    if entity.validator is None or not entity.total or entity.total < min_bytes:
        return 0
    if resp.headers.get("Accept-Ranges", "").lower() != "bytes":
        return 0
    # Last: an isinstance of a runtime-checkable Protocol inspects the class's members each time
    # (25 µs here; 4 % of the event loop's samples per small file when it came first).
    if not isinstance(upload, ResumableUpload):
        return 0
    return await upload.resume(SourceEntity(entity.validator, entity.total))


def _log_disk_resume(ref: AssetRef, upload: Upload, saved: int, entity: _Entity) -> None:
    log.info(
        "transfer_resumed_from_disk",
        url=strip_query(ref.url),
        key=upload.key,
        bytes_saved=saved,
        total=entity.total,
    )


def _log_disk_resume_refused(ref: AssetRef, upload: Upload, offered: int) -> None:
    # If-Range found a different file: the kept bytes were of an older version.
    log.info(
        "transfer_resume_from_disk_refused", url=strip_query(ref.url), key=upload.key, bytes_dropped=offered
    )


@contextlib.asynccontextmanager
async def _get_following_redirects(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], egress: EgressPolicy
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url``, following at most ``MAX_REDIRECTS`` redirects ourselves, each hop checked by
    the egress policy (aiohttp's own following would allow ten hops and https to http)."""
    for _hop in range(MAX_REDIRECTS + 1):
        egress.check_url(url)
        # Bytes must be hashed exactly as stored: no transparent decompression.
        async with session.get(url, headers=headers, allow_redirects=False, auto_decompress=False) as resp:
            location = resp.headers.get("Location") if resp.status in _REDIRECT_STATUSES else None
            if location is None:
                yield resp
                return
            try:
                target = str(resp.url.join(URL(location)))
            except ValueError:
                raise DestinationBlocked(
                    f"refused a redirect from {strip_query(url)}: not a valid URL"
                ) from None
        reason = redirect_refusal(url, target)
        if reason is not None:
            raise DestinationBlocked(
                f"refused the redirect from {strip_query(url)} to {strip_query(target)}: {reason}"
            )
        url = target
    raise UpstreamRejected(
        f"more than {MAX_REDIRECTS} redirects, last to {strip_query(url)}", url=url, code="too_many_redirects"
    )


def _connection_error(exc: BaseException, url: str) -> TransferError | UpstreamError:
    """An aiohttp error from before the body as ours: a refusal, a bad URL, or a passing fault."""
    refusal = refusal_of(exc)
    if refusal is not None:
        return blocked(refusal.host, refusal.address, refusal.reason)
    if isinstance(exc, aiohttp.InvalidURL):
        return DestinationBlocked(f"refused {strip_query(url)}: not a usable URL ({describe(exc)})")
    return UpstreamUnavailable(f"GET {strip_query(url)}: {describe(exc)}", url=url, code="network_error")


def _refuse_oversized(size: int | None, ref: AssetRef, options: TransferOptions) -> None:
    if size is not None and size > options.max_asset_bytes:
        raise AssetTooLarge(
            f"{strip_query(ref.url)} is {size} bytes, more than the {options.max_asset_bytes} "
            "allowed (ASSET_WORKER_MAX_ASSET_BYTES)",
            expected=options.max_asset_bytes,
            actual=size,
        )


def _body_cap(ref: AssetRef, entity: _Entity, options: TransferOptions) -> _Cap:
    """The tightest bound the whole file must keep, decided from the headers, before the body.

    A size the file host announces that contradicts the vendor's (or passes the cap) is refused
    here, without reading a byte of the body.
    """
    url = strip_query(ref.url)
    _refuse_oversized(entity.total, ref, options)
    published = ref.expected_size
    if published is not None and entity.total is not None and published != entity.total:
        raise IntegrityError(
            f"{url}: the file host announces {entity.total} bytes but the vendor published {published}",
            expected=published,
            actual=entity.total,
            code="size_mismatch",
        )
    size = published if published is not None else entity.total
    if size is not None:
        return _Cap(
            size,
            lambda got: IntegrityError(
                f"{url}: the body passed the {size} bytes announced (cut at {got})",
                expected=size,
                actual=got,
                code="size_mismatch",
            ),
        )
    limit = options.max_asset_bytes
    return _Cap(
        limit,
        lambda got: AssetTooLarge(
            f"{url}: the body passed the {limit} bytes allowed (ASSET_WORKER_MAX_ASSET_BYTES; cut at {got})",
            expected=limit,
            actual=got,
        ),
    )


def _request_headers(offset: int, entity: _Entity) -> dict[str, str]:
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if entity.validator:
            # If the file changed since the first response, the host sends all of it (200).
            headers["If-Range"] = entity.validator
    return headers


def _resumable(broke: _BodyBroke) -> bool:
    return bool(broke.args and broke.args[0] == "resumable")


def _validator(resp: aiohttp.ClientResponse) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def _check_response(
    resp: aiohttp.ClientResponse, ref: AssetRef, offset: int, entity: _Entity, wall_clock: Callable[[], float]
) -> int:
    """Classify the file host's answer; return the offset of the body's first byte.

    Updates ``entity`` from a full (200) answer; a partial (206) answer must continue exactly
    where the copy stopped, of a file of exactly the size first announced, or it is refused.
    """
    url = strip_query(ref.url)
    status = resp.status
    if status == 200:
        entity.total = resp.content_length
        entity.validator = _validator(resp)
        return 0
    if status == 206 and offset:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        whole = None if match is None or match.group(3) == "*" else int(match.group(3))
        if (
            match is None
            or int(match.group(1)) != offset
            or whole != entity.total
            or (whole is not None and int(match.group(2)) != whole - 1)
        ):
            raise IncompleteTransfer(
                f"{url}: resumed at byte {offset} but the host answered Content-Range "
                f"{resp.headers.get('Content-Range')!r} for a file of {entity.total} bytes",
                expected=entity.total,
                actual=offset,
            )
        return offset
    if is_expired_source_status(status):
        raise SourceExpired(
            f"file host answered {status} for {url}: the URL expired or the asset was replaced"
        )
    if is_retryable_status(status):
        retry_after = parse_retry_after(
            resp.headers.get("Retry-After"), now=wall_clock(), max_s=_RETRY_AFTER_MAX_S
        )
        raise UpstreamUnavailable(
            f"file host answered {status} for {url}", url=ref.url, status=status, retry_after_s=retry_after
        )
    raise UpstreamRejected(
        f"file host answered {status} for {url}", url=ref.url, status=status, code="source_rejected"
    )


async def _pump(
    resp: aiohttp.ClientResponse,
    upload: Upload,
    digest: Digest,
    cap: _Cap,
    options: TransferOptions,
    on_progress: Callable[[int], None],
) -> None:
    """Copy the body into ``upload`` and ``digest``, overlapping the network with hash and write.

    Pieces are batched (in a list, not copied) to about ``chunk_bytes`` so each batch costs one
    thread hop for the hash and one write, while the next batch is being received. Measured on
    1 GiB (bench/transfer.py): per-piece hand-off cost 3.2 CPU s, copying re-chunking 4.6, this 2.2.
    Against nginx, ``read(chunk_bytes)`` already returns ~1 MiB (aiohttp joins its 256 KiB socket
    reads), so the join below rarely runs; two queue-fed stages, one hop for hash and write, and
    ``readchunk`` with ``os.writev`` were measured within noise of this (bench/README.md).

    The speed floor is watched by one timer per window, not per piece (rescheduling a timeout for
    every piece cost a third of the transfer's CPU); time spent waiting on the destination does not
    count against the file host.
    """

    async def consume(pieces: list[bytes]) -> None:
        # One thread hop hashes the whole batch; the write gets the batch as one buffer.
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        await asyncio.gather(asyncio.to_thread(digest.update, data), upload.write(data))

    loop = asyncio.get_running_loop()
    floor = SpeedFloor(min_bps=options.min_speed_bps, window_s=options.min_speed_window_s, now=loop.time())
    chunk_bytes = options.chunk_bytes
    resumable = "resumable" if resp.headers.get("Accept-Ranges", "").lower() == "bytes" else "not resumable"
    # Bytes of the whole file so far: what earlier (resumed) responses wrote, plus this body.
    total = digest.size
    pending: asyncio.Task[None] | None = None
    batch: list[bytes] = []
    batched = 0

    async def hand_over(pieces: list[bytes]) -> None:
        nonlocal pending
        if pending is not None:
            floor.pause(loop.time())
            await pending
            floor.resume(loop.time())
        pending = asyncio.create_task(consume(pieces))

    try:
        async with asyncio.timeout(None) as guard:
            watch = _FloorWatch(loop, floor, guard)
            try:
                while piece := await resp.content.read(chunk_bytes):
                    total += len(piece)
                    if total > cap.limit:
                        raise cap.error(total)
                    floor.add(len(piece))
                    on_progress(len(piece))
                    batch.append(piece)
                    batched += len(piece)
                    if batched >= chunk_bytes:
                        await hand_over(batch)
                        batch, batched = [], 0
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                # What did arrive is written and hashed before the caller resumes after it.
                if batch:
                    await hand_over(batch)
                raise _BodyBroke(resumable, describe(exc)) from exc
            finally:
                watch.cancel()
        if batch:
            await hand_over(batch)
        if pending is not None:
            await pending
            pending = None
    except TimeoutError as exc:
        if not guard.expired():
            raise
        # The watch expired the guard: the body fell below the floor for a whole window. What
        # did arrive is kept, so the resume starts after it.
        if batch:
            await hand_over(batch)
        raise _BodyBroke(resumable, floor.describe(), stalled=True) from exc
    finally:
        if pending is not None and not pending.done():
            # Never leave a thread writing into a file that is about to be removed.
            await shielded(pending)


class _FloorWatch:
    """Checks the speed floor when each window ends; a window short of its quota expires ``guard``,
    which cancels the read under way."""

    def __init__(self, loop: asyncio.AbstractEventLoop, floor: SpeedFloor, guard: asyncio.Timeout) -> None:
        self._loop = loop
        self._floor = floor
        self._guard = guard
        deadline = floor.deadline()
        self._handle = None if deadline is None else loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        if self._floor.check(now):
            self._handle = None
            self._guard.reschedule(now)
            return
        self._handle = self._loop.call_at(self._floor.next_check(now), self._tick)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
