"""Per-job destinations: a token holder may choose a place inside the worker's destination, never
outside it; the files (or objects) land there."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SettingsFactory
from tests.http_support import api_client, run_until_idle, serving
from tests.s3server import S3Server, s3_settings
from worker.destinations import parse_dest
from worker.errors import ConfigError
from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256
from worker.sinks.base import JobDest
from worker.sinks.s3_sink import STAGING_DIR


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/srv/assets/tenant-a", JobDest("file:///srv/assets/tenant-a", "tenant-a")),
        ("/srv/assets/tenant-a/", JobDest("file:///srv/assets/tenant-a", "tenant-a")),
        ("/srv/assets//a/b_1.x", JobDest("file:///srv/assets/a/b_1.x", "a/b_1.x")),
        ("file:///srv/assets/a/b", JobDest("file:///srv/assets/a/b", "a/b")),
        ("file://localhost/srv/assets/a", JobDest("file:///srv/assets/a", "a")),
        (" /srv/assets ", JobDest("file:///srv/assets", "")),
    ],
)
def test_file_destinations_inside_are_accepted(text: str, expected: JobDest) -> None:
    assert parse_dest(text, base_url="file:///srv/assets") == expected


@pytest.mark.parametrize(
    "text",
    [
        "/etc",
        "/srv/assets-other/x",  # a sibling whose name merely starts alike
        "/srv/assets/../etc",
        "file:///srv/assets/%2e%2e/etc",  # the same, percent-encoded
        "/srv/assets/.ssh",
        "/srv/assets/a b",
        "/srv/assets/%2e%2e",
        "/srv/assets/a\x00b",
        "/srv/assets/" + "/".join("abcdefghi"),  # deeper than 8
        "/srv/assets/" + "x" * 101,
        "tenant-a",
        "./assets/tenant-a",
        "file://otherhost/srv/assets/a",
        "file:///srv/assets/a?x=1",
        "http://example.com/srv/assets/a",
        "s3://bucket/prefix",
        "",
    ],
)
def test_file_destinations_outside_or_odd_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_dest(text, base_url="file:///srv/assets")


def test_s3_destinations_stay_under_the_prefix() -> None:
    base = "s3://bucket/base"
    assert parse_dest("s3://bucket/base/t/u", base_url=base) == JobDest("s3://bucket/base/t/u", "t/u")
    assert parse_dest("s3://bucket/base/", base_url=base) == JobDest("s3://bucket/base", "")
    assert parse_dest("s3://bucket/t", base_url="s3://bucket") == JobDest("s3://bucket/t", "t")
    for outside in (
        "s3://bucket/basement/t",
        "s3://other/base/t",
        "s3://bucket/base/.asset-worker-staging",
        "s3://bucket/base/../x",
        "s3://bucket",
        "/srv/assets",
    ):
        with pytest.raises(ConfigError):
            parse_dest(outside, base_url=base)


def test_a_relative_worker_destination_is_resolved_like_the_worker_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    parsed = parse_dest(str(tmp_path / "assets" / "t"), base_url="file://./assets")
    assert parsed == JobDest((tmp_path / "assets" / "t").as_uri(), "t")


async def test_an_s3_job_destination_gets_the_objects(
    sim: Simulator, make_settings: SettingsFactory, s3_server: S3Server, s3_client: Any
) -> None:
    """A multipart object with no published checksum (staged, then copied) lands below the job's
    prefix, with its sha256 metadata, and nothing stays in the worker's staging area."""
    prefix = f"dest/{uuid.uuid4().hex[:10]}"
    s3 = s3_settings(s3_server, prefix)
    job = sim.add_cloudlayer_job(id="to-tenant", pending_s=0, size=11 * 1024 * 1024 + 3)
    settings = make_settings(dest_url=f"s3://{s3.bucket}/{prefix}", dest_settings=s3)
    async with serving(settings) as served, api_client(served.url) as api:
        dest = f"s3://{s3.bucket}/{prefix}/tenant-a"
        submitted = await api.submit({"key": "cloudlayer:to-tenant", "dest": dest})
        assert submitted.body["results"][0]["dest"] == dest
        await run_until_idle(served.worker)
        status = (await api.get("cloudlayer:to-tenant")).body
    key = f"{prefix}/tenant-a/cloudlayer/to-tenant/{job.asset_id}.pdf"
    assert status["state"] == "done" and status["assets"][0]["uri"] == f"s3://{s3.bucket}/{key}"
    head = await s3_client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentLength"] == job.size
    assert head["Metadata"]["sha256"] == content_sha256(job.seed, job.size)
    listed = await s3_client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/")
    assert [o["Key"] for o in listed.get("Contents", [])] == [key]
    assert not any(STAGING_DIR in o["Key"] for o in listed.get("Contents", []))
