"""Chaos: 500 jobs across both providers through a simulator that fails at random (429 with
Retry-After, 5xx alone and in bursts, resets before and in the middle of bodies, stalled headers and bodies,
truncation, wrong bytes once, expired URLs), while worker processes are SIGKILLed at random moments
and replaced, the disk fills and empties (SQLite, two processes), or the database restarts and S3
goes away for a while (PostgreSQL, three replicas).

Afterwards every job that can succeed is done, every stored copy's sha256 is the simulator's truth,
nothing partial remains (no temp file, no staged object, no open multipart upload), no asset is
stored twice, and no secret appears in anything the workers printed. Seeded: ``CHAOS_SEED=<n>``
replays a world (jobs, sizes, outcomes, fault draws, kill schedule); a failure names its seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

import worker
from tests.chaos.plan import DEFAULT_SEED, Plan, fault_report, plan_world
from tests.cli_support import cli, cli_environment, sha256_of
from tests.fleet import Fleet, fleet_of, until_finished
from tests.http_support import logged_events
from tests.pgserver import private_cluster
from tests.s3server import S3Server
from tests.security.smalldisk import fill, small_disk
from tests.security.tcpproxy import switchable_proxy
from worker.models import Job, JobState
from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256
from worker.store import Store, open_store

MIB = 1 << 20
Step = Callable[[], Awaitable[object]]
RUN_TIMEOUT_S = 240


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def chaos_seed() -> int:
    return int(os.environ.get("CHAOS_SEED", DEFAULT_SEED))


def chaos_env(sim: Simulator, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Workers pointed at the simulator (both vendors), with short leases so a killed process's jobs
    come back quickly, a speed floor that notices a stalled body within a second, and quick waits
    for a destination that is down."""
    env = cli_environment(tmp_path, sim)
    env.update(
        ASSET_WORKER_LEASE_S="2",
        ASSET_WORKER_CONCURRENCY="4",
        ASSET_WORKER_POLL_CONCURRENCY="16",
        ASSET_WORKER_MAX_ATTEMPTS="8",
        ASSET_WORKER_READ_TIMEOUT_S="5",
        ASSET_WORKER_MIN_SPEED_BPS="65536",
        ASSET_WORKER_MIN_SPEED_WINDOW_S="1",
        ASSET_WORKER_DEST_RETRY_MAX_S="1",
        ASSET_WORKER_LOG_FORMAT="json",
        ASSET_WORKER_LAYERS_READS_PER_MIN="60000",
        ASSET_WORKER_LAYERS_POLL_INITIAL_S="0.05",
        ASSET_WORKER_LAYERS_POLL_MAX_S="0.2",
        ASSET_WORKER_PG_POOL_SIZE="4",
        LAYERS_API_KEY=sim.layers_api_key,
        LAYERS_BASE_URL=sim.layers_url,
    )
    env.update(extra)
    return env


class Chaos:
    """The disturbances of one run, on a schedule drawn from the seed; counts what it did."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed ^ 0x5EED)
        self.done: Counter[str] = Counter()

    async def kill_replicas(self, fleet: Fleet, times: int) -> None:
        for _ in range(times):
            await asyncio.sleep(self.rng.uniform(0.8, 2.5))
            fleet.check()
            victim = self.rng.choice(fleet.alive)
            victim.proc.kill()  # SIGKILL: no drain, no release, temp files and uploads left behind
            await victim.proc.wait()
            self.done["replica SIGKILLed and replaced"] += 1
            await fleet.start()

    async def outage(
        self, name: str, down: Step, up: Step, *, hold_s: tuple[float, float] = (1.0, 2.5)
    ) -> None:
        """After a while, ``down``; ``hold_s`` later, ``up`` again."""
        await asyncio.sleep(self.rng.uniform(1.5, 5.0))
        await down()
        await asyncio.sleep(self.rng.uniform(*hold_s))
        await up()
        self.done[name] += 1


async def run_chaos(
    fleet_size: int,
    env: dict[str, str],
    log_dir: Path,
    store_url: str,
    plan: Plan,
    disturbances: Callable[[Fleet], list[Awaitable[None]]],
) -> tuple[list[Job], Fleet]:
    """Submit the plan, run the fleet under ``disturbances`` until every job is finished, drain."""
    await asyncio.to_thread(log_dir.mkdir, exist_ok=True)
    results = await worker.submit_async(plan.keys, store=store_url)
    assert all(r.created for r in results)
    async with fleet_of(env, log_dir, fleet_size) as fleet:
        tasks = [asyncio.ensure_future(d) for d in disturbances(fleet)]
        try:
            store = await _open_when_up(store_url)
            try:
                async with asyncio.timeout(RUN_TIMEOUT_S):
                    await asyncio.gather(*tasks)  # every disturbance happened
                    await until_finished(store, fleet)
                finished = await store.list_jobs()
            finally:
                await store.close()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        codes = await fleet.stop()
    assert set(codes.values()) == {0}, codes
    return finished, fleet


async def _open_when_up(url: str) -> Store:
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(Exception):
                return await open_store(url)
            await asyncio.sleep(0.2)


def check_outcomes(plan: Plan, finished: list[Job], secrets: tuple[str, ...]) -> list[str]:
    """Every job ended as planned and every receipt is the truth; returns the stored URIs."""
    by_key = {str(job.key): job for job in finished}
    uris: list[str] = []
    for expected in plan.jobs:
        job = by_key[str(expected.key)]
        where = f"{expected.key} (seed {plan.seed})"
        if expected.failure_code is not None:
            assert job.state is JobState.FAILED and job.error is not None, (where, job.state, job.error)
            assert job.error.code == expected.failure_code, (where, job.error)
            assert "***" in job.error.message and not any(s in job.error.message for s in secrets), where
            continue
        assert job.state is JobState.DONE, (where, job.state, job.error, job.assets)
        receipts = [asset.receipt for asset in job.assets]
        assert len(receipts) == len(expected.files), where
        for receipt, (seed, size) in zip(receipts, expected.files, strict=True):
            assert receipt is not None, where
            assert (receipt.size, receipt.sha256) == (size, content_sha256(seed, size)), where
            uris.append(receipt.uri)
    assert len(set(uris)) == len(uris), "an asset stored twice under one name"
    return uris


def check_logs(fleet: Fleet, secrets: tuple[str, ...]) -> Counter[str]:
    """No secret in anything a worker printed; what the workers reported, by event and code."""
    seen: Counter[str] = Counter()
    for replica in fleet.replicas:
        text = replica.log_path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{replica.name} printed a secret"
        for event in logged_events(replica.log_path):
            name = event.get("event", "")
            if name in ("asset_retry", "destination_unavailable", "job_poll_failed"):
                seen[f"{name} {event.get('error')}"] += 1
            elif name in ("transfer_resumed", "lease_lost", "orphaned_temp_removed", "store_unavailable"):
                seen[name] += 1
            elif name == "request_retry":
                seen[f"request_retry {event.get('reason')}"] += 1
    return seen


def report(
    lines: list[str],
    title: str,
    plan: Plan,
    sim: Simulator,
    chaos: Chaos,
    seen: Counter[str],
    elapsed: float,
    stored: int,
) -> None:
    head = f"{title}: seed {plan.seed}, {len(plan.jobs)} jobs, {stored} files verified, {elapsed:.1f} s"
    lines.append(head)
    for name, count in sorted(fault_report(sim).items()):
        lines.append(f"  simulator fault  {name}: {count}")
    for name, count in sorted(chaos.done.items()):
        lines.append(f"  chaos            {name}: {count}")
    for name, count in sorted(seen.items()):
        lines.append(f"  worker reported  {name}: {count}")


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_chaos_on_sqlite_with_two_processes_and_a_disk_that_fills(
    sim: Simulator, tmp_path: Path, chaos_report: list[str]
) -> None:
    """Two processes on one SQLite file, six SIGKILLs, the destination disk filled up twice: every
    job ends as planned with verified files, and nothing partial or secret is left anywhere."""
    seed = chaos_seed()
    plan = plan_world(sim, seed=seed)
    chaos = Chaos(seed)
    store_url = f"sqlite:///{tmp_path / 'chaos.db'}"
    with small_disk(tmp_path / "disk", 1 << 30) as disk:
        dest = disk / "assets"
        env = chaos_env(sim, tmp_path, ASSET_WORKER_STORE=store_url, ASSET_WORKER_DEST=str(dest))

        async def fill_disk() -> None:
            fillers: list[Path] = []

            async def full() -> None:
                fillers.append(await asyncio.to_thread(fill, disk, 512 * 1024))

            async def empty() -> None:
                await asyncio.to_thread(fillers.pop().unlink)

            for _ in range(2):
                await chaos.outage("disk filled, then emptied", full, empty)

        started = time.monotonic()
        finished, fleet = await run_chaos(
            2, env, tmp_path / "logs", store_url, plan,
            lambda fleet: [chaos.kill_replicas(fleet, 6), fill_disk()],
        )
        elapsed = time.monotonic() - started
        secrets = (sim.api_key, sim.layers_api_key)
        uris = check_outcomes(plan, finished, secrets)
        files = [p for p in dest.rglob("*") if p.is_file()]
        assert not [p for p in files if p.name.endswith(".part")], "a temp file was left behind"
        paths = {Path(unquote(urlsplit(uri).path)) for uri in uris}
        assert set(files) == paths, "files on disk are exactly the receipts, no copy twice"
        by_uri = {r.uri: r.sha256 for j in finished for a in j.assets if (r := a.receipt) is not None}
        for uri, sha256 in by_uri.items():
            assert await asyncio.to_thread(sha256_of, Path(unquote(urlsplit(uri).path))) == sha256
    seen = check_logs(fleet, secrets)
    report(chaos_report, "SQLite, 2 processes", plan, sim, chaos, seen, elapsed, len(uris))


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_chaos_on_postgresql_with_three_replicas_s3_and_a_database_restart(
    sim: Simulator, tmp_path: Path, s3_server: S3Server, s3_client: Any, chaos_report: list[str]
) -> None:
    """Three replicas on PostgreSQL publishing to S3, six SIGKILLs, the database crash-stopped and
    restarted, S3 unreachable for a while: every job ends as planned, every object is the truth,
    no multipart upload or staged object is left, and no secret was printed."""
    seed = chaos_seed() + 1
    plan = plan_world(sim, seed=seed)
    chaos = Chaos(seed)
    prefix = f"chaos-{seed}-{int(time.time())}"
    with private_cluster() as database:
        store_url = database.url()
        async with switchable_proxy(s3_server.endpoint_url) as proxy:
            env = chaos_env(
                sim,
                tmp_path,
                ASSET_WORKER_STORE=store_url,
                ASSET_WORKER_DEST=f"s3://{s3_server.bucket}/{prefix}",
                ASSET_WORKER_S3_ENDPOINT_URL=proxy.url,
                ASSET_WORKER_S3_PATH_STYLE="true",
                ASSET_WORKER_S3_REGION="us-east-1",
                ASSET_WORKER_S3_PART_SIZE_BYTES=str(5 * MIB),
                AWS_ACCESS_KEY_ID=s3_server.access_key,
                AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
            )

            async def restart_database() -> None:
                async def down() -> None:
                    await asyncio.to_thread(database.stop, immediate=True)

                async def up() -> None:
                    await asyncio.to_thread(database.start)

                await chaos.outage("database crash-stopped, then started", down, up)

            started = time.monotonic()
            finished, fleet = await run_chaos(
                3, env, tmp_path / "logs", store_url, plan,
                lambda fleet: [
                    chaos.kill_replicas(fleet, 6),
                    restart_database(),
                    # Longer than botocore's own retries, so uploads really fail and jobs wait.
                    chaos.outage("S3 unreachable, then back", proxy.down, proxy.up, hold_s=(5.0, 7.0)),
                ],
            )
            elapsed = time.monotonic() - started
            # A SIGKILLed replica (or one whose abort met the outage) leaves its multipart upload
            # open; the janitor of the next start aborts what is older than its age. Here the age is
            # one second, so the uploads of this run are due.
            await asyncio.sleep(1.5)
            janitor_env = dict(env, ASSET_WORKER_S3_JANITOR_AGE_S="1")
            janitor = await cli(janitor_env, "run", "--until-idle", "--no-http")
            assert janitor.code == 0, janitor.err
            (cleaned,) = [e for e in json_lines(janitor.out) if e.get("event") == "s3_janitor"]
            chaos.done["multipart uploads left by killed replicas, aborted by the janitor"] += int(
                cleaned["aborted_uploads"]
            )
    secrets = (sim.api_key, sim.layers_api_key, s3_server.secret_key)
    uris = check_outcomes(plan, finished, secrets)
    listed: dict[str, str] = {}
    paginator = s3_client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=s3_server.bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            listed[item["Key"]] = item["Key"]
    keys = {urlsplit(uri).path.lstrip("/") for uri in uris}
    assert not [k for k in listed if ".asset-worker-staging/" in k], "a staged object was left"
    assert set(listed) == keys, "objects under the prefix are exactly the receipts"
    uploads = await s3_client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=f"{prefix}/")
    assert not uploads.get("Uploads"), "a multipart upload was left open"
    receipts = [a.receipt for j in finished for a in j.assets if a.receipt is not None]
    for key, sha256 in ((urlsplit(r.uri).path.lstrip("/"), r.sha256) for r in receipts):
        obj = await s3_client.get_object(Bucket=s3_server.bucket, Key=key)
        async with obj["Body"] as body:
            assert hashlib.sha256(await body.read()).hexdigest() == sha256, key
    seen = check_logs(fleet, secrets)
    report(chaos_report, "PostgreSQL, 3 replicas, S3", plan, sim, chaos, seen, elapsed, len(uris))
