"""The job API end to end: a real worker serving real HTTP on loopback, the simulator upstream.

Every JSON answer is also checked against openapi.json (status listed for the operation, body valid
against its schema, error code belonging to its status): see tests/http_support.py.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SettingsFactory
from tests.http_support import TOKEN, api_client, eventually, run_until_idle, serving
from worker.app import open_worker
from worker.models import JobKey, JobState
from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256
from worker.statusview import job_to_json


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def wait_for_part_file(root: Path, timeout_s: float = 20) -> Path:
    async with asyncio.timeout(timeout_s):
        while True:
            parts = [p for p in files_under(root) if p.name.endswith(".part") and p.stat().st_size > 0]
            if parts:
                return parts[0]
            await asyncio.sleep(0.02)


async def test_the_job_api_requires_the_token(make_settings: SettingsFactory) -> None:
    """/v1/ needs the bearer token (any other answer is 401 with a challenge); probes, metrics and
    the document do not."""
    async with serving(make_settings()) as served, api_client(served.url, token=None) as anonymous:
        refusals = [
            await anonymous.request("GET", "/v1/jobs", template="/v1/jobs"),
            await anonymous.request("GET", "/v1/jobs", headers={"Authorization": f"Basic {TOKEN}"}),
            await anonymous.request("GET", "/v1/jobs", headers={"Authorization": "Bearer "}),
            await anonymous.request("GET", "/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}x"}),
            await anonymous.request("GET", "/v1/jobs", headers={"Authorization": f"Bearer {TOKEN[:-1]}"}),
            await anonymous.request("POST", "/v1/jobs", json_body={"jobs": [{"key": "cloudlayer:x"}]}),
            # Unknown paths under /v1/ are refused before routing reveals anything.
            await anonymous.request("GET", "/v1/nothing-here"),
        ]
        assert [(a.status, a.code) for a in refusals] == [(401, "unauthorized")] * len(refusals)
        assert all(a.headers["WWW-Authenticate"].startswith("Bearer") for a in refusals)
        assert (await served.worker.store.list_jobs()) == []  # the refused submit wrote nothing
        allowed = await anonymous.request("GET", "/v1/jobs", headers={"Authorization": f"bearer {TOKEN}"})
        assert allowed.status == 200 and allowed.body == {"jobs": [], "next_cursor": None}
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert (await anonymous.request("GET", path)).status == 200, path
        async with anonymous.session.get(served.url + "/metrics") as resp:
            assert resp.status == 200 and "asset_worker_in_flight" in await resp.text()


async def test_unknown_routes_and_methods_answer_json(make_settings: SettingsFactory) -> None:
    async with serving(make_settings()) as served, api_client(served.url) as api:
        missing = await api.request("GET", "/nowhere")
        assert (missing.status, missing.code) == (404, "not_found")
        wrong = await api.request("DELETE", "/v1/jobs")
        assert (wrong.status, wrong.code) == (405, "method_not_allowed")
        assert "POST" in wrong.headers["Allow"]
        bad_key = await api.get("nokey")
        assert (bad_key.status, bad_key.code) == (400, "invalid_job_key")
        unknown = await api.get("cloudlayer:nobody")
        assert (unknown.status, unknown.code) == (404, "job_not_found")


def _bad_bodies(assets: Path) -> list[tuple[str, Any, int, str]]:
    ok = {"key": "cloudlayer:ok"}
    return [
        ("not json", b"{jobs: [", 400, "invalid_json"),
        ("not utf-8", b'{"jobs": "\xff"}', 400, "invalid_json"),
        ("nested too deep to parse", b"[" * 100_000, 400, "invalid_json"),
        ("array body", [ok], 400, "invalid_request"),
        ("no jobs", {}, 400, "invalid_request"),
        ("empty jobs", {"jobs": []}, 400, "invalid_request"),
        ("unknown top field", {"jobs": [ok], "force": True}, 400, "invalid_request"),
        ("bare string item", {"jobs": ["cloudlayer:ok"]}, 400, "invalid_request"),
        ("key not a string", {"jobs": [ok, {"key": 5}]}, 400, "invalid_request"),
        ("unknown item field", {"jobs": [{**ok, "dst": str(assets / "t")}]}, 400, "invalid_request"),
        ("malformed key", {"jobs": [ok, {"key": "nokey"}]}, 400, "invalid_job_key"),
        ("unknown provider", {"jobs": [ok, {"key": "ftp:x"}]}, 400, "invalid_job_key"),
        ("id its provider refuses", {"jobs": [ok, {"key": "layers:foo"}]}, 400, "invalid_job_key"),
        ("duplicate key", {"jobs": [ok, {"key": "CLOUDLAYER:ok"}]}, 400, "duplicate_key"),
        ("dest not a string", {"jobs": [{**ok, "dest": 5}]}, 400, "invalid_request"),
        ("dest outside", {"jobs": [ok, {"key": "cloudlayer:b", "dest": "/etc"}]}, 400, "invalid_dest"),
        ("dest escaping", {"jobs": [{**ok, "dest": f"{assets}/../store"}]}, 400, "invalid_dest"),
        ("dest hidden", {"jobs": [{**ok, "dest": f"{assets}/.cache"}]}, 400, "invalid_dest"),
        ("dest relative", {"jobs": [{**ok, "dest": "assets/t"}]}, 400, "invalid_dest"),
        ("dest other kind", {"jobs": [{**ok, "dest": "s3://bucket/p"}]}, 400, "invalid_dest"),
        ("too many", {"jobs": [{"key": f"cloudlayer:k{i}"} for i in range(1001)]}, 400, "too_many_jobs"),
        ("too large", {"jobs": [{"key": "cloudlayer:" + "x" * 200}] * 6000}, 413, "body_too_large"),
    ]


@pytest.mark.parametrize(
    "case", range(len(_bad_bodies(Path("/")))), ids=[c[0] for c in _bad_bodies(Path("/"))]
)
async def test_bad_submits_are_refused_whole(
    make_settings: SettingsFactory, tmp_path: Path, case: int
) -> None:
    """Every malformed body gets its stable code, and nothing of it is written (not even the valid
    items before the bad one)."""
    _name, body, status, code = _bad_bodies(tmp_path / "assets")[case]
    async with serving(make_settings()) as served, api_client(served.url) as api:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json_body": body}
        answer = await api.request("POST", "/v1/jobs", template="/v1/jobs", **kwargs)
        assert (answer.status, answer.code) == (status, code), answer.body
        assert "Traceback" not in json.dumps(answer.body)
        assert (await served.worker.store.list_jobs()) == []


async def test_a_body_without_length_is_cut_off_at_the_limit(make_settings: SettingsFactory) -> None:
    """A chunked body (no Content-Length) is refused once it passes 1 MiB, not read to the end."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"jobs": ['
        for _ in range(3000):
            yield b'{"key": "cloudlayer:' + b"x" * 400 + b'"},'
        yield b'{"key": "cloudlayer:last"}]}'

    async with serving(make_settings()) as served, api_client(served.url) as api:
        url = served.url + "/v1/jobs"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with api.session.post(url, data=chunks(), headers=headers) as resp:
            body = await resp.json()
        assert resp.status == 413 and body["error"]["code"] == "body_too_large"
        assert (await served.worker.store.list_jobs()) == []


async def test_submit_run_and_read_back(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Submitted jobs run; GET returns exactly the status JSON contract; a per-job destination puts
    the files below it; submitting a known key changes nothing."""
    first = sim.add_cloudlayer_job(id="api-a", pending_s=0, size=50_000)
    second = sim.add_cloudlayer_job(id="api-b", pending_s=0.1, size=70_000)
    tenant = tmp_path / "assets" / "tenant-b"
    async with serving(make_settings()) as served, api_client(served.url) as api:
        submitted = await api.submit(
            {"key": "cloudlayer:api-a"}, {"key": "cloudlayer:api-b", "dest": str(tenant)}
        )
        assert submitted.status == 200
        results = submitted.body["results"]
        assert [(r["created"], r["dest"], r["job"]["state"]) for r in results] == [
            (True, None, "queued"),
            (True, tenant.as_uri(), "queued"),
        ]
        again = await api.submit({"key": "cloudlayer:api-a", "dest": f"file://{tmp_path / 'assets' / 'x'}"})
        assert again.body["results"][0]["created"] is False
        assert again.body["results"][0]["dest"] is None  # the existing job keeps its destination
        await run_until_idle(served.worker)
        for sim_job, root in ((first, tmp_path / "assets"), (second, tenant)):
            key = f"cloudlayer:{sim_job.id}"
            answer = await api.get(key)
            (stored,) = await served.worker.store.get([JobKey.parse(key)])
            assert answer.status == 200 and answer.body == job_to_json(stored)
            assert answer.body["state"] == "done"
            (asset,) = answer.body["assets"]
            final = root / "cloudlayer" / sim_job.id / f"{sim_job.asset_id}.pdf"
            assert asset["uri"] == final.as_uri()
            assert asset["sha256"] == content_sha256(sim_job.seed, sim_job.size)
        assert len(files_under(tmp_path / "assets")) == 2


async def test_listing_pages_through_every_job(make_settings: SettingsFactory) -> None:
    """Keyset pages: each job once, in submission order (ties by key), a job submitted meanwhile
    comes at the end, the last page says so; filters and malformed parameters."""
    keys = [f"cloudlayer:p{i}" for i in range(7)]
    async with serving(make_settings()) as served, api_client(served.url) as api:
        assert (await api.submit(*({"key": k} for k in reversed(keys)))).status == 200
        seen: list[str] = []
        page = await api.list_jobs(limit="3")
        assert page.status == 200 and len(page.body["jobs"]) == 3
        assert (await api.submit({"key": "cloudlayer:a-late"})).status == 200
        while True:
            seen += [job["key"] for job in page.body["jobs"]]
            if page.body["next_cursor"] is None:
                break
            page = await api.list_jobs(limit="3", cursor=page.body["next_cursor"])
        assert seen == [*keys, "cloudlayer:a-late"]
        assert (await api.cancel("cloudlayer:p2")).status == 200
        assert (await api.cancel("cloudlayer:p5")).status == 200
        canceled = await api.list_jobs(state="canceled")
        assert [j["key"] for j in canceled.body["jobs"]] == ["cloudlayer:p2", "cloudlayer:p5"]
        both = await api.list_jobs(state=["canceled", "done"], limit="1")
        assert [j["key"] for j in both.body["jobs"]] == ["cloudlayer:p2"] and both.body["next_cursor"]
        assert len((await api.list_jobs(state="queued,canceled")).body["jobs"]) == 8

        def cursor(data: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()

        bad: list[tuple[dict[str, str | list[str]], str]] = [
            ({"limit": "0"}, "invalid_limit"),
            ({"limit": "1001"}, "invalid_limit"),
            ({"limit": "ten"}, "invalid_limit"),
            ({"limit": ["1", "2"]}, "invalid_limit"),
            ({"state": "pending"}, "invalid_state"),
            ({"state": ""}, "invalid_state"),
            ({"cursor": "!!not base64!!"}, "invalid_cursor"),
            ({"cursor": cursor([1, 2])}, "invalid_cursor"),
            ({"cursor": cursor({"submitted_at": "x", "key": "k"})}, "invalid_cursor"),
            ({"cursor": base64.urlsafe_b64encode(b"\xff\x00").decode()}, "invalid_cursor"),
            ({"sort": "key"}, "invalid_request"),
        ]
        for params, code in bad:
            answer = await api.list_jobs(**params)
            assert (answer.status, answer.code) == (400, code), params


async def test_retry_and_cancel_follow_the_job_lifecycle(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    sim.add_cloudlayer_job(id="life", pending_s=0, size=10_000)
    key = "cloudlayer:life"
    dest = tmp_path / "assets" / "kept"
    async with serving(make_settings()) as served, api_client(served.url) as api:
        for answer in (await api.retry("cloudlayer:nobody"), await api.cancel("cloudlayer:nobody")):
            assert (answer.status, answer.code) == (404, "job_not_found")
        await api.submit({"key": key, "dest": str(dest)})
        busy = await api.retry(key)
        assert (busy.status, busy.code) == (409, "job_in_progress")
        first = await api.cancel(key)
        assert first.status == 200 and first.body["state"] == "canceled" and first.body["finished_at"]
        assert (await api.cancel(key)).body == first.body  # canceling again changes nothing
        retried = await api.retry(key)
        assert retried.status == 200 and retried.body["state"] == "queued"
        await run_until_idle(served.worker)
        done = await api.get(key)
        assert done.body["state"] == "done" and done.body["assets"][0]["uri"].startswith(dest.as_uri() + "/")
        late = await api.cancel(key)
        assert (late.status, late.code) == (409, "job_already_final")
        assert (await api.retry(key)).body["state"] == "queued"
        await run_until_idle(served.worker)
        (job,) = await served.worker.store.get([JobKey.parse(key)])
        assert job.state is JobState.DONE and job.dest == dest.as_uri()
    assert len([r for r in sim.requests("files") if r.status == 200]) == 2


async def test_cancel_stops_the_worker_that_holds_the_job(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The API runs in one worker, the transfer in another sharing the store: the holder's next
    lease renewal fails, it cancels the transfer and removes the temp file."""
    sim.add_cloudlayer_job(id="remote", pending_s=0, size=64 * 1024 * 1024)
    # Half the file, then nothing for longer than the test: the transfer is under way when the
    # cancel comes, however fast the machine.
    sim.add_fault(route="files", kind="stall_body", delay_s=120.0, count=1)
    holder_settings = make_settings(worker_id="holder", lease_s=1.5)
    async with (
        serving(make_settings(worker_id="api")) as served,
        api_client(served.url) as api,
        open_worker(holder_settings) as holder,
    ):
        await api.submit({"key": "cloudlayer:remote"})
        stop = asyncio.Event()
        running = asyncio.create_task(holder.runner.run(stop=stop))
        try:
            await wait_for_part_file(tmp_path / "assets")
            assert holder.runner.in_flight == 1
            answer = await api.cancel("cloudlayer:remote")
            assert answer.status == 200 and answer.body["state"] == "canceled"
            await eventually(lambda: not holder.runner.in_flight and not files_under(tmp_path / "assets"))
            assert not running.done()  # the holder carries on with other work
        finally:
            stop.set()
            await running
        (job,) = await holder.store.get([JobKey.parse("cloudlayer:remote")])
        assert job.state is JobState.CANCELED and job.lease_owner is None


async def test_cancel_in_the_process_holding_the_job_stops_it_at_once(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Served by the worker running the transfer, a cancel needs no lease renewal to take effect:
    with a lease far longer than the test, the transfer still stops."""
    sim.add_cloudlayer_job(id="local", pending_s=0, size=64 * 1024 * 1024)
    # Half the file, then nothing for longer than the test: the transfer is under way when the
    # cancel comes, however fast the machine.
    sim.add_fault(route="files", kind="stall_body", delay_s=120.0, count=1)
    settings = make_settings(lease_s=600.0)
    async with serving(settings) as served, api_client(served.url) as api:
        running = asyncio.create_task(served.worker.runner.run(stop=served.stop))
        try:
            await api.submit({"key": "cloudlayer:local"})
            await wait_for_part_file(tmp_path / "assets")
            assert (await api.cancel("cloudlayer:local")).body["state"] == "canceled"
            await eventually(
                lambda: not served.worker.runner.in_flight and not files_under(tmp_path / "assets")
            )
        finally:
            served.stop.set()
            await running


async def test_readiness_follows_the_drain(make_settings: SettingsFactory) -> None:
    """/readyz is 200 while working and 503 ``draining`` once stopping; /healthz stays 200."""
    async with serving(make_settings()) as served, api_client(served.url, token=None) as anonymous:
        assert (await anonymous.request("GET", "/readyz", template="/readyz")).status == 200
        served.stop.set()
        await served.worker.runner.run(stop=served.stop)
        draining = await anonymous.request("GET", "/readyz", template="/readyz")
        assert (draining.status, draining.code) == (503, "draining")
        assert (await anonymous.request("GET", "/healthz", template="/healthz")).body == {"status": "ok"}


async def test_a_worker_configured_elsewhere_fails_the_job_instead_of_writing_there(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A job accepted for a destination this worker's does not contain is failed (dest_not_allowed),
    never written outside the worker's destination."""
    sim.add_cloudlayer_job(id="moved", pending_s=0, size=1000)
    first = make_settings()
    async with serving(first) as served, api_client(served.url) as api:
        await api.submit({"key": "cloudlayer:moved", "dest": str(tmp_path / "assets" / "t")})
    moved = dataclasses.replace(first, dest_url=str(tmp_path / "elsewhere"))
    async with open_worker(moved) as worker:
        await run_until_idle(worker)
        (job,) = await worker.store.get([JobKey.parse("cloudlayer:moved")])
    assert job.state is JobState.FAILED and job.error is not None and job.error.code == "dest_not_allowed"
    assert files_under(tmp_path / "assets") == [] and files_under(tmp_path / "elsewhere") == []
