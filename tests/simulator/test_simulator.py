"""The simulated cloudlayer API and control API, exercised over real HTTP on loopback."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from tests.simulator.conftest import T0, FakeClock
from worker.simulator import Simulator, content_sha256

KEY = {"X-API-Key": "cl-sim-key"}


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = KEY
) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json()


async def download(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as response:
        return response.status, await response.read()


async def test_api_routes_require_an_accepted_api_key(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Without an accepted X-API-Key every API route answers cloudlayer's 401 body."""
    job = sim.add_cloudlayer_job(pending_s=0)
    for headers in (None, {"X-API-Key": "cl-wrong"}):
        for path in (f"/v2/jobs/{job.id}", f"/v1/assets/{job.asset_id}"):
            assert await get_json(http, sim.url + path, headers) == (
                401,
                {"statusCode": 401, "message": "Unauthorized"},
            )
        async with http.post(f"{sim.url}/v2/html/pdf", json={"html": "x"}, headers=headers) as response:
            assert response.status == 401


async def test_job_goes_pending_to_success_and_its_asset_downloads_whole(
    sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    """A job is pending until its time passes, then carries assetUrl and size; the bytes hash as promised."""
    job = sim.add_cloudlayer_job(pending_s=3, size=300_000, seed=5)
    status, body = await get_json(http, f"{sim.url}/v2/jobs/{job.id}")
    assert (status, body["status"]) == (200, "pending")
    assert not {"assetUrl", "size", "processTime", "error"} & body.keys()
    clock.advance(3)
    status, body = await get_json(http, f"{sim.url}/v1/jobs/{job.id}")
    assert body["status"] == "success"
    assert body["size"] == 300_000
    assert body["assetId"] == job.asset_id
    assert body["self"] == f"/v2/jobs/{job.id}"
    assert body["processTime"] == 3000
    assert body["type"] == "html-pdf"
    status, data = await download(http, body["assetUrl"])
    assert status == 200
    assert hashlib.sha256(data).hexdigest() == content_sha256(5, 300_000)


async def test_asset_via_asset_endpoint(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """With asset_via "asset" the job carries only assetId; GET /assets/:id gives the URL and metadata."""
    job = sim.add_cloudlayer_job(pending_s=0, asset_via="asset", ext="png", size=12_345)
    _, body = await get_json(http, f"{sim.url}/v2/jobs/{job.id}")
    assert "assetUrl" not in body
    assert body["type"] == "url-image"
    status, asset = await get_json(http, f"{sim.url}/v2/assets/{body['assetId']}")
    assert status == 200
    assert (asset["id"], asset["jobId"], asset["ext"], asset["type"], asset["size"]) == (
        job.asset_id,
        job.id,
        "png",
        "image",
        12_345,
    )
    async with http.get(asset["url"]) as response:
        assert response.headers["Content-Type"] == "image/png"
        data = await response.read()
    assert hashlib.sha256(data).hexdigest() == content_sha256(job.seed, 12_345)


async def test_error_outcome_carries_the_error_text_and_no_asset(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """A failed job shows its error string, no size or URL, and its asset never exists."""
    job = sim.add_cloudlayer_job(pending_s=0, outcome="error")
    _, body = await get_json(http, f"{sim.url}/v2/jobs/{job.id}")
    assert body["status"] == "error"
    assert body["error"] == "Navigation timeout of 30000 ms exceeded"
    assert not {"assetUrl", "size", "processTime"} & body.keys()
    assert (await get_json(http, f"{sim.url}/v2/assets/{job.asset_id}"))[0] == 404
    assert (await download(http, sim.file_url(job)))[0] == 404


@pytest.mark.parametrize(
    ("style", "outcome", "expected"),
    [
        ("sdk", "success", ["pending", "pending", "success"]),
        ("aliases", "success", ["queued", "processing", "completed"]),
        ("aliases", "error", ["queued", "processing", "failed"]),
        ("unknown", "success", ["rendering", "rendering", "success"]),
        ("unknown", "error", ["rendering", "rendering", "error"]),
    ],
)
async def test_status_styles(
    sim: Simulator,
    http: aiohttp.ClientSession,
    clock: FakeClock,
    style: str,
    outcome: str,
    expected: list[str],
) -> None:
    """Each status style names the first half, the second half and the end of a 4 s job its own way."""
    job = sim.add_cloudlayer_job(pending_s=4, status_style=style, outcome=outcome)
    seen = []
    for _ in expected:
        seen.append((await get_json(http, f"{sim.url}/v2/jobs/{job.id}"))[1]["status"])
        clock.advance(2.5)
    assert seen == expected


async def test_pending_forever(sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock) -> None:
    """pending_s null keeps a job pending however much time passes."""
    job = sim.add_cloudlayer_job(pending_s=None)
    clock.advance(10**7)
    assert (await get_json(http, f"{sim.url}/v2/jobs/{job.id}"))[1]["status"] == "pending"


@pytest.mark.parametrize("style", ["ms", "firestore", "iso", "absent"])
async def test_timestamp_styles(sim: Simulator, http: aiohttp.ClientSession, style: str) -> None:
    """The job timestamp comes as unix ms, a Firestore object, an ISO string, or not at all."""
    job = sim.add_cloudlayer_job(pending_s=0, timestamp_style=style)
    _, body = await get_json(http, f"{sim.url}/v2/jobs/{job.id}")
    _, asset = await get_json(http, f"{sim.url}/v2/assets/{job.asset_id}")
    expected: object = {
        "ms": int(T0 * 1000),
        "firestore": {"_seconds": int(T0), "_nanoseconds": 0},
        "iso": "2023-11-14T22:13:20.000Z",
    }.get(style)
    assert body.get("timestamp") == expected
    assert asset.get("timestamp") == expected
    if style == "iso":
        assert datetime.fromisoformat(body["timestamp"]).timestamp() == T0


async def test_omit_optional_and_unpublished_size(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """omit_optional drops uid, name, workerName, previewUrl and costs; publish_size false drops size."""
    job = sim.add_cloudlayer_job(pending_s=0, omit_optional=True, publish_size=False)
    _, body = await get_json(http, f"{sim.url}/v2/jobs/{job.id}")
    dropped = {"uid", "name", "workerName", "previewUrl", "apiCreditCost", "totalCost", "size"}
    assert not dropped & body.keys()
    assert {"id", "status", "assetUrl", "assetId"} <= body.keys()
    _, asset = await get_json(http, f"{sim.url}/v2/assets/{job.asset_id}")
    assert not {"uid", "previewUrl", "size"} & asset.keys()


async def test_full_job_shape_has_optional_fields(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """By default a finished job shows uid, name, workerName, previewUrl and costs; the preview downloads."""
    job = sim.add_cloudlayer_job(pending_s=0)
    _, body = await get_json(http, f"{sim.url}/v2/jobs/{job.id}")
    assert {
        "uid",
        "name",
        "workerName",
        "previewUrl",
        "apiCreditCost",
        "totalCost",
        "timestamp",
    } <= body.keys()
    status, preview = await download(http, body["previewUrl"])
    assert status == 200
    assert len(preview) == 4096


async def test_a_job_with_an_external_asset_url_publishes_it_and_hosts_no_asset(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """asset_url: the job and the asset endpoint publish that URL and the given size; the simulator's file
    host has no asset for it (only its preview), and the creation answer names the URL instead of a seed."""
    external = "http://127.0.0.1:9/f/big.bin?v=1"
    spec = {"id": "ext", "asset_id": "big", "asset_url": external, "size": 123_456, "pending_s": 0}
    async with http.post(f"{sim.url}/_sim/cloudlayer/jobs", json=spec) as r:
        assert (r.status, await r.json()) == (
            201,
            {"id": "ext", "asset_id": "big", "asset_url": external, "size": 123_456, "ext": "pdf"},
        )
    _, body = await get_json(http, f"{sim.url}/v2/jobs/ext")
    assert (body["status"], body["assetId"], body["assetUrl"], body["size"]) == (
        "success",
        "big",
        external,
        123_456,
    )
    _, asset = await get_json(http, f"{sim.url}/v2/assets/big")
    assert (asset["url"], asset["size"]) == (external, 123_456)
    assert (await download(http, f"{sim.url}/files/big.pdf"))[0] == 404
    assert (await download(http, body["previewUrl"]))[0] == 200


async def test_unknown_ids_are_404(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Unknown job or asset ids get cloudlayer's 404 body on both API versions."""
    for path in ("/v1/jobs/nope", "/v2/jobs/nope", "/v2/assets/nope"):
        assert await get_json(http, sim.url + path) == (404, {"statusCode": 404, "message": "Not Found"})


async def test_each_read_mints_a_fresh_url(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Two reads of a finished job give two different signed URLs for the same file."""
    job = sim.add_cloudlayer_job(pending_s=0)
    first = (await get_json(http, f"{sim.url}/v2/jobs/{job.id}"))[1]["assetUrl"]
    second = (await get_json(http, f"{sim.url}/v2/jobs/{job.id}"))[1]["assetUrl"]
    assert first != second
    assert first.split("?")[0] == second.split("?")[0] == f"{sim.url}/files/{job.asset_id}.pdf"


async def test_conversion_post_creates_a_pending_job(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """POST /v2/url/image answers 202 with id and pending status; the job exists with a seeded size."""
    async with http.post(
        f"{sim.url}/v2/url/image", json={"url": "https://x", "imageType": "webp"}, headers=KEY
    ) as r:
        assert r.status == 202
        created = await r.json()
    assert created.keys() == {"id", "status", "uid", "timestamp"}
    assert created["status"] == "pending"
    _, body = await get_json(http, f"{sim.url}/v2/jobs/{created['id']}")
    assert (body["status"], body["type"]) == ("pending", "url-image")
    job = sim.state.cloudlayer.jobs[created["id"]]
    assert job.ext == "webp"
    assert 10_000 <= job.size <= 2_000_000
    assert job.pending_s is not None and 1 <= job.pending_s <= 4
    async with http.post(f"{sim.url}/v2/html/pdf", data=b"[1]", headers=KEY) as r:
        assert r.status == 400


async def test_request_log_records_routes_key_presence_and_ranges(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """The log shows each upstream request with its route, status and whether an API key came along."""
    job = sim.add_cloudlayer_job(pending_s=0)
    _, body = await get_json(http, f"{sim.url}/v2/jobs/{job.id}")
    async with http.get(body["assetUrl"], headers={"Range": "bytes=0-9"}) as response:
        await response.read()
    await get_json(http, f"{sim.url}/v2/jobs/{job.id}", headers=None)
    await get_json(http, f"{sim.url}/_sim/requests", headers=None)
    records = sim.requests()
    assert [(r.route, r.status, r.had_api_key, r.range) for r in records] == [
        ("cloudlayer.job", 200, True, None),
        ("files", 206, False, "bytes=0-9"),
        ("cloudlayer.job", 401, False, None),
    ]
    assert records[1].path == f"/files/{job.asset_id}.pdf"
    assert records[0].t == T0
    _, over_http = await get_json(http, f"{sim.url}/_sim/requests", headers=None)
    assert over_http == [record.to_json() for record in records]
    assert [r.route for r in sim.requests("files")] == ["files"]


async def test_control_api_creates_jobs_and_faults_and_resets(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """The /_sim/ API creates jobs and fault rules, lists and clears them, and resets everything."""
    spec = {"id": "job_x", "asset_id": "asset_x", "size": 1000, "seed": 9, "pending_s": 0, "ext": "jpg"}
    async with http.post(f"{sim.url}/_sim/cloudlayer/jobs", json=spec) as r:
        assert (r.status, await r.json()) == (
            201,
            {"id": "job_x", "asset_id": "asset_x", "seed": 9, "size": 1000, "ext": "jpg"},
        )
    async with http.post(f"{sim.url}/_sim/faults", json={"route": "cloudlayer.job", "kind": "status"}) as r:
        assert r.status == 201
        fault_id = (await r.json())["id"]
    _, rules = await get_json(http, f"{sim.url}/_sim/faults", headers=None)
    assert [rule["id"] for rule in rules] == [fault_id]
    assert (await get_json(http, f"{sim.url}/v2/jobs/job_x"))[0] == 503
    assert (await get_json(http, f"{sim.url}/v2/jobs/job_x"))[0] == 200
    sim.add_fault(route="*", kind="status", count=3)
    async with http.delete(f"{sim.url}/_sim/faults") as r:
        assert await r.json() == {"cleared": 1}
    async with http.post(f"{sim.url}/_sim/reset") as r:
        assert r.status == 200
    assert sim.requests() == []
    assert (await get_json(http, f"{sim.url}/v2/jobs/job_x"))[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/_sim/cloudlayer/jobs", b"{not json", 400),
        ("/_sim/cloudlayer/jobs", b"[]", 400),
        ("/_sim/cloudlayer/jobs", b'{"size": -1}', 400),
        ("/_sim/cloudlayer/jobs", b'{"size": true}', 400),
        ("/_sim/cloudlayer/jobs", b'{"ext": "gif"}', 400),
        ("/_sim/cloudlayer/jobs", b'{"pending": 1}', 400),
        ("/_sim/cloudlayer/jobs", b'{"id": ".."}', 400),
        ("/_sim/cloudlayer/jobs", b'{"id": "taken"}', 409),
        ("/_sim/cloudlayer/jobs", b'{"asset_url": "ftp://127.0.0.1/x.bin"}', 400),
        ("/_sim/cloudlayer/jobs", b'{"asset_url": "/f/x.bin"}', 400),
        ("/_sim/cloudlayer/jobs", b'{"asset_url": "http:///f/x.bin"}', 400),
        ("/_sim/cloudlayer/jobs", b'{"asset_url": "http://127.0.0.1:99999/x.bin"}', 400),
        ("/_sim/cloudlayer/jobs", b'{"asset_url": "http://127.0.0.1/a b.bin"}', 400),
        ("/_sim/cloudlayer/jobs", b'{"asset_url": 7}', 400),
        ("/_sim/cloudlayer/jobs", b'{"asset_url": "http://127.0.0.1/x.bin", "seed": 1}', 400),
        ("/_sim/faults", b'{"kind": "explode"}', 400),
        ("/_sim/faults", b"null", 400),
    ],
)
async def test_bad_control_bodies_get_a_json_error(
    sim: Simulator, http: aiohttp.ClientSession, path: str, body: bytes, status: int
) -> None:
    """Malformed or conflicting control requests answer 400/409 with a JSON error, not a traceback."""
    sim.add_cloudlayer_job(id="taken")
    async with http.post(sim.url + path, data=body) as response:
        assert response.status == status
        assert isinstance((await response.json())["error"], str)
