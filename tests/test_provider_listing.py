"""Mirror mode, the providers' side: cloudlayer asset keys and account walks, Layers project walks, over
real HTTP against the simulator (churn, faults and forbidden projects included)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.conftest import RecordingSleep
from tests.simulator.conftest import T0, FakeClock
from worker.config import HttpSettings
from worker.errors import ConfigError, InvalidJob, UpstreamRejected
from worker.httpclient import HttpClient, new_api_session
from worker.models import Job, JobKey, JobState, Ready
from worker.naming import DEFAULT_TEMPLATE, render_key
from worker.providers import PROVIDERS, parse_key
from worker.providers import cloudlayer_listing as listing
from worker.providers.base import Lister, ListPage
from worker.providers.cloudlayer import SPEC as CLOUDLAYER
from worker.providers.cloudlayer import CloudlayerProvider, CloudlayerSettings
from worker.providers.cloudlayer_listing import parse_timestamp
from worker.providers.layers import SPEC as LAYERS
from worker.providers.layers import LayersProvider, LayersSettings
from worker.providers.layers_listing import SINCE_MARGIN_S
from worker.ratelimit import RateLimiter
from worker.simulator import Simulator, SimulatorState, content_bytes, start_simulator

HTTP = HttpSettings(request_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05, read_timeout_s=5.0)
PROJECT = "prj_01HXMIRROR"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    async with start_simulator(state=SimulatorState(clock=clock)) as simulator:
        yield simulator


@pytest.fixture
async def http(clock: FakeClock, retry_sleep: RecordingSleep) -> AsyncIterator[HttpClient]:
    async with new_api_session(HTTP) as api_session:
        yield HttpClient(api_session, HTTP, sleep=retry_sleep, wall_clock=clock)


@pytest.fixture
def cloudlayer(sim: Simulator, http: HttpClient) -> CloudlayerProvider:
    settings = CloudlayerSettings(api_key=sim.api_key, base_url=sim.url, api_version="v2")
    return CloudlayerProvider(http, settings, CLOUDLAYER.schedule)


@pytest.fixture
def layers(sim: Simulator, http: HttpClient) -> LayersProvider:
    settings = LayersSettings(api_key=sim.layers_api_key, base_url=sim.layers_url)
    return LayersProvider(http, settings, limiter=RateLimiter(per_minute=600_000))


def job(key: str) -> Job:
    return Job(key=JobKey.parse(key), state=JobState.POLLING, submitted_at=T0, updated_at=T0, due_at=T0)


async def walk_all(
    lister: Lister, scope: str = "", *, start: str | None = None, since: float | None = None
) -> list[ListPage]:
    return [page async for page in lister.walk(scope, start=start, since=since)]


def ids_of(pages: list[ListPage]) -> list[str]:
    return [item.item_id for page in pages for item in page.items]


# -- cloudlayer: walks under churn ------------------------------------------------------------------

ACCOUNT = 3000
# A walk of N assets reads ceil(N / stride) pages (stride 80) when nothing moves back past the overlap;
# churn of +3/-5 per read shrinks the list, so this bound (41 for 3,000) holds with a page to spare.
READ_BOUND = -(-ACCOUNT // (listing.PAGE_LIMIT - listing.OVERLAP)) + 3


async def churned_walk(
    sim: Simulator, cloudlayer: CloudlayerProvider, where: str
) -> tuple[set[str], list[str]]:
    """(assets alive from before the walk to after it, every id the walk listed) for a walk of
    ``ACCOUNT`` assets while each list read expires 5 (``where``) and adds 3."""
    before = set(sim.cloudlayer_asset_ids())
    sim.set_cloudlayer_churn(add=3, expire=5, expire_where=where)
    seen = ids_of(await walk_all(cloudlayer))
    sim.set_cloudlayer_churn()
    return before & set(sim.cloudlayer_asset_ids()), seen


@pytest.mark.parametrize("where", ["newest", "random"])
async def test_a_walk_under_churn_misses_no_asset(
    sim: Simulator, cloudlayer: CloudlayerProvider, where: str
) -> None:
    """3,000 assets, 3 added and 5 expired before every list read: every asset alive throughout is
    listed (duplicates allowed: the store dedupes), within READ_BOUND list reads."""
    sim.add_cloudlayer_assets(ACCOUNT, size=1024)
    survivors, seen = await churned_walk(sim, cloudlayer, where)
    assert len(survivors) > ACCOUNT - 5 * READ_BOUND
    assert survivors <= set(seen)
    reads = len(sim.requests("cloudlayer.assets"))
    assert ACCOUNT // listing.PAGE_LIMIT < reads <= READ_BOUND


@pytest.mark.parametrize("where", ["newest", "random"])
async def test_the_same_walk_without_overlap_misses_assets(
    sim: Simulator, cloudlayer: CloudlayerProvider, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """With pages that do not overlap (and so nothing to verify), expiries behind the walk pull unread
    assets across page boundaries: some that lived throughout are never listed."""
    monkeypatch.setattr(listing, "OVERLAP", 0)
    sim.add_cloudlayer_assets(ACCOUNT, size=1024)
    survivors, seen = await churned_walk(sim, cloudlayer, where)
    assert survivors - set(seen)


async def test_the_overlap_check_steps_back_when_the_list_moved_past_the_overlap(
    sim: Simulator, cloudlayer: CloudlayerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 random expiries per read move the unread part of the list back by more than the overlap
    (20) once the walk is past the middle: the check notices and reads a stride back, missing
    nothing, in at most two reads a page; with no step-backs allowed the same walk misses assets, and
    says so (``listing_moved_too_fast``)."""
    default = listing.MAX_STEP_BACKS
    results: dict[int, tuple[set[str], int, int]] = {}
    for step_backs in (default, 0):
        monkeypatch.setattr(listing, "MAX_STEP_BACKS", step_backs)
        sim.reset()
        sim.add_cloudlayer_assets(ACCOUNT, size=512)
        before = set(sim.cloudlayer_asset_ids())
        sim.set_cloudlayer_churn(expire=40, expire_where="random")
        with capture_logs() as events:
            seen = ids_of(await walk_all(cloudlayer))
        survivors = before & set(sim.cloudlayer_asset_ids())
        warned = sum(e["event"] == "listing_moved_too_fast" for e in events)
        results[step_backs] = (survivors - set(seen), len(survivors), warned)
        reads = len(sim.requests("cloudlayer.assets"))
        assert reads <= 2 * READ_BOUND
    missed, alive, warned = results[default]
    assert not missed and alive > 1000 and not warned
    missed, _, warned = results[0]
    assert missed and warned


async def test_a_short_page_ends_the_walk_and_resume_names_the_next_offset(
    sim: Simulator, cloudlayer: CloudlayerProvider
) -> None:
    """250 assets: pages at offsets 0, 80 and 160 (short: the end); each page's resume is the next
    read's offset, None after the last; the items are the list in order, overlaps read twice."""
    sim.add_cloudlayer_assets(250, size=2048, timestamp_style="firestore")
    ids = sim.cloudlayer_asset_ids()
    pages = await walk_all(cloudlayer)
    assert [page.resume for page in pages] == ["80", "160", None]
    assert [len(page.items) for page in pages] == [100, 100, 90]
    assert ids_of(pages) == ids[:100] + ids[80:180] + ids[160:]
    assert len(sim.requests("cloudlayer.assets")) == 3
    sim.reset()
    sim.add_cloudlayer_assets(7)
    pages = await walk_all(cloudlayer)  # a deployment that returns everything (or ten) at once
    assert [(len(page.items), page.resume) for page in pages] == [(7, None)]


async def test_listed_items_are_asset_keys_with_their_file(
    sim: Simulator, cloudlayer: CloudlayerProvider, clock: FakeClock
) -> None:
    """Each item is the asset key, its creation time and its file (url, size, ext): created ready."""
    jobs = sim.add_cloudlayer_assets(3, size=4096, ext="png", spacing_s=60, timestamp_style="iso")
    (page,) = await walk_all(cloudlayer)
    newest = page.items[0]
    assert newest.key == JobKey("cloudlayer", f"asset/{jobs[-1].asset_id}")
    assert newest.item_id == jobs[-1].asset_id
    assert newest.created_at == pytest.approx(clock() - 60, abs=0.01)
    (ref,) = newest.assets
    assert (ref.asset_id, ref.expected_size, ref.ext) == (jobs[-1].asset_id, 4096, "png")
    assert ref.url.startswith(sim.url)


async def test_a_walk_resumes_a_stride_before_its_saved_offset(
    sim: Simulator, cloudlayer: CloudlayerProvider
) -> None:
    """start="800" begins at 720 (insurance against moves while no walk watched); an unreadable one
    at the top."""
    sim.add_cloudlayer_assets(1000, size=256)
    ids = sim.cloudlayer_asset_ids()
    pages = await walk_all(cloudlayer, start="800")
    assert ids_of(pages)[:100] == ids[720:820]
    assert set(ids_of(pages)) == set(ids[720:])
    assert pages[0].resume == "800"
    with capture_logs() as events:
        again = await walk_all(cloudlayer, start="not-an-offset")
    assert ids_of(again)[:100] == ids[:100]
    assert any(e["event"] == "listing_resume_ignored" for e in events)


@pytest.mark.parametrize(
    ("fault", "after"),
    [
        ({}, 0),  # the default: an object where the array belongs
        ({"body": [1, 2]}, 0),
        ({"body": [{"id": 7}]}, 0),
        ({"body": [{"id": "a/b"}]}, 0),
        ({"text": "<html>oops</html>"}, 0),
        ({}, 2),  # the third page
    ],
)
async def test_a_malformed_list_answer_is_malformed_response(
    sim: Simulator, cloudlayer: CloudlayerProvider, fault: dict[str, object], after: int
) -> None:
    sim.add_cloudlayer_assets(500, size=64)
    sim.add_fault(route="cloudlayer.assets", kind="malformed", after=after, **fault)
    pages: list[ListPage] = []
    with pytest.raises(UpstreamRejected) as caught:
        async for page in cloudlayer.walk("", start=None, since=None):
            pages.append(page)
    assert caught.value.code == "malformed_response"
    assert "/v2/assets" in caught.value.message
    assert len(pages) == after


# -- cloudlayer: asset keys -------------------------------------------------------------------------


async def test_an_asset_key_polls_the_asset_and_downloads(
    sim: Simulator, cloudlayer: CloudlayerProvider, session: aiohttp.ClientSession
) -> None:
    """cloudlayer:asset/<id> is Ready at once with the asset's size, ext and a working url; refresh
    reads it again; the folder is "assets"."""
    (asset,) = sim.add_cloudlayer_assets(1, size=5000, ext="pdf")
    key = f"cloudlayer:asset/{asset.asset_id}"
    outcome = await cloudlayer.poll(job(key))
    assert isinstance(outcome, Ready)
    (ref,) = outcome.assets
    assert (ref.asset_id, ref.expected_size, ref.ext) == (asset.asset_id, 5000, "pdf")
    async with session.get(ref.url) as response:
        assert response.status == 200
        assert await response.read() == content_bytes(asset.seed, 5000)
    fresh = await cloudlayer.refresh(job(key), ref)
    assert fresh.asset_id == asset.asset_id and fresh.expected_size == 5000
    assert [r.route for r in sim.requests()][-1] == "cloudlayer.asset"
    folder = cloudlayer.folder(job(key))
    assert folder == "assets"
    rendered = render_key(DEFAULT_TEMPLATE, provider="cloudlayer", job=folder, asset=ref.asset_id, ext="pdf")
    assert rendered == f"cloudlayer/assets/{asset.asset_id}.pdf"
    assert cloudlayer.folder(job("cloudlayer:job_1")) == "job_1"


async def test_an_unknown_or_expired_asset_is_not_found(
    sim: Simulator, cloudlayer: CloudlayerProvider
) -> None:
    (asset,) = sim.add_cloudlayer_assets(1)
    sim.expire_cloudlayer_assets(ids=[asset.asset_id])
    for asset_id in ("ast_missing", asset.asset_id):
        with pytest.raises(UpstreamRejected) as caught:
            await cloudlayer.poll(job(f"cloudlayer:asset/{asset_id}"))
        assert (caught.value.code, caught.value.status) == ("not_found", 404)


def test_check_id_takes_job_ids_and_one_asset_id() -> None:
    """Plain job ids stay opaque; asset/ needs exactly one id; the API's pattern agrees."""
    import re

    pattern = re.compile(f"^(?:{CLOUDLAYER.id_pattern})$")
    for good in ("job_1", "4rWmzD2x", "foo/bar", "asset/ast_1", "asset/" + "x" * 250, "assets/x"):
        assert parse_key(f"cloudlayer:{good}") == JobKey("cloudlayer", good)
        assert pattern.match(good), good
    for bad in ("asset/", "asset/a/b", "asset/" + "x" * 251):
        with pytest.raises(InvalidJob):
            CLOUDLAYER.check_id(bad)
        assert not pattern.match(bad), bad
    assert PROVIDERS["cloudlayer"] is CLOUDLAYER


def test_timestamps_in_every_shape() -> None:
    assert parse_timestamp(1_700_000_000_123) == pytest.approx(1_700_000_000.123)
    assert parse_timestamp({"_seconds": 1_700_000_000, "_nanoseconds": 500_000_000}) == 1_700_000_000.5
    assert parse_timestamp("2023-11-14T22:13:20.000Z") == T0
    assert parse_timestamp("2023-11-14T22:13:20") == T0
    for junk in (None, True, "yesterday", {"seconds": 1}, [1]):
        assert parse_timestamp(junk) is None


# -- Layers -----------------------------------------------------------------------------------------


async def test_a_layers_walk_lists_exactly_the_completed_containers(
    sim: Simulator, layers: LayersProvider, clock: FakeClock
) -> None:
    """500 containers of mixed status: the 300 completed, newest first, in pages of 200 (two reads);
    each is the container job, its creation time from createdAt, no assets (polled as today)."""
    statuses = ["completed", "failed", "completed", "processing", "completed"]
    created = sim.add_layers_containers(PROJECT, 500, status=statuses)
    sim.add_layers_containers("prj_other", 5)
    completed = [c for c in reversed(created) if c.state_at(clock()) == "completed"]
    assert len(completed) == 300
    pages = await walk_all(layers, PROJECT)
    assert ids_of(pages) == [c.id for c in completed]
    assert [len(page.items) for page in pages] == [200, 100]
    assert pages[0].resume is not None and pages[-1].resume is None
    first = pages[0].items[0]
    assert first.key == JobKey("layers", completed[0].id) and first.assets == ()
    assert first.created_at == pytest.approx(completed[0].created_at)
    assert len(sim.requests("layers.project_content")) == 2
    rest = await walk_all(layers, PROJECT, start=pages[0].resume)
    assert ids_of(rest) == [c.id for c in completed[200:]]


async def test_containers_added_during_a_layers_walk_neither_break_nor_duplicate_it(
    sim: Simulator, layers: LayersProvider
) -> None:
    created = sim.add_layers_containers(PROJECT, 450)
    sim.set_layers_churn(PROJECT, add=5)
    seen = ids_of(await walk_all(layers, PROJECT))
    assert len(seen) == len(set(seen))
    assert {c.id for c in created} <= set(seen)
    assert len(seen) == 450 + 5  # only the additions made before the first page was read


async def test_since_is_sent_less_the_margin(
    sim: Simulator, layers: LayersProvider, clock: FakeClock
) -> None:
    """An incremental walk lists containers created from a day before ``since`` on (a container
    created earlier may have completed since), and nothing older."""
    created = sim.add_layers_containers(PROJECT, 100, spacing_s=3600)
    since = clock() - 10.5 * 3600
    listed = ids_of(await walk_all(layers, PROJECT, since=since))
    expected = [c.id for c in reversed(created) if c.created_at >= since - SINCE_MARGIN_S]
    assert listed == expected and len(expected) == 34
    assert len(ids_of(await walk_all(layers, PROJECT))) == 100


async def test_a_refused_resume_cursor_starts_over(sim: Simulator, layers: LayersProvider) -> None:
    created = sim.add_layers_containers(PROJECT, 30)
    with capture_logs() as events:
        listed = ids_of(await walk_all(layers, PROJECT, start="bm9wZQ"))
    assert listed == [c.id for c in reversed(created)]
    assert any(e["event"] == "listing_resume_refused" for e in events)


async def test_a_forbidden_project_is_forbidden_scope(sim: Simulator, layers: LayersProvider) -> None:
    sim.add_layers_containers(PROJECT, 3)
    sim.forbid_layers_project(PROJECT)
    with pytest.raises(UpstreamRejected) as caught:
        await walk_all(layers, PROJECT)
    assert (caught.value.code, caught.value.status) == ("forbidden_scope", 403)
    assert f"may not read project {PROJECT}" in caught.value.message


@pytest.mark.parametrize(
    "fault",
    [
        {},  # the default: an object without items
        {"body": []},
        {"body": {"items": {}, "nextCursor": None}},
        {"body": {"items": [], "nextCursor": 3}},
        {"body": {"items": [{"id": 3}], "nextCursor": None}},
        {"body": {"items": [{"id": "job_1"}], "nextCursor": None}},
    ],
)
async def test_a_malformed_layers_page_is_malformed_response(
    sim: Simulator, layers: LayersProvider, fault: dict[str, object]
) -> None:
    sim.add_layers_containers(PROJECT, 3)
    sim.add_fault(route="layers.project_content", kind="malformed", **fault)
    with pytest.raises(UpstreamRejected) as caught:
        await walk_all(layers, PROJECT)
    assert caught.value.code == "malformed_response"


async def test_layers_list_reads_spend_the_read_budget(
    sim: Simulator, http: HttpClient, clock: FakeClock
) -> None:
    """At 60 reads a minute (a bucket of one), three pages wait about a second before each of the
    last two: the walk draws on the same limiter as the polls."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    limiter = RateLimiter(per_minute=60, burst_s=1, monotonic=clock, sleep=sleep)
    settings = LayersSettings(api_key=sim.layers_api_key, base_url=sim.layers_url)
    provider = LayersProvider(http, settings, limiter=limiter)
    sim.add_layers_containers(PROJECT, 450)
    pages = await walk_all(provider, PROJECT)
    assert len(pages) == 3
    assert sum(waits) == pytest.approx(2.0, abs=0.05)


# -- scopes -----------------------------------------------------------------------------------------


async def test_mirror_scopes_are_checked(cloudlayer: CloudlayerProvider, layers: LayersProvider) -> None:
    assert CLOUDLAYER.mirror_scope is not None and LAYERS.mirror_scope is not None
    CLOUDLAYER.mirror_scope("")
    for scope in ("x", "prj_1"):
        with pytest.raises(ConfigError, match="cloudlayer mirrors the whole account"):
            CLOUDLAYER.mirror_scope(scope)
    for good in ("prj_01HX5K9", "project-1", "abc"):
        LAYERS.mirror_scope(good)
    for bad in ("", " prj_1", "prj 1", "prj_1\n", "a/b", "p" * 257):
        with pytest.raises(ConfigError, match="Layers mirrors one project: use layers:<projectId>"):
            LAYERS.mirror_scope(bad)
    with pytest.raises(ConfigError):
        await walk_all(cloudlayer, "prj_1")
    with pytest.raises(ConfigError):
        await walk_all(layers, "")
    assert isinstance(cloudlayer, Lister) and isinstance(layers, Lister)
