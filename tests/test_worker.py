"""The whole worker (store, runner, engine, cloudlayer provider, file sink) against the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from structlog.testing import capture_logs

from tests.conftest import RecordingSleep, SettingsFactory, poll_until_ready, run_jobs, simulator_providers
from worker.app import open_worker
from worker.config import Settings
from worker.models import Job, JobError, JobKey, JobState
from worker.providers.cloudlayer import CloudlayerSettings
from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256
from worker.statusview import job_to_json


def stored_path(job: Job) -> Path:
    receipt = job.assets[0].receipt
    assert receipt is not None
    return Path(unquote(urlsplit(receipt.uri).path))


def assert_verified(job: Job, seed: int, size: int) -> None:
    assert job.state is JobState.DONE, job.error
    path = stored_path(job)
    assert path.stat().st_size == size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == content_sha256(seed, size)


async def test_jobs_of_many_shapes_finish_verified(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Jobs with every status style, timestamp style and resolution path end stored and verified."""
    specs: list[dict[str, Any]] = [
        {"status_style": "sdk", "timestamp_style": "ms"},
        {"status_style": "aliases", "timestamp_style": "firestore", "asset_via": "asset"},
        {"status_style": "unknown", "timestamp_style": "iso", "omit_optional": True},
        {"timestamp_style": "absent", "publish_size": False, "ext": "png"},
        {"size": 3_000_000, "ext": "webp", "asset_via": "asset", "publish_size": False},
    ]
    sim_jobs = [
        sim.add_cloudlayer_job(id=f"job-{i}", pending_s=0.1 * i, **spec) for i, spec in enumerate(specs)
    ]
    jobs = await run_jobs(make_settings(), [f"cloudlayer:{j.id}" for j in sim_jobs])
    for job, sim_job in zip(jobs, sim_jobs, strict=True):
        assert_verified(job, sim_job.seed, sim_job.size)
        assert (
            stored_path(job)
            == tmp_path / "assets" / "cloudlayer" / sim_job.id / f"{sim_job.asset_id}.{sim_job.ext}"
        )
    # Verification against the vendor's size is reported only where the vendor published one.
    assert [j.assets[0].receipt.upstream_verified for j in jobs if j.assets[0].receipt] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert any(r.route == "cloudlayer.asset" for r in sim.requests())
    assert not any(r.had_api_key for r in sim.requests("files"))


async def test_status_json_shape(sim: Simulator, make_settings: SettingsFactory) -> None:
    """The status object has exactly the documented fields and types."""
    sim_job = sim.add_cloudlayer_job(id="shape", pending_s=0)
    (job,) = await run_jobs(make_settings(), ["cloudlayer:shape"])
    status = job_to_json(job)
    assert set(status) == {
        "key",
        "provider",
        "upstream_id",
        "state",
        "activity",
        "submitted_at",
        "finished_at",
        "attempts",
        "error",
        "assets",
    }
    assert status["activity"] is None  # finished
    assert status["key"] == "cloudlayer:shape" and status["provider"] == "cloudlayer"
    assert status["upstream_id"] == "shape" and status["state"] == "done" and status["error"] is None
    assert status["submitted_at"].endswith("Z") and status["finished_at"].endswith("Z")
    assert status["attempts"] == 1
    (asset,) = status["assets"]
    assert {"asset_id", "state", "uri", "size", "sha256", "upstream_verified"} <= set(asset)
    assert asset["state"] == "stored" and asset["uri"].startswith("file:///")
    assert asset["size"] == sim_job.size and asset["sha256"] == content_sha256(sim_job.seed, sim_job.size)
    assert asset["upstream_verified"] is True
    assert asset["progress"] is None


async def test_upstream_error_fails_with_vendor_text(sim: Simulator, make_settings: SettingsFactory) -> None:
    """A job that errors upstream fails with the vendor's error text and stores nothing."""
    sim.add_cloudlayer_job(id="bad", outcome="error", error_message="Navigation timeout of 30000 ms exceeded")
    sim.add_cloudlayer_job(id="bad2", outcome="error", status_style="aliases", error_message="boom")
    jobs = await run_jobs(make_settings(), ["cloudlayer:bad", "cloudlayer:bad2"])
    assert [(j.state, j.error) for j in jobs] == [
        (JobState.FAILED, JobError("upstream_error", "Navigation timeout of 30000 ms exceeded")),
        (JobState.FAILED, JobError("upstream_error", "boom")),
    ]
    assert all(j.assets == () for j in jobs)


async def test_job_pending_past_deadline_times_out(sim: Simulator, make_settings: SettingsFactory) -> None:
    """A job stuck pending forever fails with poll_timeout once the deadline passes."""
    sim.add_cloudlayer_job(id="stuck", pending_s=None)
    settings = make_settings()
    settings = settings.with_schedule(deadline_s=0.6)
    started = time.monotonic()
    (job,) = await run_jobs(settings, ["cloudlayer:stuck"])
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "poll_timeout"
    assert time.monotonic() - started < 5
    polls = [r for r in sim.requests("cloudlayer.job")]
    assert len(polls) >= 3  # it did keep polling until the deadline


@pytest.mark.parametrize("retry_after", ["3", "http-date:4"])
async def test_rate_limit_honours_retry_after(
    sim: Simulator, make_settings: SettingsFactory, retry_sleep: RecordingSleep, retry_after: str
) -> None:
    """A 429 is retried after exactly the Retry-After the server sent (seconds or HTTP date)."""
    sim_job = sim.add_cloudlayer_job(id="limited", pending_s=0)
    sim.add_fault(route="cloudlayer.job", kind="status", status=429, retry_after=retry_after, count=1)
    (job,) = await run_jobs(make_settings(), ["cloudlayer:limited"], retry_sleep)
    assert_verified(job, sim_job.seed, sim_job.size)
    expected = 3.0 if retry_after == "3" else 4.0
    assert len(retry_sleep.delays) == 1
    # An HTTP date has one-second resolution, so the wait is exact to within a second.
    assert retry_sleep.delays[0] == pytest.approx(expected, abs=1.0)


async def test_503_burst_is_ridden_out(
    sim: Simulator, make_settings: SettingsFactory, retry_sleep: RecordingSleep
) -> None:
    """Three 503s in a row are retried with growing backoff and the job still finishes."""
    sim_job = sim.add_cloudlayer_job(id="flaky", pending_s=0)
    sim.add_fault(route="cloudlayer.job", kind="status", status=503, count=3)
    (job,) = await run_jobs(make_settings(), ["cloudlayer:flaky"], retry_sleep)
    assert_verified(job, sim_job.seed, sim_job.size)
    assert len(retry_sleep.delays) == 3
    assert all(0.05 <= d <= 0.2 for d in retry_sleep.delays)


async def test_outage_longer_than_request_retries_reschedules_the_poll(
    sim: Simulator, make_settings: SettingsFactory, retry_sleep: RecordingSleep
) -> None:
    """When every request retry fails (8 x 502 against 4 attempts), the poll is rescheduled, not failed."""
    sim_job = sim.add_cloudlayer_job(id="outage", pending_s=0)
    sim.add_fault(route="cloudlayer.job", kind="status", status=502, count=8)
    (job,) = await run_jobs(make_settings(), ["cloudlayer:outage"], retry_sleep)
    assert_verified(job, sim_job.seed, sim_job.size)
    assert len([r for r in sim.requests("cloudlayer.job") if r.status == 502]) == 8


async def test_connection_resets_are_retried(
    sim: Simulator, make_settings: SettingsFactory, retry_sleep: RecordingSleep
) -> None:
    """Reset connections on the job route and on the file host are both survived."""
    sim_job = sim.add_cloudlayer_job(id="reset", pending_s=0, size=200_000)
    # aiohttp itself retries an idempotent request once after a reset, so two resets in a row
    # are needed for the error to reach the worker's own retry logic.
    sim.add_fault(route="cloudlayer.job", kind="reset", count=2)
    sim.add_fault(route="files", kind="reset", count=2)
    (job,) = await run_jobs(make_settings(), ["cloudlayer:reset"], retry_sleep)
    assert_verified(job, sim_job.seed, sim_job.size)
    assert len(retry_sleep.delays) == 2  # one request retry, one asset retry


async def test_truncated_body_resumes(sim: Simulator, make_settings: SettingsFactory) -> None:
    """A body cut short mid-transfer is resumed and the stored file verifies."""
    sim_job = sim.add_cloudlayer_job(id="trunc", pending_s=0, size=4_000_000)
    sim.add_fault(route="files", kind="truncate", count=1)
    (job,) = await run_jobs(make_settings(), ["cloudlayer:trunc"])
    assert_verified(job, sim_job.seed, sim_job.size)
    assert job.attempts == 1


async def test_short_body_is_retried_then_stored(
    sim: Simulator, make_settings: SettingsFactory, retry_sleep: RecordingSleep
) -> None:
    """A file shorter than the published size is discarded and downloaded again."""
    sim_job = sim.add_cloudlayer_job(id="short", pending_s=0, size=100_000)
    sim.add_fault(route="files", kind="short_body", count=2)
    (job,) = await run_jobs(make_settings(), ["cloudlayer:short"], retry_sleep)
    assert_verified(job, sim_job.seed, sim_job.size)
    assert len(sim.requests("files")) == 3
    assert len(retry_sleep.delays) == 2


async def test_persistently_wrong_size_fails_the_asset(
    sim: Simulator, make_settings: SettingsFactory, retry_sleep: RecordingSleep, tmp_path: Path
) -> None:
    """When every attempt comes back short the asset fails with size_mismatch and no file is left."""
    sim.add_cloudlayer_job(id="always-short", pending_s=0, size=100_000)
    sim.add_fault(route="files", kind="short_body", probability=1.0)
    (job,) = await run_jobs(make_settings(max_attempts=3), ["cloudlayer:always-short"], retry_sleep)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "size_mismatch"
    assert job.assets[0].state.value == "failed"
    assert len(sim.requests("files")) == 3
    assert [p for p in (tmp_path / "assets").rglob("*") if p.is_file()] == []


async def test_expired_url_is_refreshed(sim: Simulator, make_settings: SettingsFactory) -> None:
    """A 403 from the file host makes the worker re-read the job for a fresh URL and succeed."""
    sim_job = sim.add_cloudlayer_job(id="expiring", pending_s=0, asset_via="asset")
    sim.add_fault(route="files", kind="expired", count=1)
    (job,) = await run_jobs(make_settings(), ["cloudlayer:expiring"])
    assert_verified(job, sim_job.seed, sim_job.size)
    routes = [r.route for r in sim.requests()]
    first_403 = routes.index("files")
    assert "cloudlayer.asset" in routes[first_403:]  # the URL was re-read after the 403


async def test_real_url_expiry_is_refreshed(sim: Simulator, make_settings: SettingsFactory) -> None:
    """A URL whose signature lifetime passed before the download is replaced by a fresh one."""
    sim_job = sim.add_cloudlayer_job(id="ttl", pending_s=0, url_ttl_s=60)
    settings = make_settings()
    async with open_worker(settings) as worker:
        key = JobKey.parse("cloudlayer:ttl")
        await worker.store.submit(key, now=time.time())
        # Poll only (the job becomes ready with a URL), then let the URL's lifetime pass.
        await poll_until_ready(worker, key)
        sim.state.clock = lambda: time.time() + 120
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 30)
        (job,) = await worker.store.get([key])
    assert_verified(job, sim_job.seed, sim_job.size)
    assert [r.status for r in sim.requests("files")] == [403, 200]


async def test_hostile_ids_cannot_escape_destination(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Job and asset ids full of ../ and separators still land inside the destination root."""
    sim.add_cloudlayer_job(id="..%2F..%2Fevil", asset_id="../../../../tmp/owned", pending_s=0)
    sim.add_cloudlayer_job(id="ok-job", asset_id="a/b\\c/..", pending_s=0)
    jobs = await run_jobs(make_settings(), ["cloudlayer:..%2F..%2Fevil", "cloudlayer:ok-job"])
    root = (tmp_path / "assets").resolve()
    for job in jobs:
        assert job.state is JobState.DONE, job.error
        path = stored_path(job).resolve()
        assert path.is_relative_to(root)
        assert len(path.relative_to(root).parts) == 3


async def test_bad_key_fails_with_authentication_error(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """A rejected API key fails the job at once with a clear authentication error (no retries)."""
    sim.add_cloudlayer_job(id="auth", pending_s=0)
    wrong_key = CloudlayerSettings(api_key="cl-wrong", base_url=sim.url)
    settings = make_settings().with_options("cloudlayer", wrong_key)
    (job,) = await run_jobs(settings, ["cloudlayer:auth"])
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "unauthenticated"
    assert "CLOUDLAYER_API_KEY" in job.error.message
    assert len(sim.requests("cloudlayer.job")) == 1


async def test_jobs_of_a_provider_without_a_key_wait_for_a_worker_that_has_one(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """No key configured: the worker warns once at start, naming the variable, and leaves the job
    queued (not failed, not polled); a worker with the key then does it. An unknown job id still
    fails with its own code."""
    sim.add_cloudlayer_job(id="keyless", pending_s=0, size=2048)
    keyless = make_settings().with_options("cloudlayer", CloudlayerSettings(api_key=None, base_url=sim.url))
    with capture_logs() as events:
        (waiting,) = await run_jobs(keyless, ["cloudlayer:keyless"])
    assert waiting.state is JobState.QUEUED and waiting.error is None and waiting.polls == 0
    assert sim.requests("cloudlayer.job") == []
    warnings = [e for e in events if e["event"] == "provider_not_configured"]
    assert [(w["provider"], w["set"]) for w in warnings] == [("cloudlayer", "CLOUDLAYER_API_KEY")]
    assert "queued" in warnings[0]["message"]
    (done,) = await run_jobs(make_settings(), ["cloudlayer:keyless"])
    assert done.state is JobState.DONE
    (unknown,) = await run_jobs(make_settings(store_url=no_key_store(make_settings())), ["cloudlayer:nope"])
    assert unknown.error is not None and unknown.error.code == "not_found"


async def test_no_warning_for_a_provider_without_a_key_and_without_jobs(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """Layers has no key here but no job either: nothing to warn about; cloudlayer's jobs run."""
    sim.add_cloudlayer_job(id="plain", pending_s=0)
    settings = make_settings(providers=simulator_providers(sim, api_key=None))
    with capture_logs() as events:
        (job,) = await run_jobs(settings, ["cloudlayer:plain"])
    assert job.state is JobState.DONE
    assert [e for e in events if e["event"] == "provider_not_configured"] == []


def no_key_store(settings: Settings) -> str:
    return settings.store_url.replace("store.db", "store2.db")


async def test_restart_resumes_from_the_store(sim: Simulator, make_settings: SettingsFactory) -> None:
    """Stopping mid-run and starting a new worker on the same store finishes every job exactly once."""
    sim_jobs = [sim.add_cloudlayer_job(id=f"r{i}", pending_s=0.3 + 0.1 * i, size=500_000) for i in range(6)]
    keys = [JobKey("cloudlayer", j.id) for j in sim_jobs]
    settings = make_settings()
    async with open_worker(settings) as worker:
        for key in keys:
            await worker.store.submit(key, now=time.time())
        stop = asyncio.Event()
        run = asyncio.create_task(worker.runner.run(stop=stop))
        # Watching the store from outside, as an operator would; no event to wait on exists.
        while not any(j.state is JobState.DONE for j in await worker.store.get(keys)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(run, 10)
        midway = await worker.store.get(keys)
    assert any(j.state is not JobState.DONE for j in midway)
    assert all(j.lease_owner is None for j in midway)  # a clean stop releases every lease
    async with open_worker(dataclasses.replace(settings, worker_id="second")) as worker:
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 30)
        final = await worker.store.get(keys)
    for job, sim_job in zip(final, sim_jobs, strict=True):
        assert_verified(job, sim_job.seed, sim_job.size)
    downloads = [r.path for r in sim.requests("files") if r.status == 200]
    assert len(downloads) == len(set(downloads)) == 6  # nothing downloaded twice


async def test_logs_one_job_finished_per_job_without_secrets(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """Each job logs one job_finished event with outcome, duration, bytes and attempts; no secret appears."""
    sim.add_cloudlayer_job(id="log-ok", pending_s=0, size=12_345)
    sim.add_cloudlayer_job(id="log-bad", pending_s=0, outcome="error")
    sim.add_fault(route="files", kind="expired", count=1)
    with capture_logs() as events:
        await run_jobs(make_settings(), ["cloudlayer:log-ok", "cloudlayer:log-bad"])
    finished = {e["job"]: e for e in events if e["event"] == "job_finished"}
    assert set(finished) == {"cloudlayer:log-ok", "cloudlayer:log-bad"}
    assert finished["cloudlayer:log-ok"]["outcome"] == "done"
    assert finished["cloudlayer:log-ok"]["bytes"] == 12_345
    assert finished["cloudlayer:log-bad"]["outcome"] == "failed"
    for event in finished.values():
        assert {"duration_s", "attempts", "bytes"} <= set(event)
    text = repr(events)
    assert sim.api_key not in text
    assert "X-Amz-Signature" not in text


async def test_downloads_and_polls_do_not_block_each_other(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """With the only transfer slot busy on a large file, other jobs are still polled to readiness."""
    big = sim.add_cloudlayer_job(id="big", pending_s=0, size=400 * 1024 * 1024)
    small = [sim.add_cloudlayer_job(id=f"s{i}", pending_s=0.2, size=10_000) for i in range(3)]
    settings = make_settings(concurrency=1, poll_concurrency=4)
    with capture_logs() as events:
        jobs = await run_jobs(settings, ["cloudlayer:big", *(f"cloudlayer:{j.id}" for j in small)])
    assert all(j.state is JobState.DONE for j in jobs)
    order = [(e["event"], e.get("job")) for e in events if e["event"] in ("job_ready", "job_finished")]
    big_done = order.index(("job_finished", "cloudlayer:big"))
    for job in small:
        # Each small job was polled to readiness while the big download held the only slot.
        assert order.index(("job_ready", f"cloudlayer:{job.id}")) < big_done
    assert big.size == jobs[0].assets[0].receipt.size  # type: ignore[union-attr]


async def test_lease_expiring_in_flight_is_fenced(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A transfer stuck longer than its lease loses the job to a fresh claim; the job still ends with
    exactly one verified copy and no temp file."""
    sim_job = sim.add_cloudlayer_job(id="stuck-socket", pending_s=0, size=2_000_000)
    sim.add_fault(route="files", kind="stall", delay_s=1.5, count=1)
    with capture_logs() as events:
        (job,) = await run_jobs(make_settings(lease_s=0.5), ["cloudlayer:stuck-socket"])
    assert_verified(job, sim_job.seed, sim_job.size)
    assert any(e["event"] == "lease_expired_in_flight" for e in events)
    assert [p for p in (tmp_path / "assets").rglob("*") if p.is_file()] == [stored_path(job)]
    assert sum(e["event"] == "job_finished" for e in events) == 1


async def test_api_redirect_is_not_followed_with_the_key(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """An API answer redirecting elsewhere fails the job instead of sending the API key to another host."""
    sim.add_cloudlayer_job(id="moved", pending_s=0)

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            f"HTTP/1.1 302 Found\r\nLocation: {sim.url}/v2/jobs/moved\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(redirect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = make_settings().with_options(
            "cloudlayer", CloudlayerSettings(api_key=sim.api_key, base_url=f"http://127.0.0.1:{port}")
        )
        (job,) = await run_jobs(settings, ["cloudlayer:moved"])
    finally:
        server.close()
        await server.wait_closed()
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "unexpected_redirect"
    assert sim.requests("cloudlayer.job") == []


async def test_locked_store_is_waited_out(
    sim: Simulator, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A store locked by another process for longer than the busy timeout pauses the worker, which
    reports it and carries on once the lock is gone."""
    import sqlite3
    import threading

    import worker.store.sqlite_conn as sqlite_conn

    monkeypatch.setattr(sqlite_conn, "BUSY_TIMEOUT_S", 0.2)
    sim_job = sim.add_cloudlayer_job(id="locked", pending_s=0.3)
    settings = make_settings()
    release = threading.Event()

    def hold_lock(locked: threading.Event) -> None:
        conn = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        conn.execute("ROLLBACK")
        conn.close()

    async with open_worker(settings) as worker:
        await worker.store.submit(JobKey.parse("cloudlayer:locked"), now=time.time())
        with capture_logs() as events:
            run = asyncio.create_task(worker.runner.run(stop=asyncio.Event(), until_idle=True))
            locked = threading.Event()
            holder = threading.Thread(target=hold_lock, args=(locked,))
            holder.start()
            await asyncio.to_thread(locked.wait, 5)
            await asyncio.sleep(1.0)
            release.set()
            await asyncio.to_thread(holder.join, 5)
            await asyncio.wait_for(run, 30)
        (job,) = await worker.store.get([JobKey.parse("cloudlayer:locked")])
    assert_verified(job, sim_job.seed, sim_job.size)
    assert any(e["event"] == "store_unavailable" for e in events)
