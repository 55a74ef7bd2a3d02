"""The engine's decisions, one step at a time, against the simulator and a real SQLite store.

Each test drives ``Engine.poll`` / ``Engine.transfer`` directly on jobs claimed from the store, as
the runner would, with one hand-moved clock shared by the engine and the simulator, and a retry
sleep that records what it was asked to wait. What is checked is what a data-losing bug would
change: a job's final state and error, each asset's state and receipt, the bytes on disk, the
requests the vendor saw, what the worker asked of its lease, and what it counted in its metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from aiohttp import web

from tests.conftest import RecordingSleep, SettingsFactory
from worker.app import Worker, open_worker
from worker.config import HttpSettings, Settings
from worker.errors import LeaseLost
from worker.lease import Lease, Progress
from worker.models import AssetState, Job, JobError, JobKey, JobState, Receipt
from worker.providers.base import ProviderConfig, Schedule
from worker.providers.cloudlayer import CloudlayerSettings
from worker.providers.layers import LayersSettings
from worker.simulator.app import Simulator, SimulatorState, start_simulator
from worker.simulator.content import content_sha256, iter_content
from worker.simulator.layers_content import LayersAsset, LayersContainer
from worker.sinks.file import FileSink
from worker.store.base import Phase, Store

T0 = 1_700_000_000.0
LEASE_S = 30.0


class SharedClock:
    """One clock for the engine and the simulator: time moves only when a test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


class ActingSleep(RecordingSleep):
    """A retry sleep that records each delay and can make something happen during the wait."""

    def __init__(self) -> None:
        super().__init__()
        self.during: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, seconds: float) -> None:
        await super().__call__(seconds)
        if self.during is not None:
            await self.during()


class WorkerDied(Exception):
    """The worker holding a lease stopped here (its process was killed)."""


@pytest.fixture
def clock() -> SharedClock:
    return SharedClock()


@pytest.fixture
async def sim(clock: SharedClock) -> AsyncIterator[Simulator]:
    """The simulator on the shared clock (replaces conftest's, so ``make_settings`` points at it)."""
    async with start_simulator(state=SimulatorState(clock=clock)) as simulator:
        yield simulator


@dataclass
class Rig:
    """A whole worker whose engine the test drives by hand, one claim at a time."""

    worker: Worker
    clock: SharedClock
    sleep: ActingSleep
    confirms: list[str] = field(default_factory=list)
    tokens: int = 0

    @property
    def store(self) -> Store:
        return self.worker.store

    async def submit(self, key: str, *, dest: str | None = None) -> JobKey:
        parsed = JobKey.parse(key)
        await self.store.submit(parsed, now=self.clock.now(), dest=dest)
        return parsed

    async def get(self, key: JobKey) -> Job:
        (job,) = await self.store.get([key])
        return job

    def lease(self, key: JobKey, token: str, *, dies_at_confirm: int | None = None) -> Lease:
        """A lease like the runner's: confirming renews it in the store (LeaseLost once taken).
        With ``dies_at_confirm`` its worker is killed at that confirmation (1-based)."""
        calls = 0

        async def confirm() -> None:
            nonlocal calls
            calls += 1
            if calls == dies_at_confirm:
                raise WorkerDied(token)
            self.confirms.append(token)
            await self.store.renew(key, owner=token, now=self.clock.now(), lease_s=LEASE_S)

        return Lease(token, Progress(self.clock.now), confirm)

    async def claim(
        self, key: JobKey, phase: Phase, *, dies_at_confirm: int | None = None
    ) -> tuple[Job, Lease]:
        self.tokens += 1
        token = f"w{self.tokens}"
        jobs = await self.store.claim(
            owner=token, phase=phase, now=self.clock.now(), lease_s=LEASE_S, limit=1
        )
        assert [j.key for j in jobs] == [key]
        return jobs[0], self.lease(key, token, dies_at_confirm=dies_at_confirm)

    async def poll(self, key: JobKey) -> bool:
        job, lease = await self.claim(key, Phase.POLL)
        return await self.worker.engine.poll(job, lease)

    async def resolve(self, key: JobKey) -> Job:
        """Poll once; the job must be ready for transfer. Nothing is downloaded."""
        assert await self.poll(key) is True, (await self.get(key)).error
        job = await self.get(key)
        assert job.state is JobState.DOWNLOADING
        return job

    async def transfer(self, key: JobKey, *, dies_at_confirm: int | None = None) -> Job:
        job, lease = await self.claim(key, Phase.TRANSFER, dies_at_confirm=dies_at_confirm)
        await self.worker.engine.transfer(job, lease)
        return await self.get(key)

    async def take_over(self, key: JobKey) -> str:
        """Another worker claims the job once the current lease has run out; returns its token."""
        self.clock.advance(LEASE_S + 1)
        jobs = await self.store.claim(
            owner="thief", phase=Phase.TRANSFER, now=self.clock.now(), lease_s=LEASE_S, limit=1
        )
        assert [j.key for j in jobs] == [key]
        return "thief"

    def metric(self, name: str, **labels: str) -> float:
        value = self.worker.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@asynccontextmanager
async def rig_for(settings: Settings, clock: SharedClock) -> AsyncIterator[Rig]:
    sleep = ActingSleep()
    # rand 0: no jitter, so every delay the engine picks is exactly its schedule's.
    async with open_worker(settings, clock=clock, sleep=sleep, rand=lambda: 0.0) as worker:
        yield Rig(worker, clock, sleep)


def engine_settings(make_settings: SettingsFactory, **changes: object) -> Settings:
    """Three attempts per asset; asset retries back off 0.05, 0.1, 0.2, 0.4 s ... (rand 0)."""
    http = HttpSettings(request_attempts=4, backoff_initial_s=0.05, backoff_max_s=1.0, read_timeout_s=5.0)
    return make_settings(**{"max_attempts": 3, "http": http, **changes})


@pytest.fixture
async def rig(make_settings: SettingsFactory, clock: SharedClock) -> AsyncIterator[Rig]:
    async with rig_for(engine_settings(make_settings), clock) as made:
        yield made


def path_of(receipt: Receipt | None) -> Path:
    assert receipt is not None
    assert receipt.uri.startswith("file://")
    return Path(unquote(urlsplit(receipt.uri).path))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def slideshow(sim: Simulator, *, slides: int = 3, size: int = 20_000, **spec: object) -> LayersContainer:
    return sim.add_layers_container(
        format="slideshow", slides=slides, size=size, queued_s=0, processing_s=0, **spec
    )


def file_requests(sim: Simulator, asset_id: str) -> list[int | None]:
    """Statuses the file host answered for one asset, in order."""
    return [r.status for r in sim.requests("files") if asset_id in unquote(r.path)]


def assert_stored(receipt: Receipt | None, asset: LayersAsset) -> None:
    expected = content_sha256(asset.seed, asset.size)
    assert receipt is not None and receipt.sha256 == expected and receipt.size == asset.size
    assert sha256_of(path_of(receipt)) == expected


# -- a job with a failed asset never ends done ------------------------------------------------


async def test_asset_failing_before_the_others_store_fails_the_job(
    sim: Simulator, rig: Rig, tmp_path: Path
) -> None:
    """One asset of three failing for good (short every time) fails the job with that asset's error
    although the assets after it store: never ``done`` with a file missing."""
    container = slideshow(sim)
    bad, *good = container.generation.assets
    sim.add_fault(route="files", kind="short_body", match=bad.asset_id, probability=1.0)
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    job = await rig.transfer(key)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.code == "size_mismatch"
    assert [a.state for a in job.assets] == [AssetState.FAILED, AssetState.STORED, AssetState.STORED]
    assert job.assets[0].error == job.error and job.assets[0].receipt is None
    for record, asset in zip(job.assets[1:], good, strict=True):
        assert_stored(record.receipt, asset)
    assert len(file_requests(sim, bad.asset_id)) == 3  # max_attempts, then given up
    assert len(files_under(tmp_path / "assets")) == 2
    assert rig.metric("asset_worker_job_outcomes_total", provider="layers", outcome="failed") == 1
    assert rig.metric("asset_worker_job_outcomes_total", provider="layers", outcome="done") == 0


async def test_the_first_asset_error_is_the_jobs_error(sim: Simulator, rig: Rig) -> None:
    """With two assets failing differently the job reports the first one's error, and the asset
    between them still stores."""
    container = slideshow(sim)
    first, middle, last = container.generation.assets
    sim.add_fault(route="files", kind="status", status=400, match=first.asset_id, probability=1.0)
    sim.add_fault(route="files", kind="short_body", match=last.asset_id, probability=1.0)
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    job = await rig.transfer(key)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "source_rejected"
    assert job.error == job.assets[0].error
    assert [a.state for a in job.assets] == [AssetState.FAILED, AssetState.STORED, AssetState.FAILED]
    assert job.assets[2].error is not None and job.assets[2].error.code == "size_mismatch"
    assert_stored(job.assets[1].receipt, middle)


async def test_resumed_job_with_an_asset_already_failed_ends_failed(
    sim: Simulator, rig: Rig, tmp_path: Path
) -> None:
    """A worker that takes over a job whose earlier worker failed one asset and then died stores
    the rest, does not fetch the failed asset again, and fails the job with the recorded error."""
    container = slideshow(sim)
    first, refused, last = container.generation.assets
    sim.add_fault(route="files", kind="status", status=400, match=refused.asset_id, count=1)
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    # Confirmation 1 publishes the first asset; the worker dies at the second (the last asset's).
    with pytest.raises(WorkerDied):
        await rig.transfer(key, dies_at_confirm=2)
    midway = await rig.get(key)
    assert [a.state for a in midway.assets] == [AssetState.STORED, AssetState.FAILED, AssetState.PENDING]
    recorded = midway.assets[1].error
    assert recorded is not None and recorded.code == "source_rejected"
    rig.clock.advance(LEASE_S + 1)  # its lease runs out; another worker claims the job
    job = await rig.transfer(key)
    assert job.state is JobState.FAILED
    assert job.error == recorded
    assert [a.state for a in job.assets] == [AssetState.STORED, AssetState.FAILED, AssetState.STORED]
    assert file_requests(sim, refused.asset_id) == [400]  # not fetched again
    assert file_requests(sim, first.asset_id) == [200]
    assert_stored(job.assets[2].receipt, last)
    assert len(files_under(tmp_path / "assets")) == 2


async def test_resumed_job_keeps_assets_already_stored(sim: Simulator, rig: Rig, tmp_path: Path) -> None:
    """A job taken over after its first asset was stored downloads only the others, keeps the first
    receipt as it was, and ends done with every file."""
    container = slideshow(sim)
    assets = container.generation.assets
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    with pytest.raises(WorkerDied):
        await rig.transfer(key, dies_at_confirm=2)
    midway = await rig.get(key)
    assert [a.state for a in midway.assets] == [AssetState.STORED, AssetState.PENDING, AssetState.PENDING]
    rig.clock.advance(LEASE_S + 1)
    job = await rig.transfer(key)
    assert job.state is JobState.DONE and job.error is None
    assert job.assets[0].receipt == midway.assets[0].receipt
    for record, asset in zip(job.assets, assets, strict=True):
        assert_stored(record.receipt, asset)
    assert file_requests(sim, assets[0].asset_id) == [200]
    assert len(files_under(tmp_path / "assets")) == 3


# -- answers only a scripted vendor gives: "done" without files, odd file names ---------------


@dataclass
class VendorHost:
    """A hand-scripted Layers API on loopback, for answers the simulator never gives (a finished
    container without files); its ``/gone/`` paths answer 404 like an expired file host."""

    url: str = ""
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)
    descriptors: dict[str, dict[str, Any]] = field(default_factory=dict)
    cloudlayer_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # name -> content type; every blob's body is BLOB
    blobs: dict[str, str] = field(default_factory=dict)

    async def container(self, request: web.Request) -> web.Response:
        body = self.containers.get(request.match_info["cid"])
        if body is None:
            return web.json_response(
                {"error": {"code": "NOT_FOUND", "message": "no such container"}}, status=404
            )
        return web.json_response(body)

    async def descriptor(self, request: web.Request) -> web.Response:
        body = self.descriptors.get(request.match_info["aid"])
        if body is None:
            return web.json_response({"error": {"code": "NOT_FOUND", "message": "no such asset"}}, status=404)
        return web.json_response(body)

    async def gone(self, _request: web.Request) -> web.Response:
        return web.Response(status=404, text="NoSuchKey")

    async def cloudlayer_job(self, request: web.Request) -> web.Response:
        return web.json_response(self.cloudlayer_jobs[request.match_info["id"]])

    async def blob(self, request: web.Request) -> web.Response:
        return web.Response(body=BLOB, content_type=self.blobs[request.match_info["name"]])


@pytest.fixture
async def vendor() -> AsyncIterator[VendorHost]:
    host = VendorHost()
    app = web.Application()
    app.router.add_get("/v1/content/{cid}", host.container)
    app.router.add_get("/v1/content/{cid}/assets/{aid}", host.descriptor)
    app.router.add_get("/gone/{name}", host.gone)
    app.router.add_get("/v2/jobs/{id}", host.cloudlayer_job)
    app.router.add_get("/blob/{name}", host.blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield host
    finally:
        await runner.cleanup()


CONTAINER_ID = "cnt_6f1c2a52-8f2b-4c8e-9a4f-0d6f1e2b3c4d"
BLOB = b"not really an image" * 100


@pytest.fixture
async def vendor_rig(
    make_settings: SettingsFactory, clock: SharedClock, vendor: VendorHost
) -> AsyncIterator[Rig]:
    schedule = Schedule(initial_s=0.05, max_s=0.2, multiplier=1.3, deadline_s=30.0)
    providers = {
        "layers": ProviderConfig(
            LayersSettings(api_key="lp_vendor", base_url=vendor.url, reads_per_min=6000), schedule
        ),
        "cloudlayer": ProviderConfig(
            CloudlayerSettings(api_key="cl_vendor", base_url=vendor.url, api_version="v2"), schedule
        ),
    }
    settings = engine_settings(make_settings, providers=providers)
    async with rig_for(settings, clock) as made:
        yield made


async def test_vendor_done_without_files_fails_the_job(vendor: VendorHost, vendor_rig: Rig) -> None:
    """A container the vendor calls completed but that lists no asset fails with no_assets instead
    of ending done with nothing stored."""
    vendor.containers[CONTAINER_ID] = {"status": "completed", "assets": []}
    key = await vendor_rig.submit(f"layers:{CONTAINER_ID}")
    assert await vendor_rig.poll(key) is False
    job = await vendor_rig.get(key)
    assert job.state is JobState.FAILED
    assert job.error == JobError("no_assets", "finished upstream without any file")
    assert job.assets == () and job.lease_owner is None
    assert vendor_rig.metric("asset_worker_polls_total", provider="layers", result="ready") == 1


async def test_files_replaced_by_none_fails_the_job(vendor: VendorHost, vendor_rig: Rig) -> None:
    """When the vendor replaces a finished job's files with an empty set (seen on refreshing a dead
    URL), the job fails with no_assets rather than ending done or stored from the old set."""
    vendor.containers[CONTAINER_ID] = {"status": "completed", "assets": [{"assetId": "a1"}]}
    vendor.descriptors["a1"] = {"assetId": "a1", "url": f"{vendor.url}/gone/a1.mp4", "mimeType": "video/mp4"}
    key = await vendor_rig.submit(f"layers:{CONTAINER_ID}")
    await vendor_rig.resolve(key)
    vendor.containers[CONTAINER_ID] = {"status": "completed", "assets": []}
    job = await vendor_rig.transfer(key)
    assert job.state is JobState.FAILED
    assert job.error == JobError("no_assets", "the vendor replaced the job's files with none")


async def test_file_extension_follows_the_vendor_then_the_url_then_the_content_type(
    vendor: VendorHost, vendor_rig: Rig, tmp_path: Path
) -> None:
    """A stored file is named with the vendor's stated type when it gave one, else the URL's
    extension, else the file host's content type."""
    vendor.blobs = {"stated.webp": "image/jpeg", "plain": "image/webp", "from-url.webp": "image/png"}
    vendor.containers[CONTAINER_ID] = {
        "status": "completed",
        "assets": [{"assetId": "a1"}, {"assetId": "a2"}],
    }
    vendor.descriptors["a1"] = {
        "assetId": "a1",
        "url": f"{vendor.url}/blob/stated.webp",
        "mimeType": "image/png",
    }
    vendor.descriptors["a2"] = {"assetId": "a2", "url": f"{vendor.url}/blob/plain"}
    vendor.cloudlayer_jobs["img"] = {
        "status": "success",
        "type": "url-image",
        "assetUrl": f"{vendor.url}/blob/from-url.webp",
    }
    layers = await vendor_rig.submit(f"layers:{CONTAINER_ID}")
    await vendor_rig.resolve(layers)
    job = await vendor_rig.transfer(layers)
    assert job.state is JobState.DONE, job.error
    folder = tmp_path / "assets" / "layers" / CONTAINER_ID
    assert [path_of(a.receipt) for a in job.assets] == [folder / "a1.png", folder / "a2.webp"]
    cloudlayer = await vendor_rig.submit("cloudlayer:img")
    await vendor_rig.resolve(cloudlayer)
    job = await vendor_rig.transfer(cloudlayer)
    assert job.state is JobState.DONE, job.error
    assert path_of(job.assets[0].receipt) == tmp_path / "assets" / "cloudlayer" / "img" / "img.webp"
    assert path_of(job.assets[0].receipt).read_bytes() == BLOB


# -- reusing a copy already stored -------------------------------------------------------------


async def store_twin_jobs(sim: Simulator, rig: Rig, **spec: object) -> tuple[Job, JobKey, LayersContainer]:
    """Store a video, then resolve a second container with identical bytes (same seed and size)."""
    first = sim.add_layers_container(format="video", size=25_000, seed=77, queued_s=0, processing_s=0, **spec)
    second = sim.add_layers_container(
        format="video", size=25_000, seed=77, queued_s=0, processing_s=0, **spec
    )
    key = await rig.submit(f"layers:{first.id}")
    await rig.resolve(key)
    done = await rig.transfer(key)
    assert done.state is JobState.DONE
    rig.clock.advance(5)
    twin = await rig.submit(f"layers:{second.id}")
    await rig.resolve(twin)
    return done, twin, second


async def test_identical_copy_is_reused_without_download(sim: Simulator, rig: Rig) -> None:
    """An asset whose published size and checksum match a copy already stored is recorded with that
    copy (origin reused, upstream-verified), without a download."""
    done, twin, second = await store_twin_jobs(sim, rig)
    job = await rig.transfer(twin)
    assert job.state is JobState.DONE
    original = done.assets[0].receipt
    receipt = job.assets[0].receipt
    assert original is not None and receipt is not None
    assert receipt == dataclasses.replace(
        original, asset_id=second.generation.assets[0].asset_id, stored_at=rig.clock.now(), origin="reused"
    )
    assert receipt.upstream_verified is True
    assert file_requests(sim, second.generation.assets[0].asset_id) == []
    assert sha256_of(path_of(receipt)) == receipt.sha256


async def test_deleted_copy_is_downloaded_again(sim: Simulator, rig: Rig, tmp_path: Path) -> None:
    """A stored copy whose file was deleted since is not reused: the asset is downloaded again and
    the job points at a file that exists."""
    done, twin, second = await store_twin_jobs(sim, rig)
    path_of(done.assets[0].receipt).unlink()
    job = await rig.transfer(twin)
    assert job.state is JobState.DONE
    receipt = job.assets[0].receipt
    assert receipt is not None and receipt.origin == "downloaded"
    assert_stored(receipt, second.generation.assets[0])
    assert file_requests(sim, second.generation.assets[0].asset_id) == [200]


async def test_copy_of_another_size_is_downloaded_again(sim: Simulator, rig: Rig) -> None:
    """A stored copy whose file no longer has its recorded size (truncated, overwritten) is not
    reused."""
    done, twin, second = await store_twin_jobs(sim, rig)
    old = path_of(done.assets[0].receipt)
    old.write_bytes(old.read_bytes()[:1000])
    job = await rig.transfer(twin)
    assert job.state is JobState.DONE
    receipt = job.assets[0].receipt
    assert receipt is not None and receipt.origin == "downloaded"
    assert path_of(receipt) != old
    assert_stored(receipt, second.generation.assets[0])


async def test_copy_outside_the_jobs_destination_is_not_reused(
    sim: Simulator, rig: Rig, tmp_path: Path
) -> None:
    """A job with its own destination gets its own copy there, not a receipt pointing at a copy
    elsewhere in the worker's destination."""
    first = sim.add_layers_container(format="video", size=25_000, seed=77, queued_s=0, processing_s=0)
    second = sim.add_layers_container(format="video", size=25_000, seed=77, queued_s=0, processing_s=0)
    key = await rig.submit(f"layers:{first.id}")
    await rig.resolve(key)
    assert (await rig.transfer(key)).state is JobState.DONE
    tenant = tmp_path / "assets" / "tenant-a"
    twin = await rig.submit(f"layers:{second.id}", dest=str(tenant))
    await rig.resolve(twin)
    job = await rig.transfer(twin)
    assert job.state is JobState.DONE
    receipt = job.assets[0].receipt
    assert receipt is not None and receipt.origin == "downloaded"
    assert path_of(receipt).is_relative_to(tenant)
    assert_stored(receipt, second.generation.assets[0])


async def test_unpublished_checksum_is_never_reused(sim: Simulator, rig: Rig) -> None:
    """Without a checksum from the vendor, identical-looking assets are downloaded, not matched."""
    _done, twin, second = await store_twin_jobs(sim, rig, legacy=True)
    job = await rig.transfer(twin)
    receipt = job.assets[0].receipt
    assert job.state is JobState.DONE and receipt is not None and receipt.origin == "downloaded"
    assert file_requests(sim, second.generation.assets[0].asset_id) == [200]


async def test_reused_receipt_keeps_the_copys_identity(sim: Simulator, rig: Rig, tmp_path: Path) -> None:
    """A reused receipt names exactly the stored object it reuses: its URI, size, checksum, ETag and
    version id."""
    first = sim.add_layers_container(format="video", size=25_000, seed=77, queued_s=0, processing_s=0)
    second = sim.add_layers_container(format="video", size=25_000, seed=77, queued_s=0, processing_s=0)
    asset = first.generation.assets[0]
    key = await rig.submit(f"layers:{first.id}")
    await rig.resolve(key)
    # The first job's copy as a versioned destination would have recorded it.
    copy = tmp_path / "assets" / "elsewhere" / "copy.mp4"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"".join(iter_content(asset.seed, asset.size, 0, 1 << 20)))
    _job, lease = await rig.claim(key, Phase.TRANSFER)
    original = Receipt(
        asset_id=asset.asset_id,
        uri=copy.as_uri(),
        size=asset.size,
        sha256=content_sha256(asset.seed, asset.size),
        upstream_verified=True,
        stored_at=rig.clock.now(),
        etag='"e-1"',
        version_id="v-1",
    )
    await rig.store.record_receipt(key, owner=lease.token, receipt=original)
    await rig.store.finish(key, owner=lease.token, now=rig.clock.now(), state=JobState.DONE)
    twin = await rig.submit(f"layers:{second.id}")
    await rig.resolve(twin)
    rig.clock.advance(3)
    job = await rig.transfer(twin)
    receipt = job.assets[0].receipt
    assert receipt == dataclasses.replace(
        original, asset_id=second.generation.assets[0].asset_id, stored_at=rig.clock.now(), origin="reused"
    )


async def test_a_local_copy_is_reused_only_while_it_is_there_with_its_size(tmp_path: Path) -> None:
    """Before reuse the file sink checks the copy still exists with the receipt's size."""
    present = tmp_path / "copy.bin"
    present.write_bytes(b"x" * 10)
    receipt = Receipt(
        asset_id="a", uri=present.as_uri(), size=10, sha256="0" * 64, upstream_verified=True, stored_at=T0
    )
    sink = FileSink(tmp_path)
    assert await sink.still_has(receipt) is True
    assert await sink.still_has(dataclasses.replace(receipt, size=11)) is False
    assert await sink.still_has(dataclasses.replace(receipt, uri=(tmp_path / "gone.bin").as_uri())) is False


# -- the lease: fenced before publishing, confirmed before a retry -----------------------------


async def test_worker_whose_lease_was_taken_does_not_publish(
    sim: Simulator, rig: Rig, tmp_path: Path
) -> None:
    """A worker whose job was taken over downloads and verifies, but its confirmation right before
    publishing fails: nothing appears at the destination and the new owner's row is untouched."""
    cl = sim.add_cloudlayer_job(id="fenced", pending_s=0, size=30_000)
    key = await rig.submit("cloudlayer:fenced")
    await rig.resolve(key)
    job, lease = await rig.claim(key, Phase.TRANSFER)
    thief = await rig.take_over(key)
    with pytest.raises(LeaseLost):
        await rig.worker.engine.transfer(job, lease)
    assert rig.confirms == [lease.token]
    assert [r.status for r in sim.requests("files")] == [200]  # downloaded, then fenced off
    assert files_under(tmp_path / "assets") == []
    after = await rig.get(key)
    assert after.state is JobState.DOWNLOADING and after.lease_owner == thief
    assert after.assets[0].state is AssetState.PENDING and after.assets[0].receipt is None
    del cl


async def test_retry_confirms_the_lease_before_downloading_again(
    sim: Simulator, rig: Rig, tmp_path: Path
) -> None:
    """A job taken over while its worker backed off after a failed attempt is not downloaded again
    by that worker: the lease is confirmed before the retry, which stops it."""
    sim.add_cloudlayer_job(id="retry-fence", pending_s=0, size=30_000)
    sim.add_fault(route="files", kind="short_body", count=1)
    key = await rig.submit("cloudlayer:retry-fence")
    await rig.resolve(key)
    job, lease = await rig.claim(key, Phase.TRANSFER)

    async def taken_over() -> None:
        await rig.take_over(key)

    rig.sleep.during = taken_over
    with pytest.raises(LeaseLost):
        await rig.worker.engine.transfer(job, lease)
    assert len(sim.requests("files")) == 1
    assert rig.confirms == [lease.token]
    assert files_under(tmp_path / "assets") == []
    assert (await rig.get(key)).lease_owner == "thief"


async def test_lease_is_confirmed_before_each_retry_and_each_publish(sim: Simulator, rig: Rig) -> None:
    """An asset that stores at its first attempt confirms the lease once, right before publishing;
    one that needed a retry confirms before the retry too. Nothing else renews it from the engine."""
    container = slideshow(sim, slides=2)
    first, second = container.generation.assets
    sim.add_fault(route="files", kind="short_body", match=second.asset_id, count=1)
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    job = await rig.transfer(key)
    assert job.state is JobState.DONE
    assert len(rig.confirms) == 1 + 2
    assert file_requests(sim, first.asset_id) == [200]
    assert len(file_requests(sim, second.asset_id)) == 2


async def test_bytes_arriving_keep_the_lease_alive(sim: Simulator, rig: Rig) -> None:
    """A transfer reports progress to its lease as bytes arrive, so the runner keeps renewing it."""
    sim.add_cloudlayer_job(id="progress", pending_s=0, size=30_000)
    key = await rig.submit("cloudlayer:progress")
    await rig.resolve(key)
    job, lease = await rig.claim(key, Phase.TRANSFER)
    claimed_at = lease.progress.last
    rig.clock.advance(20)
    await rig.worker.engine.transfer(job, lease)
    assert (await rig.get(key)).state is JobState.DONE
    assert lease.progress.last == claimed_at + 20


# -- retries: which errors, how many, how long apart -------------------------------------------


async def test_permanent_refusal_fails_the_asset_at_once(sim: Simulator, rig: Rig) -> None:
    """A file host answering 400 (a final answer) fails the asset after one request, without any
    backoff or retry."""
    sim.add_cloudlayer_job(id="refused", pending_s=0)
    sim.add_fault(route="files", kind="status", status=400, probability=1.0)
    key = await rig.submit("cloudlayer:refused")
    await rig.resolve(key)
    job = await rig.transfer(key)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "source_rejected"
    assert job.error.message.startswith("file host answered 400 for ")
    assert job.assets[0].error == job.error
    assert [r.status for r in sim.requests("files")] == [400]
    assert rig.sleep.delays == []
    assert rig.confirms == []


async def test_backoff_between_attempts_grows(sim: Simulator, rig: Rig) -> None:
    """A retryable failure is tried max_attempts times, with a backoff that grows between attempts
    (0.05, 0.1 s here), then the asset fails with the last error; each retry is counted."""
    sim.add_cloudlayer_job(id="always-short", pending_s=0, size=30_000)
    sim.add_fault(route="files", kind="short_body", probability=1.0)
    key = await rig.submit("cloudlayer:always-short")
    await rig.resolve(key)
    job = await rig.transfer(key)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "size_mismatch"
    assert len(sim.requests("files")) == 3
    assert rig.sleep.delays == [0.05, 0.1]
    assert rig.metric("asset_worker_retries_total", provider="cloudlayer", reason="size_mismatch") == 2


async def test_four_attempts_back_off_three_times(
    sim: Simulator, make_settings: SettingsFactory, clock: SharedClock
) -> None:
    """With four attempts allowed the backoff keeps doubling: 0.05, 0.1, 0.2 s."""
    sim.add_cloudlayer_job(id="four", pending_s=0, size=30_000)
    sim.add_fault(route="files", kind="short_body", probability=1.0)
    async with rig_for(engine_settings(make_settings, max_attempts=4), clock) as rig:
        key = await rig.submit("cloudlayer:four")
        await rig.resolve(key)
        job = await rig.transfer(key)
        assert job.state is JobState.FAILED
        assert len(sim.requests("files")) == 4
        assert rig.sleep.delays == [0.05, 0.1, 0.2]


@pytest.mark.parametrize(("retry_after", "expected"), [("7", 7.0), ("http-date:9", 9.0)])
async def test_file_host_retry_after_is_honoured(
    sim: Simulator, rig: Rig, retry_after: str, expected: float
) -> None:
    """A file host's 503 with Retry-After (seconds or an HTTP date) is retried after exactly that
    wait, not the engine's own backoff."""
    sim.add_cloudlayer_job(id="slow-down", pending_s=0, size=30_000)
    sim.add_fault(route="files", kind="status", status=503, retry_after=retry_after, count=1)
    key = await rig.submit("cloudlayer:slow-down")
    await rig.resolve(key)
    job = await rig.transfer(key)
    assert job.state is JobState.DONE
    assert [r.status for r in sim.requests("files")] == [503, 200]
    assert rig.sleep.delays == [pytest.approx(expected, abs=1.0)]
    assert rig.metric("asset_worker_retries_total", provider="cloudlayer", reason="upstream_unavailable") == 1


async def test_expired_url_is_refreshed_and_retried_at_once(sim: Simulator, rig: Rig) -> None:
    """A URL the file host refuses as expired is replaced by a fresh one from the vendor (saved to
    the store) and retried without waiting."""
    sim.add_cloudlayer_job(id="ttl", pending_s=0, size=30_000, url_ttl_s=60)
    key = await rig.submit("cloudlayer:ttl")
    resolved = await rig.resolve(key)
    rig.clock.advance(120)
    reads_before = len(sim.requests("cloudlayer.job"))
    job = await rig.transfer(key)
    assert job.state is JobState.DONE
    assert [r.status for r in sim.requests("files")] == [403, 200]
    assert len(sim.requests("cloudlayer.job")) == reads_before + 1
    assert rig.sleep.delays == []
    assert job.assets[0].ref.url != resolved.assets[0].ref.url
    assert rig.metric("asset_worker_retries_total", provider="cloudlayer", reason="source_expired") == 1


async def test_url_is_refreshed_once_then_backoff_applies(sim: Simulator, rig: Rig) -> None:
    """After a refresh, a later retryable failure retries the fresh URL after the backoff for that
    attempt, without refreshing it again."""
    sim.add_cloudlayer_job(id="refresh-once", pending_s=0, size=30_000, asset_via="asset")
    sim.add_fault(route="files", kind="expired", count=1)
    sim.add_fault(route="files", kind="short_body", count=1)
    key = await rig.submit("cloudlayer:refresh-once")
    await rig.resolve(key)
    reads_before = len(sim.requests("cloudlayer.asset"))
    job = await rig.transfer(key)
    assert job.state is JobState.DONE
    assert [r.status for r in sim.requests("files")] == [403, 200, 200]
    assert len(sim.requests("cloudlayer.asset")) == reads_before + 1
    assert rig.sleep.delays == [0.1]  # the backoff before attempt 3


@pytest.mark.parametrize(("offset", "refreshed"), [(-1.0, False), (0.0, False), (1.0, True)])
async def test_url_refreshed_only_within_the_expiry_margin(
    sim: Simulator, rig: Rig, offset: float, refreshed: bool
) -> None:
    """A signed URL is refreshed before use once less than the margin (60 s) is left before its
    expiresAt, and not a moment earlier."""
    container = sim.add_layers_container(
        format="video", size=20_000, url_ttl_s=300, queued_s=0, processing_s=0
    )
    key = await rig.submit(f"layers:{container.id}")
    resolved = await rig.resolve(key)
    expires_at = resolved.assets[0].ref.expires_at
    assert expires_at == rig.clock.now() + 300
    rig.clock.t = expires_at - 60 + offset
    reads_before = len(sim.requests("layers.asset"))
    job = await rig.transfer(key)
    assert job.state is JobState.DONE
    assert len(sim.requests("layers.asset")) == reads_before + (1 if refreshed else 0)
    assert [r.status for r in sim.requests("files")] == [200]
    stored_ref = job.assets[0].ref
    assert (stored_ref.expires_at == rig.clock.now() + 300) is refreshed


async def test_fresh_url_is_not_refreshed(sim: Simulator, rig: Rig) -> None:
    """A transfer that meets no problem asks the vendor nothing more."""
    container = slideshow(sim, slides=2)
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    reads = len(sim.requests())
    job = await rig.transfer(key)
    assert job.state is JobState.DONE
    assert [r.route for r in sim.requests()[reads:]] == ["files", "files"]


# -- attempts ----------------------------------------------------------------------------------


async def test_last_allowed_attempt_still_transfers(sim: Simulator, rig: Rig) -> None:
    """A job whose workers crashed max_attempts - 1 times gets its last attempt and stores."""
    sim.add_cloudlayer_job(id="crashy", pending_s=0)
    key = await rig.submit("cloudlayer:crashy")
    await rig.resolve(key)
    for _ in range(2):
        await rig.claim(key, Phase.TRANSFER)
        rig.clock.advance(LEASE_S + 1)
    job = await rig.transfer(key)
    assert job.attempts == 3
    assert job.state is JobState.DONE, job.error


async def test_one_attempt_too_many_fails_the_job(sim: Simulator, rig: Rig) -> None:
    """A job interrupted more than max_attempts times fails with too_many_attempts, fetching nothing."""
    sim.add_cloudlayer_job(id="crashier", pending_s=0)
    key = await rig.submit("cloudlayer:crashier")
    await rig.resolve(key)
    for _ in range(3):
        await rig.claim(key, Phase.TRANSFER)
        rig.clock.advance(LEASE_S + 1)
    job = await rig.transfer(key)
    assert job.attempts == 4
    assert job.state is JobState.FAILED
    assert job.error == JobError("too_many_attempts", "the job was interrupted too often")
    assert sim.requests("files") == []


async def test_too_many_attempts_reports_the_last_error(sim: Simulator, rig: Rig) -> None:
    """A job that ran out of attempts fails with the error its last attempt recorded, if any."""
    sim.add_cloudlayer_job(id="crashed", pending_s=0)
    key = await rig.submit("cloudlayer:crashed")
    await rig.resolve(key)
    last = JobError("internal_error", "RuntimeError: boom")
    for _ in range(3):
        _job, lease = await rig.claim(key, Phase.TRANSFER)
        now = rig.clock.now()
        await rig.store.retry_later(key, owner=lease.token, now=now, due_at=now, error=last)
    job = await rig.transfer(key)
    assert job.state is JobState.FAILED and job.error == last


# -- the destination ---------------------------------------------------------------------------


async def test_full_destination_postpones_the_job_keeping_what_was_stored(
    sim: Simulator, make_settings: SettingsFactory, clock: SharedClock
) -> None:
    """A file that cannot fit on the disk sends the job back to the queue for the destination's
    backoff (its attempt given back, disk_full recorded); the asset stored before it stays stored
    and the failing one stays pending, so nothing is lost or failed for a full disk."""
    container = sim.add_layers_container(
        format="slideshow", sizes=[20_000, 10**13], legacy=True, queued_s=0, processing_s=0
    )
    limits = dataclasses.replace(make_settings().limits, max_asset_bytes=10**14)
    async with rig_for(engine_settings(make_settings, limits=limits), clock) as rig:
        key = await rig.submit(f"layers:{container.id}")
        await rig.resolve(key)
        job = await rig.transfer(key)
        now = rig.clock.now()
        assert job.state is JobState.DOWNLOADING
        assert job.error is not None and job.error.code == "disk_full"
        assert job.due_at == now + 1.0  # the destination backoff's first delay
        assert job.attempts == 0 and job.lease_owner is None
        assert [a.state for a in job.assets] == [AssetState.STORED, AssetState.PENDING]
        assert_stored(job.assets[0].receipt, container.generation.assets[0])
        assert rig.metric("asset_worker_destination_waits_total", code="disk_full") == 1
        assert rig.worker.engine.destination.ready(now) is False


async def test_job_destination_is_where_its_files_go(sim: Simulator, rig: Rig, tmp_path: Path) -> None:
    """A job with its own destination stores there; one whose destination is outside the worker's
    fails its assets with dest_not_allowed instead of writing anywhere else."""
    sim.add_cloudlayer_job(id="tenant", pending_s=0)
    sim.add_cloudlayer_job(id="outside", pending_s=0)
    tenant = tmp_path / "assets" / "tenant-a"
    key = await rig.submit("cloudlayer:tenant", dest=str(tenant))
    await rig.resolve(key)
    job = await rig.transfer(key)
    assert job.state is JobState.DONE
    assert path_of(job.assets[0].receipt).is_relative_to(tenant)
    outside = await rig.submit("cloudlayer:outside", dest=str(tmp_path / "elsewhere"))
    await rig.resolve(outside)
    job = await rig.transfer(outside)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "dest_not_allowed"
    assert job.assets[0].state is AssetState.FAILED
    assert not (tmp_path / "elsewhere").exists()


# -- the vendor replaced the files -------------------------------------------------------------


async def test_vendor_back_to_processing_restarts_polling(sim: Simulator, rig: Rig, tmp_path: Path) -> None:
    """A container taken back to processing after resolution (its files gone) sends the job back to
    polling with its asset set dropped and the replaced ids kept in its history."""
    container = slideshow(sim)
    old_ids = [a.asset_id for a in container.generation.assets]
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    sim.regenerate_layers_container(container.id, processing_s=100)
    rig.clock.advance(1)
    job = await rig.transfer(key)
    assert job.state is JobState.POLLING
    assert job.assets == () and job.error is None and job.lease_owner is None
    assert job.provider_state["replaced_asset_ids"] == old_ids
    assert job.provider_state["asset_set_changed_at"] == rig.clock.now()
    assert job.provider_state["container_id"] == container.id
    assert files_under(tmp_path / "assets") == []


async def test_regenerated_set_replaces_the_old_one(sim: Simulator, rig: Rig, tmp_path: Path) -> None:
    """A container regenerated after resolution is stored from its new set only: the job goes back
    to downloading with the new assets, then ends done with exactly those files."""
    container = slideshow(sim)
    old_ids = [a.asset_id for a in container.generation.assets]
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    new = sim.regenerate_layers_container(container.id)
    rig.clock.advance(1)
    replaced = await rig.transfer(key)
    new_ids = [a.asset_id for a in new.generation.assets]
    assert replaced.state is JobState.DOWNLOADING
    assert [a.ref.asset_id for a in replaced.assets] == new_ids
    assert all(a.state is AssetState.PENDING for a in replaced.assets)
    assert replaced.provider_state["replaced_asset_ids"] == old_ids
    assert replaced.provider_state["asset_set_changed_at"] == rig.clock.now()
    job = await rig.transfer(key)
    assert job.state is JobState.DONE
    for record, asset in zip(job.assets, new.generation.assets, strict=True):
        assert_stored(record.receipt, asset)
    assert len(files_under(tmp_path / "assets")) == 3


# -- polling -----------------------------------------------------------------------------------


def processing(sim: Simulator) -> LayersContainer:
    return sim.add_layers_container(format="video", size=20_000, queued_s=0, processing_s=None)


async def test_pending_poll_reschedules_on_the_backoff(sim: Simulator, rig: Rig) -> None:
    """A job still processing upstream is polled again after the provider's growing backoff, with
    its status and poll count saved."""
    container = processing(sim)
    key = await rig.submit(f"layers:{container.id}")
    assert await rig.poll(key) is False
    job = await rig.get(key)
    assert job.state is JobState.POLLING and job.polls == 1 and job.lease_owner is None
    assert job.due_at == T0 + 0.05
    assert job.provider_state == {"container_id": container.id, "last_status": "processing"}
    rig.clock.advance(1)
    assert await rig.poll(key) is False
    job = await rig.get(key)
    assert job.polls == 2
    assert job.due_at == pytest.approx(T0 + 1 + 0.05 * 1.3)
    assert rig.metric("asset_worker_polls_total", provider="layers", result="pending") == 2


async def test_next_poll_is_never_after_the_deadline(sim: Simulator, rig: Rig) -> None:
    """Close to the poll deadline the next poll is due at the deadline, not a whole backoff later."""
    container = processing(sim)
    key = await rig.submit(f"layers:{container.id}")
    assert await rig.poll(key) is False
    rig.clock.t = T0 + 30 - 0.01
    assert await rig.poll(key) is False
    assert (await rig.get(key)).due_at == T0 + 30


async def test_poll_deadline_fails_the_job_on_time(sim: Simulator, rig: Rig) -> None:
    """At the poll deadline (counted from the first poll) the job fails with poll_timeout, naming
    the last status, without asking the vendor again."""
    container = processing(sim)
    key = await rig.submit(f"layers:{container.id}")
    assert await rig.poll(key) is False
    rig.clock.t = T0 + 30 - 0.001
    assert await rig.poll(key) is False
    assert (await rig.get(key)).state is JobState.POLLING
    rig.clock.t = T0 + 30
    reads = len(sim.requests())
    assert await rig.poll(key) is False
    job = await rig.get(key)
    assert job.state is JobState.FAILED
    assert job.error == JobError("poll_timeout", "still 'processing' upstream after 30 s of polling")
    assert len(sim.requests()) == reads
    assert rig.metric("asset_worker_job_outcomes_total", provider="layers", outcome="failed") == 1


async def test_poll_errors_reschedule_then_time_out_as_pending(sim: Simulator, rig: Rig) -> None:
    """A vendor that never answers (503 through every request retry) gets its poll rescheduled with
    the error noted, and the job times out as still 'pending' at the deadline."""
    container = processing(sim)
    sim.add_fault(route="layers.container", kind="status", status=503, probability=1.0)
    key = await rig.submit(f"layers:{container.id}")
    assert await rig.poll(key) is False
    job = await rig.get(key)
    assert job.state is JobState.POLLING and job.polls == 1
    assert job.provider_state == {"last_error": "unavailable"}
    assert job.due_at == T0 + 0.05
    assert rig.metric("asset_worker_polls_total", provider="layers", result="error") == 1
    rig.clock.t = T0 + 30
    assert await rig.poll(key) is False
    job = await rig.get(key)
    assert job.error == JobError("poll_timeout", "still 'pending' upstream after 30 s of polling")


async def test_rejected_poll_fails_with_the_vendors_code(sim: Simulator, rig: Rig) -> None:
    """A vendor's final refusal (unknown container) and a key no provider can read fail the job at
    once with their own codes."""
    missing = await rig.submit("layers:cnt_0b7c9a52-8f2b-4c8e-9a4f-0d6f1e2b3c4d")
    assert await rig.poll(missing) is False
    job = await rig.get(missing)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "not_found"
    assert rig.metric("asset_worker_polls_total", provider="layers", result="rejected") == 1
    bad = await rig.submit("layers:not-a-container")
    assert await rig.poll(bad) is False
    job = await rig.get(bad)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "invalid_job" and "not-a-container" in job.error.message
    assert rig.metric("asset_worker_polls_total", provider="layers", result="rejected") == 2
    # A row for a provider this worker does not serve (written in SQL, or by a worker with another
    # provider): failed at its first poll, not left in the queue.
    other = await rig.submit("newvendor:1")
    assert await rig.poll(other) is False
    job = await rig.get(other)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "invalid_job" and "newvendor" in job.error.message


async def test_vendor_failure_fails_the_job_with_its_error(sim: Simulator, rig: Rig) -> None:
    """A container that failed upstream fails the job with the vendor's code and message."""
    container = sim.add_layers_container(
        format="video", queued_s=0, processing_s=0, outcome="failed",
        last_error={"code": "RENDER_CRASHED", "message": "the renderer ran out of memory"},
    )  # fmt: skip
    key = await rig.submit(f"layers:{container.id}")
    assert await rig.poll(key) is False
    job = await rig.get(key)
    assert job.state is JobState.FAILED
    assert job.error == JobError("render_crashed", "the renderer ran out of memory")
    assert rig.metric("asset_worker_polls_total", provider="layers", result="failed") == 1


async def test_ready_poll_records_the_asset_set(sim: Simulator, rig: Rig) -> None:
    """A finished container's assets are saved in order and the job moves to downloading."""
    container = slideshow(sim)
    key = await rig.submit(f"layers:{container.id}")
    job = await rig.resolve(key)
    assert [a.ref.asset_id for a in job.assets] == [a.asset_id for a in container.generation.assets]
    assert all(a.ref.expected_size == 20_000 and a.ref.expected_sha256 for a in job.assets)
    assert job.polls == 1 and job.lease_owner is None and job.due_at == T0
    assert job.provider_state == {"container_id": container.id}
    assert rig.metric("asset_worker_polls_total", provider="layers", result="ready") == 1


# -- what a stored job records -----------------------------------------------------------------


async def test_stored_job_records_receipts_and_counts(sim: Simulator, rig: Rig, tmp_path: Path) -> None:
    """Every asset of a done job has a complete receipt at its named key, and the worker counts the
    assets, bytes, outcome and transfer durations."""
    container = sim.add_layers_container(
        format="slideshow", sizes=[10_000, 20_000, 30_000], queued_s=0, processing_s=0
    )
    key = await rig.submit(f"layers:{container.id}")
    await rig.resolve(key)
    rig.clock.advance(2)
    job = await rig.transfer(key)
    assert job.state is JobState.DONE and job.error is None
    for record, asset in zip(job.assets, container.generation.assets, strict=True):
        receipt = record.receipt
        assert_stored(receipt, asset)
        assert receipt is not None
        assert receipt.origin == "downloaded" and receipt.upstream_verified is True
        assert receipt.stored_at == T0 + 2 and receipt.asset_id == asset.asset_id
        assert path_of(receipt) == tmp_path / "assets" / "layers" / container.id / f"{asset.asset_id}.jpg"
    assert rig.metric("asset_worker_stored_assets_total", provider="layers") == 3
    assert rig.metric("asset_worker_stored_bytes_total", provider="layers") == 60_000
    assert rig.metric("asset_worker_job_outcomes_total", provider="layers", outcome="done") == 1
    assert rig.metric("asset_worker_transfer_duration_seconds_count") == 3
    assert 0 < rig.metric("asset_worker_transfer_duration_seconds_sum") < 60
