"""Byte caps against a hostile upstream: no asset larger than allowed is stored or even read, a
body is cut the moment it passes what was announced, and no API answer (compressed, huge or
deeply nested) can exhaust memory or crash a poll."""

from __future__ import annotations

import json
import tracemalloc
import zlib
from collections.abc import Awaitable
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import RecordingSleep, run_jobs
from tests.security.hostile import API_KEY, Hostile, allowing, hostile_settings
from worker.config import HttpSettings
from worker.errors import UpstreamRejected
from worker.httpclient import HttpClient, new_api_session
from worker.models import Job, JobState

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def stream(hostile: Hostile, path: str, *, total: int, declared: int | None, piece: int = 64 * KIB) -> None:
    """Serve up to ``total`` bytes at ``path`` (``Content-Length: declared``, or chunked when None),
    recording in ``hostile.sent`` how much the handler got to write before the client hung up."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/pdf"})
        if declared is not None:
            response.content_length = declared
        await response.prepare(request)
        hostile.sent[path] = 0
        block = b"\x25" * piece
        try:
            while hostile.sent[path] < total:
                await response.write(block)
                hostile.sent[path] += len(block)
        except (ConnectionError, RuntimeError):
            return response  # the client hung up: what we got to send is recorded
        return response

    hostile.routes[path] = answer


def failed_with(job: Job, code: str) -> str:
    assert job.state is JobState.FAILED, (job.state, job.error)
    assert job.error is not None and job.error.code == code, job.error
    return job.error.message


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_a_body_of_unknown_length_is_cut_at_the_cap(hostile: Hostile, tmp_path: Path) -> None:
    """A chunked body streaming gigabytes stops being read at ASSET_WORKER_MAX_ASSET_BYTES:
    asset_too_large, not retried, nothing stored."""
    retry_sleep = RecordingSleep()
    stream(hostile, "/big", total=2 * GIB, declared=None)
    hostile.job("j1", assetUrl=f"{hostile.url}/big")
    settings = hostile_settings(tmp_path, hostile, limits=allowing("127.0.0.1/32", max_asset_bytes=MIB))
    (job,) = await run_jobs(settings, ["cloudlayer:j1"], retry_sleep)
    failed_with(job, "asset_too_large")
    assert hostile.count("/big") == 1 and retry_sleep.delays == []
    # Cut at once: what was sent beyond the cap is no more than the socket buffers hold.
    assert hostile.sent["/big"] < MIB + 16 * MIB
    assert leftovers(tmp_path / "assets") == []


async def test_a_size_over_the_cap_is_refused_before_reading(hostile: Hostile, tmp_path: Path) -> None:
    """A Content-Length of 1 TiB (default cap 5 GiB), or a published size over the cap, is refused
    before a byte of the body is read."""
    stream(hostile, "/tib", total=4 * MIB, declared=1 << 40)
    hostile.job("announced", assetUrl=f"{hostile.url}/tib")
    hostile.job("published", assetUrl=f"{hostile.url}/never", size=6 * GIB)
    settings = hostile_settings(tmp_path, hostile, limits=allowing("127.0.0.1/32"))
    announced, published = await run_jobs(settings, ["cloudlayer:announced", "cloudlayer:published"])
    assert "1099511627776" in failed_with(announced, "asset_too_large")
    failed_with(published, "asset_too_large")
    assert hostile.count("/never") == 0  # refused from the vendor's own word, no request at all
    assert hostile.sent["/tib"] <= 4 * MIB  # the handler may write into buffers; nobody read it


async def test_a_body_longer_than_the_published_size_is_cut_when_it_passes(
    hostile: Hostile, tmp_path: Path
) -> None:
    """The job publishes size 1000: a chunked body of 2 GiB is cut just past 1000 bytes, and a
    Content-Length of 2 GiB is refused from the header alone (size_mismatch), on every attempt."""
    stream(hostile, "/chunked", total=2 * GIB, declared=None)
    stream(hostile, "/declared", total=2 * GIB, declared=2 * GIB)
    hostile.job("chunked", assetUrl=f"{hostile.url}/chunked", size=1000)
    hostile.job("declared", assetUrl=f"{hostile.url}/declared", size=1000)
    settings = hostile_settings(tmp_path, hostile, limits=allowing("127.0.0.1/32"))
    chunked, declared = await run_jobs(settings, ["cloudlayer:chunked", "cloudlayer:declared"])
    assert "cut at" in failed_with(chunked, "size_mismatch")
    assert "2147483648" in failed_with(declared, "size_mismatch")
    # Three attempts each; each stopped within socket buffers of the start.
    assert hostile.count("/chunked") == hostile.count("/declared") == 3
    assert hostile.sent["/chunked"] < 16 * MIB and hostile.sent["/declared"] < 16 * MIB


def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MIB)
    return b"".join([*(packer.compress(block) for _ in range(size // MIB)), packer.flush()])


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """About 520 KB of gzip that inflates to 512 MiB."""
    return gzip_of_zeros(512 * MIB)


async def refused_with_peak_memory(request: Awaitable[object]) -> tuple[UpstreamRejected, int]:
    """Await ``request``, which must be refused; the refusal and the peak of traced memory."""
    tracemalloc.start()
    try:
        with pytest.raises(UpstreamRejected) as caught:
            await request
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return caught.value, peak


async def get_json(hostile: Hostile, path: str, max_response_bytes: int = 8 * MIB) -> object:
    async with new_api_session(HttpSettings(request_attempts=1)) as session:
        client = HttpClient(session, HttpSettings(request_attempts=1), max_response_bytes=max_response_bytes)
        response = await client.get_json(f"{hostile.url}{path}", headers={"X-API-Key": API_KEY})
        return response.body


async def test_a_gzip_bomb_is_stopped_at_the_answer_cap(hostile: Hostile, bomb: bytes) -> None:
    """A 520 KB gzip answer that would inflate to 512 MiB is refused as malformed_response once
    8 MiB are decoded; the poll never holds more than a few times the cap in memory."""

    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    hostile.routes["/v2/jobs/bomb"] = answer
    caught, peak = await refused_with_peak_memory(get_json(hostile, "/v2/jobs/bomb"))
    assert caught.code == "malformed_response" and "larger than" in caught.message
    assert peak < 4 * 8 * MIB, f"peak {peak / MIB:.1f} MiB"


async def test_a_compressed_answer_within_the_cap_is_decoded(hostile: Hostile) -> None:
    """gzip and deflate answers are decoded by the worker itself (asked for, then bounded)."""
    document = {"id": "z", "status": "pending", "padding": "x" * 100_000}
    raw = json.dumps(document).encode()
    packed = {"gzip": gzip_of_small(raw), "deflate": zlib.compress(raw)}
    for encoding, body in packed.items():

        async def answer(_request: web.Request, body: bytes = body, encoding: str = encoding) -> web.Response:
            return web.Response(body=body, headers={"Content-Encoding": encoding})

        hostile.routes[f"/{encoding}"] = answer
        assert await get_json(hostile, f"/{encoding}") == document


def gzip_of_small(raw: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(raw) + packer.flush()


@pytest.mark.parametrize("declared", [True, False])
async def test_a_huge_json_answer_is_refused(hostile: Hostile, declared: bool) -> None:
    """A 50 MB JSON answer is refused (from its Content-Length, or at 8 MiB read when chunked)."""
    stream(hostile, "/v2/jobs/huge", total=50 * 1_000_000, declared=50 * 1_000_000 if declared else None)
    caught, peak = await refused_with_peak_memory(get_json(hostile, "/v2/jobs/huge"))
    assert caught.code == "malformed_response"
    assert peak < 4 * 8 * MIB, f"peak {peak / MIB:.1f} MiB"


async def test_deep_json_fails_the_job_cleanly(hostile: Hostile, tmp_path: Path) -> None:
    """100,000 nested brackets (or 100 levels of objects) fail the job as malformed_response at
    the first poll: no traceback, no crash loop, no wrong poll_timeout later."""
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    nested: dict[str, object] = {"status": "success"}
    for _ in range(100):
        nested = {"status": "success", "params": nested}

    async def brackets(_request: web.Request) -> web.Response:
        return web.Response(body=deep, content_type="application/json")

    hostile.routes["/v2/jobs/brackets"] = brackets
    hostile.json("/v2/jobs/objects", nested)
    with capture_logs() as logs:
        jobs = await run_jobs(
            hostile_settings(tmp_path, hostile), ["cloudlayer:brackets", "cloudlayer:objects"]
        )
    for job in jobs:
        assert "nested" in failed_with(job, "malformed_response")
        assert job.polls <= 1
    assert not [e for e in logs if e["event"] == "job_crashed" or "exc_info" in e]


async def test_a_huge_vendor_message_is_clipped_everywhere(hostile: Hostile, tmp_path: Path) -> None:
    """A 20 MB error text from the vendor is stored, logged and shown cut to a few KiB."""
    hostile.job("j1", status="error", error="E" * 20_000_000)
    settings = hostile_settings(tmp_path, hostile, limits=allowing(max_response_bytes=32 * MIB))
    with capture_logs() as logs:
        (job,) = await run_jobs(settings, ["cloudlayer:j1"])
    message = failed_with(job, "upstream_error")
    assert 4000 < len(message) < 5000 and message.endswith("more characters cut]")
    assert all(len(str(v)) < 20_000 for e in logs for v in e.values())
    assert (tmp_path / "store.db").stat().st_size < 1_000_000


async def test_an_error_body_over_the_cap_still_classifies_the_status(hostile: Hostile) -> None:
    """A 401 whose body is too large to read is still an unauthenticated rejection, not a crash."""
    async def unauthorized(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=401)
        await response.prepare(request)
        try:
            for _ in range(20 * 16):
                await response.write(b"x" * 64 * KIB)
        except (ConnectionError, RuntimeError):
            pass
        return response

    hostile.routes["/v2/jobs/noauth"] = unauthorized
    with pytest.raises(UpstreamRejected) as caught:
        await get_json(hostile, "/v2/jobs/noauth")
    assert caught.value.code == "unauthenticated"


async def test_an_unrequested_encoding_is_refused(hostile: Hostile) -> None:
    """An answer in an encoding the worker did not ask for (br) is malformed, never guessed at."""

    async def brotli(_request: web.Request) -> web.Response:
        return web.Response(body=b"\x0b\x02\x80{}\x03", headers={"Content-Encoding": "br"})

    hostile.routes["/br"] = brotli
    with pytest.raises(UpstreamRejected) as caught:
        await get_json(hostile, "/br")
    assert caught.value.code == "malformed_response" and "br" in caught.value.message


async def test_api_requests_ask_for_encodings_the_worker_can_bound(hostile: Hostile) -> None:
    """The worker asks for gzip/deflate only (never br or zstd it cannot bound), and gets JSON."""
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding", ""))
        return web.json_response({"ok": True})

    hostile.routes["/echo"] = echo
    assert await get_json(hostile, "/echo") == {"ok": True}
    assert seen == ["gzip, deflate"]
