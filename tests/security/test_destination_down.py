"""A full disk or an unreachable S3 is a pause, not a verdict: jobs wait without spending their
attempts, nothing partial is left, /readyz says destination_unavailable, and everything completes
by itself once the destination is back."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import SettingsFactory
from tests.http_support import serving
from tests.s3server import S3Server, s3_settings
from tests.security.hostile import Hostile, allowing, hostile_settings
from tests.security.smalldisk import fill, free_bytes, small_disk
from tests.security.tcpproxy import switchable_proxy
from worker.app import Worker
from worker.config import Settings
from worker.errors import StorageUnavailable
from worker.models import Job, JobKey, JobState
from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256
from worker.sinks.file import FileSink

MIB = 1 << 20


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def jobs_of(worker: Worker, keys: Sequence[JobKey]) -> list[Job]:
    return await worker.store.get(list(keys))


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    """Wait (bounded) until ``check()`` comes true; AssertionError if it never does."""
    for _attempt in range(int(timeout_s / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still not true after {timeout_s} s")


async def readiness(session: aiohttp.ClientSession, base_url: str) -> tuple[int, str | None]:
    async with session.get(f"{base_url}/readyz") as resp:
        body = await resp.json()
    error = body.get("error") if isinstance(body, dict) else None
    return resp.status, error.get("code") if isinstance(error, dict) else None


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Worker, str, aiohttp.ClientSession]]:
    """A worker with its HTTP service, working its queue for the block."""
    async with serving(settings) as served, aiohttp.ClientSession() as session:
        task = asyncio.create_task(served.worker.runner.run(stop=served.stop))
        try:
            yield served.worker, served.url, session
        finally:
            served.stop.set()
            await task


def quick_retries(settings: Settings) -> Settings:
    return dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, dest_retry_max_s=0.3))


async def test_a_full_disk_pauses_jobs_until_space_returns(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Four 3 MiB assets on a 24 MiB disk filled to 1 MiB free: no byte is downloaded (the space is
    checked against the announced size first), the jobs wait with disk_full and their attempts
    given back, /readyz is 503 destination_unavailable; once the filler is removed, everything is
    stored and verified and /readyz is 200 again."""
    with small_disk(tmp_path / "disk", 24 * MIB) as disk:
        sim_jobs = [sim.add_cloudlayer_job(id=f"full-{i}", pending_s=0, size=3 * MIB) for i in range(4)]
        keys = [JobKey("cloudlayer", j.id) for j in sim_jobs]
        filler = await asyncio.to_thread(fill, disk, 1 * MIB)
        settings = quick_retries(make_settings(dest_url=str(disk / "assets")))
        async with running(settings) as (worker, url, session):
            for key in keys:
                await worker.store.submit(key, now=worker.clock.now())

            async def all_waiting() -> bool:
                jobs = await jobs_of(worker, keys)
                return all(j.error is not None and j.error.code == "disk_full" for j in jobs)

            await until(all_waiting)
            await asyncio.sleep(2)  # several rounds of waiting: no attempt may be spent on them
            assert await readiness(session, url) == (503, "destination_unavailable")
            for job in await jobs_of(worker, keys):
                assert job.state is JobState.DOWNLOADING and job.attempts <= 1, job
            assert files(disk / "assets") == []  # nothing partial, ever
            await asyncio.to_thread(filler.unlink)

            async def all_done() -> bool:
                return all(j.state is JobState.DONE for j in await jobs_of(worker, keys))

            await until(all_done)
            assert await readiness(session, url) == (200, None)
            finished = await jobs_of(worker, keys)
        for job, sim_job in zip(finished, sim_jobs, strict=True):
            receipt = job.assets[0].receipt
            assert receipt is not None and receipt.sha256 == content_sha256(sim_job.seed, sim_job.size)
            assert job.attempts == 1  # only the round that stored it counted
        stored = files(disk / "assets")
        assert len(stored) == 4 and not [p for p in stored if p.name.endswith(".part")]
        for path, sim_job in zip(stored, sorted(sim_jobs, key=lambda j: j.id), strict=True):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == content_sha256(sim_job.seed, sim_job.size)


async def test_disk_full_in_the_middle_of_a_write_leaves_nothing_and_waits(
    hostile: Hostile, tmp_path: Path
) -> None:
    """A file host that announces no size streams 6 MiB into 2 MiB of free space: ENOSPC mid-write
    removes the temp file and the job waits (disk_full); with room again it completes."""
    body = bytes(range(256)) * (6 * MIB // 256)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/pdf"})
        await response.prepare(request)
        try:
            for start in range(0, len(body), 256 * 1024):
                await response.write(body[start : start + 256 * 1024])
        except (ConnectionError, RuntimeError):
            pass
        return response

    hostile.routes["/stream.pdf"] = chunked
    hostile.job("stream", assetUrl=f"{hostile.url}/stream.pdf")
    key = JobKey("cloudlayer", "stream")
    with small_disk(tmp_path / "disk", 16 * MIB) as disk:
        filler = await asyncio.to_thread(fill, disk, 2 * MIB)
        dest = str(disk / "assets")
        settings = quick_retries(
            hostile_settings(tmp_path, hostile, dest_url=dest, limits=allowing("127.0.0.1/32"))
        )
        async with running(settings) as (worker, url, session):
            await worker.store.submit(key, now=worker.clock.now())

            async def waiting() -> bool:
                (job,) = await jobs_of(worker, [key])
                return job.error is not None and job.error.code == "disk_full"

            await until(waiting)
            assert await readiness(session, url) == (503, "destination_unavailable")
            assert not [p for p in files(disk / "assets") if p.name.endswith(".part")]
            await asyncio.to_thread(filler.unlink)

            async def done() -> bool:
                (job,) = await jobs_of(worker, [key])
                return job.state is JobState.DONE

            await until(done)
            (job,) = await jobs_of(worker, [key])
        receipt = job.assets[0].receipt
        assert receipt is not None and receipt.sha256 == hashlib.sha256(body).hexdigest()
        assert hostile.count("/stream.pdf") >= 2


async def test_an_unreachable_s3_pauses_jobs_until_it_returns(
    sim: Simulator,
    make_settings: SettingsFactory,
    s3_server: S3Server,
    aws_env: None,
    s3_client: Any,
) -> None:
    """S3 reached through a proxy that is switched off: jobs wait (storage_unavailable or
    network_error) with no attempt spent and no multipart upload left open, /readyz is 503
    destination_unavailable; switched on again, every object lands verified."""
    prefix = f"down/{uuid.uuid4().hex[:10]}"
    sim_jobs = [sim.add_cloudlayer_job(id=f"s3-{i}", pending_s=0, size=(i + 1) * 2 * MIB) for i in range(3)]
    keys = [JobKey("cloudlayer", j.id) for j in sim_jobs]
    async with switchable_proxy(s3_server.endpoint_url) as proxy:
        s3 = dataclasses.replace(s3_settings(s3_server, prefix), endpoint_url=proxy.url)
        settings = quick_retries(make_settings(dest_url=f"s3://{s3.bucket}/{s3.prefix}", dest_settings=s3))
        async with running(settings) as (worker, url, session):
            await proxy.down()
            for key in keys:
                await worker.store.submit(key, now=worker.clock.now())

            async def all_waiting() -> bool:
                jobs = await jobs_of(worker, keys)
                return all(j.error is not None and j.state is JobState.DOWNLOADING for j in jobs)

            await until(all_waiting)
            await asyncio.sleep(2)
            assert await readiness(session, url) == (503, "destination_unavailable")
            for job in await jobs_of(worker, keys):
                assert job.error is not None and job.error.code in ("storage_unavailable", "network_error")
                assert job.state is JobState.DOWNLOADING and job.attempts <= 1
            await proxy.up()

            async def all_done() -> bool:
                return all(j.state is JobState.DONE for j in await jobs_of(worker, keys))

            await until(all_done, timeout_s=60)
            assert await readiness(session, url) == (200, None)
    for sim_job in sim_jobs:
        object_key = f"{prefix}/cloudlayer/{sim_job.id}/{sim_job.asset_id}.pdf"
        obj = await s3_client.get_object(Bucket=s3_server.bucket, Key=object_key)
        async with obj["Body"] as body:
            assert hashlib.sha256(await body.read()).hexdigest() == content_sha256(sim_job.seed, sim_job.size)
    uploads = await s3_client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix)
    assert not uploads.get("Uploads")


async def test_the_file_sink_refuses_what_cannot_fit_before_writing(tmp_path: Path) -> None:
    """Opening an upload announced larger than the free space (less 1 % spare) fails disk_full
    before any temp file exists; uploads in progress keep what they were promised, less what they
    have written, so two large transfers cannot both start on room for one."""
    with small_disk(tmp_path / "disk", 16 * MIB) as disk:
        sink = FileSink(disk / "assets")
        free = free_bytes(disk)
        with pytest.raises(StorageUnavailable) as caught:
            await sink.open("a/too-big.bin", content_type=None, expected_size=free, expected_sha256=None)
        assert caught.value.code == "disk_full"
        assert files(disk / "assets") == []
        first = await sink.open("a/one.bin", content_type=None, expected_size=10 * MIB, expected_sha256=None)
        with pytest.raises(StorageUnavailable):
            await sink.open("a/two.bin", content_type=None, expected_size=10 * MIB, expected_sha256=None)
        await first.write(b"x" * 4 * MIB)  # written bytes count on the disk, no longer as a promise
        # 16 MiB: 4 written, 6 still promised, so 5 more fit and 7 do not.
        with pytest.raises(StorageUnavailable):
            await sink.open("a/two.bin", content_type=None, expected_size=7 * MIB, expected_sha256=None)
        second = await sink.open("a/two.bin", content_type=None, expected_size=5 * MIB, expected_sha256=None)
        await first.abort()  # its promise ends with it, and its bytes are gone
        third = await sink.open("a/three.bin", content_type=None, expected_size=9 * MIB, expected_sha256=None)
        await second.abort()
        await third.abort()
        assert files(disk / "assets") == []
