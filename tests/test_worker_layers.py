"""The whole worker on Layers content containers, against the simulator's Layers API."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from structlog.testing import capture_logs

from tests.conftest import SettingsFactory, poll_until_ready, run_jobs, simulator_providers
from worker.app import open_worker
from worker.models import JobKey, JobState
from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256


def path_of(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


async def test_video_and_slideshow_land_verified_in_order(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Every asset of a video and of a slideshow is stored under layers/<container>/, upstream-verified."""
    video = sim.add_layers_container(format="video", size=400_000)
    slides = sim.add_layers_container(format="slideshow", slides=4, size=50_000)
    bare_uuid = slides.id.removeprefix("cnt_")
    jobs = await run_jobs(make_settings(), [f"layers:{video.id}", f"layers:{bare_uuid}"])
    for job, container in zip(jobs, (video, slides), strict=True):
        assert job.state is JobState.DONE, job.error
        expected = container.generation.assets
        assert [a.ref.asset_id for a in job.assets] == [a.asset_id for a in expected]
        for record, asset in zip(job.assets, expected, strict=True):
            receipt = record.receipt
            assert receipt is not None and receipt.upstream_verified
            assert receipt.sha256 == content_sha256(asset.seed, asset.size)
            path = path_of(receipt.uri)
            assert path == tmp_path / "assets" / "layers" / container.id / f"{asset.asset_id}.{asset.ext}"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == receipt.sha256


async def test_job_key_leads_to_its_container(sim: Simulator, make_settings: SettingsFactory) -> None:
    """A generation job is followed to the container it produced, using ETags while it runs."""
    job_spec = sim.add_layers_job(running_s=0.4, container={"format": "video", "size": 30_000})
    (job,) = await run_jobs(make_settings(), [f"layers:{job_spec.id}"])
    assert job.state is JobState.DONE, job.error
    receipt = job.assets[0].receipt
    assert receipt is not None and f"/layers/cnt_{job_spec.container_uuid}/" in receipt.uri
    assert 304 in [r.status for r in sim.requests("layers.job")]


async def test_legacy_assets_are_computed_not_upstream_verified(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """Without a published size or checksum the copy is stored with upstream_verified false."""
    container = sim.add_layers_container(format="video", size=20_000, legacy=True)
    (job,) = await run_jobs(make_settings(), [f"layers:{container.id}"])
    receipt = job.assets[0].receipt
    assert job.state is JobState.DONE and receipt is not None
    assert receipt.upstream_verified is False
    asset = container.generation.assets[0]
    assert receipt.sha256 == content_sha256(asset.seed, asset.size)


async def test_wrong_published_checksum_is_never_stored(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Bytes that do not match the vendor's checksum are retried, then failed; no file is left."""
    container = sim.add_layers_container(format="video", size=20_000, wrong_checksum=True)
    (job,) = await run_jobs(make_settings(max_attempts=2), [f"layers:{container.id}"])
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "checksum_mismatch"
    assert len(sim.requests("files")) == 2
    assert [p for p in (tmp_path / "assets").rglob("*") if p.is_file()] == []


async def test_expiring_url_is_refreshed_before_use(sim: Simulator, make_settings: SettingsFactory) -> None:
    """A media URL whose expiresAt is within the margin is replaced by a fresh descriptor first."""
    container = sim.add_layers_container(format="video", size=20_000, url_ttl_s=30)
    # The margin (60 s) is longer than the URL's life, so every URL counts as about to expire once.
    (job,) = await run_jobs(make_settings(), [f"layers:{container.id}"])
    assert job.state is JobState.DONE, job.error
    assert len(sim.requests("layers.asset")) >= 2  # resolved, then refreshed before downloading
    assert [r.status for r in sim.requests("files")] == [200]


async def test_regenerate_mid_run_re_resolves(sim: Simulator, make_settings: SettingsFactory) -> None:
    """When the container is regenerated after resolution, the old URLs 404 and the job stores the
    new set only, never a mix."""
    container = sim.add_layers_container(format="slideshow", slides=3, size=30_000)
    settings = make_settings()
    key = JobKey.parse(f"layers:{container.id}")
    with capture_logs() as events:
        async with open_worker(settings) as worker:
            await worker.store.submit(key, now=time.time())
            # Resolve first (poll phase only), then regenerate before any download.
            await poll_until_ready(worker, key)
            new = sim.regenerate_layers_container(container.id)
            await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 30)
            (job,) = await worker.store.get([key])
    assert job.state is JobState.DONE, job.error
    new_ids = [a.asset_id for a in new.generation.assets]
    assert [a.ref.asset_id for a in job.assets] == new_ids
    assert all(a.receipt is not None for a in job.assets)
    assert any(e["event"] == "asset_set_changed" for e in events)
    assert job.provider_state.get("replaced_asset_ids")


async def test_asset_already_held_is_not_downloaded_again(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """An asset whose published checksum matches a stored copy is recorded without a download."""
    first = sim.add_layers_container(format="video", size=25_000, seed=77)
    second = sim.add_layers_container(format="video", size=25_000, seed=77)
    settings = make_settings()
    await run_jobs(settings, [f"layers:{first.id}"])
    downloads = len(sim.requests("files"))
    (job,) = await run_jobs(settings, [f"layers:{second.id}"])
    assert job.state is JobState.DONE, job.error
    receipt = job.assets[0].receipt
    assert receipt is not None and receipt.origin == "reused"
    assert len(sim.requests("files")) == downloads


async def test_scope_and_missing_container_fail_with_vendor_codes(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """FORBIDDEN_SCOPE names the scope; an unknown container is NOT_FOUND."""
    sim.set_layers_key("lp_jobs_only", ["jobs:read"])
    container = sim.add_layers_container(format="video", size=1000)
    settings = make_settings()
    limited = simulator_providers(sim, api_key="lp_jobs_only")
    (scoped,) = await run_jobs(make_settings(providers=limited), [f"layers:{container.id}"])
    assert scoped.error is not None and scoped.error.code == "forbidden_scope"
    assert "content:read" in scoped.error.message
    missing = "cnt_00000000-0000-4000-8000-000000000000"
    (unknown,) = await run_jobs(
        make_settings(store_url=settings.store_url.replace("store.db", "b.db")), [f"layers:{missing}"]
    )
    assert unknown.error is not None and unknown.error.code == "not_found"


async def test_media_host_refusal_re_reads_the_container(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """A 403 (or 410) from the media host makes the worker re-read the container for fresh URLs."""
    container = sim.add_layers_container(format="slideshow", slides=2, size=40_000)
    first = container.generation.assets[0].asset_id
    sim.add_fault(route="files", match=first, kind="expired", count=1)
    sim.add_fault(
        route="files", match=container.generation.assets[1].asset_id, kind="expired", style="410", count=1
    )
    (job,) = await run_jobs(make_settings(), [f"layers:{container.id}"])
    assert job.state is JobState.DONE, job.error
    routes = [(r.route, r.status) for r in sim.requests() if r.route in ("files", "layers.container")]
    refused = routes.index(("files", 403))
    assert ("layers.container", 200) in routes[refused:]
    assert sorted(r.status or 0 for r in sim.requests("files")) == [200, 200, 403, 410]


async def test_container_back_to_processing_is_polled_afresh(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """A regenerate that puts the container back to processing sends the job back to polling with a
    fresh deadline (not the one that started at its first poll), then stores the new set only."""
    container = sim.add_layers_container(format="video", size=30_000)
    settings = make_settings()
    settings = settings.with_schedule(deadline_s=1.0)
    key = JobKey.parse(f"layers:{container.id}")
    async with open_worker(settings) as worker:
        await worker.store.submit(key, now=time.time())
        await poll_until_ready(worker, key)
        await asyncio.sleep(1.2)  # the first polling period's deadline has passed
        new = sim.regenerate_layers_container(container.id, processing_s=0.4)
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 30)
        (job,) = await worker.store.get([key])
    assert job.state is JobState.DONE, job.error
    assert [a.ref.asset_id for a in job.assets] == [a.asset_id for a in new.generation.assets]


async def test_copies_elsewhere_are_not_reused(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """After the destination changes, an identical asset is published at the new destination."""
    first = sim.add_layers_container(format="video", size=25_000, seed=91)
    second = sim.add_layers_container(format="video", size=25_000, seed=91)
    await run_jobs(make_settings(), [f"layers:{first.id}"])
    (job,) = await run_jobs(make_settings(dest_url=str(tmp_path / "elsewhere")), [f"layers:{second.id}"])
    receipt = job.assets[0].receipt
    assert receipt is not None and receipt.origin == "downloaded"
    assert str(tmp_path / "elsewhere") in receipt.uri
