"""The simulator's file host and every fault kind, provoked for real over loopback HTTP."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import itertools
import signal
import sys
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.simulator.conftest import T0, FakeClock
from worker.simulator import Simulator, SimulatorState, content_bytes, content_sha256, start_simulator

KEY = {"X-API-Key": "cl-sim-key"}


async def job_body(http: aiohttp.ClientSession, sim: Simulator, job_id: str) -> Any:
    async with http.get(f"{sim.url}/v2/jobs/{quote(job_id, safe='')}", headers=KEY) as response:
        return await response.json()


async def test_range_requests(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Single ranges answer 206 with Content-Range; a range past the end answers 416; others are ignored."""
    job = sim.add_cloudlayer_job(pending_s=0, size=10_000, seed=4)
    url, whole = sim.file_url(job), content_bytes(4, 10_000)
    cases = {
        "bytes=100-199": (206, "bytes 100-199/10000", whole[100:200]),
        "bytes=9990-": (206, "bytes 9990-9999/10000", whole[9990:]),
        "bytes=9990-20000": (206, "bytes 9990-9999/10000", whole[9990:]),
        "bytes=-5": (206, "bytes 9995-9999/10000", whole[-5:]),
        "bytes=0-1,5-6": (200, None, whole),
        "items=0-1": (200, None, whole),
    }
    for header, (status, content_range, body) in cases.items():
        async with http.get(url, headers={"Range": header}) as response:
            assert response.status == status, header
            assert response.headers.get("Content-Range") == content_range
            assert response.headers["Accept-Ranges"] == "bytes"
            assert await response.read() == body
    async with http.get(url, headers={"Range": "bytes=10000-"}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == "bytes */10000"


async def test_head_reports_length_without_a_body(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """HEAD gives Content-Length and Content-Type of the file."""
    job = sim.add_cloudlayer_job(pending_s=0, size=777, ext="jpg")
    async with http.head(sim.file_url(job)) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "777"
        assert response.headers["Content-Type"] == "image/jpeg"


async def test_status_fault_429_with_numeric_retry_after(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """A 429 rule answers cloudlayer's error JSON with Retry-After in seconds, once."""
    job = sim.add_cloudlayer_job(pending_s=0)
    sim.add_fault(route="cloudlayer.job", kind="status", status=429, retry_after="3")
    async with http.get(f"{sim.url}/v2/jobs/{job.id}", headers=KEY) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "3"
        assert await response.json() == {"statusCode": 429, "message": "Too Many Requests"}
    assert (await job_body(http, sim, job.id))["status"] == "success"
    assert [r.fault for r in sim.requests()] == ["status", None]


async def test_status_fault_429_with_http_date_retry_after(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """ "http-date:3" yields an HTTP date three seconds after the simulator's clock."""
    job = sim.add_cloudlayer_job(pending_s=0)
    sim.add_fault(route="cloudlayer.*", kind="status", status=429, retry_after="http-date:3")
    async with http.get(f"{sim.url}/v2/jobs/{job.id}", headers=KEY) as response:
        assert response.status == 429
        when = email.utils.parsedate_to_datetime(response.headers["Retry-After"])
    assert when.timestamp() == T0 + 3


async def test_status_fault_503_on_api_and_file_host(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """503 comes as cloudlayer JSON on the API and as S3 XML on the file host."""
    job = sim.add_cloudlayer_job(pending_s=0)
    sim.add_fault(route="cloudlayer.asset", kind="status", status=503, match=job.asset_id)
    sim.add_fault(route="files", kind="status", status=503)
    async with http.get(f"{sim.url}/v2/assets/{job.asset_id}", headers=KEY) as response:
        assert (response.status, await response.json()) == (
            503,
            {"statusCode": 503, "message": "Service Unavailable"},
        )
    async with http.get(sim.file_url(job)) as response:
        assert response.status == 503
        assert "<Error><Code>SlowDown</Code>" in await response.text()


async def test_reset_fault_drops_the_connection(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """A reset is a connection error for the client; aiohttp retries a GET once, so two resets surface."""
    job = sim.add_cloudlayer_job(pending_s=0)
    sim.add_fault(route="cloudlayer.job", kind="reset", count=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{sim.url}/v2/jobs/{job.id}", headers=KEY) as response:
            await response.read()
    assert [(r.fault, r.status) for r in sim.requests()] == [("reset", None), ("reset", None)]
    assert (await job_body(http, sim, job.id))["status"] == "success"


async def test_stall_fault_delays_the_headers(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """A stalled request is answered normally after delay_s."""
    job = sim.add_cloudlayer_job(pending_s=0, size=1000)
    sim.add_fault(route="files", kind="stall", delay_s=0.3)
    started = time.monotonic()
    async with http.get(sim.file_url(job)) as response:
        assert response.status == 200
        assert await response.read() == content_bytes(job.seed, 1000)
    assert time.monotonic() - started >= 0.3


async def test_truncate_fault_sends_less_than_content_length(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """A truncated body promises the full length, then the connection closes halfway."""
    job = sim.add_cloudlayer_job(pending_s=0, size=3_000_000)
    sim.add_fault(route="files", kind="truncate")
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(sim.file_url(job)) as response:
            assert response.headers["Content-Length"] == "3000000"
            async for chunk in response.content.iter_chunked(65536):
                received += chunk
    assert 0 < len(received) < 3_000_000
    assert bytes(received) == content_bytes(job.seed, len(received))


async def test_wrong_bytes_fault_changes_the_hash_not_the_length(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """wrong_bytes flips exactly one byte in the middle; length and Content-Length stay right."""
    job = sim.add_cloudlayer_job(pending_s=0, size=200_001)
    sim.add_fault(route="files", kind="wrong_bytes", match=job.asset_id)
    async with http.get(sim.file_url(job)) as response:
        data = await response.read()
    good = content_bytes(job.seed, 200_001)
    assert len(data) == len(good)
    assert [i for i in range(len(data)) if data[i] != good[i]] == [100_000]
    assert hashlib.sha256(data).hexdigest() != content_sha256(job.seed, 200_001)


async def test_short_body_fault_is_a_consistent_shorter_file(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """short_body serves size - missing_bytes with a matching Content-Length: only a size check notices."""
    job = sim.add_cloudlayer_job(pending_s=0, size=50_000)
    sim.add_fault(route="files", kind="short_body", missing_bytes=100)
    sim.add_fault(route="files", kind="short_body")
    async with http.get(sim.file_url(job)) as response:
        assert response.headers["Content-Length"] == "49900"
        assert await response.read() == content_bytes(job.seed, 49_900)
    async with http.get(sim.file_url(job)) as response:
        assert await response.read() == content_bytes(job.seed, 50_000 - 1024)


@pytest.mark.parametrize(("style", "status", "code"), [("403", 403, "AccessDenied"), ("410", 410, "Gone")])
async def test_expired_fault(
    sim: Simulator, http: aiohttp.ClientSession, style: str, status: int, code: str
) -> None:
    """expired answers S3's 403 AccessDenied XML, or 410 when asked."""
    job = sim.add_cloudlayer_job(pending_s=0)
    sim.add_fault(route="files", kind="expired", style=style)
    async with http.get(sim.file_url(job)) as response:
        assert response.status == status
        text = await response.text()
    assert text.startswith("<?xml")
    assert f"<Code>{code}</Code>" in text


async def test_replaced_fault_is_404(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """replaced answers 404 NoSuchKey, then the file is back."""
    job = sim.add_cloudlayer_job(pending_s=0)
    sim.add_fault(route="files", kind="replaced")
    async with http.get(sim.file_url(job)) as response:
        assert response.status == 404
        assert "NoSuchKey" in await response.text()
    async with http.get(sim.file_url(job)) as response:
        assert response.status == 200


async def test_signed_url_expires_on_the_state_clock(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """With url_ttl_s a URL works until exp, then gets 403 "Request has expired"; a re-read refreshes it."""
    job = sim.add_cloudlayer_job(pending_s=0, url_ttl_s=60, size=1000)
    url = (await job_body(http, sim, job.id))["assetUrl"]
    assert "X-Amz-Signature=" in url
    clock.advance(59)
    async with http.get(url) as response:
        assert response.status == 200
    clock.advance(2)
    async with http.get(url) as response:
        assert response.status == 403
        assert "<Message>Request has expired</Message>" in await response.text()
    async with http.get(url.split("?")[0]) as response:
        assert response.status == 403
    fresh = (await job_body(http, sim, job.id))["assetUrl"]
    async with http.get(fresh) as response:
        assert response.status == 200


async def test_probability_rule_hits_a_seeded_subset(clock: FakeClock, http: aiohttp.ClientSession) -> None:
    """A probability rule hits the same requests in two runs with the same seed, and only matching paths."""

    async def run() -> list[int]:
        async with start_simulator(state=SimulatorState(clock=clock)) as sim:
            hit = sim.add_cloudlayer_job(pending_s=0)
            spared = sim.add_cloudlayer_job(pending_s=0)
            sim.add_fault(route="cloudlayer.job", kind="status", probability=0.5, seed=7, match=hit.id)
            statuses = []
            for _ in range(30):
                async with http.get(f"{sim.url}/v2/jobs/{hit.id}", headers=KEY) as response:
                    statuses.append(response.status)
                async with http.get(f"{sim.url}/v2/jobs/{spared.id}", headers=KEY) as response:
                    assert response.status == 200
            return statuses

    first = await run()
    assert first == await run()
    assert 5 < first.count(503) < 25
    assert set(first) == {200, 503}


@pytest.mark.parametrize("asset_id", ["../../etc/passwd", "a/b\\c", "sp ace?&#%25.x"])
async def test_hostile_asset_ids_round_trip(
    sim: Simulator, http: aiohttp.ClientSession, asset_id: str
) -> None:
    """Ids with slashes, backslashes and URL syntax survive the job, the asset endpoint and the file host."""
    job = sim.add_cloudlayer_job(pending_s=0, asset_id=asset_id, id=f"job {asset_id}", asset_via="asset")
    body = await job_body(http, sim, job.id)
    assert body["assetId"] == asset_id
    async with http.get(f"{sim.url}/v2/assets/{quote(asset_id, safe='')}", headers=KEY) as response:
        asset = await response.json()
    assert asset["id"] == asset_id
    async with http.get(asset["url"]) as response:
        assert response.status == 200
        data = await response.read()
    assert hashlib.sha256(data).hexdigest() == content_sha256(job.seed, job.size)
    sim.add_fault(route="files", kind="replaced", match=asset_id)
    async with http.get(asset["url"]) as response:
        assert response.status == 404


async def test_streams_a_64_mib_asset(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """A 64 MiB asset streams whole and hashes as content_sha256 says."""
    size = 64 << 20
    job = sim.add_cloudlayer_job(pending_s=0, size=size, seed=64)
    digest, received = hashlib.sha256(), 0
    async with http.get(sim.file_url(job)) as response:
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == content_sha256(64, size)


async def test_module_entry_point_announces_its_url_and_stops_on_sigterm(http: aiohttp.ClientSession) -> None:
    """`python -m worker.simulator --port 0` prints its URL first, serves, and exits 0 on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.simulator",
        "--port",
        "0",
        "--api-key",
        "cl-other",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        assert line.startswith("simulator listening on http://127.0.0.1:")
        url = line.removeprefix("simulator listening on ")
        async with http.post(f"{url}/_sim/cloudlayer/jobs", json={"id": "j1", "pending_s": 0}) as response:
            assert response.status == 201
        async with http.get(f"{url}/v2/jobs/j1", headers={"X-API-Key": "cl-other"}) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert process.stdout is not None
        await process.stdout.read()


async def test_client_abandoning_a_download_leaves_the_server_healthy(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """A client that hangs up mid-body ends that stream quietly; the next request is served normally."""
    job = sim.add_cloudlayer_job(pending_s=0, size=256 << 20)
    async with http.get(sim.file_url(job)) as response:
        await response.content.readexactly(1 << 20)
        response.close()
    await asyncio.sleep(0.05)
    async with http.get(sim.file_url(job), headers={"Range": "bytes=0-9"}) as response:
        assert response.status == 206
        assert await response.read() == content_bytes(job.seed, 10)
    assert [r.status for r in sim.requests()] == [200, 206]


async def test_stall_body_fault_pauses_mid_body(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """stall_body sends half the file, nothing for delay_s, then the rest; the log counts the bytes."""
    job = sim.add_cloudlayer_job(pending_s=0, size=200_000, seed=9)
    sim.add_fault(route="files", kind="stall_body", delay_s=0.4, count=1)
    arrivals: list[tuple[float, int]] = []
    async with http.get(sim.file_url(job)) as response:
        body = b""
        async for piece in response.content.iter_any():
            body += piece
            arrivals.append((time.monotonic(), len(body)))
    assert body == content_bytes(9, 200_000)
    gaps = [(later[0] - earlier[0], earlier[1]) for earlier, later in itertools.pairwise(arrivals)]
    longest, at = max(gaps)
    assert longest >= 0.35 and at == 100_000
    (record,) = sim.requests("files")
    assert record.fault == "stall_body" and record.body_bytes == 200_000


async def test_reset_body_fault_resets_mid_body(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """reset_body sends half the file, then resets the connection: the client sees a broken body."""
    job = sim.add_cloudlayer_job(pending_s=0, size=400_000, seed=3)
    sim.add_fault(route="files", kind="reset_body", count=1)
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(sim.file_url(job)) as response:
            async for piece in response.content.iter_any():
                received += piece
    assert 0 < len(received) <= 200_000 and received == content_bytes(3, 400_000)[: len(received)]
    (record,) = sim.requests("files")
    assert record.fault == "reset_body" and record.body_bytes == 200_000
