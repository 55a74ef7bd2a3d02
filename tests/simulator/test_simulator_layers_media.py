"""Layers media in the simulator: checksums, URL expiry, regeneration, rate limits, faults (over loopback)."""

from __future__ import annotations

import hashlib
import random
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.simulator.conftest import T0, FakeClock
from worker.simulator import (
    LayersContainer,
    Simulator,
    content_bytes,
    content_sha256,
)
from worker.simulator.layers_content import parse_container_ref
from worker.simulator.layers_jobs import ulid_like
from worker.simulator.ratelimit import RateLimiter
from worker.simulator.specs import SpecError

BEARER = {"Authorization": "Bearer lp_sim_key"}


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = BEARER
) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json()


async def descriptor(
    http: aiohttp.ClientSession, sim: Simulator, container: LayersContainer, index: int = 0
) -> Any:
    asset_id = container.generation.assets[index].asset_id
    status, body = await get_json(http, f"{sim.layers_url}/v1/content/{container.id}/assets/{asset_id}")
    assert status == 200
    return body


async def download(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as response:
        return response.status, await response.read()


def ready(sim: Simulator, **spec: object) -> LayersContainer:
    """A container that is completed at once."""
    return sim.add_layers_container(queued_s=0, processing_s=0, **spec)


async def test_checksum_is_the_sha256_of_the_served_bytes(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """checksumSha256 and sizeBytes describe exactly the bytes the media host serves, slide by slide."""
    container = ready(sim, format="slideshow", sizes=[70_000, 1, 0], seed=3)
    for index, size in enumerate((70_000, 1, 0)):
        body = await descriptor(http, sim, container, index)
        status, data = await download(http, body["url"])
        assert status == 200
        assert len(data) == body["sizeBytes"] == size
        assert hashlib.sha256(data).hexdigest() == body["checksumSha256"] == content_sha256(3 + index, size)


async def test_wrong_checksum_publishes_a_mismatch(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """wrong_checksum publishes a well-formed sha256 that the served bytes do not have."""
    container = ready(sim, wrong_checksum=True, size=4096)
    body = await descriptor(http, sim, container)
    _, data = await download(http, body["url"])
    assert len(data) == body["sizeBytes"] == 4096
    assert len(body["checksumSha256"]) == 64
    assert body["checksumSha256"] != hashlib.sha256(data).hexdigest()


async def test_media_supports_ranges_and_head(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Layers media come from the shared file host: Range answers 206, HEAD the length and type."""
    container = ready(sim, size=10_000, seed=8)
    url = (await descriptor(http, sim, container))["url"]
    async with http.get(url, headers={"Range": "bytes=9000-"}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == "bytes 9000-9999/10000"
        assert await response.read() == content_bytes(8, 10_000)[9000:]
    async with http.head(url) as response:
        assert (response.headers["Content-Length"], response.headers["Content-Type"]) == (
            "10000",
            "video/mp4",
        )


async def test_url_expires_on_the_clock_and_a_reread_mints_a_fresh_one(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A media URL works until expiresAt, then answers 403; reading the descriptor again gives a new URL
    and a later expiresAt. url_ttl_s null publishes no expiresAt and never expires."""
    container = ready(sim, url_ttl_s=60, size=100)
    first = await descriptor(http, sim, container)
    assert datetime.fromisoformat(first["expiresAt"]).timestamp() == T0 + 60
    clock.advance(60)
    assert (await download(http, first["url"]))[0] == 200
    clock.advance(1)
    status, data = await download(http, first["url"])
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in data
    second = await descriptor(http, sim, container)
    assert second["url"] != first["url"]
    assert datetime.fromisoformat(second["expiresAt"]).timestamp() == T0 + 121
    assert (await download(http, second["url"]))[0] == 200
    durable = ready(sim, url_ttl_s=None, size=100)
    body = await descriptor(http, sim, durable)
    assert "expiresAt" not in body
    clock.advance(30 * 24 * 3600)
    assert (await download(http, body["url"]))[0] == 200


async def test_regenerate_replaces_assets_and_removes_the_old_ones(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Regenerating keeps the container id and gives new asset ids, bytes and URLs; the old descriptor and
    the old media answer 404; a job naming the container now lists the new assets."""
    job = sim.add_layers_job(running_s=0, container={"size": 2048})
    container = sim.layers_container(job.container_uuid)
    old = await descriptor(http, sim, container)
    async with http.get(f"{sim.layers_url}/v1/jobs/{job.id}", headers=BEARER) as response:
        old_etag = response.headers["ETag"]
    renewed = sim.regenerate_layers_container(container.id)
    assert renewed.id == container.id
    new = await descriptor(http, sim, renewed)
    assert new["assetId"] != old["assetId"]
    assert new["checksumSha256"] != old["checksumSha256"]
    status, body = await get_json(http, f"{sim.layers_url}/v1/content/{container.id}/assets/{old['assetId']}")
    assert status == 404
    assert body["error"]["code"] == "NOT_FOUND"
    status, data = await download(http, old["url"])
    assert status == 404
    assert b"NoSuchKey" in data
    status, data = await download(http, new["url"])
    assert hashlib.sha256(data).hexdigest() == new["checksumSha256"]
    _, listed = await get_json(http, f"{sim.layers_url}/v1/content/{container.uuid}")
    assert [a["assetId"] for a in listed["assets"]] == [new["assetId"]]
    async with http.get(
        f"{sim.layers_url}/v1/jobs/{job.id}", headers={**BEARER, "If-None-Match": old_etag}
    ) as response:
        assert response.status == 200
        assert (await response.json())["result"]["assets"] == [{"assetId": new["assetId"], "kind": "video"}]


async def test_regenerate_can_keep_old_media_and_reprocess(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """keep_old_assets_s leaves the old media downloadable for that long; processing_s puts the container
    back through processing with no assets until it completes again."""
    container = ready(sim, format="slideshow", slides=2, size=512, url_ttl_s=None)
    old = await descriptor(http, sim, container, 1)
    async with http.post(
        f"{sim.url}/_sim/layers/containers/{container.id}/regenerate",
        json={"keep_old_assets_s": 30, "processing_s": 5},
    ) as response:
        assert response.status == 200
        regenerated = await response.json()
    assert [a["assetId"].split("-")[:2] for a in regenerated["assets"]] == [["slide", "1"], ["slide", "2"]]
    assert [a["size"] for a in regenerated["assets"]] == [512, 512]
    _, body = await get_json(http, f"{sim.layers_url}/v1/content/{container.id}")
    assert (body["status"], body["assets"], body["preview"]) == ("processing", [], None)
    assert (await download(http, old["url"]))[0] == 200
    new_id = regenerated["assets"][0]["assetId"]
    assert (await get_json(http, f"{sim.layers_url}/v1/content/{container.id}/assets/{new_id}"))[0] == 404
    clock.advance(5)
    _, body = await get_json(http, f"{sim.layers_url}/v1/content/{container.id}")
    assert body["status"] == "completed"
    assert [a["assetId"] for a in body["assets"]] == [a["assetId"] for a in regenerated["assets"]]
    _, data = await download(http, body["assets"][0]["url"])
    assert hashlib.sha256(data).hexdigest() == regenerated["assets"][0]["sha256"]
    clock.advance(24.9)
    assert (await download(http, old["url"]))[0] == 200
    clock.advance(0.1)
    assert (await download(http, old["url"]))[0] == 404


async def test_standard_tier_allows_120_reads_a_minute(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """The 121st read within a minute gets 429 RATE_LIMITED with an integer Retry-After; the bucket refills
    on the clock; media downloads and other keys do not touch it."""
    container = ready(sim, size=10)
    url = f"{sim.layers_url}/v1/content/{container.id}"
    _, body = await get_json(http, url)
    media = body["assets"][0]["url"]
    sim.set_layers_key("lp_other")
    for _ in range(119):
        assert (await get_json(http, url))[0] == 200
    for _ in range(5):
        assert (await download(http, media))[0] == 200
    async with http.get(url, headers=BEARER) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"  # 2 tokens a second: the next one in 0.5 s
        body = await response.json()
    assert body["error"]["code"] == "RATE_LIMITED"
    assert (await get_json(http, url, {"X-Api-Key": "lp_other"}))[0] == 200
    clock.advance(0.5)
    assert (await get_json(http, url))[0] == 200
    assert (await get_json(http, url))[0] == 429
    assert sim.requests("files")[-1].status == 200


async def test_retry_after_counts_whole_seconds_until_a_token(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """At 6 reads a minute an empty bucket says Retry-After 10, then fewer as time passes; a 404 is a
    read too; sleeping exactly Retry-After finds a token."""
    job = sim.add_layers_job(running_s=None)
    async with http.put(f"{sim.url}/_sim/layers/rate", json={"reads_per_min": 6}) as response:
        assert (await response.json())["reads_per_min"] == 6
    url = f"{sim.layers_url}/v1/jobs/{job.id}"
    statuses = [(await get_json(http, url))[0] for _ in range(5)]
    statuses.append((await get_json(http, f"{sim.layers_url}/v1/jobs/nope"))[0])
    assert statuses == [200] * 5 + [404]
    for elapsed, expected in ((0, "10"), (2.5, "8"), (7.4, "1")):
        clock.advance(elapsed)
        async with http.get(url, headers=BEARER) as response:
            assert (response.status, response.headers["Retry-After"]) == (429, expected)
    clock.advance(0.1)
    assert (await get_json(http, url))[0] == 200


async def test_rate_limit_can_be_disabled_or_set_by_tier(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """reads_per_min null switches the read limit off; a tier sets all three limits."""
    container = ready(sim)
    url = f"{sim.layers_url}/v1/content/{container.id}"
    sim.set_layers_rate(None)
    for _ in range(150):
        assert (await get_json(http, url))[0] == 200
    async with http.put(f"{sim.url}/_sim/layers/rate", json={"tier": "pilot"}) as response:
        assert await response.json() == {
            "tier": "pilot",
            "reads_per_min": 1200,
            "writes_per_min": 600,
            "job_starts_per_min": 60,
        }
    sim.set_layers_rate(2)
    assert [(await get_json(http, url))[0] for _ in range(3)] == [200, 200, 429]
    sim.set_layers_tier("standard")
    _, limits = await get_json(http, f"{sim.url}/_sim/layers/rate", headers=None)
    assert limits["reads_per_min"] == 120
    async with http.put(f"{sim.url}/_sim/layers/rate", json={"reads_per_min": 0}) as response:
        assert response.status == 400


@pytest.mark.parametrize(("retry_after", "expected"), [(None, "1"), ("7", "7")])
async def test_status_fault_429_renders_the_layers_envelope(
    sim: Simulator, http: aiohttp.ClientSession, retry_after: str | None, expected: str
) -> None:
    """A 429 fault on a Layers route answers RATE_LIMITED with Retry-After (the rule's, else 1 s)."""
    container = ready(sim)
    sim.add_fault(route="layers.container", kind="status", status=429, retry_after=retry_after)
    async with http.get(f"{sim.layers_url}/v1/content/{container.id}", headers=BEARER) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == expected
        body = await response.json()
    assert body["error"]["code"] == "RATE_LIMITED"
    assert body["error"]["requestId"].startswith("req_")
    assert (await get_json(http, f"{sim.layers_url}/v1/content/{container.id}"))[0] == 200


@pytest.mark.parametrize(("status", "code"), [(500, "INTERNAL"), (503, "UNAVAILABLE"), (502, "UNAVAILABLE")])
async def test_status_faults_on_every_layers_route(
    sim: Simulator, http: aiohttp.ClientSession, status: int, code: str
) -> None:
    """layers.* status faults hit jobs, containers and descriptors with the Layers error codes."""
    job = sim.add_layers_job(running_s=0)
    container = sim.layers_container(job.container_uuid)
    asset_id = container.generation.assets[0].asset_id
    sim.add_fault(route="layers.*", kind="status", status=status, count=3)
    for path in (f"/jobs/{job.id}", f"/content/{container.id}", f"/content/{container.id}/assets/{asset_id}"):
        got, body = await get_json(http, sim.layers_url + "/v1" + path)
        assert (got, body["error"]["code"]) == (status, code)
    assert [r.fault for r in sim.requests()] == ["status"] * 3


async def test_reset_and_stall_faults_on_layers_routes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Connection resets and stalls work on Layers API routes like on cloudlayer's."""
    container = ready(sim)
    url = f"{sim.layers_url}/v1/content/{container.id}"
    sim.add_fault(route="layers.container", kind="reset", count=2)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_json(http, url)
    sim.add_fault(route="layers.container", kind="stall", delay_s=0.05)
    assert (await get_json(http, url))[0] == 200
    assert [(r.fault, r.status) for r in sim.requests()] == [("reset", None), ("reset", None), ("stall", 200)]


async def test_media_faults_match_by_asset_id(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """File faults aimed at one Layers asset id hit only its media: wrong bytes, expired, replaced, short."""
    container = ready(sim, format="slideshow", slides=2, size=20_000)
    target, spared = container.generation.assets
    target_url = (await descriptor(http, sim, container, 0))["url"]
    spared_url = (await descriptor(http, sim, container, 1))["url"]
    sim.add_fault(route="files", kind="wrong_bytes", match=target.asset_id)
    assert (await download(http, spared_url))[1] == content_bytes(spared.seed, 20_000)
    _, data = await download(http, target_url)
    assert len(data) == 20_000 and hashlib.sha256(data).hexdigest() != content_sha256(target.seed, 20_000)
    sim.add_fault(route="files", kind="expired", style="410", match=target.asset_id)
    assert (await download(http, target_url))[0] == 410
    sim.add_fault(route="files", kind="replaced", match=target.asset_id)
    assert (await download(http, target_url))[0] == 404
    sim.add_fault(route="files", kind="short_body", missing_bytes=10, match=target.asset_id)
    assert len((await download(http, target_url))[1]) == 19_990
    assert (await download(http, target_url))[1] == content_bytes(target.seed, 20_000)


def test_token_bucket_is_per_key_and_refills_continuously() -> None:
    """A bucket starts full, refuses when empty with the wait for one token, and refills at limit/60 per s."""
    limiter = RateLimiter()
    assert all(limiter.take("a", "read", 0.0) is None for _ in range(120))
    assert limiter.take("a", "read", 0.0) == pytest.approx(0.5)
    assert limiter.take("b", "read", 0.0) is None
    assert limiter.take("a", "read", 0.25) == pytest.approx(0.25)
    assert limiter.take("a", "read", 0.5) is None
    assert limiter.take("a", "read", 10**6) is None  # refill is capped at the capacity
    assert sum(limiter.take("a", "read", 10**6) is None for _ in range(200)) == 119
    assert limiter.take("a", "job_start", 0.0) is None
    with pytest.raises(SpecError):
        limiter.configure({"tier": "gold"})


@settings(max_examples=100, deadline=None)
@given(
    per_min=st.integers(min_value=1, max_value=600),
    gaps=st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=300),
)
def test_token_bucket_never_allows_more_than_capacity_plus_refill(per_min: int, gaps: list[float]) -> None:
    """Over any request pattern, allowed requests never exceed capacity + rate * elapsed time."""
    limiter = RateLimiter()
    limiter.configure({"reads_per_min": per_min})
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        if limiter.take("k", "read", now) is None:
            allowed += 1
        assert allowed <= per_min + now * per_min / 60 + 1e-9


@given(now=st.floats(min_value=0, max_value=2**47 / 1000, allow_nan=False), seed=st.integers(0, 2**32))
def test_job_ids_are_26_crockford_characters_ordered_by_time(now: float, seed: int) -> None:
    """ulid_like gives 26 Crockford base32 characters whose prefix sorts by creation time."""
    first = ulid_like(now, random.Random(seed))
    later = ulid_like(now + 1, random.Random(seed))
    assert len(first) == 26 and set(first) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    assert first[:10] < later[:10]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("cnt_9c855048-1111-4222-8333-444455556666", "9c855048-1111-4222-8333-444455556666"),
        ("9C855048-1111-4222-8333-444455556666", "9c855048-1111-4222-8333-444455556666"),
        ("cnt_9c8550481111422283334444555566660", None),
        ("{9c855048-1111-4222-8333-444455556666}", None),
        ("cnt_cnt_9c855048-1111-4222-8333-444455556666", None),
        ("../9c855048-1111-4222-8333-444455556666", None),
    ],
)
def test_container_refs(raw: str, expected: str | None) -> None:
    """Only cnt_<uuid> and bare uuids name a container."""
    assert parse_container_ref(raw) == expected
