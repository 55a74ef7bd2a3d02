"""Mirror mode end to end against the simulator: walks turned into jobs and copies, under churn,
incremental walks, two replicas, a walker killed mid-walk, bad sources, retention order."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_support import cli, cli_environment, start
from tests.conftest import SettingsFactory, run_jobs
from tests.http_support import eventually
from tests.mirror_support import SOURCE, asset_key, mirroring
from worker.app import Worker, open_worker
from worker.models import JobKey, JobState
from worker.simulator.app import Simulator


def list_reads(sim: Simulator) -> int:
    return len(sim.requests("cloudlayer.assets"))


async def copy_all(worker: Worker) -> None:
    await worker.mirror.walk_all(worker.settings.mirror.sources)
    await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 120)


async def test_a_full_walk_under_churn_copies_every_asset_once(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """3,000 assets; while the walk runs every list read adds 3 and deletes 5 at random. Every asset
    there before and after is copied, verified, downloaded once; reads stay near 3,000 / 80."""
    sim.add_cloudlayer_assets(3000, size=256)
    before = set(sim.cloudlayer_asset_ids())
    sim.set_cloudlayer_churn(add=3, expire=5, expire_where="random")
    async with open_worker(mirroring(make_settings(concurrency=16))) as worker:
        (outcome,) = await worker.mirror.walk_all(SOURCE)
        sim.set_cloudlayer_churn()
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 120)
        survivors = before & set(sim.cloudlayer_asset_ids())
        jobs = {str(j.key): j for j in await worker.store.list_jobs()}
    assert outcome.completed and outcome.kind == "full"
    assert len(survivors) > 2700  # about 5 deleted per read
    for asset_id in survivors:
        job = jobs[str(asset_key(asset_id))]
        assert job.state is JobState.DONE, (asset_id, job.error)
        (record,) = job.assets
        assert record.receipt is not None and record.receipt.size == 256
    downloads = Counter(r.path for r in sim.requests("files") if r.status == 200)
    assert max(downloads.values()) == 1  # nothing fetched twice
    # The listing named every file: a per-asset read only for one deleted after it was listed.
    reread = {r.path.rsplit("/", 1)[-1] for r in sim.requests("cloudlayer.asset")}
    assert reread and not reread & survivors
    assert all(jobs[str(asset_key(a))].state is JobState.FAILED for a in reread)
    assert outcome.pages == list_reads(sim) <= 45


async def test_an_incremental_walk_reads_only_what_it_must(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """After a full walk: nothing new costs one read and creates nothing; 150 new assets cost the
    pages they are on plus the one that proves the rest is known."""
    sim.add_cloudlayer_assets(1000, size=64)
    async with open_worker(mirroring(make_settings())) as worker:
        await copy_all(worker)
        full_reads = list_reads(sim)
        assert full_reads == 13  # 1,000 / 80, rounded up
        (quiet,) = await worker.mirror.walk_all(SOURCE)
        assert (quiet.kind, quiet.pages, quiet.created, list_reads(sim) - full_reads) == (
            "incremental",
            1,
            0,
            1,
        )
        sim.add_cloudlayer_assets(150, size=64, start_age_s=5, spacing_s=0.01)
        (fresh,) = await worker.mirror.walk_all(SOURCE)
        assert (fresh.kind, fresh.created, fresh.pages) == ("incremental", 150, 3)
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 60)
        counts = await worker.store.source_counts()
        assert await worker.metrics.refresh(worker.store, now=worker.clock.now(), timeout_s=5)
        scraped = worker.metrics.render().decode()
    assert counts["cloudlayer"].by_state[JobState.DONE] == 1150
    assert counts["cloudlayer"].oldest_uncopied_created_at is None
    assert 'asset_worker_mirror_jobs{source="cloudlayer",state="done"} 1150.0' in scraped
    assert 'asset_worker_mirror_oldest_uncopied_age_seconds{source="cloudlayer"} 0.0' in scraped


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_two_replicas_share_one_walk(
    sim: Simulator, make_settings: SettingsFactory, shared_store: str
) -> None:
    """Two workers mirror the same source at once: one walks, the other finds it busy; each item
    becomes one job."""
    sim.add_cloudlayer_assets(400, size=64)
    base = make_settings(store_url=shared_store)
    one = mirroring(
        base.__class__(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "worker_id": "one"})
    )
    two = mirroring(
        base.__class__(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "worker_id": "two"})
    )
    sim.add_fault(route="cloudlayer.assets", kind="stall", delay_s=0.05, probability=1.0)
    async with open_worker(one) as first, open_worker(two) as second:
        walks = await asyncio.gather(first.mirror.walk_all(SOURCE), second.mirror.walk_all(SOURCE))
        jobs = await first.store.list_jobs()
    assert sorted(len(w) for w in walks) == [0, 1]  # one walked, the other found it held
    assert len(jobs) == 400 and len({j.key for j in jobs}) == 400
    assert list_reads(sim) == 5


async def test_a_walker_killed_mid_walk_is_resumed_from_its_last_page(sim: Simulator, tmp_path: Path) -> None:
    """`mirror --once` is killed (SIGKILL) while its walk hangs on page 7; once its lease runs out
    the next `mirror --once` resumes a page before the last one saved, and copies everything."""
    sim.add_cloudlayer_assets(1000, size=64)
    env = cli_environment(tmp_path, sim)
    env.update(ASSET_WORKER_MIRROR_LEASE_S="1", ASSET_WORKER_LOG_FORMAT="json")
    sim.add_fault(route="cloudlayer.assets", kind="stall", delay_s=60, after=6, count=1)
    proc = await start(env, "mirror", "cloudlayer", "--once")
    try:
        await eventually(lambda: list_reads(sim) >= 7, timeout_s=30)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.communicate()
    (status,) = json.loads((await cli(env, "mirror", "--status", "--json")).out)
    assert (status["walk"]["kind"], status["walk"]["pages"]) == ("full", 6)
    sim.clear_faults()
    reads_before = list_reads(sim)
    await asyncio.sleep(1.1)  # the dead walker's lease runs out
    second = await cli(env, "mirror", "cloudlayer", "--once", timeout_s=120)
    assert second.code == 0, second.err
    started = next(json.loads(line) for line in second.out.splitlines() if '"mirror_walk_started"' in line)
    assert started["resumed_at"] == "480" and started["kind"] == "full"
    # Offsets 400, 480, ... 960 (a short page there ends it): 8 reads, where a walk from the top
    # takes 13.
    assert list_reads(sim) - reads_before == 8
    (status,) = json.loads((await cli(env, "mirror", "--status", "--json")).out)
    assert (status["copied"], status["pending"], status["failed"], status["walk"]) == (1000, 0, 0, None)


async def test_an_asset_copied_through_its_job_is_not_copied_again(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    sim.add_cloudlayer_job(id="job-7", asset_id="ast_7", pending_s=0, size=3000)
    sim.add_cloudlayer_assets(5, size=64)
    (done,) = await run_jobs(make_settings(), ["cloudlayer:job-7"])
    assert done.state is JobState.DONE
    async with open_worker(mirroring(make_settings())) as worker:
        (walk,) = await worker.mirror.walk_all(SOURCE)
        keys = {str(j.key) for j in await worker.store.list_jobs()}
    assert (walk.items, walk.created) == (6, 5)
    assert "cloudlayer:asset/ast_7" not in keys
    assert len([r for r in sim.requests("files") if "ast_7" in r.path]) == 1


async def test_one_asset_by_its_id(sim: Simulator, make_settings: SettingsFactory, tmp_path: Path) -> None:
    (asset,) = sim.add_cloudlayer_assets(1, size=5000)
    (job,) = await run_jobs(make_settings(), [f"cloudlayer:asset/{asset.asset_id}"])
    assert job.state is JobState.DONE, job.error
    (record,) = job.assets
    assert record.receipt is not None and record.receipt.size == 5000
    assert (
        Path(record.receipt.uri.removeprefix("file://"))
        == tmp_path / "assets/cloudlayer/assets" / f"{asset.asset_id}.pdf"
    )


async def test_a_bad_source_fails_alone_and_says_why(sim: Simulator, tmp_path: Path) -> None:
    """A forbidden Layers project and a malformed listing each fail their source with one line;
    the good project and cloudlayer are mirrored in the same run; `mirror --status` shows all."""
    sim.add_cloudlayer_assets(30, size=64)
    sim.add_layers_containers(
        "prj_ok", 12, status=["completed", "completed", "processing"], slides=1, size=100
    )
    sim.add_layers_containers("prj_closed", 3, status="completed")
    sim.forbid_layers_project("prj_closed")
    env = cli_environment(tmp_path, sim)
    env.update(LAYERS_API_KEY=sim.layers_api_key, LAYERS_BASE_URL=sim.layers_url)
    unknown = await cli(env, "mirror", "dropbox", "--once")
    assert unknown.code == 2 and unknown.err.count("\n") == 1 and "no provider 'dropbox'" in unknown.err
    result = await cli(
        env, "mirror", "cloudlayer", "layers:prj_ok", "layers:prj_closed", "--once", timeout_s=120
    )
    assert result.code == 1
    (line,) = [text for text in result.err.splitlines() if text.startswith("asset-worker: mirror")]
    assert line.startswith("asset-worker: mirror layers:prj_closed: forbidden_scope: ")
    rows = {r["source"]: r for r in json.loads((await cli(env, "mirror", "--status", "--json")).out)}
    assert (rows["cloudlayer"]["copied"], rows["layers:prj_ok"]["copied"]) == (30, 8)
    assert rows["layers:prj_closed"]["error"]["code"] == "forbidden_scope"
    table = (await cli(env, "mirror", "--status")).out
    assert "layers:prj_closed: last walk failed: forbidden_scope" in table
    sim.add_fault(route="cloudlayer.assets", kind="malformed", body={"assets": []}, count=1)
    again = await cli(env, "mirror", "cloudlayer", "--once")
    assert again.code == 1 and "mirror cloudlayer: malformed_response: " in again.err


async def test_assets_near_the_vendors_retention_are_copied_first(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """Retention 10 days: the five assets 9 days old are due before the fresh ones, oldest first,
    and one transfer at a time downloads them first."""
    fresh = sim.add_cloudlayer_assets(20, size=64, start_age_s=3600, spacing_s=60)
    urgent = sim.add_cloudlayer_assets(5, size=64, start_age_s=9 * 86400, spacing_s=600)
    settings = mirroring(make_settings(concurrency=1), retention_days=10)
    async with open_worker(settings) as worker:
        await copy_all(worker)
    downloaded = [r.path.rsplit("/", 1)[-1].split(".")[0] for r in sim.requests("files") if r.status == 200]
    assert downloaded[:5] == [a.asset_id for a in urgent]  # oldest first
    assert set(downloaded[5:]) == {a.asset_id for a in fresh}


async def test_status_of_a_store_without_mirror_sources(cli_env_tmp: tuple[dict[str, str], Path]) -> None:
    env, tmp_path = cli_env_tmp
    nothing = await cli(env, "mirror", "--status")
    assert nothing.code == 0 and "no mirror sources: there is no store at" in nothing.out
    assert not (tmp_path / "cli.db").exists()
    assert (await cli(env, "mirror", "--once")).code == 2  # no source named or configured


@pytest.fixture
def cli_env_tmp(sim: Simulator, tmp_path: Path) -> tuple[dict[str, str], Path]:
    return cli_environment(tmp_path, sim), tmp_path


async def test_run_keeps_a_source_mirrored(sim: Simulator, tmp_path: Path) -> None:
    """`run` with ASSET_WORKER_MIRROR walks at start and every interval: assets that appear later
    are copied without anyone submitting them; SIGTERM stops it cleanly."""
    sim.add_cloudlayer_assets(50, size=64)
    env = cli_environment(tmp_path, sim)
    env.update(ASSET_WORKER_MIRROR="cloudlayer", ASSET_WORKER_MIRROR_INTERVAL_S="0.3")
    proc = await start(env, "run", "--no-http")

    async def copied() -> int:
        rows = json.loads((await cli(env, "mirror", "--status", "--json")).out)
        return int(rows[0]["copied"]) if rows else 0

    async def until_copied(count: int) -> None:
        async with asyncio.timeout(30):
            while True:
                if await copied() >= count:
                    return
                await asyncio.sleep(0.1)

    try:
        await until_copied(50)
        sim.add_cloudlayer_assets(20, size=64, start_age_s=1, spacing_s=0.01)
        await until_copied(70)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.communicate()
    assert proc.returncode == 0
    (row,) = json.loads((await cli(env, "mirror", "--status", "--json")).out)
    assert (row["copied"], row["pending"], row["failed"]) == (70, 0, 0)
    assert row["last_full_walk_at"] is not None and row["walk"] is None


async def test_a_layers_project_walked_again_with_nothing_new_costs_one_read(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """450 completed containers (and some still processing): the full walk lists the completed
    ones in pages of 200 and queues a job for each; the next walk is incremental, asks only for
    recent ones, reads one page, and creates nothing. (Copying containers is the ordinary
    container job, tested with the bad sources above.)"""
    sim.add_layers_containers("prj_inc", 500, status=[*["completed"] * 9, "processing"], slides=1, size=50)
    settings = mirroring(make_settings(), "layers:prj_inc")
    async with open_worker(settings) as worker:
        (full,) = await worker.mirror.walk_all(settings.mirror.sources)
        reads_after_full = len(sim.requests("layers.project_content"))
        (again,) = await worker.mirror.walk_all(settings.mirror.sources)
        reads = len(sim.requests("layers.project_content")) - reads_after_full
        counts = await worker.store.source_counts()
    assert (full.kind, full.items, full.created, reads_after_full) == ("full", 450, 450, 3)
    assert (again.kind, again.created, reads) == ("incremental", 0, 1)
    assert counts["layers:prj_inc"].by_state[JobState.QUEUED] == 450


async def test_a_walk_waits_while_the_poll_pool_is_full(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """One poll slot, taken by a submitted job whose vendor answers after a second: the walk reads
    its first page, then waits for the poll before reading on (polls spend the read budget first)."""
    sim.add_cloudlayer_assets(200, size=64)
    sim.add_cloudlayer_job(id="slow", pending_s=0, size=64)
    sim.add_fault(route="cloudlayer.job", kind="stall", delay_s=1.0, count=1)
    settings = mirroring(make_settings(poll_concurrency=1))
    async with open_worker(settings) as worker:
        await worker.store.submit(JobKey("cloudlayer", "slow"), now=worker.clock.now())
        stop = asyncio.Event()
        running = asyncio.create_task(worker.runner.run(stop=stop))
        try:
            await eventually(lambda: len(sim.requests("cloudlayer.job")) == 1)
            (walk,) = await worker.mirror.walk_all(SOURCE)
        finally:
            stop.set()
            await running
    (poll,) = sim.requests("cloudlayer.job")[:1]
    first, *rest = sim.requests("cloudlayer.assets")
    assert walk.pages == 3 and len(rest) == 2
    assert poll.ended_t is not None and first.t < poll.ended_t <= rest[0].t


async def test_a_store_that_cannot_hand_out_the_walk_waits_for_the_next_round(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the SQLite file's write lock past the busy timeout: the walk of this
    round is recorded as failed (store_unavailable), nothing crashes, and the next round walks."""
    monkeypatch.setattr("worker.store.sqlite_conn.BUSY_TIMEOUT_S", 0.2)
    sim.add_cloudlayer_assets(10, size=64)
    settings = mirroring(make_settings(store_url=f"sqlite:///{tmp_path}/locked.db"))
    async with open_worker(settings) as worker:
        with sqlite3.connect(tmp_path / "locked.db", isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")
            assert await worker.mirror.walk_all(SOURCE) == []
            assert worker.mirror.failures["cloudlayer"].code == "store_unavailable"
            other.execute("ROLLBACK")
        (walk,) = await worker.mirror.walk_all(SOURCE)
    assert walk.completed and walk.created == 10 and worker.mirror.failures == {}
