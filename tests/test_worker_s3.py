"""The whole worker publishing to S3 (SeaweedFS on loopback): verified objects, clear failures."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SettingsFactory
from tests.s3server import S3Server, s3_settings
from worker.app import open_worker
from worker.models import Job, JobKey, JobState
from worker.simulator.app import Simulator
from worker.simulator.content import content_bytes, content_sha256
from worker.sinks.s3_settings import S3Settings
from worker.statusview import job_to_json


async def run(settings_factory: SettingsFactory, s3: S3Settings, keys: list[str]) -> list[Job]:
    settings = settings_factory(dest_url=f"s3://{s3.bucket}/{s3.prefix}", dest_settings=s3)
    async with open_worker(settings) as worker:
        parsed = [JobKey.parse(k) for k in keys]
        for key in parsed:
            await worker.store.submit(key, now=time.time())
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 60)
        return await worker.store.get(parsed)


async def test_assets_land_in_s3_verified(
    sim: Simulator, make_settings: SettingsFactory, s3_server: S3Server, aws_env: None, s3_client: object
) -> None:
    """A small and a multipart asset end up as objects with the right bytes and sha256 metadata."""
    prefix = f"w/{uuid.uuid4().hex[:10]}"
    small = sim.add_cloudlayer_job(id="s3-small", pending_s=0, size=300_000)
    large = sim.add_cloudlayer_job(id="s3-large", pending_s=0, size=23 * 1024 * 1024 + 5)
    jobs = await run(
        make_settings, s3_settings(s3_server, prefix), ["cloudlayer:s3-small", "cloudlayer:s3-large"]
    )
    for job, sim_job in zip(jobs, (small, large), strict=True):
        assert job.state is JobState.DONE, job.error
        status = job_to_json(job)["assets"][0]
        key = f"{prefix}/cloudlayer/{sim_job.id}/{sim_job.asset_id}.pdf"
        assert status["uri"] == f"s3://{s3_server.bucket}/{key}"
        assert status["sha256"] == content_sha256(sim_job.seed, sim_job.size)
        obj = await s3_client.get_object(Bucket=s3_server.bucket, Key=key)  # type: ignore[attr-defined]
        async with obj["Body"] as body:
            data = await body.read()
        assert data == content_bytes(sim_job.seed, sim_job.size)
        assert obj["Metadata"]["sha256"] == status["sha256"]
        receipt = job.assets[0].receipt
        assert receipt is not None and receipt.etag


async def test_wrong_credentials_fail_the_job_clearly(
    sim: Simulator,
    make_settings: SettingsFactory,
    s3_server: S3Server,
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination that refuses our credentials fails the job at once with a StorageRejected code."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    sim.add_cloudlayer_job(id="s3-denied", pending_s=0, size=10_000)
    (job,) = await run(
        make_settings, s3_settings(s3_server, f"w/{uuid.uuid4().hex[:10]}"), ["cloudlayer:s3-denied"]
    )
    assert job.state is JobState.FAILED and job.error is not None
    # SeaweedFS answers SignatureDoesNotMatch or a bare 403 depending on the call; both are permanent.
    assert job.error.code in {"invalid_credentials", "access_denied"}
    assert "403" in job.error.message or "Signature" in job.error.message
    assert len(sim.requests("files")) <= 1  # not retried: a retry cannot fix credentials


async def test_janitor_aborts_stale_uploads_at_start(
    make_settings: SettingsFactory, s3_server: S3Server, aws_env: None, s3_client: object
) -> None:
    """A multipart upload left under the prefix by a dead worker is aborted when a worker starts."""
    prefix = f"w/{uuid.uuid4().hex[:10]}"
    client: Any = s3_client
    await client.create_multipart_upload(Bucket=s3_server.bucket, Key=f"{prefix}/cloudlayer/x/orphan.pdf")
    await asyncio.sleep(1.1)
    s3 = dataclasses.replace(s3_settings(s3_server, prefix), janitor_age_s=1.0)
    async with open_worker(make_settings(dest_url=f"s3://{s3.bucket}/{s3.prefix}", dest_settings=s3)):
        pass
    listed = await client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=f"{prefix}/")
    assert listed.get("Uploads", []) == []


async def test_receipts_name_the_exact_object_version_and_how_it_came_to_be(
    sim: Simulator,
    make_settings: SettingsFactory,
    s3_server: S3Server,
    aws_env: None,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """In a versioned bucket the receipt names the version written (its ETag too); a worker that
    lost its store and meets the identical object again records it as already present and writes
    no second version."""
    prefix = f"w/{uuid.uuid4().hex[:10]}"
    sim_job = sim.add_cloudlayer_job(id="s3-versioned", pending_s=0, size=200_000)
    s3 = dataclasses.replace(s3_settings(s3_server, prefix), bucket=s3_server.versioned_bucket)
    key = f"{prefix}/cloudlayer/{sim_job.id}/{sim_job.asset_id}.pdf"

    (first,) = await run(make_settings, s3, ["cloudlayer:s3-versioned"])
    assert first.state is JobState.DONE, first.error
    receipt = first.assets[0].receipt
    head = await s3_client.head_object(Bucket=s3_server.versioned_bucket, Key=key)
    assert receipt is not None and receipt.origin == "downloaded"
    assert (receipt.version_id, receipt.etag) == (head["VersionId"], head["ETag"].strip('"'))

    fresh_store = functools.partial(make_settings, store_url=f"sqlite:///{tmp_path / 'second.db'}")
    (again,) = await run(fresh_store, s3, ["cloudlayer:s3-versioned"])
    assert again.state is JobState.DONE, again.error
    second = again.assets[0].receipt
    assert second is not None and second.origin == "already_present"
    assert (second.version_id, second.sha256) == (receipt.version_id, receipt.sha256)
    versions = await s3_client.list_object_versions(Bucket=s3_server.versioned_bucket, Prefix=key)
    assert [v["VersionId"] for v in versions.get("Versions", [])] == [receipt.version_id]
