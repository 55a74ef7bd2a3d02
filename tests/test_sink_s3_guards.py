"""Guards of the S3 sink against data loss, against a real S3-compatible server (SeaweedFS).

Where a test needs the store to misbehave (refuse a part, lose a race, refuse a header), a loopback
proxy in front of the real server answers for it (``s3_proxy``); everything else the real server
does. The proxy also records every request, so a test can say what went over the wire.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import aiohttp
import botocore.exceptions
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.s3server import S3Server
from tests.test_sink_s3 import KEY, PART, aws_session, fetch, make_settings, published, read_back
from worker.errors import (
    ConfigError,
    StorageError,
    StorageInterrupted,
    StorageRejected,
    StorageUnavailable,
)
from worker.simulator.app import Simulator
from worker.sinks.base import Committed
from worker.sinks.s3_bucket import (
    RETRY_ATTEMPTS,
    USER_AGENT_EXTRA,
    ObjectInfo,
    PartBody,
    hex_to_b64,
    sha256_b64,
)
from worker.sinks.s3_errors import error_code, http_status, is_feature_rejection, is_not_found, translate
from worker.sinks.s3_parts import (
    GIB,
    MAX_PART_BYTES,
    MIB,
    copy_ranges,
    part_size_at,
    part_size_for,
    round_up_mib,
)
from worker.sinks.s3_sink import STAGING_DIR, S3Sink, open_s3_sink
from worker.sinks.s3_upload import S3Upload, identical

# -- a recording, fault-injecting proxy in front of the real server -----------------------------


@dataclass(frozen=True)
class Seen:
    """One request that reached the proxy (bodies over 1 MiB are kept as their size and digest)."""

    method: str
    key: str  # the object key, without the bucket
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    size: int
    sha256: str
    body: bytes

    @property
    def operation(self) -> str:
        copy = "x-amz-copy-source" in self.headers
        if "uploadId" in self.query:
            if "partNumber" in self.query:
                return "UploadPartCopy" if copy else "UploadPart"
            return {"POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(
                self.method, "ListParts"
            )
        if "uploads" in self.query:
            return "CreateMultipartUpload" if self.method == "POST" else "ListMultipartUploads"
        if self.method == "PUT":
            return "CopyObject" if copy else "PutObject"
        if self.method == "GET":
            return "ListObjectsV2" if "list-type" in self.query else "GetObject"
        return {"HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(self.method, self.method)

    @property
    def part(self) -> int | None:
        return int(self.query["partNumber"]) if "partNumber" in self.query else None


# A rule sees each request first: a response to answer instead of the server, or None to forward.
Rule = Callable[[Seen], Awaitable[web.StreamResponse | None]]
# What a rule returns to break the connection instead of answering.
RESET = web.Response(status=599)

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)


# A rewrite sees each request that is forwarded and returns the body the server gets instead.
Rewrite = Callable[[Seen, bytes], bytes]


@dataclass
class Proxy:
    url: str
    seen: list[Seen] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)

    def ops(self, operation: str) -> list[Seen]:
        return [s for s in self.seen if s.operation == operation]


def s3_error(status: int, code: str, method: str = "PUT") -> web.Response:
    """The answer a store gives for ``code`` (HEAD answers carry no body, only the status)."""
    if method == "HEAD":
        return web.Response(status=status)
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{code}</Message></Error>'
    )
    return web.Response(status=status, text=xml, content_type="application/xml")


def refuse(
    operation: str, status: int, code: str, *, part: int | None = None, key_contains: str = ""
) -> Rule:
    """A rule answering ``status``/``code`` to every request of ``operation`` (of part ``part``)."""

    async def rule(seen: Seen) -> web.StreamResponse | None:
        if seen.operation == operation and part in (None, seen.part) and key_contains in seen.key:
            return s3_error(status, code, seen.method)
        return None

    return rule


@contextlib.asynccontextmanager
async def s3_proxy(upstream: str, *rules: Rule) -> AsyncIterator[Proxy]:
    """A reverse proxy to ``upstream`` that records every request, lets ``rules`` answer first and
    ``Proxy.rewrites`` change the body of what it forwards.

    The Host header is passed through unchanged, so SigV4 signatures made for the proxy's address
    still verify upstream.
    """
    client = aiohttp.ClientSession(auto_decompress=False)
    proxy = Proxy(url="", rules=list(rules))

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()  # the whole body first: a refusal mid-body would be a reset
        bucket_and_key = unquote(request.path).lstrip("/")
        seen = Seen(
            method=request.method,
            key=bucket_and_key.partition("/")[2],
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            body=body if len(body) <= MIB else b"",
        )
        proxy.seen.append(seen)
        for rule in proxy.rules:
            answer = await rule(seen)
            if answer is RESET:
                assert request.transport is not None
                request.transport.abort()
            if answer is not None:
                return answer
        for rewrite in proxy.rewrites:
            body = rewrite(seen, body)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with client.request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=io.BytesIO(body),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
        ) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
            if request.method == "HEAD":
                response = web.Response(status=resp.status, headers=out)
                response.headers["Content-Length"] = resp.headers.get("Content-Length", "0")
                return response
            return web.Response(status=resp.status, headers=out, body=payload)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield proxy
    finally:
        await runner.cleanup()
        await client.close()


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"g/{uuid.uuid4().hex[:12]}"


class SinkFactory:
    """``make_sink(proxy=None, wall_clock=time.time, **settings)``: a sink under this test's prefix,
    talking to the server directly or through ``proxy``."""

    def __init__(self, server: S3Server, prefix: str) -> None:
        self.server = server
        self.prefix = prefix

    def __call__(
        self, *, proxy: Proxy | None = None, wall_clock: Callable[[], float] = time.time, **changes: Any
    ) -> contextlib.AbstractAsyncContextManager[S3Sink]:
        if proxy is not None:
            changes["endpoint_url"] = proxy.url
        settings = make_settings(self.server, self.prefix, **changes)
        return open_s3_sink(settings, session=aws_session(self.server), wall_clock=wall_clock)


@pytest.fixture
def make_sink(s3_server: S3Server, prefix: str) -> SinkFactory:
    return SinkFactory(s3_server, prefix)


def data_of(size: int, seed: int = 1) -> bytes:
    """``size`` bytes that differ from those of another seed at every 32-byte block."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def open_for(
    sink: S3Sink, data: bytes, *, label: bool, key: str = KEY, content_type: str | None = None
) -> S3Upload:
    """Open an upload of ``data`` with its size published, and its sha256 too when ``label``."""
    return await sink.open(
        key, content_type=content_type, expected_size=len(data), expected_sha256=sha(data) if label else None
    )


async def send(upload: S3Upload, data: bytes, *, sha256: str | None = None) -> Committed:
    """What the transfer does: the bytes in 1 MiB writes, commit, and abort if anything failed."""
    try:
        for start in range(0, len(data), MIB):
            await upload.write(data[start : start + MIB])
        return await upload.commit(size=len(data), sha256=sha256 or sha(data))
    except BaseException:
        await upload.abort()
        raise


async def upload_bytes(sink: S3Sink, data: bytes, *, label: bool, key: str = KEY) -> Committed:
    return await send(await open_for(sink, data, label=label, key=key), data)


async def stored(sink: S3Sink, key: str = KEY) -> tuple[bytes, dict[str, str]]:
    data, head = await read_back(sink, key)
    return data, head["Metadata"]


async def everything_under(sink: S3Sink) -> tuple[list[str], list[str]]:
    """Every object and every open multipart upload under the sink's prefix (staged ones too)."""
    root = f"{sink.settings.prefix}/" if sink.settings.prefix else ""
    objects = sorted([k async for k, _ in sink.bucket.list_objects(root)])
    uploads = sorted([k async for k, _, _ in sink.bucket.list_uploads(root)])
    return objects, uploads


async def assert_nothing_left(sink: S3Sink) -> None:
    assert await everything_under(sink) == ([], [])
    assert sink.live_uploads == set() and sink.live_staged == set()


async def raw_put(sink: S3Sink, data: bytes, *, key: str = KEY, sha256: str | None = None) -> None:
    """An object put there by someone else (another replica, a person), bypassing the sink."""
    extra: dict[str, Any] = {"Metadata": {"sha256": sha256}} if sha256 is not None else {}
    await sink.bucket.client.put_object(Bucket=sink.bucket.name, Key=sink.object_key(key), Body=data, **extra)


def staged(seen: Seen) -> bool:
    return f"/{STAGING_DIR}/" in f"/{seen.key}"


# -- "identical" means same bytes, never same size ------------------------------------------------


def info(size: int, sha256: str | None) -> ObjectInfo:
    return ObjectInfo(size=size, sha256=sha256, etag="e", version_id=None, last_modified=None)


def test_identical_needs_the_same_size_and_the_same_sha256() -> None:
    """An object is the asset only if both its size and its sha256 label match (hex in any case);
    an unlabelled object of the right size is not known to be the asset."""
    digest = sha(b"asset")
    assert identical(info(5, digest), 5, digest)
    assert identical(info(5, digest.upper()), 5, digest)
    assert identical(info(5, digest), 5, digest.upper())
    assert not identical(info(5, sha(b"other")), 5, digest)
    assert not identical(info(5, None), 5, digest)
    assert not identical(info(6, digest), 5, digest)


@pytest.mark.parametrize("size", [300_000, 6 * MIB], ids=["put", "multipart"])
@pytest.mark.parametrize("publish", [True, False], ids=["refused-at-open", "refused-at-commit"])
async def test_a_different_object_of_the_same_size_is_never_taken_for_the_asset(
    sim: Simulator,
    session: aiohttp.ClientSession,
    make_sink: SinkFactory,
    size: int,
    publish: bool,
) -> None:
    """Another asset of exactly the same size already under the key is refused (object_exists) and
    kept; it is not reported as this asset already present."""
    old = sim.add_cloudlayer_job(size=size, pending_s=0)
    new = sim.add_cloudlayer_job(size=size, pending_s=0)
    async with make_sink() as s3:
        first = await fetch(session, sim, old, s3, **published(old))
        with pytest.raises(StorageRejected) as caught:
            await fetch(session, sim, new, s3, **(published(new) if publish else {"expected_size": size}))
        assert (caught.value.code, caught.value.key) == ("object_exists", KEY)
        data, metadata = await stored(s3)
        assert sha(data) == first.sha256 == metadata["sha256"] != published(new)["expected_sha256"]
        assert await everything_under(s3) == ([s3.object_key(KEY)], [])


@pytest.mark.parametrize("publish", [True, False], ids=["refused-at-open", "refused-at-commit"])
async def test_an_unlabelled_object_of_the_same_size_is_refused(
    make_sink: SinkFactory, publish: bool
) -> None:
    """An object without a sha256 label (not written by the worker) is never assumed identical."""
    data = data_of(4000)
    async with make_sink() as s3:
        await raw_put(s3, data)
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, data, label=publish)
        assert (caught.value.code, caught.value.key) == ("object_exists", KEY)
        assert await stored(s3) == (data, {})


@pytest.mark.parametrize("size", [300_000, 6 * MIB], ids=["put", "multipart"])
@pytest.mark.parametrize("publish", [True, False], ids=["labelled-at-open", "labelled-at-commit"])
async def test_overwrite_replaces_a_same_size_object_and_the_receipt_describes_the_bucket(
    sim: Simulator,
    session: aiohttp.ClientSession,
    make_sink: SinkFactory,
    size: int,
    publish: bool,
) -> None:
    """With overwrite on, a different object of the same size is replaced, and the receipt's sha256
    (and etag) describe the bytes now in the bucket."""
    old = sim.add_cloudlayer_job(size=size, pending_s=0)
    new = sim.add_cloudlayer_job(size=size, pending_s=0)
    async with make_sink(overwrite=True) as s3:
        await fetch(session, sim, old, s3, **published(old))
        copy = await fetch(session, sim, new, s3, **(published(new) if publish else {"expected_size": size}))
        data, head = await read_back(s3)
        assert not copy.committed.already_present
        assert sha(data) == copy.sha256 == head["Metadata"]["sha256"] == published(new)["expected_sha256"]
        assert copy.committed.etag == head["ETag"].strip('"')
        assert await everything_under(s3) == ([s3.object_key(KEY)], [])


async def test_an_identical_object_found_at_open_is_not_uploaded_again(make_sink: SinkFactory) -> None:
    """Found at open: the bytes are still taken (and counted) but none is sent to the store."""
    data = data_of(7 * MIB, seed=3)
    async with s3_proxy_for(make_sink) as (proxy, s3):
        first = await upload_bytes(s3, data, label=True)
        proxy.seen.clear()
        again = await upload_bytes(s3, data, label=True)
    assert again.already_present and (again.etag, again.uri) == (first.etag, first.uri)
    assert {s.operation for s in proxy.seen} == {"HeadObject"}


async def test_an_identical_object_gone_before_commit_is_not_reported_present(make_sink: SinkFactory) -> None:
    """If the identical object found at open disappears before commit, the commit fails for a retry
    (object_changed) instead of recording an object that is not there."""
    data = data_of(3000, seed=4)
    async with make_sink() as s3:
        await upload_bytes(s3, data, label=True)
        upload = await open_for(s3, data, label=True)
        await s3.bucket.client.delete_object(Bucket=s3.bucket.name, Key=s3.object_key(KEY))
        with pytest.raises(StorageInterrupted) as caught:
            await send(upload, data)
        assert (caught.value.code, caught.value.key) == ("object_changed", KEY)
        await assert_nothing_left(s3)


@contextlib.asynccontextmanager
async def s3_proxy_for(
    make_sink: SinkFactory, *rules: Rule, **settings: Any
) -> AsyncIterator[tuple[Proxy, S3Sink]]:
    """A proxy to the test server with ``rules``, and a sink talking through it."""
    async with (
        s3_proxy(make_sink.server.endpoint_url, *rules) as proxy,
        make_sink(proxy=proxy, **settings) as s3,
    ):
        yield proxy, s3


# -- a conditional write that lost a race -------------------------------------------------------


def racer(make_racing_object: Callable[[], Awaitable[None]], operation: str) -> Rule:
    """A rule that lets another writer publish under the final key just before our ``operation``
    on it reaches the store (which then answers 412 to our If-None-Match)."""
    done = False

    async def rule(seen: Seen) -> web.StreamResponse | None:
        nonlocal done
        if seen.operation == operation and not staged(seen) and not done:
            done = True
            await make_racing_object()
        return None

    return rule


RACES = [
    pytest.param(3000, False, "PutObject", id="put"),
    pytest.param(11 * MIB, True, "CompleteMultipartUpload", id="complete"),
    pytest.param(11 * MIB, False, "CopyObject", id="copy"),
]


@pytest.mark.parametrize(("size", "label", "operation"), RACES)
async def test_a_race_lost_to_the_same_bytes_is_already_present(
    make_sink: SinkFactory, size: int, label: bool, operation: str
) -> None:
    """Another replica published the same asset between our check and our write: If-None-Match
    refuses ours, and the asset is reported present (their object, untouched); nothing is left."""
    data = data_of(size, seed=5)
    holder: list[S3Sink] = []

    async def same() -> None:
        await raw_put(holder[0], data, sha256=sha(data))

    async with s3_proxy_for(make_sink, racer(same, operation)) as (_proxy, s3):
        holder.append(s3)
        committed = await upload_bytes(s3, data, label=label)
        head = await s3.bucket.client.head_object(Bucket=s3.bucket.name, Key=s3.object_key(KEY))
        assert committed.already_present and committed.etag == head["ETag"].strip('"')
        assert await stored(s3) == (data, {"sha256": sha(data)})
        await assert_nothing_left_but_the_object(s3)


@pytest.mark.parametrize(("size", "label", "operation"), RACES)
async def test_a_race_lost_to_other_bytes_is_refused(
    make_sink: SinkFactory, size: int, label: bool, operation: str
) -> None:
    """Another writer published different bytes of the same size in between: our write is refused
    (object_exists), theirs is kept, and our upload leaves nothing behind."""
    data = data_of(size, seed=6)
    theirs = data_of(size, seed=7)
    holder: list[S3Sink] = []

    async def other() -> None:
        await raw_put(holder[0], theirs, sha256=sha(theirs))

    async with s3_proxy_for(make_sink, racer(other, operation)) as (_proxy, s3):
        holder.append(s3)
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, data, label=label)
        assert (caught.value.code, caught.value.key) == ("object_exists", KEY)
        assert await stored(s3) == (theirs, {"sha256": sha(theirs)})
        await assert_nothing_left_but_the_object(s3)


async def assert_nothing_left_but_the_object(sink: S3Sink) -> None:
    assert await everything_under(sink) == ([sink.object_key(KEY)], [])
    assert sink.live_uploads == set() and sink.live_staged == set()


# -- a single PUT asks no HEAD first where If-None-Match is enforced -------------------------------


def probes(proxy: Proxy) -> list[tuple[str, int, str | None]]:
    """The probe's requests (under the staging prefix): operation, body size, If-None-Match."""
    return [(s.operation, s.size, s.headers.get("if-none-match")) for s in proxy.seen if staged(s)]


async def test_a_store_enforcing_if_none_match_is_probed_once_and_then_asked_no_head(
    make_sink: SinkFactory,
) -> None:
    """Probed once per bucket (an empty staging object written twice, the second write refused,
    then deleted), a store that enforces If-None-Match gets each single PUT without a HEAD first;
    nothing of the probe is left."""
    files = {f"{n}.bin": data_of(2000 + n, seed=40 + n) for n in range(3)}
    async with s3_proxy_for(make_sink) as (proxy, s3):
        for key, data in files.items():
            await upload_bytes(s3, data, key=key, label=False)
        for key, data in files.items():
            assert await stored(s3, key) == (data, {"sha256": sha(data)})
        assert await everything_under(s3) == (sorted(s3.object_key(key) for key in files), [])
    assert probes(proxy) == [("PutObject", 0, "*"), ("PutObject", 0, "*"), ("DeleteObject", 0, None)]
    assert len({s.key for s in proxy.seen if staged(s)}) == 1
    assert proxy.ops("HeadObject") == []
    puts = [s for s in proxy.ops("PutObject") if not staged(s)]
    assert [(s.key, s.headers["if-none-match"]) for s in puts] == [(s3.object_key(k), "*") for k in files]


async def test_an_object_under_the_key_is_refused_by_the_put_itself_when_no_head_asked(
    make_sink: SinkFactory,
) -> None:
    """No HEAD first: an object already under the key is found by the refused write (412), then
    looked at; different bytes are refused (object_exists) and kept, the same bytes count as
    present."""
    theirs, same = data_of(3000, seed=50), data_of(3100, seed=51)
    async with s3_proxy_for(make_sink) as (proxy, s3):
        await raw_put(s3, theirs)
        await raw_put(s3, same, key="same.bin", sha256=sha(same))
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, data_of(3000, seed=52), label=False)
        assert (caught.value.code, caught.value.key) == ("object_exists", KEY)
        assert "overwrite is off" in str(caught.value)
        present = await upload_bytes(s3, same, key="same.bin", label=False)
        ours = [s.operation for s in proxy.seen if not staged(s)][2:]  # after the two raw puts
        assert present.already_present
        assert await stored(s3) == (theirs, {})
    assert ours == ["PutObject", "HeadObject", "PutObject", "HeadObject"]  # each write refused, then a HEAD


async def test_a_store_ignoring_if_none_match_is_asked_with_a_head_before_each_put(
    make_sink: SinkFactory,
) -> None:
    """A store that takes a second conditional write over an object (it ignores If-None-Match) is
    found out by the probe, which says so; every single PUT is then preceded by a HEAD, so an
    object already under the key is refused, never overwritten."""

    async def ignore_if_none_match(seen: Seen) -> web.StreamResponse | None:
        if seen.operation == "PutObject" and staged(seen):
            return web.Response(status=200, headers={"ETag": '"d41d8cd98f00b204e9800998ecf8427e"'})
        return None

    theirs = data_of(3000, seed=45)
    async with s3_proxy_for(make_sink, ignore_if_none_match) as (proxy, s3):
        await raw_put(s3, theirs)
        proxy.seen.clear()
        with capture_logs() as events:
            with pytest.raises(StorageRejected) as caught:
                await upload_bytes(s3, data_of(3000, seed=46), label=False)
            await upload_bytes(s3, data_of(100, seed=47), key="free.bin", label=False)
        ours = [s.operation for s in proxy.seen if not staged(s)]
        assert caught.value.code == "object_exists"
        assert await stored(s3) == (theirs, {})
    assert [e["event"] for e in events if "conditional" in e["event"]] == ["s3_conditional_writes_ignored"]
    assert ours == ["HeadObject", "HeadObject", "PutObject"]


async def test_if_none_match_refused_beside_a_checksum_falls_back_to_a_head(make_sink: SinkFactory) -> None:
    """A store that took If-None-Match alone (the probe) but refuses it beside a required checksum:
    the write goes again the way a store without If-None-Match gets it, after a HEAD, and every
    later write asks with a HEAD first."""

    async def refuse_both(seen: Seen) -> web.StreamResponse | None:
        headers = seen.headers
        if seen.operation == "PutObject" and {"if-none-match", "x-amz-checksum-sha256"} <= headers.keys():
            return s3_error(501, "NotImplemented")
        return None

    first, second = data_of(2500, seed=48), data_of(2600, seed=49)
    async with s3_proxy_for(make_sink, refuse_both, checksum_mode="require") as (proxy, s3):
        await upload_bytes(s3, first, key="a.bin", label=False)
        await upload_bytes(s3, second, key="b.bin", label=False)
        assert await stored(s3, "a.bin") == (first, {"sha256": sha(first)})
        assert await stored(s3, "b.bin") == (second, {"sha256": sha(second)})
        assert s3.bucket.checksums and not s3.bucket.conditional_writes
    ops = [(s.operation, s.key.rsplit("/", 1)[-1], "if-none-match" in s.headers) for s in proxy.seen]
    assert [op for op, s in zip(ops, proxy.seen, strict=True) if not staged(s)][:6] == [
        ("PutObject", "a.bin", True),  # refused: the checksum and If-None-Match together
        ("HeadObject", "a.bin", False),
        ("PutObject", "a.bin", True),  # refused again, as any store without If-None-Match
        ("PutObject", "a.bin", False),
        ("HeadObject", "b.bin", False),
        ("PutObject", "b.bin", False),
    ]


async def test_a_probe_that_cannot_reach_the_store_is_tried_again_later(make_sink: SinkFactory) -> None:
    """The probe answered 503 (every retry): commits ask with a HEAD, without probing again, until
    ``probe_retry_s`` has passed; then one probes again rather than taking the failure for an
    answer."""
    unavailable = RETRY_ATTEMPTS

    async def busy(seen: Seen) -> web.StreamResponse | None:
        nonlocal unavailable
        if seen.operation == "PutObject" and staged(seen) and unavailable:
            unavailable -= 1
            return s3_error(503, "SlowDown")
        return None

    async with s3_proxy_for(make_sink, busy) as (proxy, s3):
        await asyncio.gather(
            *(upload_bytes(s3, data_of(1000 + n, seed=53 + n), key=f"{n}.bin", label=False) for n in range(3))
        )
        assert probes(proxy) == [("PutObject", 0, "*")] * RETRY_ATTEMPTS  # one probe for the three
        s3.bucket.probe_retry_s = 0.0
        await upload_bytes(s3, data_of(1200, seed=56), key="3.bin", label=False)
        await upload_bytes(s3, data_of(1300, seed=57), key="4.bin", label=False)
    assert sorted(s.key.rsplit("/", 1)[-1] for s in proxy.ops("HeadObject")) == ["0.bin", "1.bin", "2.bin"]
    assert probes(proxy) == [
        *[("PutObject", 0, "*")] * RETRY_ATTEMPTS,
        ("PutObject", 0, "*"),
        ("PutObject", 0, "*"),
        ("DeleteObject", 0, None),
    ]


# -- a part that fails for good is never completed ------------------------------------------------


@pytest.mark.parametrize("label", [True, False], ids=["labelled", "staged"])
@pytest.mark.parametrize("part", [1, 2, 3], ids=["part-1", "part-2", "last-part"])
async def test_a_part_refused_for_good_is_never_completed(
    make_sink: SinkFactory, label: bool, part: int
) -> None:
    """A part the store refuses fails the upload: no CompleteMultipartUpload is sent (S3 would
    publish the object without that part), the upload is aborted and nothing is left; the error
    says which part failed."""
    size = 3 * PART - 1000  # three parts (the size is published: 5 MiB parts)
    data = data_of(size, seed=8)
    rule = refuse("UploadPart", 403, "AccessDenied", part=part)
    async with s3_proxy_for(make_sink, rule) as (proxy, s3):
        upload = await open_for(s3, data, label=label)
        with pytest.raises(StorageRejected) as caught:
            await send(upload, data)
        assert caught.value.code == "access_denied"
        assert f"UploadPart {part} " in str(caught.value) and KEY in str(caught.value)
        assert proxy.ops("CompleteMultipartUpload") == [] and len(proxy.ops("AbortMultipartUpload")) == 1
        await assert_nothing_left(s3)


async def test_a_part_failure_is_raised_again_by_every_later_call(make_sink: SinkFactory) -> None:
    """Once a part failed, later writes and the commit raise it again instead of carrying on with
    the parts that did arrive."""
    data = data_of(4 * PART, seed=9)
    rule = refuse("UploadPart", 403, "AccessDenied", part=1)
    async with s3_proxy_for(make_sink, rule, max_parts_in_flight=4) as (proxy, s3):
        upload = await open_for(s3, data, label=True)
        errors: list[StorageError] = []
        for start in range(0, len(data), MIB):
            try:
                await upload.write(data[start : start + MIB])
            except StorageRejected as exc:
                errors.append(exc)
            await asyncio.sleep(0.01)  # let the part requests finish
        with pytest.raises(StorageRejected) as caught:
            await upload.commit(size=len(data), sha256=sha(data))
        await upload.abort()
        assert errors and all(e is caught.value for e in errors) and "UploadPart 1 " in str(caught.value)
        assert proxy.ops("CompleteMultipartUpload") == []
        await assert_nothing_left(s3)


async def test_a_part_failing_on_every_attempt_makes_the_destination_unavailable(
    make_sink: SinkFactory,
) -> None:
    """A part the store keeps failing with 500 is tried RETRY_ATTEMPTS times (botocore's standard
    retries), then the destination counts as unavailable; nothing is completed."""
    data = data_of(2 * PART + 10, seed=10)
    rule = refuse("UploadPart", 500, "InternalError", part=2)
    async with s3_proxy_for(make_sink, rule) as (proxy, s3):
        with pytest.raises(StorageUnavailable) as caught:
            await upload_bytes(s3, data, label=True)
        assert caught.value.code == "storage_unavailable"
        assert len([s for s in proxy.ops("UploadPart") if s.part == 2]) == RETRY_ATTEMPTS == 3
        assert proxy.ops("CompleteMultipartUpload") == []
        await assert_nothing_left(s3)


async def test_a_part_upload_cancelled_midway_is_never_left_out(make_sink: SinkFactory) -> None:
    """A part whose request was cancelled (not by abort: by anything else) fails the upload like
    a refused part: the object is not completed without it, and nothing is left."""
    data = data_of(3 * PART - 10, seed=38)
    hold = asyncio.Event()

    async def hold_part_1(seen: Seen) -> web.StreamResponse | None:
        if seen.operation == "UploadPart" and seen.part == 1:
            await hold.wait()
        return None

    async with s3_proxy_for(make_sink, hold_part_1) as (proxy, s3):
        upload = await open_for(s3, data, label=True)
        before = asyncio.all_tasks()
        await upload.write(data[: PART + 1])
        (part_task,) = asyncio.all_tasks() - before  # the one task sending part 1
        part_task.cancel()
        hold.set()
        with pytest.raises(StorageInterrupted) as caught:
            try:
                for start in range(PART + 1, len(data), MIB):
                    await upload.write(data[start : start + MIB])
                await upload.commit(size=len(data), sha256=sha(data))
            finally:
                await upload.abort()
        assert caught.value.key == KEY and "cancelled" in str(caught.value)
        assert proxy.ops("CompleteMultipartUpload") == []
        await assert_nothing_left(s3)


async def test_a_slow_part_does_not_hold_up_the_others(make_sink: SinkFactory) -> None:
    """While one part is slow, later parts keep going (up to max_parts_in_flight at once): a write
    waits for any part in flight to finish, not for all of them."""
    data = data_of(5 * PART - 10, seed=37)
    later_part_arrived = asyncio.Event()

    async def slow_first_part(seen: Seen) -> web.StreamResponse | None:
        if seen.operation == "UploadPart" and seen.part == 4:
            later_part_arrived.set()
        if seen.operation == "UploadPart" and seen.part == 1:
            # Held until part 4 arrives; a bounded wait, so a stalled upload fails the test.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(later_part_arrived.wait(), 10)
            if not later_part_arrived.is_set():
                return s3_error(403, "AccessDenied")
        return None

    async with s3_proxy_for(make_sink, slow_first_part, max_parts_in_flight=3) as (_proxy, s3):
        await upload_bytes(s3, data, label=True)
        assert await stored(s3) == (data, {"sha256": sha(data)})


# -- abort removes every trace ------------------------------------------------------------------


async def test_a_failed_copy_leaves_no_staged_object(make_sink: SinkFactory) -> None:
    """The staged object of an upload whose copy to the final key failed is deleted by abort."""
    data = data_of(11 * MIB, seed=11)
    async with s3_proxy_for(make_sink, refuse("CopyObject", 403, "AccessDenied")) as (proxy, s3):
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, data, label=False)
        assert caught.value.code == "access_denied" and "S3 CopyObject " in str(caught.value)
        (deleted,) = proxy.ops("DeleteObject")
        assert staged(deleted)
        await assert_nothing_left(s3)


async def test_a_failed_part_copy_aborts_the_copy(make_sink: SinkFactory) -> None:
    """A multipart copy whose part fails is aborted (no half-copied upload at the final key), and
    the staged object is deleted."""
    data = data_of(12 * MIB + 5, seed=12)
    rule = refuse("UploadPartCopy", 403, "AccessDenied", part=2)
    async with s3_proxy_for(make_sink, rule) as (proxy, s3):
        s3.bucket.single_copy_max_bytes = 8 * MIB
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, data, label=False)
        assert "S3 UploadPartCopy 2 " in str(caught.value)
        aborted = {s.key for s in proxy.ops("AbortMultipartUpload")}
        assert aborted == {s3.object_key(KEY)}
        assert [staged(c) for c in proxy.ops("CompleteMultipartUpload")] == [True]
        await assert_nothing_left(s3)


async def test_a_multipart_copy_refused_at_creation_fails_cleanly(make_sink: SinkFactory) -> None:
    """A multipart copy the store refuses to start fails with the call named; the staged object
    is deleted."""
    data = data_of(12 * MIB + 5, seed=13)

    async def refuse_final_create(seen: Seen) -> web.StreamResponse | None:
        if seen.operation == "CreateMultipartUpload" and not staged(seen):
            return s3_error(403, "AccessDenied")
        return None

    async with s3_proxy_for(make_sink, refuse_final_create) as (_proxy, s3):
        s3.bucket.single_copy_max_bytes = 8 * MIB
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, data, label=False)
        assert "S3 CreateMultipartUpload (copy) " in str(caught.value) and KEY in str(caught.value)
        await assert_nothing_left(s3)


async def test_cleanup_failures_are_logged_not_raised(make_sink: SinkFactory) -> None:
    """When the abort or the staged delete fails too, the original error is what the caller sees;
    the leftovers are logged (the janitor removes them later)."""
    data = data_of(11 * MIB, seed=14)
    rules = (
        refuse("UploadPart", 403, "AccessDenied", part=2, key_contains=KEY),
        refuse("AbortMultipartUpload", 403, "AccessDenied"),
        refuse("CopyObject", 403, "AccessDenied"),
        refuse("DeleteObject", 403, "AccessDenied"),
    )
    async with s3_proxy_for(make_sink, *rules) as (proxy, s3):
        with capture_logs() as events, pytest.raises(StorageRejected) as part_failure:
            await upload_bytes(s3, data, label=True)
        assert "UploadPart 2 " in str(part_failure.value)
        assert [e["event"] for e in events if e["event"].startswith("s3_")] == ["s3_abort_failed"]
        with capture_logs() as events, pytest.raises(StorageRejected) as copy_failure:
            await upload_bytes(s3, data, key="b.bin", label=False)
        assert "CopyObject " in str(copy_failure.value)
        assert [e["event"] for e in events if e["event"].startswith("s3_")] == ["s3_delete_failed"]
        objects, uploads = await everything_under(s3)
        assert uploads == [s3.object_key(KEY)] and len(objects) == 1 and STAGING_DIR in objects[0]
        assert s3.live_uploads == set() and s3.live_staged == set()
        proxy.rules.clear()  # the store takes deletions again: the janitor removes both
        report = await s3.abort_stale_uploads(older_than_s=-3600)
        assert (report.aborted_uploads, report.removed_staged) == (1, 1)
        await assert_nothing_left(s3)


async def test_an_upload_aborted_midway_leaves_nothing(make_sink: SinkFactory) -> None:
    """abort() after some parts went up (the transfer failed) aborts the multipart upload; abort()
    again and commit() after it change nothing."""
    data = data_of(3 * PART, seed=15)
    async with make_sink() as s3:
        upload = await open_for(s3, data, label=False)
        for start in range(0, 2 * PART + MIB, MIB):
            await upload.write(data[start : start + MIB])
        assert (await everything_under(s3))[1] != [] and len(s3.live_uploads) == 1
        await upload.abort()
        await upload.abort()
        with pytest.raises(RuntimeError, match="already aborted"):
            await upload.commit(size=len(data), sha256=sha(data))
        with pytest.raises(RuntimeError, match="already aborted"):
            await upload.write(b"more")
        await assert_nothing_left(s3)


async def test_restart_throws_away_the_parts_sent_so_far(make_sink: SinkFactory) -> None:
    """restart() (the source started over) aborts the upload so far; the object is made of the
    bytes written after it only, in parts numbered from 1 again."""
    first = data_of(3 * PART, seed=16)
    data = data_of(2 * PART + 7, seed=17)
    async with s3_proxy_for(make_sink) as (proxy, s3):
        upload = await open_for(s3, data, label=True)
        for start in range(0, 2 * PART + MIB, MIB):
            await upload.write(first[start : start + MIB])
        await upload.restart()
        assert len(proxy.ops("AbortMultipartUpload")) == 1 and s3.live_uploads == set()
        proxy.seen.clear()
        committed = await send(upload, data)
        assert await stored(s3) == (data, {"sha256": sha(data)})
        assert sorted(s.part or 0 for s in proxy.ops("UploadPart")) == [1, 2, 3]
        assert committed.etag is not None and committed.etag.endswith("-3")
        assert await everything_under(s3) == ([s3.object_key(KEY)], [])


@pytest.mark.parametrize("again", [False, True], ids=["written", "already-present"])
async def test_a_committed_upload_is_final(make_sink: SinkFactory, again: bool) -> None:
    """After commit (a new object or one already present) the upload takes no more bytes, and
    abort() leaves the object alone."""
    data = data_of(2 * PART + 1, seed=19)
    async with make_sink() as s3:
        if again:
            await upload_bytes(s3, data, label=True)
        upload = await open_for(s3, data, label=True)
        committed = await send(upload, data)
        assert committed.already_present is again
        with pytest.raises(RuntimeError, match="already committed"):
            await upload.write(b"more")
        await upload.abort()
        with pytest.raises(RuntimeError, match="already committed"):  # still, after the abort
            await upload.commit(size=len(data), sha256=sha(data))
        assert await stored(s3) == (data, {"sha256": sha(data)})
        await assert_nothing_left_but_the_object(s3)


async def test_an_object_needing_more_parts_than_s3_allows_is_refused(make_sink: SinkFactory) -> None:
    """An upload that needs more parts than S3 allows (10,000, lowered to 2 here) fails with
    object_too_large when the part over the limit is due, and leaves nothing; the limit itself
    is fine."""
    exact, over = data_of(2 * PART, seed=41), data_of(2 * PART + 1, seed=42)
    async with make_sink() as s3:
        s3.bucket.max_parts = 2
        await upload_bytes(s3, exact, key="exact.bin", label=True)
        assert await stored(s3, "exact.bin") == (exact, {"sha256": sha(exact)})
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, over, label=True)
        assert (caught.value.code, caught.value.key) == ("object_too_large", KEY)
        assert await everything_under(s3) == ([s3.object_key("exact.bin")], [])


async def test_commit_refuses_a_size_other_than_what_was_written(make_sink: SinkFactory) -> None:
    """A commit whose verified size is not the number of bytes written publishes nothing."""
    async with make_sink() as s3:
        upload = await s3.open(KEY, content_type=None, expected_size=None, expected_sha256=None)
        await upload.write(b"hello")
        with pytest.raises(StorageInterrupted) as caught:
            await upload.commit(size=6, sha256=sha(b"hello!"))
        await upload.abort()
        assert (caught.value.code, caught.value.key) == ("storage_size_mismatch", KEY)
        await assert_nothing_left(s3)


async def test_a_labelled_multipart_upload_refuses_another_sha256_at_commit(make_sink: SinkFactory) -> None:
    """The object is labelled at creation with the published sha256: a commit with any other digest
    is refused rather than publishing a wrong label."""
    data = data_of(2 * PART + 1, seed=18)
    async with make_sink() as s3:
        upload = await open_for(s3, data, label=True)
        with pytest.raises(StorageRejected) as caught:
            await send(upload, data, sha256=sha(b"something else"))
        assert caught.value.key == KEY
        await assert_nothing_left(s3)


async def test_an_empty_asset_is_an_empty_object(make_sink: SinkFactory) -> None:
    """Zero bytes are one PutObject of an empty body, labelled like any other."""
    async with make_sink() as s3:
        await upload_bytes(s3, b"", label=False)
        assert await stored(s3) == (b"", {"sha256": sha(b"")})


# -- what goes over the wire --------------------------------------------------------------------


def checksum_headers(seen: Seen) -> dict[str, str]:
    return {k: v for k, v in seen.headers.items() if "checksum" in k}


async def test_a_single_put_carries_its_checksum_label_and_settings(make_sink: SinkFactory) -> None:
    """PutObject carries the whole object's SHA256 checksum (checked by the store), the sha256
    label, the content type, the storage class and If-None-Match; no other checksum."""
    data = data_of(300_000, seed=20)
    async with s3_proxy_for(make_sink, storage_class="STANDARD_IA") as (proxy, s3):
        upload = await open_for(s3, data, label=False, content_type="application/pdf")
        await send(upload, data)
    (put,) = [p for p in proxy.ops("PutObject") if not staged(p)]
    assert put.key == s3.object_key(KEY) and put.sha256 == sha(data)
    assert checksum_headers(put) == {"x-amz-checksum-sha256": hex_to_b64(sha(data))}
    assert put.headers["x-amz-meta-sha256"] == sha(data)
    assert put.headers["content-type"] == "application/pdf"
    assert put.headers["x-amz-storage-class"] == "STANDARD_IA"
    assert put.headers["if-none-match"] == "*"
    assert USER_AGENT_EXTRA in put.headers["user-agent"]


async def test_labelled_parts_carry_their_checksums(make_sink: SinkFactory) -> None:
    """A labelled multipart upload is created at the final key with the label, the storage class
    and SHA256 checksums; every part carries its own checksum, numbered from 1; the completion
    lists them all, with If-None-Match."""
    data = data_of(2 * PART + 4321, seed=21)
    async with s3_proxy_for(make_sink, storage_class="STANDARD_IA") as (proxy, s3):
        upload = await open_for(s3, data, label=True, content_type="image/png")
        await send(upload, data)
    (create,) = proxy.ops("CreateMultipartUpload")
    assert create.key == s3.object_key(KEY)
    assert create.headers["x-amz-checksum-algorithm"] == "SHA256"
    assert create.headers["x-amz-meta-sha256"] == sha(data)
    assert create.headers["x-amz-storage-class"] == "STANDARD_IA"
    assert create.headers["content-type"] == "image/png"
    parts = sorted(proxy.ops("UploadPart"), key=lambda s: s.part or 0)
    pieces = [data[:PART], data[PART : 2 * PART], data[2 * PART :]]
    assert [(p.part, p.sha256, p.key) for p in parts] == [
        (n, sha(piece), s3.object_key(KEY)) for n, piece in enumerate(pieces, 1)
    ]
    for part, piece in zip(parts, pieces, strict=True):
        assert checksum_headers(part) == {"x-amz-checksum-sha256": sha256_b64(piece)}
    (complete,) = proxy.ops("CompleteMultipartUpload")
    assert complete.headers["if-none-match"] == "*"
    assert s3.live_uploads == set() and s3.live_staged == set()
    body = complete.body.decode()
    assert re.findall(r"<PartNumber>(\d+)</PartNumber>", body) == ["1", "2", "3"]
    assert re.findall(r"<ChecksumSHA256>([^<]+)</ChecksumSHA256>", body) == [sha256_b64(p) for p in pieces]


def body_signature(seen: Seen) -> str:
    """What the SigV4 signature says of the body: its SHA-256, or that it signs none."""
    return seen.headers["x-amz-content-sha256"]


@pytest.mark.parametrize("checksum_mode", ["auto", "off"])
async def test_a_body_is_signed_unless_its_checksum_is_sent(
    make_sink: SinkFactory, checksum_mode: str
) -> None:
    """Over http, a PutObject or UploadPart that carries its SHA-256 checksum is signed without
    its body (the signed checksum header covers it, and the store checks it), so the body is hashed
    once, not twice. Without the checksum the signature covers the body's SHA-256, as botocore
    does by default. Either way the store accepts the signature and keeps the bytes."""
    small, large = data_of(300_000, seed=40), data_of(PART + 1000, seed=41)
    async with s3_proxy_for(make_sink, checksum_mode=checksum_mode) as (proxy, s3):
        await upload_bytes(s3, small, label=True)
        await upload_bytes(s3, large, key="b.bin", label=True)
        assert await stored(s3) == (small, {"sha256": sha(small)})
        assert (await stored(s3, "b.bin"))[0] == large
    bodies = [p for p in proxy.seen if p.operation in ("PutObject", "UploadPart") and not staged(p)]
    assert sorted(p.operation for p in bodies) == ["PutObject", "UploadPart", "UploadPart"]
    for seen in bodies:
        if checksum_mode == "auto":
            assert "x-amz-checksum-sha256" in seen.headers
            assert body_signature(seen) == "UNSIGNED-PAYLOAD"
        else:
            assert checksum_headers(seen) == {}
            assert body_signature(seen) == seen.sha256
    # Requests without a body are signed as botocore signs them (the hash of nothing).
    (create,) = proxy.ops("CreateMultipartUpload")
    assert body_signature(create) == sha(b"")


async def test_a_body_changed_on_the_way_is_refused_by_its_checksum(make_sink: SinkFactory) -> None:
    """An unsigned body is still covered: a part whose bytes change between the sink and the store
    (the checksum header, being signed, cannot change with them) is refused by the store, and
    nothing is completed."""
    data = data_of(PART + 1000, seed=42)
    tampered: list[int] = []

    def flip_a_byte_of_one_part(seen: Seen, body: bytes) -> bytes:
        if seen.operation != "UploadPart" or tampered:
            return body
        tampered.append(seen.part or 0)
        return bytes([body[0] ^ 1]) + body[1:]

    async with s3_proxy_for(make_sink) as (proxy, s3):
        proxy.rewrites.append(flip_a_byte_of_one_part)
        upload = await open_for(s3, data, label=True)
        with pytest.raises(StorageError) as caught:
            await send(upload, data)
        assert caught.value.code == "storage_checksum_mismatch"
        assert await everything_under(s3) == ([], [])
    assert len(tampered) == 1
    assert proxy.ops("CompleteMultipartUpload") == []


async def test_an_unlabelled_upload_is_staged_then_copied_with_its_label(make_sink: SinkFactory) -> None:
    """Without a published sha256 the parts go to a staging key (no label, no storage class there),
    which is completed, copied in one request to the final key with the label, storage class and
    If-None-Match, and deleted."""
    data = data_of(11 * MIB, seed=22)
    async with s3_proxy_for(make_sink, storage_class="STANDARD_IA") as (proxy, s3):
        # Exactly at the single-copy limit (5 GiB, lowered here) S3 still copies in one request.
        s3.bucket.single_copy_max_bytes = len(data)
        upload = await open_for(s3, data, label=False, content_type="image/png")
        await send(upload, data)
        assert await stored(s3) == (data, {"sha256": sha(data)})
        head = await s3.bucket.client.head_object(Bucket=s3.bucket.name, Key=s3.object_key(KEY))
        assert head["ContentType"] == "image/png"
    (create,) = proxy.ops("CreateMultipartUpload")
    assert create.key.startswith(f"{s3.settings.prefix}/{STAGING_DIR}/")
    assert "x-amz-meta-sha256" not in create.headers and "x-amz-storage-class" not in create.headers
    assert {p.key for p in proxy.ops("UploadPart")} == {create.key}
    (complete,) = proxy.ops("CompleteMultipartUpload")
    assert complete.key == create.key and "if-none-match" not in complete.headers
    (copy,) = proxy.ops("CopyObject")
    assert copy.key == s3.object_key(KEY)
    assert unquote(copy.headers["x-amz-copy-source"]).lstrip("/") == f"{s3.bucket.name}/{create.key}"
    assert copy.headers["x-amz-metadata-directive"] == "REPLACE"
    assert copy.headers["x-amz-meta-sha256"] == sha(data)
    assert copy.headers["x-amz-storage-class"] == "STANDARD_IA"
    assert copy.headers["content-type"] == "image/png"
    assert copy.headers["if-none-match"] == "*"
    assert [d.key for d in proxy.ops("DeleteObject")] == [create.key]
    assert s3.live_uploads == set() and s3.live_staged == set()


async def test_a_multipart_copy_copies_every_range_with_the_label(make_sink: SinkFactory) -> None:
    """Above the single-copy limit the staged object is copied in ranges that cover it exactly,
    into an upload labelled like the object, completed with If-None-Match."""
    data = data_of(12 * MIB + 5, seed=23)
    async with s3_proxy_for(make_sink, storage_class="STANDARD_IA") as (proxy, s3):
        s3.bucket.single_copy_max_bytes = 8 * MIB
        upload = await open_for(s3, data, label=False, content_type="image/png")
        committed = await send(upload, data)
        assert await stored(s3) == (data, {"sha256": sha(data)})
    final = [c for c in proxy.ops("CreateMultipartUpload") if not staged(c)]
    assert [c.key for c in final] == [s3.object_key(KEY)]
    assert final[0].headers["x-amz-meta-sha256"] == sha(data)
    assert final[0].headers["x-amz-storage-class"] == "STANDARD_IA"
    assert final[0].headers["content-type"] == "image/png"
    copies = sorted(proxy.ops("UploadPartCopy"), key=lambda s: s.part or 0)
    assert [(c.part, c.headers["x-amz-copy-source-range"]) for c in copies] == [
        (1, f"bytes=0-{PART - 1}"),
        (2, f"bytes={PART}-{2 * PART - 1}"),
        (3, f"bytes={2 * PART}-{len(data) - 1}"),
    ]
    complete = [c for c in proxy.ops("CompleteMultipartUpload") if not staged(c)]
    assert complete[0].headers["if-none-match"] == "*"
    assert committed.etag is not None and committed.etag.endswith("-3")


@pytest.mark.parametrize("label", [True, False], ids=["labelled", "staged"])
async def test_overwrite_sends_no_if_none_match(make_sink: SinkFactory, label: bool) -> None:
    """With overwrite on, no write is conditional: a newer asset replaces an older one."""
    old, new = data_of(11 * MIB, seed=24), data_of(11 * MIB + 1, seed=25)
    async with s3_proxy_for(make_sink, overwrite=True) as (proxy, s3):
        await upload_bytes(s3, old, label=label)
        await upload_bytes(s3, new, label=label)
        small = await upload_bytes(s3, b"tiny", key="small.bin", label=label)
        assert not small.already_present
        assert await stored(s3) == (new, {"sha256": sha(new)})
    assert all("if-none-match" not in s.headers for s in proxy.seen)


# -- stores that lack an optional feature -------------------------------------------------------


def refuse_header(header: str, status: int = 501, code: str = "NotImplemented") -> Rule:
    """A rule refusing every request that carries ``header`` (a prefix of its name)."""

    async def rule(seen: Seen) -> web.StreamResponse | None:
        if any(name.startswith(header) for name in seen.headers):
            return s3_error(status, code, seen.method)
        return None

    return rule


@pytest.mark.parametrize(
    ("mode", "first"),
    [
        ("auto", "PutObject"),
        ("require", "PutObject"),
        ("auto", "CompleteMultipartUpload"),
        ("auto", "CopyObject"),
    ],
)
async def test_a_store_without_conditional_writes_gets_plain_writes(
    make_sink: SinkFactory, mode: str, first: str
) -> None:
    """A store refusing If-None-Match: the first conditional write (whichever call it is) is sent
    again without it, keeping its checksum even in "auto"; every later write goes without it;
    this is logged once."""
    small, large = data_of(2000, seed=26), data_of(11 * MIB, seed=27)
    uploads = {
        "PutObject": (small, False),
        "CompleteMultipartUpload": (large, True),
        "CopyObject": (large, False),
    }
    order = [first, *(op for op in uploads if op != first)]
    async with s3_proxy_for(make_sink, refuse_header("if-none-match"), checksum_mode=mode) as (proxy, s3):
        with capture_logs() as events:
            for n, op in enumerate(order):
                data, label = uploads[op]
                await upload_bytes(s3, data, key=f"{n}.bin", label=label)
        assert s3.bucket.checksums and not s3.bucket.conditional_writes
        for n, op in enumerate(order):
            assert await stored(s3, f"{n}.bin") == (uploads[op][0], {"sha256": sha(uploads[op][0])})
    assert [e["event"] for e in events if "unsupported" in e["event"]] == [
        "s3_conditional_writes_unsupported"
    ]
    # Refused: the first conditional write, and for a PutObject in "auto" also its retry without
    # the checksum (tried first, as it might have been the problem); every write the store took
    # carries its checksum.
    # (The probe of whether the store enforces If-None-Match writes under the staging prefix.)
    refused = [s for s in proxy.seen if "if-none-match" in s.headers and not staged(s)]
    assert [s.operation for s in refused] == [first] * (2 if (mode, first) == ("auto", "PutObject") else 1)
    puts = [s for s in proxy.ops("PutObject") if not staged(s)]
    taken = [s for s in puts + proxy.ops("UploadPart") if s not in refused]
    assert len(taken) == 1 + 3 + 3
    assert all("x-amz-checksum-sha256" in s.headers for s in taken)


async def test_a_store_without_either_feature_gets_neither(make_sink: SinkFactory) -> None:
    """A store refusing both checksums and If-None-Match: the first write tries without each, then
    without both, and both are dropped for good (each logged once)."""
    data = data_of(2000, seed=28)

    async def refuse_either(seen: Seen) -> web.StreamResponse | None:
        if "if-none-match" in seen.headers or any(k.startswith("x-amz-checksum-") for k in seen.headers):
            return s3_error(501, "NotImplemented")
        return None

    async with s3_proxy_for(make_sink, refuse_either) as (proxy, s3):
        with capture_logs() as events:
            await upload_bytes(s3, data, label=False)
            await upload_bytes(s3, data_of(11 * MIB, seed=29), key="b.bin", label=False)
        assert not s3.bucket.checksums and not s3.bucket.conditional_writes
        assert await stored(s3) == (data, {"sha256": sha(data)})
    puts = [p for p in proxy.ops("PutObject") if not staged(p)]
    assert [("x-amz-checksum-sha256" in p.headers, "if-none-match" in p.headers) for p in puts] == [
        (True, True),
        (False, True),
        (True, False),
        (False, False),
    ]
    assert sorted(e["event"] for e in events if "unsupported" in e["event"]) == [
        "s3_checksums_unsupported",
        "s3_conditional_writes_unsupported",
    ]


async def test_an_unrelated_error_on_the_second_try_is_not_a_missing_feature(make_sink: SinkFactory) -> None:
    """A write refused with its checksum and then refused for another reason without it fails with
    that other reason, and checksums stay on: a feature is dropped only when the write works
    without it."""
    calls = 0

    async def rule(seen: Seen) -> web.StreamResponse | None:
        nonlocal calls
        if seen.operation == "PutObject" and not staged(seen):
            calls += 1
            if "x-amz-checksum-sha256" in seen.headers:
                return s3_error(501, "NotImplemented")
            return s3_error(403, "AccessDenied")
        return None

    async with s3_proxy_for(make_sink, rule) as (_proxy, s3):
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, b"abc", label=False)
        assert caught.value.code == "access_denied" and "S3 PutObject " in str(caught.value)
        assert s3.bucket.checksums and s3.bucket.conditional_writes
        assert calls == 2  # with the checksum, then without; If-None-Match was not the problem


async def test_a_feature_refusal_on_every_try_is_raised_as_it_came(make_sink: SinkFactory) -> None:
    """A store answering 501 whatever is left out: the first refusal is raised (rejected), and
    nothing is dropped."""

    async def rule(seen: Seen) -> web.StreamResponse | None:
        return s3_error(501, "NotImplemented") if seen.operation == "PutObject" else None

    async with s3_proxy_for(make_sink, rule) as (proxy, s3):
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, b"abc", label=False)
        assert caught.value.code == "storage_rejected" and "S3 PutObject " in str(caught.value)
        assert s3.bucket.checksums and s3.bucket.conditional_writes
        assert len([p for p in proxy.ops("PutObject") if not staged(p)]) == 4


async def test_required_checksums_refused_at_creation_fail_at_once(make_sink: SinkFactory) -> None:
    """With checksum_mode="require", a store refusing the checksum of CreateMultipartUpload fails the
    upload at once: the request carries no If-None-Match, so there is nothing else to try without,
    and conditional writes stay on."""
    data = data_of(11 * MIB, seed=36)
    rule = refuse_header("x-amz-checksum-")
    async with s3_proxy_for(make_sink, rule, checksum_mode="require") as (proxy, s3):
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, data, label=True)
        assert str(caught.value).startswith(f"S3 CreateMultipartUpload {KEY}: ")
        assert len(proxy.ops("CreateMultipartUpload")) == 1
        assert s3.bucket.checksums and s3.bucket.conditional_writes
        await assert_nothing_left(s3)


async def test_parts_without_checksums_after_creation_refused_them(make_sink: SinkFactory) -> None:
    """A store refusing the checksum algorithm at CreateMultipartUpload: the upload is created
    without it and its parts carry no checksum (which the store would refuse too)."""
    data = data_of(11 * MIB, seed=30)
    async with s3_proxy_for(make_sink, refuse_header("x-amz-checksum-")) as (proxy, s3):
        await upload_bytes(s3, data, label=True)
        assert await stored(s3) == (data, {"sha256": sha(data)})
        assert not s3.bucket.checksums and s3.bucket.conditional_writes
    assert [("x-amz-checksum-algorithm" in c.headers) for c in proxy.ops("CreateMultipartUpload")] == [
        True,
        False,
    ]
    assert all(checksum_headers(p) == {} for p in proxy.ops("UploadPart"))


# -- versioned buckets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "label", "single_copy_max"),
    [
        pytest.param(3000, False, None, id="put"),
        pytest.param(11 * MIB, True, None, id="multipart"),
        pytest.param(11 * MIB, False, None, id="staged-copy"),
        pytest.param(12 * MIB + 5, False, 8 * MIB, id="staged-multipart-copy"),
    ],
)
async def test_every_publish_path_reports_the_version_and_etag_it_wrote(
    make_sink: SinkFactory, s3_server: S3Server, size: int, label: bool, single_copy_max: int | None
) -> None:
    """On a versioned bucket the receipt names the version the commit created (not the staged
    object's, not an older one), and its ETag without quotes; an overwrite names the new one."""
    data = data_of(size, seed=31)
    newer = data_of(size, seed=32)
    async with make_sink(bucket=s3_server.versioned_bucket, overwrite=True) as s3:
        if single_copy_max is not None:
            s3.bucket.single_copy_max_bytes = single_copy_max
        first = await upload_bytes(s3, data, label=label)
        head = await s3.bucket.client.head_object(Bucket=s3.bucket.name, Key=s3.object_key(KEY))
        assert first.version_id is not None and first.version_id == head["VersionId"]
        assert first.etag == head["ETag"].strip('"') and '"' not in first.etag
        second = await upload_bytes(s3, newer, label=label)
        head = await s3.bucket.client.head_object(Bucket=s3.bucket.name, Key=s3.object_key(KEY))
        assert second.version_id == head["VersionId"] != first.version_id
        assert second.etag == head["ETag"].strip('"')
        again = await upload_bytes(s3, newer, label=label)
        assert again.already_present and (again.version_id, again.etag) == (second.version_id, second.etag)
        assert await stored(s3) == (newer, {"sha256": sha(newer)})


async def test_head_describes_an_object_as_the_store_does(
    make_sink: SinkFactory, s3_server: S3Server
) -> None:
    """Bucket.head: size, sha256 label, ETag without quotes, version and modification time as the
    store reports them; None for a key with no object."""
    async with make_sink(bucket=s3_server.versioned_bucket) as s3:
        assert await s3.bucket.head(s3.object_key(KEY), key=KEY) is None
        await raw_put(s3, b"abcd", sha256=sha(b"abcd"))
        raw = await s3.bucket.client.head_object(Bucket=s3.bucket.name, Key=s3.object_key(KEY))
        info = await s3.bucket.head(s3.object_key(KEY), key=KEY)
        assert info == ObjectInfo(
            size=4,
            sha256=sha(b"abcd"),
            etag=raw["ETag"].strip('"'),
            version_id=raw["VersionId"],
            last_modified=raw["LastModified"],
        )
        assert info.version_id and info.last_modified is not None


# -- keys and prefixes --------------------------------------------------------------------------


async def test_keys_live_under_the_prefix_and_nothing_else_is_owned(
    make_sink: SinkFactory, prefix: str
) -> None:
    """Relative keys land under the prefix; a key that could escape it or reach the staging area
    is refused; the sink owns URIs under its bucket and prefix only, staged ones excluded."""
    async with make_sink() as s3:
        bucket = s3.bucket.name
        assert s3.object_key("a/b.bin") == f"{prefix}/a/b.bin"
        assert s3.uri_for("a/b.bin") == f"s3://{bucket}/{prefix}/a/b.bin"
        for bad in ("", "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "a\x00b", f"{STAGING_DIR}/x"):
            with pytest.raises(StorageRejected) as caught:
                s3.object_key(bad)
            assert caught.value.code == "invalid_key" and caught.value.key == bad
        assert s3.object_key(f"a/{STAGING_DIR}/x") == f"{prefix}/a/{STAGING_DIR}/x"
        assert s3.owns(f"s3://{bucket}/{prefix}/a/b.bin")
        assert not s3.owns(f"s3://{bucket}/{prefix}x/a.bin")
        assert not s3.owns(f"s3://{bucket}/{prefix}/{STAGING_DIR}/abc")
        assert not s3.owns(f"s3://other-{bucket}/{prefix}/a.bin")
        assert not s3.owns(f"s3://{bucket}/elsewhere/a.bin")
        staging = s3.new_staging_key()
        assert re.fullmatch(rf"{re.escape(prefix)}/{STAGING_DIR}/[0-9a-f]{{32}}", staging)
        assert staging != s3.new_staging_key()


async def test_a_sink_without_prefix_uses_the_bucket_root(s3_server: S3Server) -> None:
    """With no prefix, keys are the object keys, staging is at the bucket root, the sink owns the
    whole bucket but its staging area, and the janitor sweeps the root."""
    session = aws_session(s3_server)
    bucket = f"root-{uuid.uuid4().hex[:8]}"
    async with session.create_client(
        "s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1"
    ) as client:
        await client.create_bucket(Bucket=bucket)
    settings = make_settings(s3_server, "", bucket=bucket)
    async with open_s3_sink(settings, session=session, wall_clock=lambda: time.time() + 60) as s3:
        assert s3.object_key("a/b.bin") == "a/b.bin" and s3.uri_for("a/b.bin") == f"s3://{bucket}/a/b.bin"
        assert s3.owns(f"s3://{bucket}/a/b.bin") and not s3.owns(f"s3://{bucket}/{STAGING_DIR}/x")
        assert s3.new_staging_key().startswith(f"{STAGING_DIR}/")
        data = data_of(11 * MIB, seed=33)
        await upload_bytes(s3, data, label=False)
        assert await stored(s3) == (data, {"sha256": sha(data)})
        await s3.bucket.client.create_multipart_upload(Bucket=bucket, Key="dead.bin")
        await s3.bucket.client.put_object(Bucket=bucket, Key=f"{STAGING_DIR}/orphan", Body=b"x")
        report = await s3.abort_stale_uploads(older_than_s=30)
        assert (report.aborted_uploads, report.removed_staged) == (1, 1)
        assert await everything_under(s3) == ([KEY], [])


# -- the janitor --------------------------------------------------------------------------------
# Listings come sorted by key: names starting "0-" come before those starting "1-", so a test can
# place what the janitor must skip before what it must still remove.


async def test_janitor_skips_what_it_cannot_remove(make_sink: SinkFactory, prefix: str) -> None:
    """An upload or staged object the store refuses to remove is skipped (not counted, logged with
    the call that failed); the ones after it are still removed."""
    rules = (
        refuse("AbortMultipartUpload", 403, "AccessDenied", key_contains="/0-stuck"),
        refuse("DeleteObject", 403, "AccessDenied", key_contains="/0-stuck"),
    )
    async with s3_proxy_for(make_sink, *rules, wall_clock=lambda: time.time() + 60) as (proxy, s3):
        client, bucket = s3.bucket.client, s3.bucket.name
        staging = f"{prefix}/{STAGING_DIR}"
        for key in (f"{prefix}/0-stuck.bin", f"{prefix}/1-dead.bin"):
            await client.create_multipart_upload(Bucket=bucket, Key=key)
        for key in (f"{staging}/0-stuck", f"{staging}/1-orphan"):
            await client.put_object(Bucket=bucket, Key=key, Body=b"x")
        with capture_logs() as events:
            report = await s3.abort_stale_uploads(older_than_s=30)
        assert (report.aborted_uploads, report.removed_staged) == (1, 1)
        warnings = sorted((e["event"], e["error"]) for e in events if e["log_level"] == "warning")
        assert [event for event, _ in warnings] == [
            "s3_stale_staged_delete_failed",
            "s3_stale_upload_abort_failed",
        ]
        assert warnings[0][1].startswith(f"S3 DeleteObject {staging}/0-stuck: ")
        assert warnings[1][1].startswith(f"S3 AbortMultipartUpload {prefix}/0-stuck.bin: ")
        assert await everything_under(s3) == ([f"{staging}/0-stuck"], [f"{prefix}/0-stuck.bin"])
        proxy.rules.clear()
        report = await s3.abort_stale_uploads(older_than_s=30)
        assert (report.aborted_uploads, report.removed_staged) == (1, 1)


async def test_janitor_counts_an_upload_already_gone_as_aborted(make_sink: SinkFactory, prefix: str) -> None:
    """An upload another replica's janitor aborted first (NoSuchUpload) is not an error: it is
    counted, nothing is logged as failed, and the next one is aborted too."""
    gone = refuse("AbortMultipartUpload", 404, "NoSuchUpload", key_contains="/0-gone")
    async with s3_proxy_for(make_sink, gone, wall_clock=lambda: time.time() + 60) as (proxy, s3):
        client, bucket = s3.bucket.client, s3.bucket.name
        for key in (f"{prefix}/0-gone.bin", f"{prefix}/1-dead.bin"):
            await client.create_multipart_upload(Bucket=bucket, Key=key)
        with capture_logs() as events:
            report = await s3.abort_stale_uploads(older_than_s=30)
        assert (report.aborted_uploads, report.removed_staged) == (2, 0)
        assert [e for e in events if e["log_level"] == "warning"] == []
        proxy.rules.clear()  # it was not really gone: the proxy said so
        assert (await s3.abort_stale_uploads(older_than_s=30)).aborted_uploads == 1


async def test_janitor_logs_an_abort_that_cannot_reach_the_store(make_sink: SinkFactory, prefix: str) -> None:
    """An abort whose connection keeps breaking (after botocore's retries) is logged as a network
    failure of that call and skipped."""

    async def reset(seen: Seen) -> web.StreamResponse | None:
        return RESET if seen.operation == "AbortMultipartUpload" else None

    async with s3_proxy_for(make_sink, reset, wall_clock=lambda: time.time() + 60) as (proxy, s3):
        await s3.bucket.client.create_multipart_upload(Bucket=s3.bucket.name, Key=f"{prefix}/dead.bin")
        with capture_logs() as events:
            report = await s3.abort_stale_uploads(older_than_s=30)
        assert report.aborted_uploads == 0
        (warning,) = [e for e in events if e["log_level"] == "warning"]
        assert warning["error"].startswith(f"S3 AbortMultipartUpload {prefix}/dead.bin: ")
        # Attempted again and again (by botocore, and by aiohttp on a broken pooled connection).
        assert len(proxy.ops("AbortMultipartUpload")) >= RETRY_ATTEMPTS
        proxy.rules.clear()
        assert (await s3.abort_stale_uploads(older_than_s=30)).aborted_uploads == 1


async def test_janitor_uses_the_configured_age(make_sink: SinkFactory, prefix: str) -> None:
    """Without an explicit age the janitor uses janitor_age_s: younger uploads and staged objects
    stay, older ones all go, and each is counted."""
    now = time.time()
    clock = [now + 10]
    async with make_sink(janitor_age_s=30, wall_clock=lambda: clock[0]) as s3:
        client, bucket = s3.bucket.client, s3.bucket.name
        for name in ("0-dead.bin", "1-dead.bin"):
            await client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/{name}")
            await client.put_object(Bucket=bucket, Key=f"{prefix}/{STAGING_DIR}/{name}", Body=b"x")
        report = await s3.abort_stale_uploads()
        assert (report.aborted_uploads, report.removed_staged) == (0, 0)
        clock[0] = now + 60
        report = await s3.abort_stale_uploads()
        assert (report.aborted_uploads, report.removed_staged) == (2, 2)
        assert await everything_under(s3) == ([], [])


async def test_janitor_spares_this_process_uploads_in_progress(make_sink: SinkFactory, prefix: str) -> None:
    """This process's multipart upload and the staged object it is copying are left alone whatever
    their age, and stale ones listed after them are still removed; the upload then completes and
    removes its staged object itself."""
    data = data_of(11 * MIB, seed=34)
    copying = asyncio.Event()
    release = asyncio.Event()

    async def hold_copy(seen: Seen) -> web.StreamResponse | None:
        if seen.operation == "CopyObject":
            copying.set()
            await release.wait()
        return None

    async with s3_proxy_for(make_sink, hold_copy, wall_clock=lambda: time.time() + 3600) as (_proxy, s3):
        client, bucket = s3.bucket.client, s3.bucket.name
        task = asyncio.create_task(upload_bytes(s3, data, label=False))
        await asyncio.wait_for(copying.wait(), 30)
        (staged_key,) = s3.live_staged
        live = await open_for(s3, data, key="0-live.bin", label=True)
        for start in range(0, PART + 1, MIB):
            await live.write(data[start : start + MIB])
        assert len(s3.live_uploads) == 1
        # Listed after the live ones: the staged object's name is hex, "~" sorts after it.
        await client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/1-dead.bin")
        await client.put_object(Bucket=bucket, Key=f"{prefix}/{STAGING_DIR}/~orphan", Body=b"x")
        assert staged_key < f"{prefix}/{STAGING_DIR}/~orphan"
        report = await s3.abort_stale_uploads(older_than_s=1)
        assert (report.aborted_uploads, report.removed_staged) == (1, 1)
        release.set()
        await task
        await live.abort()
        assert await stored(s3) == (data, {"sha256": sha(data)})
        await assert_nothing_left_but_the_object(s3)


# -- error classification -----------------------------------------------------------------------


def client_error(code: str | None, status: int | None) -> botocore.exceptions.ClientError:
    """A ClientError as botocore builds it from a store's answer."""
    response: dict[str, Any] = {}
    if code is not None:
        response["Error"] = {"Code": code, "Message": "text"}
    if status is not None:
        response["ResponseMetadata"] = {"HTTPStatusCode": status}
    return botocore.exceptions.ClientError(response, "PutObject")  # type: ignore[arg-type]


# The destination is down or throttling: the job waits without spending attempts.
UNAVAILABLE = [
    ("SlowDown", 503, "storage_throttled"),
    ("Throttling", 400, "storage_throttled"),
    ("ThrottlingException", 400, "storage_throttled"),
    ("RequestLimitExceeded", 400, "storage_throttled"),
    ("TooManyRequests", 429, "storage_throttled"),
    ("RequestTimeout", 400, "storage_timeout"),
    ("InternalError", 500, "storage_unavailable"),
    ("ServiceUnavailable", 503, "storage_unavailable"),
    ("ExpiredToken", 400, "credentials_expired"),
    ("ExpiredTokenException", 400, "credentials_expired"),
    ("TokenRefreshRequired", 400, "credentials_expired"),
    ("Unknown", 429, "storage_unavailable"),
    ("Unknown", 500, "storage_unavailable"),
    ("Unknown", 599, "storage_unavailable"),
    (None, 502, "storage_unavailable"),
]
# This write went wrong, the destination is fine: retried within the asset's attempts.
INTERRUPTED = [
    ("BadDigest", 400, "storage_checksum_mismatch"),
    ("XAmzContentSHA256Mismatch", 400, "storage_checksum_mismatch"),
    ("NoSuchUpload", 404, "upload_vanished"),
    ("OperationAborted", 409, "storage_conflict"),
    ("ConditionalRequestConflict", 409, "storage_conflict"),
]
# Retrying cannot help: the job fails with the code.
REJECTED = [
    ("AccessDenied", 403, "access_denied"),
    ("AllAccessDisabled", 403, "access_denied"),
    ("AccountProblem", 403, "access_denied"),
    ("InvalidAccessKeyId", 403, "invalid_credentials"),
    ("SignatureDoesNotMatch", 403, "invalid_credentials"),
    ("InvalidToken", 400, "invalid_credentials"),
    ("NoSuchBucket", 404, "no_such_bucket"),
    ("InvalidBucketName", 400, "no_such_bucket"),
    ("PermanentRedirect", 301, "wrong_region"),
    ("AuthorizationHeaderMalformed", 400, "wrong_region"),
    ("IllegalLocationConstraintException", 400, "wrong_region"),
    ("InvalidStorageClass", 400, "invalid_storage_class"),
    ("EntityTooLarge", 400, "object_too_large"),
    ("KeyTooLongError", 400, "key_too_long"),
    ("RequestTimeTooSkewed", 403, "clock_skew"),
    ("PreconditionFailed", 412, "object_exists"),
    ("NotImplemented", 501, "storage_rejected"),
    ("Unknown", 501, "storage_rejected"),
    ("403", 403, "access_denied"),
    (None, 403, "access_denied"),
    ("412", 412, "object_exists"),
    ("Unknown", 400, "storage_rejected"),
    ("Unknown", 499, "storage_rejected"),
    ("Unknown", None, "storage_rejected"),
]
# A code wins over the status it came with.
Classified = tuple[str | None, int | None, type[StorageError], str]
PRECEDENCE: list[Classified] = [
    ("BadDigest", 500, StorageInterrupted, "storage_checksum_mismatch"),
    ("SlowDown", 403, StorageUnavailable, "storage_throttled"),
    ("AccessDenied", 503, StorageRejected, "access_denied"),
]


@pytest.mark.parametrize(
    ("code", "status", "kind", "ours"),
    [
        *((c, s, StorageUnavailable, o) for c, s, o in UNAVAILABLE),
        *((c, s, StorageInterrupted, o) for c, s, o in INTERRUPTED),
        *((c, s, StorageRejected, o) for c, s, o in REJECTED),
        *PRECEDENCE,
    ],
)
def test_store_answers_are_classified_by_what_retrying_can_do(
    code: str | None, status: int | None, kind: type[StorageError], ours: str
) -> None:
    """Each S3 error code (else the HTTP status) maps to waiting (unavailable), retrying this
    asset (interrupted) or failing it (rejected), with a stable code; the message says which
    call on which key."""
    error = translate(client_error(code, status), action="PutObject", key="j/a.bin")
    assert type(error) is kind and error.code == ours and error.key == "j/a.bin"
    assert str(error).startswith("S3 PutObject j/a.bin: ClientError: ")


@pytest.mark.parametrize(
    ("exc", "kind", "ours"),
    [
        (botocore.exceptions.NoCredentialsError(), StorageRejected, "no_credentials"),
        (
            botocore.exceptions.PartialCredentialsError(provider="env", cred_var="secret"),
            StorageRejected,
            "no_credentials",
        ),
        (
            botocore.exceptions.CredentialRetrievalError(provider="sts", error_msg="down"),
            StorageUnavailable,
            "credentials_unavailable",
        ),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"),
            StorageUnavailable,
            "network_error",
        ),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"), StorageUnavailable, "network_error"),
        (botocore.exceptions.HTTPClientError(error="reset"), StorageUnavailable, "network_error"),
        (botocore.exceptions.ParamValidationError(report="bad"), StorageRejected, "storage_client_error"),
        (aiohttp.ClientPayloadError("cut"), StorageUnavailable, "network_error"),
        (TimeoutError(), StorageUnavailable, "network_error"),
        (ConnectionResetError(), StorageUnavailable, "network_error"),
        (ValueError("odd"), StorageRejected, "storage_rejected"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_client_side_failures_are_classified(exc: Exception, kind: type[StorageError], ours: str) -> None:
    """Failures without an answer from the store: missing credentials and bad parameters fail the
    job; the network and a credential source that did not answer make the destination wait."""
    error = translate(exc, action="HeadObject", key="k")
    assert type(error) is kind and error.code == ours and error.key == "k"
    assert str(error).startswith(f"S3 HeadObject k: {type(exc).__name__}")


def test_error_helpers_read_code_and_status() -> None:
    """The code and status of a ClientError, None when absent or for other exceptions; "not
    found" is a 404 about the key, "feature rejected" a 501 or a refused-header code."""
    assert (error_code(client_error("SlowDown", 503)), http_status(client_error("SlowDown", 503))) == (
        "SlowDown",
        503,
    )
    assert (error_code(client_error(None, None)), http_status(client_error(None, None))) == (None, None)
    assert error_code(client_error("", 400)) is None
    assert (error_code(ValueError("x")), http_status(ValueError("x"))) == (None, None)
    for code in ("404", "NoSuchKey", "NotFound"):
        assert is_not_found(client_error(code, 404))
    assert not is_not_found(client_error("NoSuchBucket", 404))
    assert not is_not_found(client_error("NoSuchKey", 400))
    assert not is_not_found(client_error(None, 404))
    for code in ("NotImplemented", "InvalidArgument", "InvalidRequest", "UnsupportedHeader"):
        assert is_feature_rejection(client_error(code, 400))
    assert is_feature_rejection(client_error("Whatever", 501))
    assert not is_feature_rejection(client_error("AccessDenied", 403))
    assert not is_feature_rejection(client_error(None, 500))
    assert not is_feature_rejection(ValueError("x"))


OPERATIONS = [
    pytest.param("HeadObject", 3000, True, "S3 HeadObject", id="head-at-open"),
    pytest.param("PutObject", 3000, False, "S3 PutObject", id="put"),
    pytest.param("CreateMultipartUpload", 11 * MIB, True, "S3 CreateMultipartUpload", id="create"),
    pytest.param("CompleteMultipartUpload", 11 * MIB, True, "S3 CompleteMultipartUpload", id="complete"),
]


@pytest.mark.parametrize(("operation", "size", "label", "named"), OPERATIONS)
async def test_a_refused_call_fails_the_upload_and_names_itself(
    make_sink: SinkFactory, operation: str, size: int, label: bool, named: str
) -> None:
    """Whichever call the store refuses, the upload fails with access_denied naming that call and
    the key, and leaves nothing behind."""
    async with s3_proxy_for(make_sink, refuse(operation, 403, "AccessDenied")) as (_proxy, s3):
        with pytest.raises(StorageRejected) as caught:
            await upload_bytes(s3, data_of(size, seed=35), label=label)
        assert caught.value.code == "access_denied" and caught.value.key == KEY
        assert str(caught.value).startswith(f"{named} {KEY}: ")
        await assert_nothing_left(s3)


@pytest.mark.parametrize("operation", ["ListMultipartUploads", "ListObjectsV2"])
async def test_a_janitor_refused_listing_fails_with_the_prefix(
    make_sink: SinkFactory, operation: str
) -> None:
    """A refused listing fails the janitor run with the call and the prefix named."""
    async with s3_proxy_for(make_sink, refuse(operation, 403, "AccessDenied")) as (_proxy, s3):
        with pytest.raises(StorageRejected) as caught:
            await s3.abort_stale_uploads(older_than_s=30)
        assert caught.value.code == "access_denied"
        assert str(caught.value).startswith(f"S3 {operation} {s3.settings.prefix}/")


async def test_an_unreachable_store_makes_the_destination_unavailable(
    s3_server: S3Server, prefix: str
) -> None:
    """Nothing listening at the endpoint: the destination is unavailable (the job waits), after
    botocore's own bounded retries."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(s3_server, prefix, endpoint_url=f"http://127.0.0.1:{port}")
    async with open_s3_sink(settings, session=aws_session(s3_server)) as s3:
        with pytest.raises(StorageUnavailable) as caught:
            await s3.open(KEY, content_type=None, expected_size=3, expected_sha256=sha(b"abc"))
    assert caught.value.code == "network_error" and str(caught.value).startswith(f"S3 HeadObject {KEY}: ")


# -- the client ---------------------------------------------------------------------------------


async def test_the_client_is_configured_as_documented(make_sink: SinkFactory) -> None:
    """One client per sink: botocore's standard retries (RETRY_ATTEMPTS in all), bounded timeouts,
    a pool as large as max_connections, path-style addressing when asked, our user agent; a
    malformed endpoint is a configuration error; close() releases the client, twice is harmless."""
    async with make_sink(max_connections=7) as s3:
        # Typed as Any: botocore's stubs declare Config's options as constructor arguments only.
        config: Any = s3.bucket.client.meta.config
        assert config.retries == {"mode": "standard", "total_max_attempts": RETRY_ATTEMPTS}
        assert (config.connect_timeout, config.read_timeout) == (10.0, 60.0)
        assert config.max_pool_connections == 7 and config.region_name == "us-east-1"
        assert config.s3 == {"addressing_style": "path"}
        assert config.user_agent_extra == USER_AGENT_EXTRA
        assert config.request_checksum_calculation == "when_required"
        assert config.response_checksum_validation == "when_required"
        await s3.close()
        await s3.close()
        with pytest.raises(StorageError):  # the client's connections are gone
            await s3.bucket.head(s3.object_key(KEY), key=KEY)
    async with make_sink(path_style=False) as s3:
        auto: Any = s3.bucket.client.meta.config
        assert auto.s3 == {"addressing_style": "auto"}
    with pytest.raises(ConfigError):
        async with make_sink(endpoint_url="localhost:9000"):
            pass


async def test_connect_uses_the_default_credential_chain(
    s3_server: S3Server, prefix: str, aws_env: None
) -> None:
    """Without a session, the sink finds credentials through botocore's standard chain."""
    settings = make_settings(s3_server, prefix)
    async with open_s3_sink(settings) as s3:
        await upload_bytes(s3, b"abc", label=True)
        assert await stored(s3) == (b"abc", {"sha256": sha(b"abc")})


# -- pure parts ---------------------------------------------------------------------------------


def test_part_sizes_at_their_boundaries() -> None:
    """Exact part sizes: whole MiB, the configured minimum, 8 MiB for an unknown size, doubling
    every 1,000 parts, never above 5 GiB."""
    assert (round_up_mib(0), round_up_mib(1), round_up_mib(MIB), round_up_mib(MIB + 1)) == (
        0,
        MIB,
        MIB,
        2 * MIB,
    )
    assert part_size_for(None, 5 * MIB) == 8 * MIB
    assert part_size_for(None, 9 * MIB + 1) == 10 * MIB
    assert part_size_for(None, 6 * GIB) == MAX_PART_BYTES
    assert part_size_for(0, 5 * MIB) == part_size_for(-1, 5 * MIB) == 5 * MIB
    assert part_size_for(100 * GIB, 5 * MIB) == 11 * MIB  # ceil(100 GiB / 10,000) = 10.24 MiB
    assert part_size_for(50_000 * MIB, 5 * MIB) == 5 * MIB
    assert part_size_for(50_000 * MIB + 1, 5 * MIB) == 6 * MIB
    assert part_size_for(10 * MIB, 7 * MIB + 1) == 8 * MIB
    assert part_size_for(100_000 * GIB, 5 * MIB) == MAX_PART_BYTES
    sizes = [
        part_size_at(n, expected_size=None, minimum=5 * MIB)
        for n in (1, 1000, 1001, 2000, 2001, 9001, 10_000)
    ]
    assert sizes == [8 * MIB, 8 * MIB, 16 * MIB, 16 * MIB, 32 * MIB, 8 * MIB << 9, 8 * MIB << 9]
    assert part_size_at(5000, expected_size=None, minimum=GIB) == MAX_PART_BYTES
    assert part_size_at(2001, expected_size=7, minimum=6 * MIB) == 6 * MIB


def test_copy_ranges_cover_the_object_exactly() -> None:
    """Inclusive byte ranges, one per part, the last one short; none for an empty object."""
    assert copy_ranges(10, 4) == [(0, 3), (4, 7), (8, 9)]
    assert copy_ranges(8, 4) == [(0, 3), (4, 7)]
    assert copy_ranges(1, 4) == [(0, 0)]
    assert copy_ranges(0, 4) == []


async def test_part_body_reads_from_where_it_is() -> None:
    """read() without a size (or None, or negative) reads to the end from the current position,
    read(0) reads nothing, seeking relative to it works (not before the start), and reading past
    the end gives nothing without moving back."""
    body = PartBody(memoryview(b"0123456789"))
    assert body.read(3) == b"012" and body.tell() == 3
    assert body.read(None) == b"3456789" and body.tell() == 10
    assert body.read() == b"" and body.read(5) == b"" and body.tell() == 10
    assert body.seek(2) == 2 and body.read(-1) == b"23456789"
    assert body.seek(-4, io.SEEK_CUR) == 6 and body.read(2) == b"67" and body.tell() == 8
    assert body.seek(5, io.SEEK_END) == 15 and body.read() == b"" and body.tell() == 15
    body.seek(4)
    assert b"".join([bytes(c) async for c in body]) == b"456789"
    assert body.seek(1) == 1 and body.read(0) == b"" and body.tell() == 1
    with pytest.raises(ValueError, match="negative seek position -2"):
        body.seek(-3, io.SEEK_CUR)


def test_checksum_encodings() -> None:
    """x-amz-checksum-sha256 values are base64 of the binary digest, from bytes or from hex."""
    digest = hashlib.sha256(b"abc").digest()
    assert sha256_b64(memoryview(b"abc")) == base64.b64encode(digest).decode() == hex_to_b64(digest.hex())
