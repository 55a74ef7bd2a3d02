"""LayersProvider against the simulated Layers partner API on loopback (and a raw host for bad bodies)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import RecordingSleep
from tests.simulator.conftest import T0
from tests.simulator.conftest import FakeClock as SimFakeClock
from worker.config import HttpSettings
from worker.errors import AssetSetChanged, InvalidJob, UpstreamRejected, UpstreamUnavailable
from worker.httpclient import HttpClient, new_api_session
from worker.models import AssetRef, Failed, Job, JobKey, JobState, Pending, Ready
from worker.providers.layers import LayersProvider, LayersSettings, asset_ref, parse_target, read_error
from worker.ratelimit import RateLimiter
from worker.simulator import Simulator, SimulatorState, start_simulator
from worker.simulator.layers_content import LayersContainer, asset_sha256

HTTP = HttpSettings(request_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05, read_timeout_s=5.0)
# Far above any simulator budget used here, so only the tests about the budget ever wait for it.
FAST = 600_000.0


class FakeClock(SimFakeClock):
    """The simulator's state clock and the provider's wall clock, moved by hand or by sleeps."""

    async def sleep(self, seconds: float) -> None:
        """Virtual time: a wait moves the clock at once (the simulator then sees time pass)."""
        self.advance(seconds)
        await asyncio.sleep(0)


class ClockSleep(RecordingSleep):
    """A retry sleep that records each delay and lets that much virtual time pass."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await self._clock.sleep(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    async with start_simulator(state=SimulatorState(clock=clock)) as simulator:
        yield simulator


@pytest.fixture
async def http(clock: FakeClock, retry_sleep: RecordingSleep) -> AsyncIterator[HttpClient]:
    async with new_api_session(HTTP) as session:
        yield HttpClient(session, HTTP, sleep=retry_sleep, wall_clock=clock)


def provider_for(
    url: str,
    http: HttpClient,
    clock: FakeClock,
    *,
    key: str | None = "lp_sim_key",
    limiter: RateLimiter | None = None,
) -> LayersProvider:
    settings = LayersSettings(api_key=key, base_url=url)
    return LayersProvider(http, settings, limiter=limiter or RateLimiter(per_minute=FAST))


@pytest.fixture
def provider(sim: Simulator, http: HttpClient, clock: FakeClock) -> LayersProvider:
    return provider_for(sim.layers_url, http, clock)


def job(upstream_id: str, **provider_state: Any) -> Job:
    return Job(
        key=JobKey.parse(f"layers:{upstream_id}"),
        state=JobState.POLLING,
        submitted_at=T0,
        updated_at=T0,
        due_at=T0,
        provider_state=provider_state,
    )


def ready_container(sim: Simulator, **spec: object) -> LayersContainer:
    return sim.add_layers_container(queued_s=0, processing_s=0, **spec)


def routes(sim: Simulator) -> list[tuple[str, int | None]]:
    return [(r.route, r.status) for r in sim.requests()]


async def test_video_container_resolves_its_one_asset(
    sim: Simulator, provider: LayersProvider, http: HttpClient
) -> None:
    """A completed video container gives one AssetRef with every field its descriptor publishes."""
    container = ready_container(sim, format="video", size=5000)
    (asset,) = container.generation.assets
    outcome = await provider.poll(job(container.id))
    assert isinstance(outcome, Ready)
    assert outcome.provider_state == {"container_id": container.id}
    (ref,) = outcome.assets
    assert (ref.asset_id, ref.expected_size, ref.content_type, ref.ext) == (
        asset.asset_id,
        5000,
        "video/mp4",
        "mp4",
    )
    assert ref.expected_sha256 == asset_sha256(asset.seed, asset.size)
    assert ref.expires_at == T0 + 3600
    async with http.session.get(ref.url) as response:
        assert hashlib.sha256(await response.read()).hexdigest() == ref.expected_sha256
    assert provider.folder(job(container.id)) == container.id
    assert routes(sim) == [("layers.container", 200), ("layers.asset", 200), ("files", 200)]
    assert all(r.had_authorization for r in sim.requests() if r.route.startswith("layers."))


async def test_slideshow_assets_come_in_slide_order(sim: Simulator, provider: LayersProvider) -> None:
    """A slideshow's images are resolved one descriptor each, in the container's slide order."""
    container = ready_container(sim, format="slideshow", sizes=[10, 20, 30, 40])
    outcome = await provider.poll(job(container.id))
    assert isinstance(outcome, Ready)
    assert [r.asset_id for r in outcome.assets] == [a.asset_id for a in container.generation.assets]
    assert [(r.expected_size, r.ext) for r in outcome.assets] == [(n, "jpg") for n in (10, 20, 30, 40)]
    asset_paths = [r.path for r in sim.requests("layers.asset")]
    assert asset_paths == [
        f"/v1/content/{container.id}/assets/{a.asset_id}" for a in container.generation.assets
    ]


async def test_bare_uuid_key_is_a_container(sim: Simulator, provider: LayersProvider) -> None:
    """A bare (even upper-case) uuid names a container and is normalised to cnt_<uuid>."""
    container = ready_container(sim)
    key = job(container.uuid.upper())
    assert provider.folder(key) == container.id
    outcome = await provider.poll(key)
    assert isinstance(outcome, Ready)
    assert outcome.provider_state == {"container_id": container.id}
    assert sim.requests("layers.container")[0].path == f"/v1/content/{container.id}"


@pytest.mark.parametrize("bad", ["job_", "cnt_nope", "12345", "video-9c855048"])
def test_other_ids_are_invalid_jobs(bad: str) -> None:
    """Anything but job_<id>, cnt_<uuid> or a bare uuid is refused before any request."""
    with pytest.raises(InvalidJob, match="neither a generation job"):
        parse_target(bad)


async def test_job_leads_to_its_container(sim: Simulator, provider: LayersProvider) -> None:
    """A completed job goes on to its container in the same poll; later polls skip the job."""
    layers_job = sim.add_layers_job(running_s=0, container={"format": "slideshow", "slides": 2})
    container_id = f"cnt_{layers_job.container_uuid}"
    assert provider.folder(job(layers_job.id)) == layers_job.id
    first = await provider.poll(job(layers_job.id))
    assert isinstance(first, Ready)
    assert first.provider_state == {"container_id": container_id}
    assert len(first.assets) == 2
    assert [r for r, _ in routes(sim)] == ["layers.job", "layers.container", "layers.asset", "layers.asset"]
    later = job(layers_job.id, **first.provider_state)
    assert provider.folder(later) == container_id
    second = await provider.poll(later)
    assert isinstance(second, Ready)
    assert second.assets[0].asset_id == first.assets[0].asset_id
    assert [r for r, _ in routes(sim)][4:] == ["layers.container", "layers.asset", "layers.asset"]


async def test_running_job_is_polled_with_its_etag(
    sim: Simulator, provider: LayersProvider, clock: FakeClock
) -> None:
    """While a job is unchanged its ETag earns a bodiless 304: Pending, provider_state untouched."""
    layers_job = sim.add_layers_job(running_s=10)
    first = await provider.poll(job(layers_job.id))
    assert isinstance(first, Pending)
    assert first.status == "running"
    assert first.provider_state["etag"].startswith('"')
    clock.advance(1)
    # The engine keeps its own keys next to the provider's; a 304 must hand them all back.
    state = {**first.provider_state, "last_status": "running"}
    assert await provider.poll(job(layers_job.id, **state)) == Pending("running", state)
    clock.advance(9)
    done = await provider.poll(job(layers_job.id, **state))
    assert isinstance(done, Ready)
    assert [r.status for r in sim.requests("layers.job")] == [200, 304, 200]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("failed", Failed("moderation", "Refused by moderation")),
        ("canceled", Failed("canceled", "Layers job job_x canceled")),
    ],
)
async def test_failed_or_canceled_job(
    sim: Simulator, provider: LayersProvider, outcome: str, expected: Failed
) -> None:
    """A failed job fails with its error code lower-cased; a canceled one with ``canceled``."""
    sim.add_layers_job(
        id="job_x",
        running_s=0,
        outcome=outcome,
        error={"code": "MODERATION", "message": "Refused by moderation"},
    )
    assert await provider.poll(job("job_x")) == expected


async def test_container_states(sim: Simulator, provider: LayersProvider, clock: FakeClock) -> None:
    """queued/processing/generating are Pending; failed carries lastError, canceled fails as canceled."""
    queued = sim.add_layers_container(queued_s=5)
    generating = sim.add_layers_container(queued_s=0, processing_s=None, status_style="generating")
    failed = ready_container(
        sim, outcome="failed", last_error={"code": "RENDER_TIMEOUT", "message": "Too slow"}
    )
    canceled = ready_container(sim, outcome="canceled")
    assert await provider.poll(job(queued.id)) == Pending("queued", {"container_id": queued.id})
    assert await provider.poll(job(generating.id)) == Pending("generating", {"container_id": generating.id})
    assert await provider.poll(job(failed.id)) == Failed("render_timeout", "Too slow")
    outcome = await provider.poll(job(canceled.id))
    assert isinstance(outcome, Failed)
    assert outcome.code == "canceled"


async def test_legacy_container_leaves_optional_fields_none(sim: Simulator, provider: LayersProvider) -> None:
    """Without size, checksum, mime type and expiry the AssetRef says so; the extension comes from the URL."""
    container = ready_container(sim, legacy=True)
    outcome = await provider.poll(job(container.id))
    assert isinstance(outcome, Ready)
    (ref,) = outcome.assets
    assert (ref.expected_size, ref.expected_sha256, ref.content_type, ref.expires_at) == (
        None,
        None,
        None,
        None,
    )
    assert ref.ext == "mp4"


def test_descriptor_oddities_never_crash() -> None:
    """Nonsense optional fields are dropped; a descriptor without a url is a malformed response."""
    ref = asset_ref(
        {
            "assetId": "a",
            "url": "https://cdn.example/x",
            "sizeBytes": True,
            "checksumSha256": "not-a-digest",
            "mimeType": 7,
            "expiresAt": "yesterday",
        },
        where="t",
    )
    assert ref == AssetRef(asset_id="a", url="https://cdn.example/x")
    assert (
        asset_ref({"assetId": "a", "url": "u", "expiresAt": "2023-11-14T22:13:20"}, where="t").expires_at
        == T0
    )
    with pytest.raises(UpstreamRejected) as caught:
        asset_ref({"assetId": "a"}, where="t")
    assert caught.value.code == "malformed_response"


async def test_missing_scope_is_named(sim: Simulator, http: HttpClient, clock: FakeClock) -> None:
    """FORBIDDEN_SCOPE becomes forbidden_scope with the scope to grant and the request id."""
    sim.set_layers_key("lp_jobs_only", ["jobs:read"])
    container = ready_container(sim)
    provider = provider_for(sim.layers_url, http, clock, key="lp_jobs_only")
    with pytest.raises(UpstreamRejected) as caught:
        await provider.poll(job(container.id))
    assert (caught.value.code, caught.value.status) == ("forbidden_scope", 403)
    assert "lacks the scope content:read" in caught.value.message
    assert "LAYERS_API_KEY" in caught.value.message
    assert "(requestId req_" in caught.value.message


@pytest.mark.parametrize("key", ["job_missing", "cnt_00000000-0000-4000-8000-000000000000"])
async def test_unknown_id_is_not_found(sim: Simulator, provider: LayersProvider, key: str) -> None:
    """An unknown job or container fails permanently with not_found and the request id."""
    with pytest.raises(UpstreamRejected) as caught:
        await provider.poll(job(key))
    assert (caught.value.code, caught.value.status) == ("not_found", 404)
    assert "(requestId req_" in caught.value.message


async def test_bad_or_missing_key(sim: Simulator, http: HttpClient, clock: FakeClock) -> None:
    """A refused key is unauthenticated (pointing at LAYERS_API_KEY); no key at all sends nothing."""
    container = ready_container(sim)
    with pytest.raises(UpstreamRejected) as caught:
        await provider_for(sim.layers_url, http, clock, key="lp_wrong").poll(job(container.id))
    assert (caught.value.code, caught.value.status) == ("unauthenticated", 401)
    assert "check LAYERS_API_KEY (requestId req_" in caught.value.message
    with pytest.raises(UpstreamRejected) as caught:
        await provider_for(sim.layers_url, http, clock, key=None).poll(job(container.id))
    assert caught.value.code == "unauthenticated"
    assert "LAYERS_API_KEY" in caught.value.message
    assert len(sim.requests()) == 1


def test_error_reader_falls_back_without_the_envelope() -> None:
    """A proxy's page instead of the envelope still gives the status's meaning."""
    assert read_error(403, b"<html>denied</html>") == ("forbidden", "<html>denied</html>")
    assert read_error(502, b"Bad Gateway") == ("unavailable", "Bad Gateway")
    assert read_error(503, b'{"error": {"message": "busy"}}') == ("unavailable", "busy")
    assert read_error(418, b"{}") == ("upstream_rejected", "{}")


async def test_rate_limited_sleeps_exactly_retry_after(
    sim: Simulator, clock: FakeClock, retry_sleep: RecordingSleep
) -> None:
    """A 429 RATE_LIMITED is retried after exactly its Retry-After; if it persists, rate_limited."""
    sim.set_layers_rate(1)
    container = ready_container(sim)
    sleep = ClockSleep(clock)
    async with new_api_session(HTTP) as session:
        patient = HttpClient(session, HTTP, sleep=sleep, wall_clock=clock)
        outcome = await provider_for(sim.layers_url, patient, clock).poll(job(container.id))
        assert isinstance(outcome, Ready)
        assert sleep.delays == [60.0]
        assert routes(sim) == [("layers.container", 200), ("layers.asset", 429), ("layers.asset", 200)]
        # The same budget with a sleep that lets no time pass: every attempt is refused.
        hasty = HttpClient(session, HTTP, sleep=retry_sleep, wall_clock=clock)
        with pytest.raises(UpstreamUnavailable) as caught:
            await provider_for(sim.layers_url, hasty, clock).poll(job(container.id))
    assert (caught.value.code, caught.value.retry_after_s) == ("rate_limited", 60.0)
    assert retry_sleep.delays == [60.0, 60.0]


async def test_refresh_gives_a_fresh_url(sim: Simulator, provider: LayersProvider, clock: FakeClock) -> None:
    """Near its expiresAt an asset is re-read: same asset and checksum, new URL and expiry."""
    container = ready_container(sim, url_ttl_s=600)
    outcome = await provider.poll(job(container.id))
    assert isinstance(outcome, Ready)
    (old,) = outcome.assets
    assert old.expires_at == T0 + 600
    clock.advance(550)
    fresh = await provider.refresh(job(container.id, **outcome.provider_state), old)
    assert (fresh.asset_id, fresh.expected_sha256) == (old.asset_id, old.expected_sha256)
    assert fresh.url != old.url
    assert fresh.expires_at == T0 + 550 + 600


async def test_refresh_rereads_the_container_after_a_descriptor_404(
    sim: Simulator, provider: LayersProvider
) -> None:
    """A 404 from the descriptor is taken as a set change: the container is read again."""
    container = ready_container(sim)
    outcome = await provider.poll(job(container.id))
    assert isinstance(outcome, Ready)
    sim.add_fault(route="layers.asset", kind="status", status=404, count=1)
    fresh = await provider.refresh(job(container.id), outcome.assets[0])
    assert fresh.asset_id == outcome.assets[0].asset_id
    assert routes(sim)[2:] == [
        ("layers.container", 200),
        ("layers.asset", 404),
        ("layers.container", 200),
        ("layers.asset", 200),
    ]


async def test_refresh_after_regenerate_names_the_new_set(
    sim: Simulator, provider: LayersProvider, clock: FakeClock
) -> None:
    """After a regenerate the old asset is gone: AssetSetChanged with the new set, or None while it runs."""
    layers_job = sim.add_layers_job(running_s=0, container={"format": "slideshow", "slides": 2})
    outcome = await provider.poll(job(layers_job.id))
    assert isinstance(outcome, Ready)
    done = job(layers_job.id, **outcome.provider_state)
    new = sim.regenerate_layers_container(layers_job.container_uuid)
    with pytest.raises(AssetSetChanged) as caught:
        await provider.refresh(done, outcome.assets[1])
    assets = caught.value.assets
    assert assets is not None
    refs = [a for a in assets if isinstance(a, AssetRef)]
    assert [r.asset_id for r in refs] == [a.asset_id for a in new.generation.assets]
    assert not {r.asset_id for r in refs} & {r.asset_id for r in outcome.assets}
    sim.regenerate_layers_container(layers_job.container_uuid, processing_s=5)
    with pytest.raises(AssetSetChanged) as caught:
        await provider.refresh(done, refs[0])
    assert caught.value.assets is None


async def backlog(sim: Simulator, provider: LayersProvider, size: int) -> list[object]:
    containers = [ready_container(sim) for _ in range(size)]
    return await asyncio.gather(*(provider.poll(job(c.id)) for c in containers), return_exceptions=True)


async def test_backlog_within_the_read_budget_draws_no_429(
    sim: Simulator, http: HttpClient, clock: FakeClock
) -> None:
    """200 containers polled at once through one limiter at the vendor's 120 reads/min: no 429."""
    # Virtual time: 400 reads at 2/s would take 200 real seconds. The limiter waits on the clock
    # the simulator's bucket refills by, so both budgets are measured the same way.
    sim.set_layers_rate(120)
    limiter = RateLimiter(per_minute=120, monotonic=clock, sleep=clock.sleep)
    results = await backlog(sim, provider_for(sim.layers_url, http, clock, limiter=limiter), 200)
    assert all(isinstance(r, Ready) for r in results)
    statuses = [r.status for r in sim.requests()]
    assert (len(statuses), statuses.count(429)) == (400, 0)
    # A burst of 4 (2 s of budget), then 2 reads/s.
    assert clock.now - T0 == pytest.approx((400 - 4) / 2, abs=1)


async def test_backlog_beyond_the_read_budget_draws_429s(
    sim: Simulator, http: HttpClient, clock: FakeClock
) -> None:
    """The same backlog with no effective client limit empties the vendor's bucket and earns 429s."""
    sim.set_layers_rate(120)
    results = await backlog(
        sim, provider_for(sim.layers_url, http, clock, limiter=RateLimiter(per_minute=FAST)), 200
    )
    assert [r.status for r in sim.requests()].count(429) > 0
    refused = [r for r in results if isinstance(r, UpstreamUnavailable)]
    assert refused
    assert {r.code for r in refused} == {"rate_limited"}


async def test_malformed_bodies_are_rejected(http: HttpClient, clock: FakeClock) -> None:
    """A body of the wrong shape is malformed_response, never a crash."""
    bodies: dict[str, object] = {
        "cnt_00000000-0000-4000-8000-000000000001": [1, 2],
        "cnt_00000000-0000-4000-8000-000000000002": {"status": 5},
        "cnt_00000000-0000-4000-8000-000000000003": {"status": "completed", "assets": [{"kind": "video"}]},
        "cnt_00000000-0000-4000-8000-000000000004": {"status": "completed"},
    }

    async def container(request: web.Request) -> web.Response:
        return web.json_response(bodies[request.match_info["cid"]])

    async def completed_job(request: web.Request) -> web.Response:
        return web.json_response({"jobId": "job_1", "status": "completed", "result": {"containerId": "nope"}})

    app = web.Application()
    app.router.add_get("/v1/content/{cid}", container)
    app.router.add_get("/v1/jobs/{jid}", completed_job)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        provider = provider_for(f"http://127.0.0.1:{port}", http, clock)
        for key in [*bodies, "job_1"]:
            with pytest.raises(UpstreamRejected) as caught:
                await provider.poll(job(key))
            assert caught.value.code == "malformed_response", key
    finally:
        await runner.cleanup()
