"""Several worker processes sharing one PostgreSQL queue, as replicas of a Deployment do: every job
done once, every asset stored once and verified, through SIGKILLed replicas and a database restart.

The replicas are real ``asset-worker run`` processes; the simulator runs in this test's event loop
and its request log shows who fetched what, when.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import signal
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import worker
from tests.cli_support import cli_environment, only_resume_parts, sha256_of
from tests.conftest import SettingsFactory
from tests.fleet import Fleet, Replica, fleet_of, has_open, until_finished
from tests.http_support import listening_port, logged_events, probe
from tests.pgserver import private_cluster
from worker.app import open_worker
from worker.models import AssetState, Job, JobKey, JobState
from worker.simulator.app import Simulator
from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.content import content_sha256
from worker.simulator.requestlog import RequestRecord
from worker.store import Store, open_store

MiB = 1 << 20


@pytest.fixture
async def fleet_env(sim: Simulator, tmp_path: Path) -> dict[str, str]:
    """The CLI tests' environment, with leases short enough for takeovers to happen within the test
    and each replica's store set by the test."""
    env = cli_environment(tmp_path, sim)
    del env["ASSET_WORKER_STORE"]
    env.update(
        ASSET_WORKER_LEASE_S="3",
        ASSET_WORKER_CONCURRENCY="3",
        ASSET_WORKER_POLL_CONCURRENCY="16",
        ASSET_WORKER_PG_POOL_SIZE="4",
        ASSET_WORKER_LOG_FORMAT="json",
    )
    return env


async def test_three_replicas_share_300_jobs_through_two_sigkills(
    sim: Simulator, fleet_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    """300 jobs, three replicas, two of them SIGKILLed in the middle of a download (and replaced):
    every job done, every asset stored once and verified, no file fetched by two replicas at once,
    no temp file left behind."""
    dest = tmp_path / "assets"
    small = [
        sim.add_cloudlayer_job(id=f"d-{i:03}", pending_s=0.05 + (i % 20) * 0.05, size=20_000 + i * 97)
        for i in range(290)
    ]
    # Large files, finishing upstream one after another so downloads are in flight throughout.
    large = [
        sim.add_cloudlayer_job(id=f"big-{i}", pending_s=0.5 + i * 0.6, size=48 * MiB + i) for i in range(10)
    ]
    jobs = small + large
    env = dict(fleet_env, ASSET_WORKER_STORE=pg_url)
    async with fleet_of(env, tmp_path, 3) as fleet:
        results = await worker.submit_async([f"cloudlayer:{job.id}" for job in jobs], store=pg_url)
        assert all(r.created for r in results)
        store = await open_store(pg_url)
        try:
            killed: list[Path] = []
            async with asyncio.timeout(240):
                while len(killed) < 2:
                    part, victim = await _replica_writing_a_large_file(fleet, dest, exclude=killed)
                    victim.proc.kill()  # SIGKILL: no drain, no release, its temp file stays behind
                    await victim.proc.wait()
                    killed.append(part)
                    await fleet.start()  # the Deployment replaces it
                await until_finished(store, fleet)
            statuses = {str(job.key): job for job in await store.list_jobs()}
        finally:
            await store.close()
        codes = await fleet.stop()
    assert codes == dict.fromkeys(codes, 0) and len(codes) == 3

    _assert_each_stored_once(list(statuses.values()), jobs, dest, hash_on_disk=large)
    _assert_no_job_served_twice_at_once(sim.requests())
    # The kills really cut downloads short: each killed temp file's job had to be fetched again by
    # another replica (the first response may have been fully sent into socket buffers by then).
    by_id = {job.id: job for job in large}
    for part in killed:
        job = by_id[part.parent.name]  # temp files sit beside their final path, .../<job id>/
        fetches = [r for r in sim.requests("files") if job.file_name in r.path]
        assert len(fetches) >= 2, f"{job.id}: its download was killed, yet it was fetched only once"


async def test_a_database_restart_mid_run_loses_nothing(
    sim: Simulator, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    """PostgreSQL stopped for a few seconds while two replicas work: they report it, carry on, and
    every job finishes with one verified copy; nothing is recorded twice."""
    with private_cluster() as server:
        jobs = [
            sim.add_cloudlayer_job(id=f"o-{i:02}", pending_s=0.2 + i * 0.05, size=300_000 + i)
            for i in range(60)
        ]
        jobs += [sim.add_cloudlayer_job(id=f"o-big-{i}", pending_s=0.3, size=24 * MiB + i) for i in range(3)]
        url = server.url()
        # Leases outlast the outage and the restart: no replica may take over a job whose holder is
        # still working on it (that takeover, after a lease ran out, is the SIGKILL test's case).
        env = dict(fleet_env, ASSET_WORKER_STORE=url, ASSET_WORKER_LEASE_S="8")
        await worker.submit_async([f"cloudlayer:{job.id}" for job in jobs], store=url)
        async with fleet_of(env, tmp_path, 2) as fleet:
            await _until_some_done(url, 5, fleet)
            server.stop(immediate=True)  # like a crash of the database
            await asyncio.sleep(3)
            fleet.check()  # no replica died with its database (fails with the replica's log)
            await asyncio.to_thread(server.start)
            store = await open_store(url)
            try:
                async with asyncio.timeout(180):
                    await until_finished(store, fleet)
                finished = await store.list_jobs()
            finally:
                await store.close()
            codes = await fleet.stop()
        logs = "".join(r.log_path.read_text() for r in fleet.replicas)
    assert codes == {"replica-0": 0, "replica-1": 0}
    assert "store_unavailable" in logs or "store_retrying" in logs
    _assert_each_stored_once(finished, jobs, tmp_path / "assets", hash_on_disk=jobs[-3:])
    _assert_no_job_served_twice_at_once(sim.requests())


# -- helpers --------------------------------------------------------------------------------


async def _replica_writing_a_large_file(
    fleet: Fleet, dest: Path, *, exclude: list[Path]
) -> tuple[Path, Replica]:
    """Wait for a temp file of at least 4 MiB that a live replica has open; that file and replica."""
    while True:
        fleet.check()
        found = _large_temp_file_in_use(fleet, dest, exclude)
        if found is not None:
            return found
        await asyncio.sleep(0.02)


def _large_temp_file_in_use(fleet: Fleet, dest: Path, exclude: list[Path]) -> tuple[Path, Replica] | None:
    for part in dest.rglob("*.part") if dest.exists() else []:
        if part in exclude:
            continue
        try:
            if part.stat().st_size < 4 * MiB:
                continue
        except FileNotFoundError:
            continue
        for replica in fleet.alive:
            if has_open(replica.proc.pid, part):
                return part, replica
    return None


def _assert_each_stored_once(
    finished: list[Job], jobs: list[SimJob], dest: Path, *, hash_on_disk: list[SimJob]
) -> None:
    """Every job done with its one asset verified and at its path; nothing else under ``dest``
    (no second copy, no temp file left by a killed replica)."""
    by_key = {str(job.key): job for job in finished}
    assert sorted(by_key) == sorted(f"cloudlayer:{job.id}" for job in jobs)
    uris: dict[str, str] = {}
    for job in jobs:
        record = by_key[f"cloudlayer:{job.id}"]
        assert record.state is JobState.DONE, (job.id, record.error)
        (asset,) = record.assets
        assert asset.receipt is not None
        assert (asset.receipt.size, asset.receipt.sha256) == (job.size, content_sha256(job.seed, job.size))
        path = Path(unquote(urlsplit(asset.receipt.uri).path))
        assert path.stat().st_size == job.size
        uris[job.id] = asset.receipt.uri
    for job in hash_on_disk:
        assert sha256_of(Path(unquote(urlsplit(uris[job.id]).path))) == content_sha256(job.seed, job.size)
    files = [p for p in dest.rglob("*") if p.is_file()]
    assert [p for p in files if p.name.endswith(".part")] == []
    assert len(files) == len(jobs)


async def _until_some_done(url: str, count: int, fleet: Fleet) -> None:
    store = await open_store(url)
    try:
        async with asyncio.timeout(60):
            while True:
                fleet.check()
                if len(await store.list_jobs(states=[JobState.DONE])) >= count:
                    return
                await asyncio.sleep(0.1)
    finally:
        await store.close()


def _assert_no_job_served_twice_at_once(records: list[RequestRecord]) -> None:
    """Per upstream path (one job's status, one file), requests never overlap in time: at most one
    replica works on a job at any moment (a killed replica's request ends when its socket does)."""
    by_path: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_path[record.path].append(record)
    for path, requests in by_path.items():
        requests.sort(key=lambda r: r.t)
        for earlier, later in itertools.pairwise(requests):
            assert earlier.ended_t is not None, f"{path}: a request never ended"
            assert later.t >= earlier.ended_t, f"{path}: two requests at once ({earlier} and {later})"


async def test_a_job_taken_over_fetches_only_what_was_not_yet_stored(
    sim: Simulator, make_settings: SettingsFactory, pg_url: str
) -> None:
    """A replica stuck on the last file of a slideshow stops renewing its lease; another replica takes
    the job over and fetches only that file: the slides already stored and verified are not
    downloaded again, and the stuck replica, fenced off, publishes nothing."""
    container = sim.add_layers_container(format="slideshow", slides=3, size=150_000)
    assets = [asset.asset_id for asset in container.generation.assets]
    sim.add_fault(route="files", match=assets[-1], kind="stall", delay_s=30, count=1)
    # Long enough that a loaded machine never lets the lease lapse while the first slides transfer.
    base = make_settings(store_url=pg_url, lease_s=2.0)
    http = dataclasses.replace(base.http, read_timeout_s=3.0, request_attempts=1)
    key = JobKey.parse(f"layers:{container.id}")
    async with (
        open_worker(dataclasses.replace(base, worker_id="stuck", http=http)) as stuck,
        open_worker(dataclasses.replace(base, worker_id="successor")) as successor,
    ):
        await stuck.store.submit(key, now=time.time())
        async with asyncio.timeout(60), asyncio.TaskGroup() as group:
            group.create_task(stuck.runner.run(stop=asyncio.Event(), until_idle=True))
            await _until_assets_stored(stuck.store, key, len(assets) - 1)
            group.create_task(successor.runner.run(stop=asyncio.Event(), until_idle=True))
        (job,) = await successor.store.get([key])
    assert job.state is JobState.DONE, job.error
    assert [a.state for a in job.assets] == [AssetState.STORED] * len(assets)
    fetches = {asset: [r for r in sim.requests("files") if asset in r.path] for asset in assets}
    # The stored slides: fetched once. The stalled one: again by the successor (and perhaps a third
    # time by the stuck replica's own retry, which its lease check then throws away).
    assert [len(fetches[a]) for a in assets[:-1]] == [1] * (len(assets) - 1)
    assert len(fetches[assets[-1]]) >= 2


async def _until_assets_stored(store: Store, key: JobKey, count: int) -> None:
    while True:
        (job,) = await store.get([key])
        if sum(a.state is AssetState.STORED for a in job.assets) >= count:
            return
        await asyncio.sleep(0.02)


async def test_a_replica_started_before_its_database_waits_and_reports_not_ready(
    sim: Simulator, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    """Started while PostgreSQL is down, a replica waits for it (no crash loop); once serving, it
    answers /readyz 503 store_unavailable while the database is away and 200 when it is back, and
    works the queue throughout."""
    with private_cluster() as server:
        url = server.url()
        await (await open_store(url)).close()  # the schema exists; the database then goes away
        server.stop()
        env = dict(fleet_env, ASSET_WORKER_STORE=url)
        async with fleet_of(env, tmp_path, 1) as fleet:
            (replica,) = fleet.replicas
            await _until_logged(replica, "store_unavailable", fleet)
            await asyncio.to_thread(server.start)
            port = await listening_port(replica.log_path)
            readyz = f"http://127.0.0.1:{port}/readyz"
            assert await asyncio.to_thread(probe, readyz) == (200, {"status": "ready"})
            server.stop()
            status, body = await asyncio.to_thread(probe, readyz)
            assert (status, body["error"]["code"]) == (503, "store_unavailable")
            await asyncio.to_thread(server.start)
            job = sim.add_cloudlayer_job(id="after-outage", pending_s=0.1, size=70_000)
            await worker.submit_async(f"cloudlayer:{job.id}", store=url)
            store = await open_store(url)
            try:
                async with asyncio.timeout(60):
                    await until_finished(store, fleet)
                (finished,) = await store.list_jobs()
            finally:
                await store.close()
            assert await asyncio.to_thread(probe, readyz) == (200, {"status": "ready"})
            codes = await fleet.stop()
    assert codes == {"replica-0": 0}
    assert finished.state is JobState.DONE, finished.error


async def _until_logged(replica: Replica, event: str, fleet: Fleet) -> None:
    async with asyncio.timeout(30):
        while True:
            fleet.check()
            if any(e.get("event") == event for e in logged_events(replica.log_path)):
                return
            await asyncio.sleep(0.05)


async def test_a_second_signal_stops_at_once_even_with_the_database_away(
    sim: Simulator, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    """Forced stop mid-download while PostgreSQL is down: the lease release cannot reach the store,
    so it is abandoned after a short bound (the lease expires instead) rather than waiting out the
    store's retries; the temp file is removed and no file appears under a final name."""
    with private_cluster() as server:
        url = server.url()
        job = sim.add_cloudlayer_job(id="forced", pending_s=0.1, size=1024 * MiB)
        await worker.submit_async(f"cloudlayer:{job.id}", store=url)
        env = dict(fleet_env, ASSET_WORKER_STORE=url, ASSET_WORKER_GRACE_S="20")
        dest = tmp_path / "assets"
        async with fleet_of(env, tmp_path, 1) as fleet:
            (replica,) = fleet.replicas
            async with asyncio.timeout(60):
                await _replica_writing_a_large_file(fleet, dest, exclude=[])
            await asyncio.to_thread(server.stop)
            replica.proc.send_signal(signal.SIGTERM)
            await _until_logged(replica, "runner_draining", fleet)
            replica.proc.send_signal(signal.SIGTERM)
            # The store's retry window alone is 15 s; the release bound is 3 s.
            async with asyncio.timeout(10):
                code = await replica.proc.wait()
        events = {e.get("event") for e in logged_events(replica.log_path)}
    assert code == 1  # forced
    assert "job_release_failed" in events
    assert only_resume_parts(dest)
