"""Streaming one asset into the file sink: verification, resume, and nothing partial left behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import SIMULATOR_ONLY
from worker.errors import (
    IncompleteTransfer,
    IntegrityError,
    SourceExpired,
    StorageRejected,
    UpstreamUnavailable,
)
from worker.models import AssetRef
from worker.simulator.app import Simulator
from worker.simulator.content import content_bytes, content_sha256
from worker.sinks.file import FileSink
from worker.transfer import StoredCopy, TransferOptions, fetch_to_sink

OPTIONS = TransferOptions(chunk_bytes=64 * 1024, max_resumes=3, egress=SIMULATOR_ONLY)


def leftovers(root: Path) -> list[Path]:
    """Every file under the destination (temp files included)."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def fetch(session: aiohttp.ClientSession, url: str, root: Path, **ref_fields: object) -> StoredCopy:
    ref = AssetRef(asset_id="a1", url=url, **ref_fields)  # type: ignore[arg-type]
    return await fetch_to_sink(
        session, ref, FileSink(root), key_for=lambda _ct: "p/j/a1.bin", options=OPTIONS
    )


async def test_streams_and_verifies(sim: Simulator, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A 3 MiB asset lands whole, with the right sha256, no temp file, and no API key sent."""
    job = sim.add_cloudlayer_job(size=3 * 1024 * 1024 + 7, pending_s=0)
    copy = await fetch(session, sim.file_url(job), tmp_path, expected_size=job.size)
    final = tmp_path / "p/j/a1.bin"
    assert copy.sha256 == content_sha256(job.seed, job.size) == hashlib.sha256(final.read_bytes()).hexdigest()
    assert copy.size == job.size and copy.upstream_verified and copy.resumes == 0
    assert copy.committed.uri == final.as_uri()
    assert leftovers(tmp_path) == [final]
    assert [r.had_api_key for r in sim.requests("files")] == [False]


async def test_truncated_body_is_resumed_with_range(
    sim: Simulator, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A body that breaks off is resumed from where it stopped, and the result still verifies."""
    job = sim.add_cloudlayer_job(size=2_000_000, pending_s=0)
    sim.add_fault(route="files", kind="truncate", count=1)
    copy = await fetch(session, sim.file_url(job), tmp_path)
    assert copy.resumes == 1
    assert copy.sha256 == content_sha256(job.seed, job.size)
    ranges = [r.range for r in sim.requests("files")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert leftovers(tmp_path) == [tmp_path / "p/j/a1.bin"]


async def test_wrong_bytes_never_published(
    sim: Simulator, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Bytes that do not match the published sha256 are refused and leave nothing behind."""
    job = sim.add_cloudlayer_job(size=500_000, pending_s=0)
    sim.add_fault(route="files", kind="wrong_bytes", count=1)
    with pytest.raises(IntegrityError) as caught:
        await fetch(session, sim.file_url(job), tmp_path, expected_sha256=content_sha256(job.seed, job.size))
    assert caught.value.code == "checksum_mismatch"
    assert leftovers(tmp_path) == []


async def test_short_body_fails_size_check(
    sim: Simulator, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A consistent but short file is caught by the vendor's published size."""
    job = sim.add_cloudlayer_job(size=300_000, pending_s=0)
    sim.add_fault(route="files", kind="short_body", count=1)
    with pytest.raises(IntegrityError) as caught:
        await fetch(session, sim.file_url(job), tmp_path, expected_size=job.size)
    assert caught.value.code == "size_mismatch"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("style", ["403", "410"])
async def test_expired_url(
    sim: Simulator, session: aiohttp.ClientSession, tmp_path: Path, style: str
) -> None:
    """403 (S3's expired signature) and 410 are reported as an expired source."""
    job = sim.add_cloudlayer_job(size=1000, pending_s=0)
    sim.add_fault(route="files", kind="expired", style=style, count=1)
    with pytest.raises(SourceExpired):
        await fetch(session, sim.file_url(job), tmp_path)
    assert leftovers(tmp_path) == []


async def test_cancellation_publishes_nothing_and_keeps_only_the_resumable_part(
    sim: Simulator, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Cancelling mid-transfer (a drain) publishes nothing; the file host can resume this file, so
    the part and its record stay for the next holder of the job (tests/test_resume.py), and no
    random temp file is left."""
    job = sim.add_cloudlayer_job(size=512 * 1024 * 1024, pending_s=0)
    progressed = asyncio.Event()
    ref = AssetRef(asset_id="a1", url=sim.file_url(job))
    task = asyncio.create_task(
        fetch_to_sink(
            session,
            ref,
            FileSink(tmp_path),
            key_for=lambda _ct: "p/j/a1.bin",
            options=OPTIONS,
            on_progress=lambda _n: progressed.set(),
        )
    )
    await asyncio.wait_for(progressed.wait(), 10)
    assert any(p.name.endswith(".part") for p in leftovers(tmp_path))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    directory = tmp_path / "p/j"
    assert leftovers(tmp_path) == [directory / ".a1.bin.resume.json", directory / ".a1.bin.resume.part"]


async def test_storage_rejected_when_destination_unusable(
    sim: Simulator, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A destination that cannot hold directories fails with StorageRejected, not a traceback."""
    job = sim.add_cloudlayer_job(size=1000, pending_s=0)
    blocker = tmp_path / "root"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(StorageRejected):
        await fetch(session, sim.file_url(job), blocker)


# -- a raw server for bodies that lie about their length ----------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/file.bin?X-Amz-Signature=secret"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> dict[str, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


async def test_lying_content_length_without_ranges(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A server that promises 1000 bytes, sends 400 and hangs up, without Range support, fails cleanly."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/pdf\r\n\r\n")
        writer.write(b"x" * 400)
        await writer.drain()
        writer.close()

    async with raw_server(handler) as url:
        with pytest.raises(IncompleteTransfer) as caught:
            await fetch(session, url, tmp_path)
    assert "X-Amz-Signature" not in str(caught.value)
    assert leftovers(tmp_path) == []


async def test_resume_ignored_by_server_restarts_cleanly(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """When the host answers a Range request with the whole file (200), the copy starts over, not splices."""
    # Larger than the client's read buffer, so part of it is consumed before the hang-up is seen.
    body = content_bytes(7, 3_000_000)
    calls: list[dict[str, str]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await read_request(reader)
        calls.append(headers)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nAccept-Ranges: bytes\r\n\r\n"
        writer.write(head.encode())
        writer.write(body if len(calls) > 1 else body[:1_500_000])
        await writer.drain()
        writer.close()

    async with raw_server(handler) as url:
        copy = await fetch(session, url, tmp_path)
    assert "range" in calls[1]
    assert copy.sha256 == hashlib.sha256(body).hexdigest()
    assert (tmp_path / "p/j/a1.bin").read_bytes() == body


async def test_file_changed_to_a_shorter_one_replaces_the_partial_copy(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """When the file changed between attempts (If-Range no longer matches, the host sends the new
    file whole) and the new file is shorter, the copy is exactly the new file: no bytes of the old
    one survive past its end, and the recorded size and sha256 are those of what was published."""
    old = content_bytes(7, 3_000_000)
    new = content_bytes(8, 1_000_000)
    calls: list[dict[str, str]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        calls.append(await read_request(reader))
        body, etag = (old[:1_500_000], '"v1"') if len(calls) == 1 else (new, '"v2"')
        size = len(old) if len(calls) == 1 else len(new)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\nETag: {etag}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    async with raw_server(handler) as url:
        copy = await fetch(session, url, tmp_path)
    assert calls[1]["if-range"] == '"v1"' and "range" in calls[1]
    final = tmp_path / "p/j/a1.bin"
    assert final.read_bytes() == new
    assert (copy.size, copy.sha256) == (len(new), hashlib.sha256(new).hexdigest())
    assert copy.resumes == 1
    assert leftovers(tmp_path) == [final]


async def test_resume_sends_if_range_and_refuses_a_misplaced_piece(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A resume names the file it continues (If-Range), and a 206 that does not continue exactly at
    the requested offset is refused rather than spliced; the retry then fetches the whole file."""
    body = content_bytes(9, 3_000_000)
    calls: list[dict[str, str]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await read_request(reader)
        calls.append(headers)
        if len(calls) == 1:
            head = f'HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nAccept-Ranges: bytes\r\nETag: "v1"\r\n'
            head += "\r\n"
            writer.write(head.encode() + body[:1_500_000])
        else:
            # Claims to continue, but from the wrong place.
            start = 1000
            head = (
                f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body) - start}\r\n"
                f"Content-Range: bytes {start}-{len(body) - 1}/{len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body[start:])
        await writer.drain()
        writer.close()

    async with raw_server(handler) as url:
        with pytest.raises(IncompleteTransfer):
            await fetch(session, url, tmp_path)
    assert calls[1]["if-range"] == '"v1"'
    assert calls[1]["range"].startswith("bytes=") and calls[1]["accept-encoding"] == "identity"
    assert leftovers(tmp_path) == []


async def test_resume_refuses_a_piece_of_a_different_size_file(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 206 whose total differs from the first response's length is another file: refused."""
    body = content_bytes(11, 3_000_000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await read_request(reader)
        if "range" not in headers:
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nAccept-Ranges: bytes\r\n\r\n"
            writer.write(head.encode() + body[:1_500_000])
        else:
            start = int(headers["range"].removeprefix("bytes=").rstrip("-"))
            total = len(body) + 10
            head = (
                f"HTTP/1.1 206 Partial Content\r\nContent-Length: {total - start}\r\n"
                f"Content-Range: bytes {start}-{total - 1}/{total}\r\n\r\n"
            )
            writer.write(head.encode() + (body + b"x" * 10)[start:])
        await writer.drain()
        writer.close()

    async with raw_server(handler) as url:
        with pytest.raises(IncompleteTransfer, match="Content-Range"):
            await fetch(session, url, tmp_path)
    assert leftovers(tmp_path) == []


async def test_file_host_retry_after_is_carried(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """A 503 from the file host with Retry-After reports how long to wait."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with raw_server(handler) as url:
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(session, url, tmp_path)
    assert caught.value.retry_after_s == 30
