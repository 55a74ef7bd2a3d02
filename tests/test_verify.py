"""``asset-worker verify``: stored files re-read and compared with their receipts, on disk and in S3,
through the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.cli_support import cli, cli_environment
from tests.conftest import SettingsFactory
from tests.s3server import S3Server, s3_settings
from worker.app import open_worker
from worker.models import JobKey, JobState
from worker.simulator.app import Simulator
from worker.simulator.content import content_bytes
from worker.sinks.file_read import hash_file
from worker.sinks.readback import PIECE, Absent, Found
from worker.verify import Expected, Result, Tally, compare


@pytest.fixture
def cli_env(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    return cli_environment(tmp_path, sim)


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


async def test_verify_finds_a_truncated_a_changed_and_a_deleted_file(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """After a real run every file checks out (exit 0); then one file cut short, one with a byte
    flipped and one deleted each give their own line, and exit 1. Named keys check only those."""
    jobs = [sim.add_cloudlayer_job(id=f"v-{i}", pending_s=0, size=2_500_000 + i) for i in range(4)]
    keys = [f"cloudlayer:{j.id}" for j in jobs]
    assert (await cli(cli_env, "submit", *keys)).code == 0
    assert (await cli(cli_env, "run", "--until-idle", "--no-http")).code == 0
    paths = [tmp_path / "assets/cloudlayer" / j.id / f"{j.asset_id}.pdf" for j in jobs]
    total = sum(j.size for j in jobs)

    clean = await cli(cli_env, "verify")
    assert clean.code == 0, clean.err
    assert clean.out.splitlines() == [f"checked 4 files, {total:,} bytes, 0 differences"]

    with paths[0].open("r+b") as handle:
        handle.truncate(1_000_000)
    _flip_byte(paths[1], 2_000_000)  # past the first read piece
    paths[2].unlink()
    broken = await cli(cli_env, "verify")
    assert broken.code == 1, broken.err
    lines = broken.out.splitlines()
    assert lines[0] == (
        f"size differs: cloudlayer:v-0 {jobs[0].asset_id} at {paths[0].as_uri()} "
        f"(receipt {jobs[0].size:,} bytes, found 1,000,000)"
    )
    assert lines[1].startswith(f"sha256 differs: cloudlayer:v-1 {jobs[1].asset_id} at {paths[1].as_uri()} ")
    assert lines[2] == f"missing: cloudlayer:v-2 {jobs[2].asset_id} at {paths[2].as_uri()}"
    # Only the intact file and the changed one were read whole; the others not at all.
    assert lines[3] == f"checked 4 files, {jobs[1].size + jobs[3].size:,} bytes, 3 differences"
    assert len(lines) == 4

    one = await cli(cli_env, "verify", "cloudlayer:v-3")
    assert one.code == 0 and one.out.splitlines() == [
        f"checked 1 file, {jobs[3].size:,} bytes, 0 differences"
    ]
    two = await cli(cli_env, "verify", "cloudlayer:v-2", "cloudlayer:v-3")
    assert two.code == 1 and two.out.splitlines()[0].startswith("missing: cloudlayer:v-2 ")

    as_json = await cli(cli_env, "verify", "--json")
    assert as_json.code == 1
    objects = [json.loads(line) for line in as_json.out.splitlines()]
    assert [(o["key"], o["result"]) for o in objects] == [
        ("cloudlayer:v-0", "size_differs"),
        ("cloudlayer:v-1", "sha256_differs"),
        ("cloudlayer:v-2", "missing"),
        ("cloudlayer:v-3", "ok"),
    ]
    assert objects[3]["found_sha256"] == objects[3]["sha256"] and objects[3]["uri"] == paths[3].as_uri()
    assert as_json.err.strip().splitlines()[-1].endswith("3 differences")


async def test_verify_names_unknown_and_unfinished_jobs_and_never_creates_a_store(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """An unknown key is an error (exit 1) as for status; a job that is not done has nothing to
    verify; with no store at all, nothing is created."""
    nowhere = {**cli_env, "ASSET_WORKER_STORE": f"sqlite:///{tmp_path / 'none' / 'store.db'}"}
    empty = await cli(nowhere, "verify")
    assert empty.code == 0 and empty.out.strip() == "checked 0 files, 0 bytes, 0 differences"
    named = await cli(nowhere, "verify", "cloudlayer:x")
    assert named.code == 1 and "unknown job cloudlayer:x" in named.err
    assert not (tmp_path / "none").exists()

    await cli(cli_env, "submit", "cloudlayer:queued-1")
    result = await cli(cli_env, "verify", "cloudlayer:queued-1", "cloudlayer:nope")
    assert result.code == 1
    assert "unknown job cloudlayer:nope" in result.err
    assert "cloudlayer:queued-1 is queued; only a done job has files to verify" in result.err
    assert "Traceback" not in result.err
    bad = await cli(cli_env, "verify", "nokey")
    assert bad.code == 2 and "<provider>:<upstream id>" in bad.err


def s3_cli_env(cli_env: dict[str, str], server: S3Server, prefix: str, store: Path) -> dict[str, str]:
    return {
        **cli_env,
        "ASSET_WORKER_STORE": f"sqlite:///{store}",
        "ASSET_WORKER_DEST": f"s3://{server.bucket}/{prefix}",
        "ASSET_WORKER_S3_ENDPOINT_URL": server.endpoint_url,
        "ASSET_WORKER_S3_REGION": "us-east-1",
        "ASSET_WORKER_S3_PATH_STYLE": "true",
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }


async def test_verify_reads_s3_objects_and_finds_an_overwritten_and_a_deleted_one(
    sim: Simulator,
    make_settings: SettingsFactory,
    s3_server: S3Server,
    aws_env: None,
    s3_client: Any,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Objects published by a real worker to SeaweedFS verify (one multipart, streamed in pieces);
    one overwritten with other bytes of the same size and one deleted are each reported, exit 1."""
    prefix = f"verify/{uuid.uuid4().hex[:10]}"
    jobs = [
        sim.add_cloudlayer_job(id="s3v-big", pending_s=0, size=7 * PIECE + 3),
        sim.add_cloudlayer_job(id="s3v-small", pending_s=0, size=300_000),
        sim.add_cloudlayer_job(id="s3v-gone", pending_s=0, size=1000),
    ]
    s3 = s3_settings(s3_server, prefix)
    settings = make_settings(dest_url=f"s3://{s3.bucket}/{prefix}", dest_settings=s3)
    async with open_worker(settings) as worker:
        for job in jobs:
            await worker.store.submit(JobKey("cloudlayer", job.id), now=time.time())
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 60)
        done = await worker.store.get([JobKey("cloudlayer", j.id) for j in jobs])
    assert [j.state for j in done] == [JobState.DONE] * 3
    env = s3_cli_env(cli_env, s3_server, prefix, tmp_path / "store.db")

    clean = await cli(env, "verify")
    assert clean.code == 0, clean.err
    assert clean.out.strip() == f"checked 3 files, {sum(j.size for j in jobs):,} bytes, 0 differences"

    small_key = f"{prefix}/cloudlayer/s3v-small/{jobs[1].asset_id}.pdf"
    other = bytearray(content_bytes(jobs[1].seed, jobs[1].size))
    other[-1] ^= 0xFF
    await s3_client.put_object(Bucket=s3_server.bucket, Key=small_key, Body=bytes(other))
    await s3_client.delete_object(
        Bucket=s3_server.bucket, Key=f"{prefix}/cloudlayer/s3v-gone/{jobs[2].asset_id}.pdf"
    )
    broken = await cli(env, "verify")
    assert broken.code == 1, broken.err
    lines = broken.out.splitlines()
    assert lines[0].startswith(f"sha256 differs: cloudlayer:s3v-small {jobs[1].asset_id} at s3://")
    assert lines[1] == (
        f"missing: cloudlayer:s3v-gone {jobs[2].asset_id} at "
        f"s3://{s3_server.bucket}/{prefix}/cloudlayer/s3v-gone/{jobs[2].asset_id}.pdf"
    )
    assert lines[2].endswith(", 2 differences") and len(lines) == 3

    denied = await cli({**env, "AWS_SECRET_ACCESS_KEY": "wrong"}, "verify", "cloudlayer:s3v-big")
    assert denied.code == 1 and "Traceback" not in denied.err
    assert denied.out.startswith("unreadable: cloudlayer:s3v-big ")


def test_compare_and_the_summary_are_pure(tmp_path: Path) -> None:
    """The verdicts, by size first and then digest, and the summary's wording."""
    expected = Expected("cloudlayer:a", "a1", "file:///x", 5, "ab" * 32)
    assert compare(expected, Found(5, "ab" * 32, 5)).result is Result.OK
    assert compare(expected, Found(4, None, 0)).result is Result.SIZE_DIFFERS
    assert compare(expected, Found(5, "cd" * 32, 5)).result is Result.SHA256_DIFFERS
    assert compare(expected, Absent()).result is Result.MISSING
    tally = Tally()
    tally.add(compare(expected, Found(5, "ab" * 32, 5)))
    assert tally.line() == "checked 1 file, 5 bytes, 0 differences"
    tally.add(compare(expected, Absent()))
    assert tally.line() == "checked 2 files, 5 bytes, 1 difference"
    # A directory where a file should be is unreadable, not missing.
    (tmp_path / "dir").mkdir()
    assert type(hash_file(tmp_path / "dir", 5)).__name__ == "Unreadable"
