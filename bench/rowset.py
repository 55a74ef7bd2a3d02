"""Which rows ``bench/run.py`` runs and what they need: the plan from the command line, the files nginx
serves, the simulator's jobs, and each row built just before it runs (starting the server it needs, if
any, on the run's ``ExitStack``, once: the rows after it that need it too share it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import claimrows
import peers
import queuescale
import rows
import s3dest
import scalerows
import servers
import smallrows
from common import Simulator
from contenders import Context
from fileserver import LISTED_DIR, SHARED_NAME, ServedFile, write_file
from queuescale import QueueCase

from worker.config import Settings

if TYPE_CHECKING:
    from tests.pgserver import PgServer

ROW_KEYS: Final = (
    "many_small",
    "large_file",
    "startup",
    "queue_scale",
    "submit_status",
    "large_file_s3",
    "many_small_s3",
    "queue_scale_postgres",
    "many_small_postgres",
    "claim_latency_postgres",
)
# Rows that need a server of their own: in the default set only when asked for (PostgreSQL) or when
# the server is installed (SeaweedFS).
S3_ROWS: Final = ("large_file_s3", "many_small_s3")
POSTGRES_ROWS: Final = ("queue_scale_postgres", "many_small_postgres", "claim_latency_postgres")
OPTIONAL_ROWS: Final = (*S3_ROWS, *POSTGRES_ROWS)
_SMALL_ROWS: Final = ("many_small", "many_small_postgres")
_LARGE_ROWS: Final = ("large_file", "large_file_s3")
_QUEUE_ROWS: Final = ("queue_scale", "queue_scale_postgres")
_SMALL_SEED: Final = 0x5A11_0000
_LARGE_SEED: Final = 0x1A26_0000
_SHARED_SEED: Final = 0x5A4E_0000
_S3_SEED: Final = 0x5335_0000
_SHARED_BYTES: Final = 1 << 10  # the queue rows' asset: 1 KiB, so the queue, not the bytes, is measured
S3_FILE_BYTES: Final = 1 << 20  # many_small_s3's files: the issue's "many 1 MiB files"


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
    s3_files: int = 200  # many_small_s3: files of 1 MiB
    claim_queues: tuple[int, int] = (1_000, 1_000_000)  # claim_latency_postgres: the two queues
    claims: int = 2_000  # claim_latency_postgres: claims per run
    left_out: tuple[str, ...] = ()  # why a row that could run is not in the default set


def concurrency_text(concurrency: int | None) -> str:
    return f"{concurrency} (--concurrency)" if concurrency else f"{Settings().concurrency} (default)"


@dataclasses.dataclass(frozen=True, slots=True)
class Files:
    """What nginx serves for the chosen rows."""

    small: list[ServedFile]  # many_small's and many_small_postgres's
    large: ServedFile | None  # the large-file rows'
    shared: ServedFile | None  # the queue rows' one file, served under /same/ID for every job
    listed: list[ServedFile]  # many_small_s3's, in the one directory nginx lists

    @property
    def with_own_job(self) -> list[ServedFile]:
        return [*self.small, *([self.large] if self.large else []), *self.listed]


def write_files(www: Path, plan: Plan) -> Files:
    """The files the chosen rows need; one seed each, so no two are alike."""
    small = []
    if any(row in plan.rows for row in _SMALL_ROWS):
        small = [write_file(www, f"s{i:05d}.bin", _SMALL_SEED + i, plan.file_size) for i in range(plan.files)]
    listed = []
    if "many_small_s3" in plan.rows:
        listed = [
            write_file(www, f"{LISTED_DIR}/m{i:05d}.bin", _S3_SEED + i, S3_FILE_BYTES)
            for i in range(plan.s3_files)
        ]
    large = None
    if any(row in plan.rows for row in _LARGE_ROWS):
        large = write_file(www, "large.bin", _LARGE_SEED, plan.large_size)
    shared = None
    if any(row in plan.rows for row in _QUEUE_ROWS):
        shared = write_file(www, SHARED_NAME, _SHARED_SEED, _SHARED_BYTES)
    return Files(small, large, shared, listed)


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


class Servers:
    """The servers of the chosen rows, each started by the first row that needs it (printing which),
    shared by the rows after it, and stopped with ``stack``."""

    def __init__(self, stack: contextlib.ExitStack, root: Path) -> None:
        self._stack = stack
        self._root = root

    @functools.cached_property
    def postgres(self) -> PgServer:
        server = servers.postgres(self._stack)
        print(f"\nPostgreSQL: {servers.describe_postgres(server)}")
        return server

    @functools.cached_property
    def postgres_store(self) -> queuescale.StoreKind:
        """The worker's store on that server: a fresh database per run."""
        fresh = functools.partial(servers.fresh_database, self.postgres)
        return queuescale.StoreKind("PostgreSQL", "a fresh database per run", fresh)

    @functools.cached_property
    def bucket(self) -> s3dest.Bucket:
        """SeaweedFS as the tests start it, data under the run's temp dir, and its bucket."""
        server = servers.seaweedfs(self._stack, self._root / "seaweedfs")
        bucket = s3dest.Bucket(server)
        self._stack.callback(bucket.close)
        how = "weed mini, as tests/s3server.py starts it"
        print(f"\nS3 server: {self.s3_name} ({how}) at {server.endpoint_url}")
        return bucket

    @functools.cached_property
    def s3_name(self) -> str:
        return f"SeaweedFS {peers.version_number(peers.version(str(peers.find('weed')), 'version'))}"


def row_builders(
    ctx: Context, plan: Plan, files: Files, root: Path, stack: contextlib.ExitStack
) -> list[Callable[[], rows.Row]]:
    """The chosen rows, each built just before it runs (the start-up row warms its commands up, the
    servers a row needs start then, and stop with ``stack``)."""
    conc = concurrency_text(plan.concurrency)
    up = Servers(stack, root)
    builders: dict[str, Callable[[], rows.Row]] = {
        "many_small": lambda: smallrows.sqlite_row(ctx, files.small, plan.small_runs, conc),
        "many_small_postgres": lambda: smallrows.postgres_row(
            ctx,
            files.small,
            plan.small_runs,
            conc,
            up.postgres_store,
            servers.transaction_counter(up.postgres),
        ),
        "many_small_s3": lambda: smallrows.s3_row(
            ctx, up.bucket, files.listed, plan.small_runs, conc, up.s3_name
        ),
        "claim_latency_postgres": lambda: claimrows.claim_latency_row(
            ctx, up.postgres, plan.claim_queues, plan.claims, plan.queue_runs
        ),
        "startup": lambda: rows.startup_row(ctx, root / "startup-store", plan.startup_runs),
        "submit_status": lambda: scalerows.submit_status_row(
            ctx, root / "scale", (plan.scale_jobs // 10, plan.scale_jobs), plan.scale_runs
        ),
    }
    if (large := files.large) is not None:
        builders["large_file"] = lambda: rows.large_file_row(ctx, large, plan.large_runs)
        builders["large_file_s3"] = lambda: scalerows.large_s3_row(
            ctx, up.bucket, large, plan.large_runs, up.s3_name
        )
    if (shared := files.shared) is not None:
        for key, name, store in (
            ("queue_scale", "queue scale", lambda: queuescale.SQLITE),
            ("queue_scale_postgres", "queue scale (PostgreSQL)", lambda: up.postgres_store),
        ):
            builders[key] = functools.partial(_queue_row, ctx, plan, key, name, store, shared)
    return [builders[key] for key in plan.rows]


def _queue_row(
    ctx: Context,
    plan: Plan,
    key: str,
    name: str,
    store: Callable[[], queuescale.StoreKind],
    shared: ServedFile,
) -> rows.Row:
    cases = queue_cases(plan, store())
    conc = concurrency_text(plan.concurrency)
    return scalerows.queue_scale_row(ctx, key, name, cases, shared, plan.queue_runs, conc)
