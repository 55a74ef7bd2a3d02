"""The S3 destination as the registry sees it: ``s3://bucket/prefix``, its ``ASSET_WORKER_S3_*``
variables, per-job prefixes, and the sink with its janitor.

Cheap to import: the client (aiobotocore) is loaded only when a worker opens the sink
(``s3_sink``), so a worker writing to disk never loads it. How uploads work is told in
``s3_sink``; part sizes in ``s3_parts``; calls and their errors in ``s3_bucket`` and ``s3_errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from worker.envvars import (
    PREFIX,
    Var,
    choice,
    flag,
    positive_float,
    positive_int,
    section,
    text,
    whole_number,
)
from worker.sinks.base import JobDest, OpenedSink, SinkSpec, check_subpath, not_inside
from worker.sinks.s3_read import open_s3_reader
from worker.sinks.s3_settings import CHECKSUM_MODES, S3Settings, parse_s3_url

VARIABLES = (
    Var(f"{PREFIX}S3_ENDPOINT_URL", "endpoint_url", text),
    Var(f"{PREFIX}S3_REGION", "region", text),
    Var(f"{PREFIX}S3_PATH_STYLE", "path_style", flag),
    Var(f"{PREFIX}S3_STORAGE_CLASS", "storage_class", text),
    Var(f"{PREFIX}S3_PART_SIZE_BYTES", "part_size_min_bytes", whole_number),
    Var(f"{PREFIX}S3_PARTS_IN_FLIGHT", "max_parts_in_flight", positive_int),
    Var(f"{PREFIX}S3_JANITOR_AGE_S", "janitor_age_s", positive_float),
    Var(f"{PREFIX}S3_OVERWRITE", "overwrite", flag),
    Var(f"{PREFIX}S3_CHECKSUM_MODE", "checksum_mode", choice(*CHECKSUM_MODES)),
    Var(f"{PREFIX}S3_MAX_CONNECTIONS", "max_connections", positive_int),
)

# botocore reads these itself; they are listed only so that they are masked like the worker's own.
_AWS_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def load(url: str, env: Mapping[str, str]) -> S3Settings:
    bucket, prefix = parse_s3_url(url)
    return S3Settings(bucket=bucket, prefix=prefix, **section(env, VARIABLES))


def job_dest(text: str, base_url: str) -> JobDest:
    """A job's own prefix inside the worker's: ``s3://bucket/prefix/tenant-a`` under
    ``s3://bucket/prefix``, so the janitor watching the prefix still covers its uploads."""
    if not text.strip().lower().startswith("s3://"):
        raise not_inside(text, base_url)
    bucket, prefix = parse_s3_url(text)
    base_bucket, base_prefix = parse_s3_url(base_url)
    if bucket != base_bucket:
        raise not_inside(text, base_url)
    if base_prefix and prefix != base_prefix and not prefix.startswith(base_prefix + "/"):
        raise not_inside(text, base_url)
    subpath = prefix[len(base_prefix) :].strip("/")
    check_subpath(text, subpath)
    return JobDest(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", subpath)


@asynccontextmanager
async def _open(settings: S3Settings) -> AsyncIterator[OpenedSink]:
    from worker.sinks.s3_sink import open_for_worker

    async with open_for_worker(settings) as opened:
        yield opened


SPEC: SinkSpec[S3Settings] = SinkSpec(
    name="s3",
    schemes=("s3",),
    example="s3://BUCKET/PREFIX",
    variables=VARIABLES,
    load=load,
    job_dest=job_dest,
    open=_open,
    secrets=lambda env: tuple(env.get(name) for name in _AWS_SECRETS),
    open_reader=open_s3_reader,
)
