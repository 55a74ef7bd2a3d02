"""The account lists mirror mode walks (cloudlayer ``GET /v{1,2}/assets``, Layers
``GET /v1/projects/:projectId/content``), their control knobs and faults, over real HTTP on loopback."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from tests.simulator.conftest import T0, FakeClock
from worker.simulator import Simulator, SpecError, content_bytes
from worker.simulator.layers_json import iso

KEY = {"X-API-Key": "cl-sim-key"}
BEARER = {"Authorization": "Bearer lp_sim_key"}
ASSET_FIELDS = {"id", "jobId", "ext", "type", "size", "url", "timestamp"}
ITEM_FIELDS = {
    "id",
    "status",
    "format",
    "caption",
    "approvalStatus",
    "createdAt",
    "completedAt",
    "primaryAsset",
    "preview",
    "creativeType",
}


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = KEY
) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        await response.read()
        return response.status


async def cloudlayer_page(http: aiohttp.ClientSession, sim: Simulator, offset: int, limit: int) -> list[Any]:
    status, page = await get_json(http, f"{sim.url}/v2/assets?limit={limit}&offset={offset}")
    assert status == 200 and isinstance(page, list)
    return page


async def walk_by_offset(http: aiohttp.ClientSession, sim: Simulator, limit: int, step: int) -> list[str]:
    """Every id a walk by offset reads, in order, until a short page; ``step < limit`` overlaps pages."""
    seen: list[str] = []
    offset = 0
    while True:
        page = await cloudlayer_page(http, sim, offset, limit)
        seen += [asset["id"] for asset in page]
        if len(page) < limit:
            return seen
        offset += step


async def layers_walk(
    http: aiohttp.ClientSession, sim: Simulator, project: str, query: str = "", limit: int = 25
) -> tuple[list[dict[str, Any]], int]:
    """Every item of the project's list by cursor, and how many pages it took."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        url = f"{sim.layers_url}/v1/projects/{project}/content?limit={limit}{query}"
        if cursor is not None:
            url += f"&cursor={cursor}"
        status, body = await get_json(http, url, BEARER)
        assert status == 200, body
        assert set(body) == {"items", "nextCursor"}
        items += body["items"]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            return items, pages


# -- cloudlayer ------------------------------------------------------------------------------------


async def test_cloudlayer_list_pages_newest_first_as_a_bare_array(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Default limit 25, newest first by creation, every listed asset readable and downloadable."""
    jobs = sim.add_cloudlayer_assets(60, size=2048)
    expected = [job.asset_id for job in reversed(jobs)]
    assert sim.cloudlayer_asset_ids() == expected
    pages = []
    for offset in (0, 25, 50, 75):
        status, page = await get_json(http, f"{sim.url}/v2/assets?offset={offset}")
        assert status == 200 and isinstance(page, list)
        pages.append(page)
    assert [len(page) for page in pages] == [25, 25, 10, 0]
    listed = [asset for page in pages for asset in page]
    assert [asset["id"] for asset in listed] == expected
    stamps = [asset["timestamp"] for asset in listed]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 60
    assert stamps[0] == int((T0 - 60) * 1000) and stamps[-1] == int((T0 - 3600) * 1000)
    assert all(asset.keys() >= ASSET_FIELDS and asset["size"] == 2048 for asset in listed)
    status, v1 = await get_json(http, f"{sim.url}/v1/assets?limit=10")
    assert [asset["id"] for asset in v1] == expected[:10]
    for asset in listed:
        status, one = await get_json(http, f"{sim.url}/v2/assets/{asset['id']}")
        assert status == 200 and one["jobId"] == asset["jobId"] and one["timestamp"] == asset["timestamp"]
    newest = jobs[-1]
    async with http.get(listed[0]["url"]) as response:
        assert response.status == 200
        assert await response.read() == content_bytes(newest.seed, 2048)


async def test_cloudlayer_list_clamps_the_limit_and_refuses_bad_numbers(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """limit above 100 is clamped, offset skips; non-numbers, 0 and negatives are cloudlayer's 400."""
    sim.add_cloudlayer_assets(130)
    ids = sim.cloudlayer_asset_ids()
    assert [a["id"] for a in await cloudlayer_page(http, sim, 0, 500)] == ids[:100]
    assert [a["id"] for a in await cloudlayer_page(http, sim, 3, 7)] == ids[3:10]
    assert [a["id"] for a in await cloudlayer_page(http, sim, 120, 100)] == ids[120:]
    for query in ("limit=abc", "limit=0", "limit=-1", "limit=2.5", "offset=x", "offset=-1"):
        status, body = await get_json(http, f"{sim.url}/v2/assets?{query}")
        assert status == 400, query
        assert body["statusCode"] == 400 and isinstance(body["message"], str)
    for headers in (None, {"X-API-Key": "cl-wrong"}):
        assert await get_json(http, f"{sim.url}/v2/assets", headers) == (
            401,
            {"statusCode": 401, "message": "Unauthorized"},
        )


async def test_cloudlayer_list_holds_finished_job_assets_only(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Assets of jobs made one by one are in the same list once succeeded; pending and failed are not."""
    bulk = sim.add_cloudlayer_assets(3)
    done = sim.add_cloudlayer_job(pending_s=0)
    later = sim.add_cloudlayer_job(pending_s=10)
    sim.add_cloudlayer_job(pending_s=0, outcome="error")
    sim.add_cloudlayer_job(pending_s=None)
    old = [job.asset_id for job in reversed(bulk)]
    assert [a["id"] for a in await cloudlayer_page(http, sim, 0, 100)] == [done.asset_id, *old]
    clock.advance(10)
    assert [a["id"] for a in await cloudlayer_page(http, sim, 0, 100)] == [
        later.asset_id,
        done.asset_id,
        *old,
    ]


async def test_expired_assets_are_gone_from_list_asset_route_and_file_host(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Expiring the oldest (as retention does) or named ids removes them everywhere, and only them."""
    jobs = sim.add_cloudlayer_assets(10)
    listed = {a["id"]: a["url"] for a in await cloudlayer_page(http, sim, 0, 100)}
    expired = sim.expire_cloudlayer_assets(2)
    assert expired == [jobs[0].asset_id, jobs[1].asset_id]
    async with http.post(f"{sim.url}/_sim/cloudlayer/assets/expire", json={"ids": [jobs[5].asset_id]}) as r:
        assert (r.status, await r.json()) == (200, {"expired": [jobs[5].asset_id]})
    gone = [*expired, jobs[5].asset_id]
    assert sim.expired_cloudlayer_asset_ids() == gone
    alive = [job.asset_id for job in reversed(jobs) if job.asset_id not in gone]
    assert [a["id"] for a in await cloudlayer_page(http, sim, 0, 100)] == alive == sim.cloudlayer_asset_ids()
    for asset_id in gone:
        assert (await get_json(http, f"{sim.url}/v2/assets/{asset_id}"))[0] == 404
        assert await status_of(http, listed[asset_id]) == 404
    assert await status_of(http, listed[alive[-1]]) == 200
    async with http.post(f"{sim.url}/_sim/cloudlayer/assets/expire", json={"ids": [jobs[5].asset_id]}) as r:
        assert r.status == 404  # not alive any more
    async with http.post(f"{sim.url}/_sim/cloudlayer/assets/expire", json={"oldest": 1, "newest": 1}) as r:
        assert r.status == 400
    assert sim.expire_cloudlayer_assets(newest=1) == [jobs[9].asset_id]
    async with http.get(f"{sim.url}/_sim/cloudlayer/assets") as r:
        truth = await r.json()
    assert truth == {"alive": alive[1:], "expired": [*gone, jobs[9].asset_id]}


async def test_retention_removes_assets_by_age_and_can_be_lifted(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """With a retention period an asset vanishes that long after creation; lifting it brings them back."""
    jobs = sim.add_cloudlayer_assets(5, spacing_s=60)  # ages 300, 240, 180, 120, 60 s
    urls = {a["id"]: a["url"] for a in await cloudlayer_page(http, sim, 0, 100)}
    sim.set_cloudlayer_retention(150)
    assert sim.cloudlayer_asset_ids() == [jobs[4].asset_id, jobs[3].asset_id]
    assert [a["id"] for a in await cloudlayer_page(http, sim, 0, 100)] == sim.cloudlayer_asset_ids()
    assert await status_of(http, urls[jobs[0].asset_id]) == 404
    assert (await get_json(http, f"{sim.url}/v2/assets/{jobs[2].asset_id}"))[0] == 404
    assert await status_of(http, urls[jobs[4].asset_id]) == 200
    clock.advance(61)
    assert sim.cloudlayer_asset_ids() == [jobs[4].asset_id]
    assert sim.expired_cloudlayer_asset_ids() == [job.asset_id for job in jobs[:4]]
    async with http.put(f"{sim.url}/_sim/cloudlayer/retention", json={"retention_s": None}) as r:
        assert (r.status, await r.json()) == (200, {"retention_s": None})
    assert len(sim.cloudlayer_asset_ids()) == 5
    assert await status_of(http, urls[jobs[0].asset_id]) == 200


async def test_churn_expiring_passed_assets_makes_a_walk_without_overlap_skip(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Deletions behind the walk pull unread assets to lower offsets: a walk without overlap misses some
    that existed throughout; the same walk with pages overlapping by the churn's size misses none."""
    for overlap, must_miss in ((0, True), (5, False)):
        sim.reset()
        original = {job.asset_id for job in sim.add_cloudlayer_assets(200)}
        sim.set_cloudlayer_churn(add=3, expire=5, expire_where="newest")
        seen = await walk_by_offset(http, sim, limit=20, step=20 - overlap)
        survivors = original & set(sim.cloudlayer_asset_ids())
        missed = survivors - set(seen)
        assert bool(missed) is must_miss, (overlap, len(missed))
        assert len(seen) > len(set(seen)) or overlap == 0  # overlapping pages re-read a few


async def test_churn_at_the_head_and_the_tail_never_skips_an_unread_asset(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Additions push assets to higher offsets (read twice); retention-style expiry of the oldest happens
    ahead of the walk and shifts nothing: even without overlap every survivor is read."""
    original = [job.asset_id for job in sim.add_cloudlayer_assets(200)]
    async with http.post(
        f"{sim.url}/_sim/cloudlayer/churn", json={"add_per_list": 3, "expire_per_list": 5}
    ) as response:
        assert (await response.json())["churn"]["expire_where"] == "oldest"
    seen = await walk_by_offset(http, sim, limit=20, step=20)
    survivors = set(original) & set(sim.cloudlayer_asset_ids())
    assert survivors <= set(seen)
    assert len(seen) > len(set(seen))  # duplicates: the additions shifted offsets forward
    expired = set(sim.expired_cloudlayer_asset_ids())
    assert len(expired) == 5 * len(sim.requests("cloudlayer.assets"))
    assert expired == set(original[: len(expired)])  # the oldest
    async with http.delete(f"{sim.url}/_sim/cloudlayer/churn") as response:
        assert await response.json() == {"churn": None}
    before = sim.cloudlayer_asset_ids()
    await cloudlayer_page(http, sim, 0, 10)
    assert sim.cloudlayer_asset_ids() == before


async def test_churn_every_nth_list_request_and_random_expiry_is_seeded(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """``every`` spaces the churn out; a random expiry repeats exactly after a reset."""
    sim.add_cloudlayer_assets(50)
    sim.set_cloudlayer_churn(add=1, every=2)
    for _ in range(4):
        await cloudlayer_page(http, sim, 0, 5)
    assert len(sim.cloudlayer_asset_ids()) == 52
    runs = []
    for _ in range(2):
        sim.reset()
        sim.add_cloudlayer_assets(50)
        runs.append(sim.expire_cloudlayer_assets(random=5))
    assert runs[0] == runs[1] and len(set(runs[0])) == 5


async def test_bulk_assets_are_fast_and_checked(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Thousands of assets in well under a second over the control API; bad specs are 400."""
    started = time.perf_counter()
    async with http.post(f"{sim.url}/_sim/cloudlayer/assets", json={"count": 3000, "size": 1024}) as r:
        assert r.status == 201
        created = (await r.json())["assets"]
    assert time.perf_counter() - started < 1.0
    assert len(created) == 3000 and created[0]["created_at"] == T0 - 3000 * 60
    assert set(created[0]) == {"id", "job_id", "seed", "size", "ext", "created_at"}
    async with http.get(f"{sim.url}/_sim/cloudlayer/assets") as r:
        assert (await r.json())["alive"] == [a["id"] for a in reversed(created)]
    for bad in ({"count": 0}, {"count": 3, "start_age_s": 10, "spacing_s": 60}, {"count": 2, "colour": 1}):
        async with http.post(f"{sim.url}/_sim/cloudlayer/assets", json=bad) as r:
            assert r.status == 400, bad
    with pytest.raises(SpecError):
        sim.add_cloudlayer_assets(2, ext="gif")


# -- Layers ----------------------------------------------------------------------------------------


async def test_layers_project_content_pages_by_cursor_newest_first(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """{items, nextCursor}, default 25, createdAt desc, only the project's; listed containers readable."""
    created = sim.add_layers_containers("prj_a", 60)
    sim.add_layers_containers("prj_b", 5)
    items, pages = await layers_walk(http, sim, "prj_a")
    assert pages == 3
    assert (
        [item["id"] for item in items]
        == [c.id for c in reversed(created)]
        == sim.layers_container_ids("prj_a")
    )
    assert all(set(item) == ITEM_FIELDS for item in items)
    stamps = [item["createdAt"] for item in items]
    assert stamps == sorted(stamps, reverse=True) and stamps[0] == iso(T0 - 60)
    assert items[0]["status"] == "completed" and items[0]["primaryAsset"]["kind"] == "video"
    status, container = await get_json(http, f"{sim.layers_url}/v1/content/{items[-1]['id']}", BEARER)
    assert status == 200 and container["status"] == "completed"
    asset = container["assets"][0]
    async with http.get(asset["url"]) as response:
        assert response.status == 200
        assert len(await response.read()) == asset["sizeBytes"]
    status, empty = await get_json(http, f"{sim.layers_url}/v1/projects/prj_none/content", BEARER)
    assert (status, empty) == (200, {"items": [], "nextCursor": None})


async def test_layers_limit_is_clamped_and_bad_queries_are_validation_errors(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """limit max 200; a bad limit, status, time or cursor is 422 VALIDATION in the Layers envelope."""
    sim.add_layers_containers("prj_a", 250, spacing_s=1)
    base = f"{sim.layers_url}/v1/projects/prj_a/content"
    status, body = await get_json(http, f"{base}?limit=1000", BEARER)
    assert status == 200 and len(body["items"]) == 200 and body["nextCursor"]
    for query in ("limit=abc", "limit=0", "status=done", "since=yesterday", "cursor=bm9wZQ"):
        status, body = await get_json(http, f"{base}?{query}", BEARER)
        assert status == 422, query
        assert body["error"]["code"] == "VALIDATION"
    assert (await get_json(http, base, None))[0] == 401


async def test_layers_cursor_survives_containers_added_at_the_head(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """A walk while every list request adds containers reads each original exactly once; the next walk
    finds the additions. A cursor used with other filters is refused."""
    original = [c.id for c in reversed(sim.add_layers_containers("prj_a", 100))]
    sim.set_layers_churn("prj_a", add=4)
    items, pages = await layers_walk(http, sim, "prj_a", limit=30)
    now = sim.layers_container_ids("prj_a")
    assert len(now) == 100 + 4 * pages
    # Only the four the first request added before answering are read; none twice, none missed.
    first_added = now[4 * (pages - 1) : 4 * pages]
    assert [item["id"] for item in items] == first_added + original
    sim.set_layers_churn("prj_a", add=0)
    again, _ = await layers_walk(http, sim, "prj_a", limit=30)
    assert [item["id"] for item in again] == sim.layers_container_ids("prj_a")
    base = f"{sim.layers_url}/v1/projects/prj_a/content"
    status, first = await get_json(http, f"{base}?limit=5", BEARER)
    status, body = await get_json(http, f"{base}?limit=5&status=failed&cursor={first['nextCursor']}", BEARER)
    assert status == 422 and body["error"]["code"] == "VALIDATION"


async def test_layers_status_and_time_filters(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """status is repeatable (and knows the old "generating"); since is inclusive, until exclusive."""
    created = sim.add_layers_containers("prj_a", 30, status=["completed", "failed", "processing"])
    newest_first = list(reversed(created))

    def ids_with(state: str) -> list[str]:
        return [c.id for c in newest_first if c.state_at(clock()) == state]

    completed, _ = await layers_walk(http, sim, "prj_a", "&status=completed", limit=4)
    assert [i["id"] for i in completed] == ids_with("completed") and len(completed) == 10
    both, _ = await layers_walk(http, sim, "prj_a", "&status=completed&status=failed", limit=7)
    assert {i["id"] for i in both} == set(ids_with("completed")) | set(ids_with("failed"))
    generating, _ = await layers_walk(http, sim, "prj_a", "&status=generating")
    assert [i["id"] for i in generating] == ids_with("processing")
    cut = created[20].created_at
    since, _ = await layers_walk(http, sim, "prj_a", f"&since={iso(cut)}")
    assert [i["id"] for i in since] == [c.id for c in newest_first if c.created_at >= cut]
    until, _ = await layers_walk(http, sim, "prj_a", f"&until={iso(cut)}&status=completed", limit=3)
    expected = [c.id for c in newest_first if c.created_at < cut and c.state_at(clock()) == "completed"]
    assert [i["id"] for i in until] == expected


async def test_a_forbidden_project_answers_forbidden_scope(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """A project the key may not read is 403 FORBIDDEN_SCOPE naming it; others and other keys carry on."""
    sim.add_layers_containers("prj_a", 3)
    sim.add_layers_containers("prj_b", 3)
    sim.set_layers_key("lp_other", ["content:read"])
    other = {"Authorization": "Bearer lp_other"}
    url = f"{sim.layers_url}/v1/projects/prj_a/content"
    sim.forbid_layers_project("prj_a")
    for headers in (BEARER, other):
        status, body = await get_json(http, url, headers)
        assert status == 403 and body["error"]["code"] == "FORBIDDEN_SCOPE"
        assert body["error"]["details"]["projectId"] == "prj_a" and body["error"]["requestId"]
    assert (await get_json(http, f"{sim.layers_url}/v1/projects/prj_b/content", BEARER))[0] == 200
    async with http.delete(f"{sim.url}/_sim/layers/projects/prj_a/forbid") as r:
        assert await r.json() == {"lifted": True}
    async with http.post(f"{sim.url}/_sim/layers/projects/prj_a/forbid", json={"key": "lp_other"}) as r:
        assert await r.json() == {"projectId": "prj_a", "keys": ["lp_other"]}
    assert (await get_json(http, url, BEARER))[0] == 200
    assert (await get_json(http, url, other))[0] == 403
    sim.allow_layers_project("prj_a")
    assert (await get_json(http, url, other))[0] == 200


async def test_bulk_containers_over_http_are_fast_and_checked(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Thousands of containers in well under a second; the ids come back oldest first; bad specs 400."""
    url = f"{sim.url}/_sim/layers/projects/prj_big/containers"
    started = time.perf_counter()
    async with http.post(url, json={"count": 3000, "format": "slideshow", "slides": 2, "size": 512}) as r:
        assert r.status == 201
        ids = (await r.json())["ids"]
    assert time.perf_counter() - started < 1.0
    async with http.get(url) as r:
        assert (await r.json())["ids"] == list(reversed(ids))
    for bad in ({"count": 2, "status": "done"}, {"count": 1, "container": {"outcome": "failed"}}):
        async with http.post(url, json=bad) as r:
            assert r.status == 400, bad
    legacy = sim.add_layers_containers("prj_l", 1, container={"legacy": True})
    assert legacy[0].legacy and legacy[0].project_id == "prj_l"


# -- request log and faults ------------------------------------------------------------------------


async def test_list_reads_are_logged_under_their_own_route_names(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """A walk's reads can be counted exactly: list pages, per-asset reads and container reads apart."""
    sim.add_cloudlayer_assets(45)
    sim.add_layers_containers("prj_a", 30)
    seen = await walk_by_offset(http, sim, limit=20, step=20)
    await get_json(http, f"{sim.url}/v2/assets/{seen[0]}")
    items, pages = await layers_walk(http, sim, "prj_a", limit=10)
    await get_json(http, f"{sim.layers_url}/v1/content/{items[0]['id']}", BEARER)
    assert len(sim.requests("cloudlayer.assets")) == 3
    assert len(sim.requests("cloudlayer.asset")) == 1
    assert len(sim.requests("layers.project_content")) == pages == 3
    assert len(sim.requests("layers.container")) == 1
    assert {r.route for r in sim.requests()} == {
        "cloudlayer.assets",
        "cloudlayer.asset",
        "layers.project_content",
        "layers.container",
    }


async def test_faults_hit_the_list_routes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Status faults (with Retry-After, after N good pages), resets and malformed answers on both lists."""
    sim.add_cloudlayer_assets(30)
    sim.add_layers_containers("prj_a", 30)
    sim.add_fault(route="cloudlayer.assets", kind="status", status=503, retry_after="2", after=1)
    assert len(await cloudlayer_page(http, sim, 0, 10)) == 10
    async with http.get(f"{sim.url}/v2/assets?offset=10", headers=KEY) as response:
        assert response.status == 503 and response.headers["Retry-After"] == "2"
        assert (await response.json())["statusCode"] == 503
    assert len(await cloudlayer_page(http, sim, 10, 10)) == 10
    sim.add_fault(route="cloudlayer.assets", kind="malformed")
    assert await get_json(http, f"{sim.url}/v2/assets") == (200, {"unexpected": "shape"})
    sim.add_fault(route="cloudlayer.*", kind="malformed", text='[{"id": ')
    async with http.get(f"{sim.url}/v2/assets", headers=KEY) as response:
        assert response.status == 200 and await response.text() == '[{"id": '
    # Two: aiohttp retries an idempotent request once when a reused connection drops.
    sim.add_fault(route="cloudlayer.assets", kind="reset", count=2)
    with pytest.raises(aiohttp.ClientError):
        await get_json(http, f"{sim.url}/v2/assets")
    assert [(r.fault, r.status) for r in sim.requests("cloudlayer.assets")][-2:] == [("reset", None)] * 2
    layers = f"{sim.layers_url}/v1/projects/prj_a/content"
    sim.add_fault(route="layers.project_content", kind="status", status=429, retry_after="3")
    status, body = await get_json(http, layers, BEARER)
    assert status == 429 and body["error"]["code"] == "RATE_LIMITED"
    sim.add_fault(route="layers.project_content", kind="malformed", body=[])
    assert await get_json(http, layers, BEARER) == (200, [])
    assert [r.fault for r in sim.requests("layers.project_content")] == ["status", "malformed"]
    assert (await get_json(http, layers, BEARER))[0] == 200
    with pytest.raises(SpecError):
        sim.add_fault(route="cloudlayer.assets", kind="status", body={})


async def test_reset_forgets_accounts_churn_and_forbidden_projects(sim: Simulator) -> None:
    """After a reset nothing of an account remains, and the ids repeat exactly."""
    first = [job.asset_id for job in sim.add_cloudlayer_assets(5)]
    sim.expire_cloudlayer_assets(1)
    sim.set_cloudlayer_churn(add=1)
    sim.set_cloudlayer_retention(10)
    sim.forbid_layers_project("prj_a")
    sim.set_layers_churn("prj_a", add=2)
    sim.reset()
    assert sim.cloudlayer_asset_ids() == [] and sim.expired_cloudlayer_asset_ids() == []
    state = sim.state
    assert state.cloudlayer_account.churn is None and state.cloudlayer_account.retention_s is None
    assert state.layers_account.readable("prj_a", "lp_sim_key") and not state.layers_account.churn
    assert [job.asset_id for job in sim.add_cloudlayer_assets(5)] == first
