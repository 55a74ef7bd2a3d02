"""/metrics as Prometheus scrapes it: the values move as jobs finish, each worker counts only its
own work, and the queue gauges come from the store at scrape time (absent, not stale, when the
store does not answer in time)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.conftest import SettingsFactory
from tests.http_support import (
    Samples,
    api_client,
    eventually,
    parse_metrics,
    run_until_idle,
    sample,
    serving,
)
from worker.app import open_worker
from worker.metrics import CONTENT_TYPE
from worker.simulator.app import Simulator

# Every name deploy/ (HPA, prometheus-adapter, alerts) relies on, as exposed, with its type.
DEPLOYED = {
    "asset_worker_jobs": "gauge",
    "asset_worker_job_outcomes_total": "counter",
    "asset_worker_polls_total": "counter",
    "asset_worker_retries_total": "counter",
    "asset_worker_stored_bytes_total": "counter",
    "asset_worker_stored_assets_total": "counter",
    "asset_worker_transfer_duration_seconds": "histogram",
    "asset_worker_in_flight": "gauge",
    "asset_worker_queue_depth": "gauge",
    "asset_worker_oldest_due_job_age_seconds": "gauge",
}


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[Samples, str]:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE
        text = await resp.text()
    return parse_metrics(text), text


async def test_metrics_move_as_jobs_finish(sim: Simulator, make_settings: SettingsFactory) -> None:
    jobs = [sim.add_cloudlayer_job(id=f"m{i}", pending_s=0, size=100_000 * (i + 1)) for i in range(2)]
    sim.add_cloudlayer_job(id="m-bad", pending_s=0, outcome="error", error_message="render failed")
    # One API request answered 503 (retried by the HTTP client), one file request too (an asset retry).
    sim.add_fault(route="cloudlayer.job", kind="status", status=503, count=1, match="/m0")
    sim.add_fault(route="files", kind="status", status=503, count=1)
    async with serving(make_settings()) as served, api_client(served.url) as api:
        before, text = await scrape(api.session, served.url)
        for name, kind in DEPLOYED.items():
            assert f"# TYPE {name} {kind}" in text, name
        assert sample(before, "asset_worker_queue_depth") == 0
        assert sample(before, "asset_worker_job_outcomes_total", provider="cloudlayer", outcome="done") == 0

        await api.submit(*({"key": f"cloudlayer:{k}"} for k in ("m0", "m1", "m-bad")))
        queued, _ = await scrape(api.session, served.url)
        assert sample(queued, "asset_worker_jobs", state="queued") == 3
        assert sample(queued, "asset_worker_queue_depth") == 3
        assert sample(queued, "asset_worker_oldest_due_job_age_seconds") >= 0
        assert sample(queued, "asset_worker_in_flight", phase="transfer") == 0

        await run_until_idle(served.worker)
        after, _ = await scrape(api.session, served.url)
    outcomes = {
        outcome: sample(after, "asset_worker_job_outcomes_total", provider="cloudlayer", outcome=outcome)
        for outcome in ("done", "failed")
    }
    assert outcomes == {"done": 2, "failed": 1}
    assert sample(after, "asset_worker_jobs", state="done") == 2
    assert sample(after, "asset_worker_jobs", state="failed") == 1
    assert sample(after, "asset_worker_jobs", state="queued") == 0
    assert sample(after, "asset_worker_queue_depth") == 0
    assert sample(after, "asset_worker_oldest_due_job_age_seconds") == 0
    assert sample(after, "asset_worker_stored_assets_total", provider="cloudlayer") == 2
    assert sample(after, "asset_worker_stored_bytes_total", provider="cloudlayer") == sum(
        j.size for j in jobs
    )
    assert sample(after, "asset_worker_transfer_duration_seconds_count") == 2
    assert sample(after, "asset_worker_polls_total", provider="cloudlayer", result="ready") == 2
    assert sample(after, "asset_worker_polls_total", provider="cloudlayer", result="failed") == 1
    retries = {
        labels: value
        for (name, labels), value in after.items()
        if name == "asset_worker_retries_total" and value
    }
    assert retries == {
        frozenset({("provider", "cloudlayer"), ("reason", "http_503")}): 1,
        frozenset({("provider", "cloudlayer"), ("reason", "upstream_unavailable")}): 1,
    }
    assert sample(after, "asset_worker_stored_assets_total", provider="layers") == 0


async def test_each_worker_counts_its_own_work(sim: Simulator, make_settings: SettingsFactory) -> None:
    """Two workers in one process: separate registries, so one's jobs never show in the other's."""
    sim.add_cloudlayer_job(id="mine", pending_s=0, size=10_000)
    async with serving(make_settings(worker_id="one")) as one, api_client(one.url) as api:
        await api.submit({"key": "cloudlayer:mine"})
        await run_until_idle(one.worker)
        async with open_worker(make_settings(worker_id="two")) as two:
            counted = parse_metrics(two.metrics.render().decode())
        mine, _ = await scrape(api.session, one.url)
    assert sample(mine, "asset_worker_stored_assets_total", provider="cloudlayer") == 1
    assert sample(counted, "asset_worker_stored_assets_total", provider="cloudlayer") == 0


async def test_in_flight_and_queue_during_a_transfer(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A transfer under way is in flight here, leased (so not in the queue depth), downloading."""
    sim.add_cloudlayer_job(id="big", pending_s=0, size=4 * 1024 * 1024 * 1024)
    async with serving(make_settings(grace_s=0.1)) as served, api_client(served.url) as api:
        await api.submit({"key": "cloudlayer:big"})
        running = asyncio.create_task(served.worker.runner.run(stop=served.stop))
        try:
            await eventually(lambda: any(p.suffix == ".part" for p in (tmp_path / "assets").rglob("*")))
            during, _ = await scrape(api.session, served.url)
        finally:
            served.stop.set()
            await running
    assert sample(during, "asset_worker_in_flight", phase="transfer") == 1
    assert sample(during, "asset_worker_in_flight", phase="poll") == 0
    assert sample(during, "asset_worker_jobs", state="downloading") == 1
    assert sample(during, "asset_worker_queue_depth") == 0


async def test_queue_gauges_are_absent_when_the_store_does_not_answer(make_settings: SettingsFactory) -> None:
    """A store read that does not finish within the timeout leaves the queue gauges out of the
    scrape instead of repeating the last values (an autoscaler must not act on stale depth)."""
    async with open_worker(make_settings()) as worker:
        assert await worker.metrics.refresh(worker.store, now=time.time(), timeout_s=5)
        fresh = parse_metrics(worker.metrics.render().decode())
        assert sample(fresh, "asset_worker_queue_depth") == 0
        # A zero budget: the read is cut off at its first wait, as a hung database's would be.
        assert not await worker.metrics.refresh(worker.store, now=time.time(), timeout_s=0)
        stale = parse_metrics(worker.metrics.render().decode())
    assert not any(name == "asset_worker_queue_depth" for name, _ in stale)
    assert not any(name == "asset_worker_jobs" for name, _ in stale)
    assert sample(stale, "asset_worker_in_flight", phase="transfer") == 0  # still this process's
