"""The simulated Layers partner API (auth, jobs, containers, asset descriptors, control API) over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.simulator.conftest import T0, FakeClock
from worker.simulator import Simulator
from worker.simulator.app import serve

BEARER = {"Authorization": "Bearer lp_sim_key"}


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = BEARER
) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json()


def assert_error(body: Any, code: str) -> None:
    """``body`` is the Layers error envelope with ``code`` and a request id."""
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert re.fullmatch(r"req_[0-9a-f]{24}", error["requestId"])


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def test_bearer_and_x_api_key_authenticate(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Bearer and the older X-Api-Key both work; a missing, wrong or non-Bearer credential is 401."""
    container = sim.add_layers_container(queued_s=0, processing_s=0)
    url = f"{sim.layers_url}/v1/content/{container.id}"
    assert sim.layers_api_key == "lp_sim_key"
    for headers in (BEARER, {"Authorization": "bearer lp_sim_key"}, {"X-Api-Key": "lp_sim_key"}):
        assert (await get_json(http, url, headers))[0] == 200
    bad: list[dict[str, str] | None] = [
        None,
        {"Authorization": "Bearer lp_wrong"},
        {"Authorization": "Basic lp_sim_key"},
        {"X-Api-Key": "cl-sim-key"},
    ]
    for bad_headers in bad:
        async with http.get(url, headers=bad_headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            body = await response.json()
            assert_error(body, "UNAUTHENTICATED")
            assert response.headers["X-Request-Id"] == body["error"]["requestId"]


async def test_missing_scope_is_forbidden_and_named(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """A key without a route's scope gets 403 FORBIDDEN_SCOPE naming it in details and message."""
    job = sim.add_layers_job(running_s=0)
    async with http.put(f"{sim.url}/_sim/layers/keys", json={"key": "lp_jobs", "scopes": ["jobs:read"]}) as r:
        assert (r.status, await r.json()) == (200, {"key": "lp_jobs", "scopes": ["jobs:read"]})
    sim.set_layers_key("lp_content", ["content:read"])
    jobs_only, content_only = {"X-Api-Key": "lp_jobs"}, {"Authorization": "Bearer lp_content"}
    container_url = f"{sim.layers_url}/v1/content/cnt_{job.container_uuid}"
    job_url = f"{sim.layers_url}/v1/jobs/{job.id}"
    assert (await get_json(http, job_url, jobs_only))[0] == 200
    assert (await get_json(http, container_url, content_only))[0] == 200
    for url, headers, scope in (
        (container_url, jobs_only, "content:read"),
        (job_url, content_only, "jobs:read"),
    ):
        status, body = await get_json(http, url, headers)
        assert status == 403
        assert_error(body, "FORBIDDEN_SCOPE")
        assert body["error"]["details"] == {"requiredScope": scope}
        assert scope in body["error"]["message"]


async def test_each_host_serves_only_its_own_api(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """GET /v1/jobs/:id is cloudlayer's on the main port and Layers' on the Layers port, as on two hosts."""
    layers_job = sim.add_layers_job(id="job_same", running_s=0)
    sim.add_cloudlayer_job(id="job_same", pending_s=0)
    assert sim.layers_url != sim.url
    status, body = await get_json(http, f"{sim.layers_url}/v1/jobs/job_same")
    assert (status, body["jobId"]) == (200, layers_job.id)
    status, body = await get_json(http, f"{sim.url}/v1/jobs/job_same", {"X-API-Key": "cl-sim-key"})
    assert (status, body["id"], body["status"]) == (200, "job_same", "success")
    async with http.get(f"{sim.url}/v1/content/cnt_{layers_job.container_uuid}", headers=BEARER) as response:
        assert response.status == 404
    async with http.get(
        f"{sim.layers_url}/v2/jobs/job_same", headers={"X-API-Key": "cl-sim-key"}
    ) as response:
        assert response.status == 404
    async with http.get(f"{sim.layers_url}/_sim/requests") as response:
        assert response.status == 404


async def test_unknown_ids_are_not_found_with_fresh_request_ids(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Unknown jobs, containers, malformed container ids and unknown assets answer 404 NOT_FOUND."""
    container = sim.add_layers_container(queued_s=0, processing_s=0)
    paths = [
        "/jobs/job_nope",
        "/content/cnt_00000000-0000-4000-8000-000000000000",
        "/content/not-a-uuid",
        f"/content/{container.id}/assets/video-nope",
        f"/content/cnt_00000000-0000-4000-8000-000000000000/assets/{container.generation.assets[0].asset_id}",
    ]
    request_ids = set()
    for path in paths:
        status, body = await get_json(http, sim.layers_url + "/v1" + path)
        assert status == 404, path
        assert_error(body, "NOT_FOUND")
        assert "details" not in body["error"]
        request_ids.add(body["error"]["requestId"])
    assert len(request_ids) == len(paths)


async def test_job_runs_then_completes_with_its_container(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A job is running (its stage moving on halfway), then completed with finishedAt and its result."""
    job = sim.add_layers_job(
        running_s=10, container={"format": "slideshow", "slides": 2, "project_id": "prj_7"}
    )
    url = f"{sim.layers_url}/v1/jobs/{job.id}"
    assert re.fullmatch(r"job_[0-9A-HJKMNP-TV-Z]{26}", job.id)
    _, body = await get_json(http, url)
    container_id = f"cnt_{job.container_uuid}"
    assert body == {
        "jobId": job.id,
        "kind": "content_generate",
        "status": "running",
        "stage": "preparing",
        "projectId": "prj_7",
        "containerIds": [container_id],
        "locationUrl": f"/v1/jobs/{job.id}",
        "startedAt": "2023-11-14T22:13:20.000Z",
    }
    assert (await get_json(http, sim.layers_url + body["locationUrl"]))[1]["jobId"] == job.id
    clock.advance(6)
    assert (await get_json(http, url))[1]["stage"] == "rendering"
    clock.advance(4)
    _, body = await get_json(http, url)
    assert (body["status"], body["stage"]) == ("completed", "done")
    assert parse_iso(body["finishedAt"]) == T0 + 10
    assert body["result"]["containerId"] == container_id
    _, container = await get_json(http, f"{sim.layers_url}/v1/content/{container_id}")
    assert container["status"] == "completed"
    assert [a["assetId"] for a in body["result"]["assets"]] == [a["assetId"] for a in container["assets"]]
    assert [a["kind"] for a in body["result"]["assets"]] == ["image", "image"]


@pytest.mark.parametrize("outcome", ["failed", "canceled"])
async def test_failed_or_canceled_job(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock, outcome: str
) -> None:
    """A failed job carries error {code, message} and its container lastError; canceled carries neither."""
    job = sim.add_layers_job(running_s=1, outcome=outcome, error={"code": "MODERATION", "message": "Refused"})
    clock.advance(1)
    _, body = await get_json(http, f"{sim.layers_url}/v1/jobs/{job.id}")
    assert body["status"] == outcome
    assert "result" not in body
    assert "finishedAt" in body
    _, container = await get_json(http, f"{sim.layers_url}/v1/content/{job.container_uuid}")
    assert container["status"] == outcome
    assert (container["assets"], container["preview"], container["primaryAsset"]) == ([], None, None)
    if outcome == "failed":
        assert body["error"] == {"code": "MODERATION", "message": "Refused"}
        assert container["lastError"] == {"code": "MODERATION", "message": "Refused"}
    else:
        assert "error" not in body
        assert container["lastError"] is None


async def test_job_etag_and_if_none_match(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """The ETag is stable while nothing visible changes; If-None-Match then gets a bodiless 304 (logged as
    such), and a state change gives a new ETag and a full body."""
    job = sim.add_layers_job(running_s=10)
    url = f"{sim.layers_url}/v1/jobs/{job.id}"
    async with http.get(url, headers=BEARER) as response:
        first = response.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', first)
    clock.advance(1)
    for condition in (first, f"W/{first}", f'"other", {first}', "*"):
        async with http.get(url, headers={**BEARER, "If-None-Match": condition}) as response:
            assert response.status == 304, condition
            assert response.headers["ETag"] == first
            assert await response.read() == b""
    async with http.get(url, headers={**BEARER, "If-None-Match": '"other"'}) as response:
        assert response.status == 200
    clock.advance(9)
    async with http.get(url, headers={**BEARER, "If-None-Match": first}) as response:
        assert response.status == 200
        assert response.headers["ETag"] != first
        assert (await response.json())["status"] == "completed"
    assert [r.status for r in sim.requests("layers.job")] == [200, 304, 304, 304, 304, 200, 200]


@pytest.mark.parametrize(("style", "middle"), [("processing", "processing"), ("generating", "generating")])
async def test_container_status_machine(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock, style: str, middle: str
) -> None:
    """queued → processing (or the old "generating") → completed; assets and preview only at the end."""
    container = sim.add_layers_container(queued_s=2, processing_s=3, status_style=style)
    url = f"{sim.layers_url}/v1/content/{container.id}"
    seen = []
    for step in (0, 2, 2.9, 0.1):
        clock.advance(step)
        _, body = await get_json(http, url)
        seen.append(body["status"])
        if body["status"] != "completed":
            assert (body["assets"], body["preview"], body["primaryAsset"], body["completedAt"]) == (
                [],
                None,
                None,
                None,
            )
    assert seen == ["queued", middle, middle, "completed"]
    assert parse_iso(body["completedAt"]) == T0 + 5
    assert parse_iso(body["createdAt"]) == T0
    assert body["lastError"] is None
    assert body["id"] == container.id
    assert {"projectId", "format", "creativeType", "hook", "caption", "approvalStatus"} <= body.keys()


async def test_failed_container_default_last_error_and_processing_forever(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A failed container shows its lastError; processing_s null keeps one processing forever."""
    failed = sim.add_layers_container(queued_s=0, processing_s=1, outcome="failed")
    forever = sim.add_layers_container(processing_s=None)
    clock.advance(10**7)
    _, body = await get_json(http, f"{sim.layers_url}/v1/content/{failed.id}")
    assert body["status"] == "failed"
    assert body["lastError"] == {
        "code": "GENERATION_FAILED",
        "message": "The renderer could not produce this content",
    }
    assert (await get_json(http, f"{sim.layers_url}/v1/content/{forever.id}"))[1]["status"] == "processing"


async def test_container_id_with_or_without_prefix(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """cnt_<uuid>, the bare uuid and an upper-case uuid all find the container; the echoed id is cnt_..."""
    container = sim.add_layers_container(
        id="9C855048-1111-4222-8333-444455556666", queued_s=0, processing_s=0
    )
    assert container.id == "cnt_9c855048-1111-4222-8333-444455556666"
    asset_id = container.generation.assets[0].asset_id
    for ref in (container.id, container.uuid, container.uuid.upper()):
        status, body = await get_json(http, f"{sim.layers_url}/v1/content/{ref}")
        assert (status, body["id"]) == (200, container.id)
        status, body = await get_json(http, f"{sim.layers_url}/v1/content/{ref}/assets/{asset_id}")
        assert (status, body["containerId"]) == (200, container.id)


async def test_video_and_slideshow_assets(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """A video container lists one video asset with a thumbnail; a slideshow lists its images in order."""
    video = sim.add_layers_container(format="video", queued_s=0, processing_s=0)
    slides = sim.add_layers_container(format="slideshow", sizes=[10, 20, 30, 40], queued_s=0, processing_s=0)
    _, body = await get_json(http, f"{sim.layers_url}/v1/content/{video.id}")
    (asset,) = body["assets"]
    assert re.fullmatch(r"video-[0-9a-f-]{36}", asset["assetId"])
    assert (asset["kind"], asset["mimeType"], asset["sizeBytes"]) == ("video", "video/mp4", 100_000)
    assert body["primaryAsset"]["assetId"] == asset["assetId"]
    assert body["preview"]["url"].split("?")[0] == asset["thumbnailUrl"].split("?")[0]
    async with http.get(asset["thumbnailUrl"]) as response:
        assert (response.status, response.headers["Content-Type"]) == (200, "image/jpeg")
    _, body = await get_json(http, f"{sim.layers_url}/v1/content/{slides.id}")
    assert [a["assetId"].split("-")[:2] for a in body["assets"]] == [["slide", str(n)] for n in (1, 2, 3, 4)]
    assert [(a["kind"], a["sizeBytes"], a["thumbnailUrl"]) for a in body["assets"]] == [
        ("image", size, None) for size in (10, 20, 30, 40)
    ]
    assert [a.asset_id for a in slides.generation.assets] == [a["assetId"] for a in body["assets"]]
    assert body["preview"]["url"].split("?")[0] == body["assets"][0]["url"].split("?")[0]
    for listed in body["assets"]:
        async with http.get(listed["url"]) as response:
            assert len(await response.read()) == listed["sizeBytes"]


async def test_descriptor_fields_full_legacy_and_unpublished_size(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Every optional field is there by default; legacy drops them all, publish_size false the size."""
    spec: dict[str, object] = {"queued_s": 0, "processing_s": 0, "size": 5000}
    full = sim.add_layers_container(**spec)
    legacy = sim.add_layers_container(**spec, legacy=True)
    unsized = sim.add_layers_container(**spec, format="slideshow", slides=1, publish_size=False)
    bodies = []
    for container in (full, legacy, unsized):
        asset = container.generation.assets[0]
        status, body = await get_json(
            http, f"{sim.layers_url}/v1/content/{container.id}/assets/{asset.asset_id}"
        )
        assert status == 200
        assert (body["containerId"], body["assetId"], body["kind"]) == (
            container.id,
            asset.asset_id,
            asset.kind,
        )
        bodies.append(body)
    optional = {"mimeType", "sizeBytes", "durationMs", "width", "height", "checksumSha256", "expiresAt"}
    assert optional <= bodies[0].keys()
    assert (bodies[0]["durationMs"], bodies[0]["width"], bodies[0]["height"]) == (15_000, 1080, 1920)
    assert bodies[0]["sizeBytes"] == 5000
    assert parse_iso(bodies[0]["expiresAt"]) == T0 + 3600
    assert bodies[1].keys() == {"containerId", "assetId", "kind", "url", "thumbnailUrl"}
    assert not optional & bodies[1].keys()
    assert bodies[1]["thumbnailUrl"] is not None
    _, listed = await get_json(http, f"{sim.layers_url}/v1/content/{legacy.id}")
    assert listed["assets"][0].keys() == {"assetId", "kind", "url", "thumbnailUrl"}
    assert "sizeBytes" not in bodies[2]
    assert {"mimeType", "checksumSha256", "width", "height"} <= bodies[2].keys()
    assert "durationMs" not in bodies[2]


async def test_assets_do_not_exist_before_completion(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """Until its container completes, an asset's descriptor is 404 and its media URL is 404."""
    container = sim.add_layers_container(queued_s=0, processing_s=5)
    asset = container.generation.assets[0]
    url = f"{sim.layers_url}/v1/content/{container.id}/assets/{asset.asset_id}"
    assert (await get_json(http, url))[0] == 404
    async with http.get(sim.layers_media_url(asset)) as response:
        assert response.status == 404
    clock.advance(5)
    assert (await get_json(http, url))[0] == 200
    async with http.get(sim.layers_media_url(asset)) as response:
        assert response.status == 200


async def test_request_log_names_layers_routes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Layers reads log as layers.job/container/asset with had_authorization; media downloads as files."""
    job = sim.add_layers_job(running_s=0)
    container = sim.layers_container(job.container_uuid)
    await get_json(http, f"{sim.layers_url}/v1/jobs/{job.id}")
    _, body = await get_json(http, f"{sim.layers_url}/v1/content/{container.id}")
    await get_json(http, f"{sim.layers_url}/v1/content/{container.id}/assets/{body['assets'][0]['assetId']}")
    async with http.get(body["assets"][0]["url"], headers={"Range": "bytes=0-9"}) as response:
        assert response.status == 206
    await get_json(http, f"{sim.layers_url}/v1/jobs/{job.id}", headers={"X-Api-Key": "lp_sim_key"})
    assert [(r.route, r.status, r.had_authorization, r.had_api_key) for r in sim.requests()] == [
        ("layers.job", 200, True, False),
        ("layers.container", 200, True, False),
        ("layers.asset", 200, True, False),
        ("files", 206, False, False),
        ("layers.job", 200, False, True),
    ]


async def test_control_api_creates_containers_jobs_and_regenerates(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """The /_sim/layers/ API creates containers (asset ids, seeds, sizes, sha256 up front), jobs for them,
    and regenerations; reset forgets them."""
    spec = {
        "id": "9c855048-0000-4000-8000-000000000001",
        "format": "slideshow",
        "slides": 2,
        "size": 64,
        "seed": 9,
    }
    async with http.post(
        f"{sim.url}/_sim/layers/containers", json={**spec, "queued_s": 0, "processing_s": 0}
    ) as r:
        assert r.status == 201
        created = await r.json()
    assert created["id"] == "cnt_9c855048-0000-4000-8000-000000000001"
    assert [(a["seed"], a["size"], a["kind"], a["mimeType"]) for a in created["assets"]] == [
        (9, 64, "image", "image/jpeg"),
        (10, 64, "image", "image/jpeg"),
    ]
    _, listed = await get_json(http, f"{sim.layers_url}/v1/content/{created['id']}")
    assert [a["assetId"] for a in listed["assets"]] == [a["assetId"] for a in created["assets"]]
    async with http.get(listed["assets"][1]["url"]) as response:
        assert hashlib.sha256(await response.read()).hexdigest() == created["assets"][1]["sha256"]
    async with http.post(
        f"{sim.url}/_sim/layers/jobs", json={"container_id": created["id"], "running_s": 0}
    ) as r:
        assert r.status == 201
        made = await r.json()
    assert made["containerId"] == created["id"]
    _, job = await get_json(http, f"{sim.layers_url}/v1/jobs/{made['jobId']}")
    assert job["result"]["containerId"] == created["id"]
    regen_url = f"{sim.url}/_sim/layers/containers/{created['id']}/regenerate"
    async with http.post(regen_url, json={}) as r:
        assert r.status == 200
        regenerated = await r.json()
    assert regenerated["id"] == created["id"]
    assert not {a["assetId"] for a in regenerated["assets"]} & {a["assetId"] for a in created["assets"]}
    async with http.post(f"{sim.url}/_sim/reset") as r:
        assert r.status == 200
    assert (await get_json(http, f"{sim.layers_url}/v1/content/{created['id']}"))[0] == 404
    assert (await get_json(http, f"{sim.layers_url}/v1/jobs/{made['jobId']}"))[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/_sim/layers/containers", b'{"format": "gif"}', 400),
        ("/_sim/layers/containers", b'{"id": "cnt_nope"}', 400),
        ("/_sim/layers/containers", b'{"slides": 2}', 400),
        ("/_sim/layers/containers", b'{"format": "slideshow", "slides": 2, "sizes": [1]}', 400),
        ("/_sim/layers/containers", b'{"size": 1, "sizes": [1]}', 400),
        ("/_sim/layers/containers", b'{"sizes": [-1]}', 400),
        ("/_sim/layers/containers", b'{"last_error": {"code": 1}}', 400),
        ("/_sim/layers/containers", b'{"procesing_s": 1}', 400),
        ("/_sim/layers/containers", b'{"id": "11111111-1111-4111-8111-111111111111"}', 409),
        ("/_sim/layers/jobs", b'{"container_id": "cnt_nope"}', 400),
        ("/_sim/layers/jobs", b'{"container": {}, "container_id": "x"}', 400),
        ("/_sim/layers/jobs", b'{"outcome": "success"}', 400),
        ("/_sim/layers/jobs", b'{"id": "job_taken"}', 409),
        ("/_sim/layers/containers/cnt_nope/regenerate", b"{}", 404),
        ("/_sim/layers/containers/11111111-1111-4111-8111-111111111111/regenerate", b'{"keep": 1}', 400),
    ],
)
async def test_bad_layers_control_bodies_get_a_json_error(
    sim: Simulator, http: aiohttp.ClientSession, path: str, body: bytes, status: int
) -> None:
    """Malformed, conflicting or dangling control requests answer 400/409/404 with a JSON error."""
    sim.add_layers_container(id="11111111-1111-4111-8111-111111111111")
    sim.add_layers_job(id="job_taken")
    async with http.post(sim.url + path, data=body) as response:
        assert response.status == status
        assert isinstance((await response.json())["error"], str)


@pytest.mark.parametrize(
    "body", [b'{"key": ""}', b'{"key": "k", "scopes": "jobs:read"}', b'{"key": "k", "scopes": [1]}', b"{}"]
)
async def test_bad_key_bodies_get_a_json_error(
    sim: Simulator, http: aiohttp.ClientSession, body: bytes
) -> None:
    """A key spec needs a non-empty key and a list of scope strings."""
    async with http.put(f"{sim.url}/_sim/layers/keys", data=body) as response:
        assert response.status == 400


async def test_serve_announces_the_layers_api_and_key(
    http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve() prints the Layers base URL after the first line and accepts the Layers key it was given."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", 0, layers_api_key="lp_other", stop=stop))
    try:
        lines: list[str] = []
        for _ in range(200):
            lines += capsys.readouterr().out.splitlines()
            if len(lines) >= 3:
                break
            await asyncio.sleep(0.01)
        url = lines[0].removeprefix("simulator listening on ")
        assert lines[2].startswith("layers listening on http://127.0.0.1:")
        layers_url = lines[2].removeprefix("layers listening on ")
        assert lines[3] == "Layers bearer key: lp_other"
        async with http.post(f"{url}/_sim/layers/jobs", json={"id": "job_1", "running_s": 0}) as response:
            assert response.status == 201
        headers = {"Authorization": "Bearer lp_other"}
        assert (await get_json(http, f"{layers_url}/v1/jobs/job_1", headers))[0] == 200
        assert (await get_json(http, f"{layers_url}/v1/jobs/job_1"))[0] == 401
    finally:
        stop.set()
        await task
