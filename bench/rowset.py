"""Which rows ``bench/run.py`` runs and what they need: the plan from the command line, the files nginx
serves, the simulator's jobs, and each row built just before it runs (starting the server it needs, if
any, on the run's ``ExitStack``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Final

import peers
import queuescale
import rows
import s3dest
import scalerows
import servers
from common import Simulator
from contenders import Context
from fileserver import SHARED_NAME, ServedFile, write_file
from queuescale import QueueCase

from worker.config import Settings

ROW_KEYS: Final = (
    "many_small",
    "large_file",
    "startup",
    "queue_scale",
    "submit_status",
    "large_file_s3",
    "queue_scale_postgres",
)
# Rows that need a server of their own: in the default set only when asked for (PostgreSQL) or when
# the server is installed (SeaweedFS).
OPTIONAL_ROWS: Final = ("large_file_s3", "queue_scale_postgres")
_LARGE_ROWS: Final = ("large_file", "large_file_s3")
_QUEUE_ROWS: Final = ("queue_scale", "queue_scale_postgres")
_SMALL_SEED: Final = 0x5A11_0000
_LARGE_SEED: Final = 0x1A26_0000
_SHARED_SEED: Final = 0x5A4E_0000
_SHARED_BYTES: Final = 1 << 10  # the queue rows' asset: 1 KiB, so the queue, not the bytes, is measured


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    rows: tuple[str, ...]
    files: int
    file_size: int
    large_size: int
    small_runs: int
    large_runs: int
    startup_runs: int
    concurrency: int | None
    queue_jobs: int  # the short queue, and how many finished jobs the rate is taken over
    queue_long: int  # the long queue
    queue_runs: int
    scale_jobs: int  # submit and status: this many jobs, and a tenth of it
    scale_runs: int
    left_out: tuple[str, ...] = ()  # why a row that could run is not in the default set


def concurrency_text(concurrency: int | None) -> str:
    return f"{concurrency} (--concurrency)" if concurrency else f"{Settings().concurrency} (default)"


@dataclasses.dataclass(frozen=True, slots=True)
class Files:
    """What nginx serves for the chosen rows."""

    small: list[ServedFile]
    large: ServedFile | None  # the large-file rows'
    shared: ServedFile | None  # the queue rows' one file, served under /same/ID for every job

    @property
    def with_own_job(self) -> list[ServedFile]:
        return [*self.small, *([self.large] if self.large else [])]


def write_files(www: Path, plan: Plan) -> Files:
    """The files the chosen rows need; one seed each, so no two are alike."""
    small = []
    if "many_small" in plan.rows:
        small = [write_file(www, f"s{i:05d}.bin", _SMALL_SEED + i, plan.file_size) for i in range(plan.files)]
    large = None
    if any(row in plan.rows for row in _LARGE_ROWS):
        large = write_file(www, "large.bin", _LARGE_SEED, plan.large_size)
    shared = None
    if any(row in plan.rows for row in _QUEUE_ROWS):
        shared = write_file(www, SHARED_NAME, _SHARED_SEED, _SHARED_BYTES)
    return Files(small, large, shared)


def create_jobs(sim: Simulator, base_url: str, files: list[ServedFile]) -> None:
    """One finished cloudlayer job per file, its asset at nginx's URL (one request each: about 1 ms)."""
    for file in files:
        sim.external_job(rows.job_key(file).removeprefix("cloudlayer:"), base_url + file.path, file.size)


def queue_cases(plan: Plan, store: queuescale.StoreKind) -> tuple[QueueCase, QueueCase]:
    """The short queue and the long one, the rate taken over as many jobs as the short one holds."""
    return (
        QueueCase(plan.queue_jobs, plan.queue_jobs, store),
        QueueCase(plan.queue_long, plan.queue_jobs, store),
    )


def postgres_queue_row(ctx: Context, plan: Plan, shared: ServedFile, stack: contextlib.ExitStack) -> rows.Row:
    """The queue row on PostgreSQL: the tests' server, started now, a fresh database per run."""
    server = servers.postgres(stack)
    print(f"\nPostgreSQL: {servers.describe_postgres(server)}")
    fresh = functools.partial(servers.fresh_database, server)
    store = queuescale.StoreKind("PostgreSQL", "a fresh database per run", fresh)
    conc = concurrency_text(plan.concurrency)
    return scalerows.queue_scale_row(
        ctx,
        "queue_scale_postgres",
        "queue scale (PostgreSQL)",
        queue_cases(plan, store),
        shared,
        plan.queue_runs,
        conc,
    )


def s3_row(ctx: Context, plan: Plan, large: ServedFile, root: Path, stack: contextlib.ExitStack) -> rows.Row:
    """The large file into S3: SeaweedFS as the tests start it, started now, data under ``root``."""
    server = servers.seaweedfs(stack, root / "seaweedfs")
    bucket = s3dest.Bucket(server)
    stack.callback(bucket.close)
    name = f"SeaweedFS {peers.version_number(peers.version(str(peers.find('weed')), 'version'))}"
    print(f"\nS3 server: {name} (weed mini, as tests/s3server.py starts it) at {server.endpoint_url}")
    return scalerows.large_s3_row(ctx, bucket, large, plan.large_runs, name)


def row_builders(
    ctx: Context, plan: Plan, files: Files, root: Path, stack: contextlib.ExitStack
) -> list[Callable[[], rows.Row]]:
    """The chosen rows, each built just before it runs (the start-up row warms its commands up, the
    servers a row needs start then, and stop with ``stack``)."""
    conc = concurrency_text(plan.concurrency)
    builders: dict[str, Callable[[], rows.Row]] = {
        "many_small": lambda: rows.many_small_row(ctx, files.small, plan.small_runs, conc),
        "startup": lambda: rows.startup_row(ctx, root / "startup-store", plan.startup_runs),
        "submit_status": lambda: scalerows.submit_status_row(
            ctx, root / "scale", (plan.scale_jobs // 10, plan.scale_jobs), plan.scale_runs
        ),
    }
    if (large := files.large) is not None:
        builders["large_file"] = lambda: rows.large_file_row(ctx, large, plan.large_runs)
        builders["large_file_s3"] = lambda: s3_row(ctx, plan, large, root, stack)
    if (shared := files.shared) is not None:
        cases = queue_cases(plan, queuescale.SQLITE)
        builders["queue_scale"] = lambda: scalerows.queue_scale_row(
            ctx, "queue_scale", "queue scale", cases, shared, plan.queue_runs, conc
        )
        builders["queue_scale_postgres"] = lambda: postgres_queue_row(ctx, plan, shared, stack)
    return [builders[key] for key in plan.rows]
