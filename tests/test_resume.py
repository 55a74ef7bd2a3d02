"""Resuming a download an earlier process left on disk: a real file host on loopback (aiohttp, with
Range, If-Range, ETag and Last-Modified), the real file destination, the real transfer.

What an earlier process left is made the way it makes it: through the file destination's own
``resume``, ``write`` and ``suspend``, or by a transfer that is really cancelled mid-body. Only the
damaged cases write the files by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import SIMULATOR_ONLY
from tests.http_support import eventually
from worker.errors import IntegrityError
from worker.models import AssetRef
from worker.simulator.content import content_bytes
from worker.sinks.base import SourceEntity
from worker.sinks.file import FileSink
from worker.sinks.file_resume import boot_id
from worker.transfer import StoredCopy, TransferOptions, fetch_to_sink

# Files of any size are kept here (the worker's default keeps only those of 8 MiB and more).
OPTIONS = TransferOptions(chunk_bytes=64 * 1024, max_resumes=3, egress=SIMULATOR_ONLY, resume_min_bytes=0)
KEY = "p/j/a1.bin"
BODY = content_bytes(31, 3_000_000)
KEPT = 1_000_000


# -- the file host --------------------------------------------------------------------------------


@dataclass
class Version:
    """What the file host serves now."""

    body: bytes = BODY
    etag: str | None = '"v1"'
    last_modified: str | None = None
    ranges: bool = True


@dataclass
class FileHost:
    """One file, served like S3 or a CDN: ``Range`` honoured when ``If-Range`` still names the file
    (else the whole file, 200). With ``pause_at`` a full answer stops after that many bytes until
    the test ends (a download under way, for cancelling)."""

    version: Version
    url: str = ""
    calls: list[dict[str, str]] = field(default_factory=list)
    pause_at: int | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)
    # Served from the second request on: the file replaced after the first answer.
    then: Version | None = None

    def validator(self) -> str | None:
        etag = self.version.etag
        return etag if etag and not etag.startswith("W/") else self.version.last_modified

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.calls and self.then is not None:
            self.version = self.then
        self.calls.append({k.lower(): v for k, v in request.headers.items()})
        version = self.version
        body = version.body
        start = self._start(request)
        headers = {"Content-Type": "application/octet-stream"}
        if version.etag:
            headers["ETag"] = version.etag
        if version.last_modified:
            headers["Last-Modified"] = version.last_modified
        if version.ranges:
            headers["Accept-Ranges"] = "bytes"
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        response.content_length = len(body) - start
        await response.prepare(request)
        for at in range(start, len(body), 64 * 1024):
            if self.pause_at is not None and not start and at >= self.pause_at:
                await self.released.wait()
            await response.write(body[at : at + 64 * 1024])
        return response

    def _start(self, request: web.Request) -> int:
        wanted = request.headers.get("Range")
        if wanted is None or not self.version.ranges:
            return 0
        if request.headers.get("If-Range") != self.validator():
            return 0  # the file changed since: all of it
        return int(wanted.removeprefix("bytes=").rstrip("-"))


@asynccontextmanager
async def file_host(version: Version) -> AsyncIterator[FileHost]:
    host = FileHost(version)
    app = web.Application()
    app.router.add_get("/file.bin", host.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    host.url = f"http://127.0.0.1:{port}/file.bin?X-Amz-Signature=secret"
    try:
        yield host
    finally:
        host.released.set()
        await runner.cleanup()


# -- helpers ----------------------------------------------------------------------------------------


def final_of(root: Path) -> Path:
    return root / KEY


def part_of(root: Path) -> Path:
    return root / "p/j/.a1.bin.resume.part"


def record_of(root: Path) -> Path:
    return root / "p/j/.a1.bin.resume.json"


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@dataclass
class Seen:
    """What the transfer reported through its callbacks."""

    starts: list[tuple[int | None, int]] = field(default_factory=list)
    received: int = 0


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    root: Path,
    seen: Seen | None = None,
    on_progress: Callable[[int], None] | None = None,
    options: TransferOptions = OPTIONS,
    **ref_fields: Any,
) -> StoredCopy:
    seen = seen if seen is not None else Seen()

    def progress(n: int) -> None:
        seen.received += n
        if on_progress is not None:
            on_progress(n)

    return await fetch_to_sink(
        session,
        AssetRef(asset_id="a1", url=url, **ref_fields),
        FileSink(root),
        key_for=lambda _ct: KEY,
        options=options,
        on_progress=progress,
        on_start=lambda total, offset: seen.starts.append((total, offset)),
    )


async def leave_part(root: Path, data: bytes, entity: SourceEntity) -> None:
    """What a drained process leaves: its upload resumed for ``entity``, ``data`` written, then
    suspended (its lock released)."""
    upload = await FileSink(root).open(KEY, content_type=None, expected_size=None, expected_sha256=None)
    assert await upload.resume(entity) == 0
    await upload.write(data)
    await upload.suspend()


def requested_range(call: dict[str, str]) -> tuple[str | None, str | None]:
    return call.get("range"), call.get("if-range")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


V1 = SourceEntity('"v1"', len(BODY))


# -- resumed ----------------------------------------------------------------------------------------


async def test_a_kept_part_of_the_same_file_is_resumed_with_if_range(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The first answer names the file; the kept bytes are of exactly that file, so its body is
    dropped, the bytes on disk hashed again, and only the rest asked for, with If-Range; the copy
    verifies against the published sha256 and nothing else is left."""
    await leave_part(tmp_path, BODY[:KEPT], V1)
    seen = Seen()
    async with file_host(Version()) as host:
        with capture_logs() as events:
            copy = await fetch(session, host.url, tmp_path, seen, expected_sha256=sha256(BODY))
    assert [requested_range(c) for c in host.calls] == [(None, None), (f"bytes={KEPT}-", '"v1"')]
    assert (copy.reused_bytes, copy.sha256, copy.size) == (KEPT, sha256(BODY), len(BODY))
    assert copy.upstream_verified and copy.resumes == 0
    assert seen.starts == [(len(BODY), KEPT)] and seen.received == len(BODY) - KEPT
    (resumed,) = [e for e in events if e["event"] == "transfer_resumed_from_disk"]
    assert resumed["bytes_saved"] == KEPT and resumed["key"] == KEY
    assert "secret" not in json.dumps(events, default=str)
    assert final_of(tmp_path).read_bytes() == BODY
    assert leftovers(tmp_path) == [final_of(tmp_path)]


async def test_last_modified_is_the_validator_without_a_strong_etag(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A weak ETag cannot identify bytes; Last-Modified then does, and If-Range carries it."""
    stamp = "Wed, 21 Oct 2026 07:28:00 GMT"
    await leave_part(tmp_path, BODY[:KEPT], SourceEntity(stamp, len(BODY)))
    async with file_host(Version(etag='W/"weak"', last_modified=stamp)) as host:
        copy = await fetch(session, host.url, tmp_path)
    assert requested_range(host.calls[1]) == (f"bytes={KEPT}-", stamp)
    assert copy.reused_bytes == KEPT and final_of(tmp_path).read_bytes() == BODY


async def test_a_whole_file_kept_needs_no_second_request(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A process killed after the last byte but before publishing left all of it: it is hashed
    again and published without asking the host for anything more."""
    await leave_part(tmp_path, BODY, V1)
    seen = Seen()
    async with file_host(Version()) as host:
        copy = await fetch(session, host.url, tmp_path, seen, expected_size=len(BODY))
    assert len(host.calls) == 1 and seen.starts == [] and seen.received == 0
    assert copy.reused_bytes == len(BODY) and copy.sha256 == sha256(BODY)
    assert leftovers(tmp_path) == [final_of(tmp_path)]


async def test_a_cancelled_transfer_is_resumed_by_the_next(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A transfer really cancelled mid-body (a drain) keeps its part; the next transfer of the
    same asset continues from the part's last byte."""
    async with file_host(Version()) as host:
        host.pause_at = 2 * KEPT
        arrived = asyncio.Event()
        first = asyncio.create_task(fetch(session, host.url, tmp_path, on_progress=lambda _n: arrived.set()))
        await asyncio.wait_for(arrived.wait(), 10)
        await eventually(lambda: part_of(tmp_path).stat().st_size >= KEPT)  # some of it written out
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        kept = part_of(tmp_path).stat().st_size
        assert leftovers(tmp_path) == [record_of(tmp_path), part_of(tmp_path)]
        host.calls.clear()
        copy = await fetch(session, host.url, tmp_path)
    assert copy.reused_bytes == kept > 0
    assert requested_range(host.calls[-1]) == (f"bytes={kept}-", '"v1"')
    assert final_of(tmp_path).read_bytes() == BODY
    assert leftovers(tmp_path) == [final_of(tmp_path)]


# -- not resumed ------------------------------------------------------------------------------------


async def test_a_part_of_an_older_version_is_replaced(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The first answer already names another file (new ETag): the kept bytes are dropped and this
    answer's body is the download; no Range is asked for."""
    await leave_part(tmp_path, b"x" * KEPT, V1)
    new = content_bytes(32, 2_000_000)
    async with file_host(Version(body=new, etag='"v2"')) as host:
        with capture_logs() as events:
            copy = await fetch(session, host.url, tmp_path)
    assert [requested_range(c) for c in host.calls] == [(None, None)]
    assert copy.reused_bytes == 0 and final_of(tmp_path).read_bytes() == new
    assert {
        "event": "resume_part_discarded",
        "key": KEY,
        "reason": "other_entity",
        "log_level": "info",
    } in events
    assert leftovers(tmp_path) == [final_of(tmp_path)]


async def test_a_file_changed_between_the_two_requests_restarts_from_zero(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The kept bytes matched the first answer, but the file changed before the Range request:
    If-Range no longer matches, the host sends the new file whole (200), and the copy is exactly the
    new file, none of the kept bytes spliced in."""
    await leave_part(tmp_path, BODY[:KEPT], V1)
    new = content_bytes(33, 2_500_000)
    async with file_host(Version()) as host:
        host.then = Version(body=new, etag='"v2"')
        with capture_logs() as events:
            copy = await fetch(session, host.url, tmp_path)
    assert requested_range(host.calls[1]) == (f"bytes={KEPT}-", '"v1"')
    assert (copy.reused_bytes, copy.sha256) == (0, sha256(new))
    assert final_of(tmp_path).read_bytes() == new
    assert [e["bytes_dropped"] for e in events if e["event"] == "transfer_resume_from_disk_refused"] == [KEPT]
    assert not [e for e in events if e["event"] == "transfer_resumed_from_disk"]
    assert leftovers(tmp_path) == [final_of(tmp_path)]


def damage_record_missing(root: Path) -> str:
    record_of(root).unlink()
    return "no_record"


def damage_record_corrupt(root: Path) -> str:
    record_of(root).write_text('{"format": 1, "validator": "\\"v1\\"", "tot')
    return "no_record"


def damage_record_from_another_boot(root: Path) -> str:
    record = json.loads(record_of(root).read_text())
    record_of(root).write_text(json.dumps({**record, "boot_id": "another-boot"}))
    return "written_before_reboot"


def damage_part_too_long(root: Path) -> str:
    with part_of(root).open("ab") as handle:
        handle.write(b"x" * len(BODY))
    return "longer_than_file"


@pytest.mark.parametrize(
    "damage",
    [damage_record_missing, damage_record_corrupt, damage_record_from_another_boot, damage_part_too_long],
)
async def test_a_part_that_cannot_be_trusted_is_dropped(
    session: aiohttp.ClientSession, tmp_path: Path, damage: Callable[[Path], str]
) -> None:
    """Bytes whose record is missing or unreadable, that were written before the machine last
    booted (the page cache may not have reached the disk), or that are more than the file: the
    download starts from zero and the stale part is gone at the end."""
    assert boot_id() is not None  # the tests run on Linux
    await leave_part(tmp_path, BODY[:KEPT], V1)
    reason = damage(tmp_path)
    async with file_host(Version()) as host:
        with capture_logs() as events:
            copy = await fetch(session, host.url, tmp_path)
    assert [requested_range(c) for c in host.calls] == [(None, None)]
    assert copy.reused_bytes == 0 and final_of(tmp_path).read_bytes() == BODY
    assert [e["reason"] for e in events if e["event"] == "resume_part_discarded"] == [reason]
    assert leftovers(tmp_path) == [final_of(tmp_path)]


async def test_a_part_locked_by_a_live_process_is_left_alone(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A part whose writer still runs (a worker that lost its lease but not its life) holds its
    lock: the transfer writes a fresh random temp instead and never touches the part."""
    await leave_part(tmp_path, BODY[:KEPT], V1)
    record_before = record_of(tmp_path).read_bytes()
    with part_of(tmp_path).open("rb") as zombie:
        fcntl.flock(zombie.fileno(), fcntl.LOCK_EX)
        async with file_host(Version()) as host:
            with capture_logs() as events:
                copy = await fetch(session, host.url, tmp_path)
        assert [requested_range(c) for c in host.calls] == [(None, None)]
        assert copy.reused_bytes == 0 and final_of(tmp_path).read_bytes() == BODY
        assert "resume_part_busy" in {e["event"] for e in events}
        assert part_of(tmp_path).read_bytes() == BODY[:KEPT]
        assert record_of(tmp_path).read_bytes() == record_before
    assert leftovers(tmp_path) == sorted([final_of(tmp_path), record_of(tmp_path), part_of(tmp_path)])


async def test_an_integrity_failure_removes_the_part(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Bytes that fail verification are of no use to anyone: resumed or not, nothing is kept."""
    await leave_part(tmp_path, BODY[:KEPT], V1)
    async with file_host(Version()) as host:
        with pytest.raises(IntegrityError):
            await fetch(session, host.url, tmp_path, expected_sha256="0" * 64)
    assert len(host.calls) == 2  # it was resumed, then refused
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "version",
    [Version(etag=None), Version(etag='W/"weak"'), Version(ranges=False)],
    ids=["no_validator", "weak_etag_only", "no_accept_ranges"],
)
async def test_without_a_validator_or_ranges_a_cancelled_transfer_keeps_nothing(
    session: aiohttp.ClientSession, tmp_path: Path, version: Version
) -> None:
    """A file the host could not resume for a later process (no validator to send as If-Range, or
    no byte ranges) is written to a random temp file, removed on cancellation as before."""
    async with file_host(version) as host:
        host.pause_at = KEPT
        arrived = asyncio.Event()
        task = asyncio.create_task(fetch(session, host.url, tmp_path, on_progress=lambda _n: arrived.set()))
        await asyncio.wait_for(arrived.wait(), 10)
        assert [p.name for p in leftovers(tmp_path)] != []
        assert not part_of(tmp_path).exists()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert leftovers(tmp_path) == []


async def test_a_file_below_the_resume_size_is_not_kept(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Smaller than ``resume_min_bytes``, a file is cheaper to fetch again than to keep: no part,
    no record, and a cancelled transfer leaves nothing."""
    small = dataclasses.replace(OPTIONS, resume_min_bytes=len(BODY) + 1)
    async with file_host(Version()) as host:
        host.pause_at = KEPT
        arrived = asyncio.Event()
        task = asyncio.create_task(
            fetch(session, host.url, tmp_path, on_progress=lambda _n: arrived.set(), options=small)
        )
        await asyncio.wait_for(arrived.wait(), 10)
        assert (
            leftovers(tmp_path) != [] and not part_of(tmp_path).exists() and not record_of(tmp_path).exists()
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert leftovers(tmp_path) == []


async def test_a_kept_part_is_not_cleaned_up_by_another_target(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Publishing one target removes only its own stale part, never a neighbour's."""
    await leave_part(tmp_path, BODY[:KEPT], V1)
    async with file_host(Version()) as host:
        await fetch_to_sink(
            session,
            AssetRef(asset_id="a2", url=host.url),
            FileSink(tmp_path),
            key_for=lambda _ct: "p/j/a2.bin",
            options=OPTIONS,
        )
    assert part_of(tmp_path).read_bytes() == BODY[:KEPT] and record_of(tmp_path).exists()
    assert (tmp_path / "p/j/a2.bin").exists()
