"""The S3 sink against a real S3-compatible server (SeaweedFS on loopback): a verified object or none."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiobotocore.session
import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.conftest import SIMULATOR_ONLY
from tests.s3server import S3Server, checksum_refusing_proxy
from worker.errors import ConfigError, IntegrityError, StorageInterrupted, StorageRejected
from worker.models import AssetRef
from worker.simulator.app import Simulator
from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.content import content_bytes, content_sha256
from worker.sinks.s3_bucket import PartBody
from worker.sinks.s3_parts import (
    GIB,
    MAX_OBJECT_BYTES,
    MAX_PART_BYTES,
    MAX_PARTS,
    MIB,
    MIN_PART_BYTES,
    part_size_at,
    part_size_for,
)
from worker.sinks.s3_settings import S3Settings, parse_s3_url
from worker.sinks.s3_sink import STAGING_DIR, S3Sink, open_s3_sink
from worker.transfer import StoredCopy, TransferOptions, fetch_to_sink

OPTIONS = TransferOptions(egress=SIMULATOR_ONLY)
KEY = "j/a1.bin"
PART = 5 * MIB


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """Each test writes under its own prefix of the shared server's bucket."""
    return f"t/{uuid.uuid4().hex[:12]}"


def make_settings(server: S3Server, prefix: str, **changes: Any) -> S3Settings:
    fields: dict[str, Any] = {
        "bucket": server.bucket,
        "prefix": prefix,
        "endpoint_url": server.endpoint_url,
        "region": "us-east-1",
        "path_style": True,
        "part_size_min_bytes": PART,
        "max_parts_in_flight": 2,
    }
    fields.update(changes)
    return S3Settings(**fields)


def aws_session(server: S3Server, secret: str | None = None) -> aiobotocore.session.AioSession:
    aio = aiobotocore.session.get_session()
    aio.set_credentials(server.access_key, secret or server.secret_key)
    return aio


SinkFactory = Callable[..., contextlib.AbstractAsyncContextManager[S3Sink]]


@pytest.fixture
def make_sink(s3_server: S3Server, prefix: str) -> SinkFactory:
    """``make_sink(**settings)``: an S3 sink on the test server under this test's prefix."""

    def make(
        *, secret: str | None = None, wall_clock: Callable[[], float] = time.time, **changes: Any
    ) -> contextlib.AbstractAsyncContextManager[S3Sink]:
        settings = make_settings(s3_server, prefix, **changes)
        return open_s3_sink(settings, session=aws_session(s3_server, secret), wall_clock=wall_clock)

    return make


@pytest.fixture
async def sink(make_sink: SinkFactory) -> AsyncIterator[S3Sink]:
    async with make_sink() as s3:
        yield s3


# -- helpers ------------------------------------------------------------------------------------


async def fetch(
    session: aiohttp.ClientSession,
    sim: Simulator,
    job: SimJob,
    sink: S3Sink,
    *,
    key: str = KEY,
    on_progress: Callable[[int], None] = lambda _n: None,
    **ref_fields: Any,
) -> StoredCopy:
    ref = AssetRef(asset_id=job.asset_id, url=sim.file_url(job), **ref_fields)
    return await fetch_to_sink(
        session, ref, sink, key_for=lambda _ct: key, options=OPTIONS, on_progress=on_progress
    )


def published(job: SimJob) -> dict[str, Any]:
    return {"expected_size": job.size, "expected_sha256": content_sha256(job.seed, job.size)}


async def read_back(sink: S3Sink, key: str = KEY) -> tuple[bytes, dict[str, Any]]:
    resp = await sink.bucket.client.get_object(Bucket=sink.bucket.name, Key=sink.object_key(key))
    async with resp["Body"] as body:
        data = await body.read()
    return data, dict(resp)


async def keys_under(sink: S3Sink) -> list[str]:
    """Every object under the sink's prefix, staged ones included."""
    return sorted([key async for key, _ in sink.bucket.list_objects(f"{sink.settings.prefix}/")])


async def open_uploads(sink: S3Sink) -> list[str]:
    return [key async for key, _, _ in sink.bucket.list_uploads(f"{sink.settings.prefix}/")]


async def assert_nothing_left(sink: S3Sink) -> None:
    assert await keys_under(sink) == []
    assert await open_uploads(sink) == []


async def assert_stored(sink: S3Sink, job: SimJob, copy: StoredCopy, key: str = KEY) -> dict[str, Any]:
    """The object under ``key`` is the job's bytes, labelled with their sha256; nothing else is left."""
    data, head = await read_back(sink, key)
    sha256 = content_sha256(job.seed, job.size)
    assert hashlib.sha256(data).hexdigest() == sha256 == copy.sha256
    assert len(data) == job.size == copy.size
    assert head["Metadata"] == {"sha256": sha256}
    assert head["ContentType"] == job.content_type
    assert copy.committed.uri == f"s3://{sink.bucket.name}/{sink.object_key(key)}"
    assert copy.committed.etag == head["ETag"].strip('"')
    assert await keys_under(sink) == [sink.object_key(key)]
    assert await open_uploads(sink) == []
    return head


# -- pure parts ---------------------------------------------------------------------------------


@given(size=st.integers(0, MAX_OBJECT_BYTES), minimum=st.integers(MIN_PART_BYTES, 64 * MIB))
def test_part_size_fits_any_published_size(size: int, minimum: int) -> None:
    """Any size up to 5 TiB fits in 10,000 whole-MiB parts of 5 MiB to 5 GiB, never below the minimum."""
    part = part_size_for(size, minimum)
    assert part % MIB == 0 and MIN_PART_BYTES <= part <= MAX_PART_BYTES and part >= minimum
    assert -(-size // part) <= MAX_PARTS


@given(minimum=st.integers(MIN_PART_BYTES, MAX_PART_BYTES))
def test_part_sizes_for_an_unknown_size_reach_5_tib(minimum: int) -> None:
    """Without a published size, parts grow so 10,000 of them still hold 5 TiB."""
    sizes = [part_size_at(n, expected_size=None, minimum=minimum) for n in range(1, MAX_PARTS + 1)]
    assert sum(sizes) >= MAX_OBJECT_BYTES
    assert all(
        s % MIB == 0 and MIN_PART_BYTES <= s <= MAX_PART_BYTES and s >= min(minimum, 5 * GIB) for s in sizes
    )
    assert sizes == sorted(sizes)


def test_parse_s3_url() -> None:
    """The bucket and the prefix without slashes; anything else is a configuration error."""
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://my.bucket-1") == ("my.bucket-1", "")
    for bad in ("file:///x", "s3://Bad_Bucket/x", "s3://bucket/a/../b", "s3://bucket/a?x=1", "s3:///x"):
        with pytest.raises(ConfigError):
            parse_s3_url(bad)


async def test_part_body_reads_and_rewinds_like_a_file() -> None:
    """What botocore and aiohttp do with a part's body: size it by seeking to the end, read it for
    the signature, rewind, send it as slices (again after a rewind, for a retry)."""
    data = bytes(range(256)) * 4000
    body = PartBody(memoryview(data))
    assert (body.seek(0, io.SEEK_END), body.tell(), body.seek(0)) == (len(data), len(data), 0)
    assert b"".join(iter(lambda: body.read(1000), b"")) == data
    assert body.read(10) == b"" and body.seek(-10, io.SEEK_END) == len(data) - 10
    assert body.read() == data[-10:]
    for _attempt in range(2):
        body.seek(0)
        slices = [bytes(chunk) async for chunk in body]
        assert b"".join(slices) == data and max(map(len, slices)) == PartBody.SEND_BYTES
    with pytest.raises(ValueError):
        body.seek(-1)


def test_settings_refuse_parts_under_5_mib() -> None:
    """S3 refuses parts under 5 MiB, so the setting does too."""
    with pytest.raises(ConfigError):
        S3Settings(bucket="bucket", part_size_min_bytes=4 * MIB)
    assert S3Settings(bucket="bucket", prefix="/a/b/").prefix == "a/b"


# -- streaming into the store ---------------------------------------------------------------------


async def test_small_asset_is_one_put(sim: Simulator, session: aiohttp.ClientSession, sink: S3Sink) -> None:
    """An asset smaller than a part goes up in one PutObject, labelled with its sha256."""
    job = sim.add_cloudlayer_job(size=300_001, pending_s=0)
    copy = await fetch(session, sim, job, sink)
    head = await assert_stored(sink, job, copy)
    assert "-" not in head["ETag"] and not copy.committed.already_present


@pytest.mark.parametrize("publish_sha256", [True, False], ids=["sha256-published", "sha256-unknown"])
async def test_multipart_asset(
    sim: Simulator, session: aiohttp.ClientSession, sink: S3Sink, publish_sha256: bool
) -> None:
    """A larger asset goes up in parts; labelled at creation when the sha256 is published, else
    staged and copied, with no staged object left behind either way."""
    job = sim.add_cloudlayer_job(size=13 * MIB + 123, pending_s=0)
    fields = published(job) if publish_sha256 else {"expected_size": job.size}
    copy = await fetch(session, sim, job, sink, **fields)
    head = await assert_stored(sink, job, copy)
    if publish_sha256:
        assert head["ETag"].endswith('-3"')  # three 5 MiB parts, completed in place


async def test_large_unlabelled_asset_uses_a_multipart_copy(
    sim: Simulator, session: aiohttp.ClientSession, sink: S3Sink
) -> None:
    """Above the single-copy limit (5 GiB, lowered here) the staged object is copied in parts."""
    sink.bucket.single_copy_max_bytes = 8 * MIB
    job = sim.add_cloudlayer_job(size=12 * MIB + 5, pending_s=0)
    copy = await fetch(session, sim, job, sink)
    head = await assert_stored(sink, job, copy)
    # Uploaded in two 8 MiB parts (size unknown), copied in three 5 MiB parts.
    assert head["ETag"].endswith('-3"')


async def test_write_waits_while_parts_are_in_flight(sink: S3Sink) -> None:
    """write() never returns with max_parts_in_flight part uploads still running (back-pressure),
    and abort() after commit leaves the object alone."""
    upload = await sink.open(KEY, content_type=None, expected_size=40 * MIB, expected_sha256=None)
    data = content_bytes(3, 40 * MIB)
    seen = []
    for start in range(0, len(data), MIB):
        await upload.write(data[start : start + MIB])
        seen.append(upload.parts_in_flight)
    assert max(seen) == sink.settings.max_parts_in_flight - 1
    copy = await upload.commit(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    await upload.abort()  # after commit: does nothing
    assert (await read_back(sink))[0] == data and copy.etag is not None and copy.etag.endswith("-8")


async def test_an_upload_holds_at_most_k_parts_and_copies_none(sink: S3Sink) -> None:
    """Peak memory is K x part size: at most max_parts_in_flight part buffers exist at once, the
    one being filled included, and all K are used; nothing on the way to the store (the body that
    botocore and aiohttp read, the part checksum) copies a part into Python's heap; at commit every
    buffer is gone."""
    data = content_bytes(5, 9 * PART + 123)
    sha256 = hashlib.sha256(data).hexdigest()
    upload = await sink.open(KEY, content_type=None, expected_size=len(data), expected_sha256=None)
    buffers = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, len(data), 256 << 10):  # small writes: their own copies stay small
            await upload.write(data[start : start + (256 << 10)])
            buffers.append(upload.part_buffers)
        await upload.commit(size=len(data), sha256=sha256)
        # The part buffers are memory maps, outside what tracemalloc sees: this is everything else.
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert max(buffers) == sink.settings.max_parts_in_flight
    assert upload.part_buffers == 0
    assert peak < PART
    assert (await read_back(sink))[0] == data


@contextlib.asynccontextmanager
async def first_part_cut(upstream: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A reverse proxy to ``upstream`` that breaks the connection of the first UploadPart of part 2
    after 1 MiB of its body, and forwards everything else. Yields its URL and the cut requests."""
    cut: list[str] = []
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "content-length"}

    async def forward(request: web.Request) -> web.StreamResponse:
        if request.query.get("partNumber") == "2" and not cut:
            cut.append(request.path_qs)
            await request.content.readexactly(MIB)
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop_by_hop}
        async with client.request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=io.BytesIO(await request.read()),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
        ) as resp:
            out = {k: v for k, v in resp.headers.items() if k.lower() not in hop_by_hop}
            return web.Response(status=resp.status, headers=out, body=await resp.read())

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}", cut
        finally:
            await runner.cleanup()


async def test_a_part_cut_off_is_sent_again_whole(s3_server: S3Server, prefix: str) -> None:
    """botocore retries a part whose connection broke mid-body; the part's body starts over, so the
    store gets (and checks) the whole part again and the object is right."""
    data = content_bytes(9, 3 * PART)
    sha256 = hashlib.sha256(data).hexdigest()
    async with first_part_cut(s3_server.endpoint_url) as (url, cut):
        settings = make_settings(s3_server, prefix, endpoint_url=url)
        async with open_s3_sink(settings, session=aws_session(s3_server)) as s3:
            upload = await s3.open(KEY, content_type=None, expected_size=len(data), expected_sha256=sha256)
            for start in range(0, len(data), MIB):
                await upload.write(data[start : start + MIB])
            await upload.commit(size=len(data), sha256=sha256)
            assert (await read_back(s3))[0] == data
    assert len(cut) == 1


async def test_vendor_checksum_mismatch_leaves_nothing(
    sim: Simulator, session: aiohttp.ClientSession, sink: S3Sink
) -> None:
    """Bytes that do not match the published sha256 are never completed: no object, no open upload."""
    job = sim.add_cloudlayer_job(size=12 * MIB, pending_s=0)
    other = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(IntegrityError):
        await fetch(session, sim, job, sink, expected_sha256=other)
    await assert_nothing_left(sink)


async def test_cancellation_aborts_the_upload(
    sim: Simulator, session: aiohttp.ClientSession, sink: S3Sink
) -> None:
    """Cancelling mid-upload aborts the multipart upload; nothing appears under the key."""
    job = sim.add_cloudlayer_job(size=256 * MIB, pending_s=0)
    received = 0
    enough = asyncio.Event()

    def progress(n: int) -> None:
        nonlocal received
        received += n
        if received >= 3 * PART:
            enough.set()

    task = asyncio.create_task(fetch(session, sim, job, sink, on_progress=progress))
    await asyncio.wait_for(enough.wait(), 20)
    assert await open_uploads(sink) != []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_nothing_left(sink)
    assert sink.live_uploads == set()


async def test_upload_restarts_when_the_source_starts_over(
    session: aiohttp.ClientSession, sink: S3Sink
) -> None:
    """A source that answers a resume with the whole file again discards the parts sent so far."""
    body = content_bytes(7, 16 * MIB)
    calls = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        await reader.readuntil(b"\r\n\r\n")
        calls += 1
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nAccept-Ranges: bytes\r\n\r\n"
        writer.write(head.encode() + (body if calls > 1 else body[: 12 * MIB]))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        ref = AssetRef(asset_id="a1", url=f"http://127.0.0.1:{port}/file.bin")
        copy = await fetch_to_sink(session, ref, sink, key_for=lambda _ct: KEY, options=OPTIONS)
    finally:
        server.close()
        await server.wait_closed()
    assert calls == 2 and copy.sha256 == hashlib.sha256(body).hexdigest()
    data, head = await read_back(sink)
    assert data == body and head["Metadata"] == {"sha256": copy.sha256}
    assert await open_uploads(sink) == []


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("publish", [True, False], ids=["checked-at-open", "checked-at-commit"])
async def test_wrong_credentials_are_rejected(
    sim: Simulator, session: aiohttp.ClientSession, make_sink: SinkFactory, publish: bool
) -> None:
    """A wrong secret key fails with StorageRejected, not a retry loop."""
    job = sim.add_cloudlayer_job(size=1000, pending_s=0)
    async with make_sink(secret="not-the-secret") as s3:
        with pytest.raises(StorageRejected) as caught:
            await fetch(session, sim, job, s3, **(published(job) if publish else {}))
    assert caught.value.code in ("access_denied", "invalid_credentials")


async def test_missing_bucket_is_rejected(
    sim: Simulator, session: aiohttp.ClientSession, make_sink: SinkFactory
) -> None:
    """A bucket that does not exist is a StorageRejected with code no_such_bucket."""
    job = sim.add_cloudlayer_job(size=1000, pending_s=0)
    async with make_sink(bucket="no-such-bucket") as s3:
        with pytest.raises(StorageRejected) as caught:
            await fetch(session, sim, job, s3)
    assert caught.value.code == "no_such_bucket"


async def test_store_side_digest_mismatch_is_retryable_and_fast(sink: S3Sink) -> None:
    """A BadDigest (the store got other bytes than we hashed) is not retried by botocore but
    surfaces at once as a retryable StorageInterrupted (this write, not the destination, went
    wrong); nothing is stored."""
    upload = await sink.open(KEY, content_type=None, expected_size=None, expected_sha256=None)
    await upload.write(b"hello")
    started = time.monotonic()
    with pytest.raises(StorageInterrupted) as caught:
        await upload.commit(size=5, sha256=hashlib.sha256(b"HELLO").hexdigest())
    await upload.abort()
    assert caught.value.code == "storage_checksum_mismatch"
    assert time.monotonic() - started < 1.0
    await assert_nothing_left(sink)


# -- idempotency --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [300_000, 11 * MIB], ids=["put", "multipart"])
@pytest.mark.parametrize("publish", [True, False], ids=["known-at-open", "known-at-commit"])
async def test_identical_object_is_not_uploaded_again(
    sim: Simulator,
    session: aiohttp.ClientSession,
    make_sink: SinkFactory,
    s3_server: S3Server,
    size: int,
    publish: bool,
) -> None:
    """An identical object under the key is reported as already present and left untouched."""
    job = sim.add_cloudlayer_job(size=size, pending_s=0)
    async with make_sink(bucket=s3_server.versioned_bucket) as s3:
        first = await fetch(session, sim, job, s3, **published(job))
        assert first.committed.version_id is not None
        before = (await read_back(s3))[1]
        second = await fetch(session, sim, job, s3, **(published(job) if publish else {}))
        after = (await read_back(s3))[1]
        versions = await s3.bucket.client.list_object_versions(
            Bucket=s3.bucket.name, Prefix=s3.object_key(KEY)
        )
        assert second.committed.already_present and not first.committed.already_present
        assert second.committed.version_id == first.committed.version_id == after["VersionId"]
        assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
        assert len(versions.get("Versions", [])) == 1
        assert await open_uploads(s3) == []


@pytest.mark.parametrize("publish", [True, False], ids=["refused-at-open", "refused-at-commit"])
async def test_different_object_is_refused_unless_overwrite(
    sim: Simulator, session: aiohttp.ClientSession, make_sink: SinkFactory, publish: bool
) -> None:
    """A different object under the key is kept (object_exists) unless overwriting is configured."""
    old = sim.add_cloudlayer_job(size=2000, pending_s=0)
    new = sim.add_cloudlayer_job(size=6 * MIB, pending_s=0)
    async with make_sink() as s3:
        await fetch(session, sim, old, s3)
        with pytest.raises(StorageRejected) as caught:
            await fetch(session, sim, new, s3, **(published(new) if publish else {}))
        assert caught.value.code == "object_exists"
        assert (await read_back(s3))[1]["Metadata"] == {"sha256": content_sha256(old.seed, old.size)}
        assert await open_uploads(s3) == []
    async with make_sink(overwrite=True) as s3:
        copy = await fetch(session, sim, new, s3, **(published(new) if publish else {}))
        await assert_stored(s3, new, copy)


# -- janitor --------------------------------------------------------------------------------------


async def test_janitor_aborts_stale_uploads_only(
    sim: Simulator, session: aiohttp.ClientSession, make_sink: SinkFactory, prefix: str
) -> None:
    """Stale uploads and staged objects under the prefix go; this process's live upload, fresh
    uploads and other prefixes stay."""
    # The janitor's clock runs a minute ahead: everything created now is 60 s old to it.
    async with make_sink(wall_clock=lambda: time.time() + 60) as s3:
        client, bucket = s3.bucket.client, s3.bucket.name
        stale = await client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/dead/a.bin")
        elsewhere = await client.create_multipart_upload(Bucket=bucket, Key=f"other-{prefix}/b.bin")
        staged_key = f"{prefix}/{STAGING_DIR}/orphan"
        await client.put_object(Bucket=bucket, Key=staged_key, Body=b"left by a crash")
        live = await s3.open(KEY, content_type=None, expected_size=None, expected_sha256=None)
        # More than one part (8 MiB while the size is unknown): the multipart upload starts.
        await live.write(b"x" * (part_size_for(None, PART) + 1))
        assert len(await open_uploads(s3)) == 2

        assert (await s3.abort_stale_uploads(older_than_s=3600)).aborted_uploads == 0
        report = await s3.abort_stale_uploads(older_than_s=30)
        assert (report.aborted_uploads, report.removed_staged) == (1, 1)
        remaining = [upload_id async for _, upload_id, _ in s3.bucket.list_uploads(f"{prefix}/")]
        assert remaining == list(s3.live_uploads) and len(remaining) == 1
        assert await keys_under(s3) == []
        others = await client.list_multipart_uploads(Bucket=bucket, Prefix=f"other-{prefix}/")
        assert [u["UploadId"] for u in others.get("Uploads", [])] == [elsewhere["UploadId"]]
        assert stale["UploadId"] not in s3.live_uploads

        await live.abort()
        await client.abort_multipart_upload(
            Bucket=bucket, Key=f"other-{prefix}/b.bin", UploadId=elsewhere["UploadId"]
        )
        assert await open_uploads(s3) == []


# -- stores without checksum support ----------------------------------------------------------------


async def test_checksum_headers_refused_by_the_store_fall_back_once(
    sim: Simulator, session: aiohttp.ClientSession, s3_server: S3Server, prefix: str
) -> None:
    """Behind a store that refuses x-amz-checksum-* headers, checksums are dropped after the first
    refusal (logged once) and every upload still lands whole."""
    small = sim.add_cloudlayer_job(size=10_000, pending_s=0)
    large = sim.add_cloudlayer_job(size=11 * MIB, pending_s=0)
    async with checksum_refusing_proxy(s3_server.endpoint_url) as (url, refused):
        settings = make_settings(s3_server, prefix, endpoint_url=url)
        async with open_s3_sink(settings, session=aws_session(s3_server)) as s3:
            with capture_logs() as events:
                big = await fetch(session, sim, large, s3, key="large.bin", **published(large))
                little = await fetch(session, sim, small, s3, key="small.bin")
            data, head = await read_back(s3, "large.bin")
            assert hashlib.sha256(data).hexdigest() == big.sha256 == head["Metadata"]["sha256"]
            data, head = await read_back(s3, "small.bin")
            assert hashlib.sha256(data).hexdigest() == little.sha256 == head["Metadata"]["sha256"]
    assert [e["event"] for e in events if e["event"] == "s3_checksums_unsupported"] == [
        "s3_checksums_unsupported"
    ]
    assert len(refused) == 1  # only the first request carried checksums


async def test_required_checksums_fail_instead_of_falling_back(
    sim: Simulator, session: aiohttp.ClientSession, s3_server: S3Server, prefix: str
) -> None:
    """With checksum_mode="require", a store that refuses checksums fails the upload."""
    job = sim.add_cloudlayer_job(size=10_000, pending_s=0)
    async with checksum_refusing_proxy(s3_server.endpoint_url) as (url, refused):
        settings = make_settings(s3_server, prefix, endpoint_url=url, checksum_mode="require")
        async with open_s3_sink(settings, session=aws_session(s3_server)) as s3:
            with pytest.raises(StorageRejected):
                await fetch(session, sim, job, s3)
            # Still on: nothing was dropped, since no request without checksums was tried.
            assert s3.bucket.checksums and s3.bucket.conditional_writes
    assert refused


async def test_checksums_off_sends_none(
    sim: Simulator, session: aiohttp.ClientSession, s3_server: S3Server, prefix: str
) -> None:
    """With checksum_mode="off" no checksum header is ever sent."""
    job = sim.add_cloudlayer_job(size=11 * MIB, pending_s=0)
    async with checksum_refusing_proxy(s3_server.endpoint_url) as (url, refused):
        settings = make_settings(s3_server, prefix, endpoint_url=url, checksum_mode="off")
        async with open_s3_sink(settings, session=aws_session(s3_server)) as s3:
            copy = await fetch(session, sim, job, s3, **published(job))
            assert (await read_back(s3))[1]["Metadata"] == {"sha256": copy.sha256}
    assert refused == []


async def test_versioned_bucket_records_version_id(s3_server: S3Server) -> None:
    """On a versioned bucket the commit reports the object's version id (for the receipt)."""
    session = aws_session(s3_server)
    bucket = f"versioned-{uuid.uuid4().hex[:8]}"
    async with session.create_client(
        "s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1"
    ) as client:
        await client.create_bucket(Bucket=bucket)
        await client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        settings = S3Settings(
            bucket=bucket,
            prefix="p",
            endpoint_url=s3_server.endpoint_url,
            region="us-east-1",
            path_style=True,
        )
        async with open_s3_sink(settings, session=session) as sink:
            upload = await sink.open(
                KEY, content_type="application/pdf", expected_size=3, expected_sha256=None
            )
            await upload.write(b"abc")
            committed = await upload.commit(size=3, sha256=hashlib.sha256(b"abc").hexdigest())
        head = await client.head_object(Bucket=bucket, Key=f"p/{KEY}")
    assert committed.version_id is not None and committed.version_id == head.get("VersionId")
    assert committed.etag
