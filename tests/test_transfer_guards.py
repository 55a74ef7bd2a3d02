"""The guards of one transfer against a file host that lies, stalls or changes the file under us.

Each test scripts a file host byte for byte (a raw socket server on loopback), so it can send what
no well-behaved server would: a length that contradicts the vendor's, a resumed piece longer or
shorter than its range, a body that never ends. What is pinned is what a user relies on: no byte
past a promised size is accepted, nothing unverified is ever published, and each refusal is the
error (and code) that decides whether the job is retried, refreshed or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import pytest

from tests.test_transfer import OPTIONS, leftovers, read_request
from worker.config import HttpSettings
from worker.egress import EgressPolicy
from worker.egress_session import new_upstream_session
from worker.errors import (
    AssetTooLarge,
    DestinationBlocked,
    IncompleteTransfer,
    IntegrityError,
    LeaseLost,
    SourceExpired,
    StorageUnavailable,
    TransferStalled,
    UpstreamRejected,
    UpstreamUnavailable,
)
from worker.models import AssetRef, Receipt
from worker.simulator.content import content_bytes
from worker.sinks.base import Committed, Sink, Upload
from worker.sinks.file import FileSink
from worker.transfer import StoredCopy, TransferOptions, fetch_to_sink

KEY = "p/j/a1.bin"

# What a scripted reply is made of: bytes to send, or seconds to pause before the next part.
Part = bytes | float
# A reply: its parts, or a function of the request's headers (lower-cased names) giving them.
Reply = Sequence[Part] | Callable[[dict[str, str]], Sequence[Part]]
# A pause before hanging up, so the client has read every byte sent before it sees the break
# (aiohttp raises a broken body's error before handing over what it still buffers).
SETTLE = 0.1


@dataclass
class FileHost:
    """A file host on loopback that answers request ``i`` with ``replies[i]`` (the last one again
    once the script runs out), then closes the connection; ``calls`` holds each request's headers."""

    replies: Sequence[Reply]
    url: str = ""
    calls: list[dict[str, str]] = field(default_factory=list)

    @property
    def bare_url(self) -> str:
        return self.url.partition("?")[0]


@contextlib.asynccontextmanager
async def file_host(*replies: Reply) -> AsyncIterator[FileHost]:
    host = FileHost(replies)
    handlers: set[asyncio.Task[None]] = set()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            headers = await read_request(reader)
            host.calls.append(headers)
            reply = host.replies[min(len(host.calls), len(host.replies)) - 1]
            for part in reply(headers) if callable(reply) else reply:
                if isinstance(part, float):
                    # A pause ends early when the test is over: a stalled host must not outlive it.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), part)
                    if done.is_set():
                        break
                else:
                    writer.write(part)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up first: that is what some tests want
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/file.bin?X-Amz-Signature=secret"
    try:
        yield host
    finally:
        done.set()
        server.close()
        if handlers:
            await asyncio.wait(set(handlers), timeout=5)
        await server.wait_closed()


def offset_of(headers: dict[str, str]) -> int:
    """The start of the ``Range: bytes=N-`` a resume asked for."""
    return int(headers["range"].removeprefix("bytes=").removesuffix("-"))


def rest_of(body: bytes, *, over: int = 0, total: object = None) -> Reply:
    """A 206 continuing ``body`` wherever the resume asks; ``over`` makes the piece (its
    Content-Length and the bytes sent) that much longer or shorter than the rest of the file, and
    ``total`` replaces the size in Content-Range: a lying host."""

    def reply(headers: dict[str, str]) -> Sequence[Part]:
        start = offset_of(headers)
        padded = body + b"y" * max(over, 0)
        return [
            partial(body, start, length=len(body) - start + over, total=total),
            padded[start : len(body) + over],
        ]

    return reply


def head(status: str, **headers: object) -> bytes:
    """A response head; ``Content_Length`` style names become ``Content-Length``."""
    lines = [f"HTTP/1.1 {status}"] + [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def partial(body: bytes, start: int, *, length: int | None = None, total: object = None) -> bytes:
    """A 206 head continuing ``body`` at ``start`` (``length``/``total`` override the honest ones)."""
    whole = len(body) if total is None else total
    return head(
        "206 Partial Content",
        Content_Length=len(body) - start if length is None else length,
        Content_Range=f"bytes {start}-{len(body) - 1}/{whole}",
        Accept_Ranges="bytes",
    )


@dataclass
class Run:
    """What the transfer reported while it ran."""

    progress: list[int] = field(default_factory=list)

    @property
    def received(self) -> int:
        return sum(self.progress)


async def transfer(
    session: aiohttp.ClientSession,
    url: str,
    root: Path,
    *,
    options: TransferOptions = OPTIONS,
    sink: Sink | None = None,
    run: Run | None = None,
    before_commit: Callable[[], Awaitable[None]] | None = None,
    wall_clock: Callable[[], float] | None = None,
    key_for: Callable[[str | None], str] = lambda _ct: KEY,
    **ref_fields: object,
) -> StoredCopy:
    ref = AssetRef(asset_id="a1", url=url, **ref_fields)  # type: ignore[arg-type]
    return await fetch_to_sink(
        session,
        ref,
        sink or FileSink(root),
        key_for=key_for,
        options=options,
        on_progress=(run or Run()).progress.append,
        before_commit=before_commit,
        wall_clock=wall_clock or time.time,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- sizes: nothing past what was promised ------------------------------------------------------


async def test_body_longer_than_published_size_is_cut_without_a_checksum(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With only a published size (no sha256), a body that runs past it is cut at that size (never
    read on) and refused as a size mismatch: the size is the only thing vouching for the copy."""
    published = 1_000_000
    body = content_bytes(3, 3 * published)
    run = Run()
    # No Content-Length: the body is delimited by the close, so only the published size bounds it.
    async with file_host([head("200 OK"), body]) as host:
        with pytest.raises(IntegrityError) as caught:
            await transfer(session, host.url, tmp_path, run=run, expected_size=published)
    assert caught.value.code == "size_mismatch"
    assert caught.value.expected == published
    assert isinstance(caught.value.actual, int) and caught.value.actual > published
    assert "/file.bin" in str(caught.value) and "secret" not in str(caught.value)
    assert run.received <= published
    assert leftovers(tmp_path) == []


async def test_announced_size_contradicting_published_is_refused_before_the_body(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A Content-Length that differs from the vendor's size is refused from the headers alone, as a
    size mismatch (a different file, not a transfer to retry), before the destination is touched."""
    # The host sends the head and hangs up: reading the body would end as a broken transfer instead.
    async with file_host([head("200 OK", Content_Length=500, Accept_Ranges="bytes")]) as host:
        with pytest.raises(IntegrityError) as caught:
            await transfer(session, host.url, tmp_path, expected_size=1000)
    assert caught.value.code == "size_mismatch"
    assert (caught.value.expected, caught.value.actual) == (1000, 500)
    assert "/file.bin" in str(caught.value)
    assert len(host.calls) == 1
    assert leftovers(tmp_path) == []


async def test_published_size_above_the_cap_is_refused_without_a_request(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """An asset the vendor says is larger than max_asset_bytes is refused before the file host is
    contacted, and the error names the setting that would allow it."""
    options = replace(OPTIONS, max_asset_bytes=1000)
    async with file_host([head("200 OK", Content_Length=1001), b"x" * 1001]) as host:
        with pytest.raises(AssetTooLarge) as caught:
            await transfer(session, host.url, tmp_path, options=options, expected_size=1001)
    assert host.calls == []
    assert (caught.value.expected, caught.value.actual) == (1000, 1001)
    assert "ASSET_WORKER_MAX_ASSET_BYTES" in str(caught.value)
    assert leftovers(tmp_path) == []


async def test_asset_of_exactly_the_cap_is_stored(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """max_asset_bytes is inclusive: an asset of exactly that size is fetched and stored."""
    options = replace(OPTIONS, max_asset_bytes=1000)
    body = content_bytes(4, 1000)
    async with file_host([head("200 OK", Content_Length=1000), body]) as host:
        copy = await transfer(session, host.url, tmp_path, options=options, expected_size=1000)
    assert copy.size == 1000 and (tmp_path / KEY).read_bytes() == body


async def test_announced_size_above_the_cap_is_refused_before_the_body(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Without a published size, a Content-Length above max_asset_bytes is refused from the headers."""
    options = replace(OPTIONS, max_asset_bytes=1000)
    async with file_host([head("200 OK", Content_Length=5000), b"x" * 5000]) as host:
        with pytest.raises(AssetTooLarge) as caught:
            await transfer(session, host.url, tmp_path, options=options)
    assert (caught.value.expected, caught.value.actual) == (1000, 5000)
    assert leftovers(tmp_path) == []


async def test_body_of_unknown_length_is_cut_at_the_cap(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A body with no announced or published size is cut the moment it passes max_asset_bytes."""
    options = replace(OPTIONS, max_asset_bytes=1_000_000)
    run = Run()
    async with file_host([head("200 OK"), content_bytes(5, 3_000_000)]) as host:
        with pytest.raises(AssetTooLarge) as caught:
            await transfer(session, host.url, tmp_path, options=options, run=run)
    assert caught.value.expected == 1_000_000
    assert isinstance(caught.value.actual, int) and caught.value.actual > 1_000_000
    assert "ASSET_WORKER_MAX_ASSET_BYTES" in str(caught.value) and "/file.bin" in str(caught.value)
    assert run.received <= 1_000_000
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("source", ["published", "announced"])
async def test_asset_that_cannot_fit_the_destination_is_refused_up_front(
    session: aiohttp.ClientSession, tmp_path: Path, source: str
) -> None:
    """The destination is told the size to expect (the vendor's, else the host's), so a file
    larger than the free disk fails as disk_full before its body fills the disk."""
    huge = 1 << 60
    options = replace(OPTIONS, max_asset_bytes=huge)
    published = huge if source == "published" else None
    announced = {"Content_Length": huge} if source == "announced" else {}
    async with file_host([head("200 OK", **announced), b"x" * 1000]) as host:
        with pytest.raises(StorageUnavailable) as caught:
            await transfer(session, host.url, tmp_path, options=options, expected_size=published)
    assert caught.value.code == "disk_full"
    assert leftovers(tmp_path) == []


# -- resumed pieces must continue the same file exactly -----------------------------------------


async def test_resumed_piece_longer_than_its_range_is_cut(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 206 whose Content-Length runs past the file's announced end is cut there, never appended."""
    body = content_bytes(12, 3_000_000)
    run = Run()
    async with file_host(
        [head("200 OK", Content_Length=len(body), Accept_Ranges="bytes"), body[:1_500_000]],
        rest_of(body, over=500_000),
    ) as host:
        with pytest.raises(IntegrityError) as caught:
            await transfer(session, host.url, tmp_path, run=run)
    assert caught.value.code == "size_mismatch" and caught.value.expected == len(body)
    assert run.received <= len(body)
    assert leftovers(tmp_path) == []


async def test_resumed_piece_shorter_than_its_range_is_incomplete(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 206 that ends cleanly but short of the announced total leaves the copy incomplete: it is
    never published as the whole file."""
    body = content_bytes(13, 3_000_000)
    async with file_host(
        [head("200 OK", Content_Length=len(body), Accept_Ranges="bytes"), body[:1_500_000]],
        rest_of(body, over=-1_000_000),
    ) as host:
        with pytest.raises(IncompleteTransfer) as caught:
            await transfer(session, host.url, tmp_path)
    assert (caught.value.expected, caught.value.actual) == (len(body), len(body) - 1_000_000)
    assert leftovers(tmp_path) == []


async def test_misplaced_piece_is_reported_with_what_the_host_said(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 206 starting elsewhere than asked is refused as incomplete; the error quotes the host's
    Content-Range and says where the copy stood."""
    body = content_bytes(14, 3_000_000)
    async with file_host(
        [head("200 OK", Content_Length=len(body), Accept_Ranges="bytes"), body[:1_500_000]],
        [partial(body, 1000), body[1000:]],
    ) as host:
        with pytest.raises(IncompleteTransfer, match="'bytes 1000-2999999/3000000'") as caught:
            await transfer(session, host.url, tmp_path)
    offset = offset_of(host.calls[1])
    assert (caught.value.expected, caught.value.actual) == (len(body), offset)
    assert "/file.bin" in str(caught.value) and "secret" not in str(caught.value)
    assert leftovers(tmp_path) == []


async def test_file_of_unknown_length_is_resumed_with_an_open_total(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A chunked body (no length) that breaks off is resumed; a 206 whose total is ``*`` continues
    a file of unknown length, and the pieces join into the exact file."""
    body = content_bytes(15, 2_000_000)
    cut = 800_000
    first_chunk = f"{cut:x}\r\n".encode() + body[:cut] + b"\r\n"
    async with file_host(
        # The chunked body ends without its terminating chunk: a break, not the end of the file.
        [head("200 OK", Transfer_Encoding="chunked", Accept_Ranges="bytes"), first_chunk],
        rest_of(body, total="*"),
    ) as host:
        copy = await transfer(session, host.url, tmp_path)
    assert 0 < offset_of(host.calls[1]) <= cut
    assert copy.resumes == 1 and copy.sha256 == sha256(body)
    assert (tmp_path / KEY).read_bytes() == body


# -- when to resume at all ----------------------------------------------------------------------


@pytest.mark.parametrize("accept_ranges", [None, "none"])
async def test_no_resume_without_accept_ranges_bytes(
    session: aiohttp.ClientSession, tmp_path: Path, accept_ranges: str | None
) -> None:
    """A host that does not say ``Accept-Ranges: bytes`` is never sent a Range request: a broken
    body fails at once as incomplete (saying how far it got), and nothing is left behind."""
    ranges = {} if accept_ranges is None else {"Accept_Ranges": accept_ranges}
    async with file_host([head("200 OK", Content_Length=1000, **ranges), b"x" * 400, SETTLE]) as host:
        with pytest.raises(IncompleteTransfer) as caught:
            await transfer(session, host.url, tmp_path)
    assert type(caught.value) is IncompleteTransfer
    assert len(host.calls) == 1
    assert (caught.value.expected, caught.value.actual) == (1000, 400)
    # The cause is named, so an operator can tell a reset from a short body.
    assert "broke off after 400 bytes: ClientPayloadError" in str(caught.value)
    assert "/file.bin" in str(caught.value) and "secret" not in str(caught.value)
    assert leftovers(tmp_path) == []


def dribbling_host(body: bytes, piece: int) -> list[Reply]:
    """A host that sends at most ``piece`` bytes per response, from wherever it is asked."""

    def rest(headers: dict[str, str]) -> Sequence[Part]:
        start = offset_of(headers)
        return [partial(body, start), body[start : start + piece], SETTLE]

    return [[head("200 OK", Content_Length=len(body), Accept_Ranges="bytes"), body[:piece], SETTLE], rest]


async def test_resumes_are_counted_and_capped(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A host that breaks off every response is resumed exactly max_resumes times, then the
    transfer fails as incomplete with what it had."""
    body = content_bytes(16, 1_000_000)
    async with file_host(*dribbling_host(body, 100_000)) as host:
        with pytest.raises(IncompleteTransfer) as caught:
            await transfer(session, host.url, tmp_path, options=replace(OPTIONS, max_resumes=3))
    assert len(host.calls) == 4
    assert (caught.value.expected, caught.value.actual) == (len(body), 400_000)
    assert leftovers(tmp_path) == []


async def test_every_resume_is_reported(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Within max_resumes, a file fetched in (at least) ten pieces is whole and reports every resume."""
    body = content_bytes(17, 1_000_000)
    async with file_host(*dribbling_host(body, 100_000)) as host:
        copy = await transfer(session, host.url, tmp_path, options=replace(OPTIONS, max_resumes=30))
    assert copy.resumes == len(host.calls) - 1 >= 9
    assert (tmp_path / KEY).read_bytes() == body


@pytest.mark.parametrize("last_modified", [None, "Wed, 21 Oct 2015 07:28:00 GMT"])
async def test_weak_etag_is_never_sent_as_if_range(
    session: aiohttp.ClientSession, tmp_path: Path, last_modified: str | None
) -> None:
    """If-Range needs a strong validator: with a weak ETag the resume names the file by its
    Last-Modified date, or sends no If-Range at all."""
    body = content_bytes(18, 3_000_000)
    dated = {} if last_modified is None else {"Last_Modified": last_modified}
    first = head("200 OK", Content_Length=len(body), Accept_Ranges="bytes", ETag='W/"v1"', **dated)
    async with file_host([first, body[:1_500_000]], rest_of(body)) as host:
        copy = await transfer(session, host.url, tmp_path)
    assert host.calls[1].get("if-range") == last_modified
    assert copy.resumes == 1 and (tmp_path / KEY).read_bytes() == body


async def test_resume_answered_503_is_a_busy_host(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A resume answered 503 is the host being busy, not a bad piece: it reports the host's
    Retry-After, and the partial copy is removed."""
    body = content_bytes(19, 3_000_000)
    async with file_host(
        [head("200 OK", Content_Length=len(body), Accept_Ranges="bytes"), body[:1_500_000]],
        [head("503 Service Unavailable", Retry_After=7, Content_Length=0)],
    ) as host:
        with pytest.raises(UpstreamUnavailable) as caught:
            await transfer(session, host.url, tmp_path)
    assert caught.value.retry_after_s == 7 and caught.value.status == 503
    assert len(host.calls) == 2
    assert leftovers(tmp_path) == []


# -- the file host's answers --------------------------------------------------------------------


async def test_retry_after_date_is_read_against_the_wall_clock(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A Retry-After HTTP date is turned into seconds from the injected wall clock."""
    when = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    date = email.utils.formatdate(when, usegmt=True)
    async with file_host([head("429 Too Many Requests", Retry_After=date, Content_Length=0)]) as host:
        with pytest.raises(UpstreamUnavailable) as caught:
            await transfer(session, host.url, tmp_path, wall_clock=lambda: when - 45)
    assert caught.value.retry_after_s == 45 and caught.value.status == 429
    assert caught.value.url == host.bare_url


async def test_retry_after_is_capped(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A file host asking for a day's pause gets two minutes: past that the engine's own backoff
    decides, so a confused host cannot park a worker."""
    async with file_host([head("503 Service Unavailable", Retry_After=86400, Content_Length=0)]) as host:
        with pytest.raises(UpstreamUnavailable) as caught:
            await transfer(session, host.url, tmp_path)
    assert caught.value.retry_after_s == 120


async def test_other_client_errors_are_rejections(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A 4xx other than the expiry statuses fails the asset as source_rejected, with the status."""
    async with file_host([head("400 Bad Request", Content_Length=0)]) as host:
        with pytest.raises(UpstreamRejected) as caught:
            await transfer(session, host.url, tmp_path)
    assert caught.value.code == "source_rejected" and caught.value.status == 400
    assert caught.value.url == host.bare_url
    assert leftovers(tmp_path) == []


async def test_not_found_is_an_expired_source(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """404 from the file host means the asset was replaced: refresh the URL."""
    async with file_host([head("404 Not Found", Content_Length=0)]) as host:
        with pytest.raises(SourceExpired):
            await transfer(session, host.url, tmp_path)


async def test_connection_refused_is_a_passing_fault(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """No listener at the file host: retryable network_error naming the URL without its query."""
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    url = f"http://127.0.0.1:{port}/file.bin?X-Amz-Signature=secret"
    with pytest.raises(UpstreamUnavailable) as caught:
        await transfer(session, url, tmp_path)
    assert caught.value.code == "network_error" and caught.value.url == url.partition("?")[0]
    assert f"GET http://127.0.0.1:{port}/file.bin: ClientConnectorError" in str(caught.value)
    assert "secret" not in str(caught.value)


async def test_host_name_resolving_to_a_refused_address_is_blocked(tmp_path: Path) -> None:
    """A host name that resolves to a refused address fails as blocked (never retried as a network
    fault), naming the host and the address it led to."""
    async with new_upstream_session(HttpSettings(read_timeout_s=5.0), EgressPolicy()) as strict:
        with pytest.raises(DestinationBlocked) as caught:
            await transfer(strict, "http://localhost:9/file.bin?X-Amz-Signature=secret", tmp_path)
    assert "refused to connect to localhost at 127.0.0.1: loopback address" in str(caught.value)


async def test_unusable_url_is_blocked(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A URL aiohttp cannot use (a port out of range) fails as blocked, saying why."""
    with pytest.raises(DestinationBlocked) as caught:
        await transfer(session, "http://127.0.0.1:99999/file.bin?X-Amz-Signature=secret", tmp_path)
    message = str(caught.value)
    assert message.startswith("refused http://127.0.0.1:99999/file.bin: not a usable URL (InvalidUrl")
    assert "secret" not in message


# -- bytes as sent ------------------------------------------------------------------------------


async def test_gzip_encoded_body_is_stored_and_hashed_as_sent(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A body with Content-Encoding: gzip is stored and hashed as the raw bytes the host sent (the
    vendor's size and sha256 are of those bytes), never transparently decompressed."""
    raw = gzip.compress(content_bytes(20, 200_000), mtime=0)
    reply = head("200 OK", Content_Length=len(raw), Content_Encoding="gzip", Content_Type="application/pdf")
    async with file_host([reply, raw]) as host:
        copy = await transfer(
            session, host.url, tmp_path, expected_size=len(raw), expected_sha256=sha256(raw)
        )
    assert host.calls[0]["accept-encoding"] == "identity"
    assert copy.upstream_verified and copy.sha256 == sha256(raw) and copy.size == len(raw)
    assert (tmp_path / KEY).read_bytes() == raw


class RecordedUpload:
    """A file upload that remembers the size of every write it gets."""

    def __init__(self, inner: Upload, writes: list[int]) -> None:
        self.key = inner.key
        self._inner = inner
        self._writes = writes

    async def write(self, chunk: bytes) -> None:
        self._writes.append(len(chunk))
        await self._inner.write(chunk)

    async def restart(self) -> None:
        await self._inner.restart()

    async def commit(self, *, size: int, sha256: str) -> Committed:
        return await self._inner.commit(size=size, sha256=sha256)

    async def abort(self) -> None:
        await self._inner.abort()


class RecordingSink:
    """The file sink, remembering what each upload was opened with and the size of every write."""

    def __init__(self, root: Path) -> None:
        self._inner = FileSink(root)
        self.opened: list[dict[str, object]] = []
        self.writes: list[int] = []

    def uri_for(self, key: str) -> str:
        return self._inner.uri_for(key)

    def owns(self, uri: str) -> bool:
        return self._inner.owns(uri)

    async def open(
        self, key: str, *, content_type: str | None, expected_size: int | None, expected_sha256: str | None
    ) -> Upload:
        self.opened.append(
            {"key": key, "content_type": content_type, "size": expected_size, "sha256": expected_sha256}
        )
        upload = await self._inner.open(
            key, content_type=content_type, expected_size=expected_size, expected_sha256=expected_sha256
        )
        return RecordedUpload(upload, self.writes)

    async def still_has(self, receipt: Receipt) -> bool:
        return await self._inner.still_has(receipt)

    async def close(self) -> None:
        await self._inner.close()


async def test_destination_learns_type_size_and_checksum_up_front(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The key is chosen from the host's Content-Type, and the destination is opened with that
    type and the vendor's size and sha256 (normalised), so it can label or size the object."""
    body = content_bytes(21, 10_000)
    sink = RecordingSink(tmp_path)
    types: list[str | None] = []

    def key_for(content_type: str | None) -> str:
        types.append(content_type)
        return KEY

    reply = head("200 OK", Content_Length=len(body), Content_Type="application/pdf")
    async with file_host([reply, body]) as host:
        await transfer(
            session, host.url, tmp_path, sink=sink, key_for=key_for,
            expected_size=len(body), expected_sha256="SHA256:" + sha256(body).upper(),
        )  # fmt: skip
    assert types == ["application/pdf"]
    assert sink.opened == [
        {"key": KEY, "content_type": "application/pdf", "size": len(body), "sha256": sha256(body)}
    ]


async def test_body_is_written_in_bounded_batches(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Memory stays at about two chunks whatever the file size: the body reaches the destination
    in batches of about chunk_bytes, never gathered whole."""
    chunk = 1 << 20
    body = content_bytes(22, 6 * chunk + 5)
    sink = RecordingSink(tmp_path)
    async with file_host([head("200 OK", Content_Length=len(body)), body]) as host:
        copy = await transfer(
            session, host.url, tmp_path, sink=sink, options=replace(OPTIONS, chunk_bytes=chunk)
        )
    assert copy.sha256 == sha256(body)
    assert sum(sink.writes) == len(body)
    assert len(sink.writes) >= 4 and max(sink.writes) < 2 * chunk


# -- committing: the lease fence ----------------------------------------------------------------


async def test_lost_lease_before_commit_publishes_nothing(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """before_commit runs after verification and before the file is visible; when it raises
    LeaseLost, nothing is published and the temp file is removed."""
    body = content_bytes(23, 300_000)
    seen: list[list[Path]] = []

    async def fence() -> None:
        seen.append(leftovers(tmp_path))
        raise LeaseLost("the job was taken over")

    async with file_host([head("200 OK", Content_Length=len(body)), body]) as host:
        with pytest.raises(LeaseLost):
            await transfer(session, host.url, tmp_path, before_commit=fence, expected_sha256=sha256(body))
    # At the fence the whole body sat in a temp file, not yet at the final path.
    assert len(seen) == 1 and [p.suffix for p in seen[0]] == [".part"]
    assert leftovers(tmp_path) == []


async def test_fence_is_not_consulted_for_bytes_that_fail_verification(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Verification comes before the fence: a wrong body fails as a checksum mismatch without
    before_commit ever running."""
    body = content_bytes(24, 300_000)
    fenced: list[bool] = []

    async def fence() -> None:
        fenced.append(True)

    async with file_host([head("200 OK", Content_Length=len(body)), body]) as host:
        with pytest.raises(IntegrityError) as caught:
            await transfer(session, host.url, tmp_path, before_commit=fence, expected_sha256="0" * 64)
    assert caught.value.code == "checksum_mismatch" and fenced == []
    assert leftovers(tmp_path) == []


# -- the speed floor ----------------------------------------------------------------------------

# 50 kB/s over 0.3 s windows: 15 kB per window. The hosts below send 30 kB at once (the first
# window passes), then nothing for far longer than a window, but well inside the read timeout.
FLOOR = replace(OPTIONS, min_speed_bps=50_000, min_speed_window_s=0.3)
STALL_S = 3.0


async def test_stalled_body_fails_as_stalled(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A body that stops arriving for a whole window (after a window that kept up) is broken off as
    stalled, long before the read timeout, and without Range support it fails at once."""
    body = content_bytes(25, 60_000)
    async with file_host(
        [head("200 OK", Content_Length=len(body)), body[:30_000], STALL_S, body[30_000:]]
    ) as host:
        with pytest.raises(TransferStalled) as caught:
            await transfer(session, host.url, tmp_path, options=FLOOR)
    assert "ASSET_WORKER_MIN_SPEED_BPS" in str(caught.value)
    assert (caught.value.expected, caught.value.actual) == (len(body), 30_000)
    assert len(host.calls) == 1
    assert leftovers(tmp_path) == []


async def test_stalled_body_is_resumed_after_what_arrived(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A stalled body keeps what did arrive: the resume asks for the rest, and the copy is whole."""
    body = content_bytes(26, 60_000)
    async with file_host(
        [
            head("200 OK", Content_Length=len(body), Accept_Ranges="bytes"),
            body[:30_000],
            STALL_S,
            body[30_000:],
        ],
        rest_of(body),
    ) as host:
        copy = await transfer(session, host.url, tmp_path, options=FLOOR)
    assert host.calls[1]["range"] == "bytes=30000-"
    assert copy.resumes == 1 and (tmp_path / KEY).read_bytes() == body


async def test_speed_floor_zero_is_off(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """min_speed_bps 0 turns the floor off: a body pausing for many windows still completes."""
    body = content_bytes(27, 60_000)
    options = replace(FLOOR, min_speed_bps=0, min_speed_window_s=0.1)
    async with file_host(
        [head("200 OK", Content_Length=len(body)), body[:30_000], 0.5, body[30_000:]]
    ) as host:
        copy = await transfer(session, host.url, tmp_path, options=options)
    assert copy.resumes == 0 and (tmp_path / KEY).read_bytes() == body
