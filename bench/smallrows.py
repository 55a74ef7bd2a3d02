"""The rows of ``bench/run.py`` about many small assets, one job each: files/s against a peer that
fetches the same files, CPU seconds per file, and the store transactions per job of the worker's
``run``.

- ``many_small``: SQLite and local disk (the worker's defaults) against ``aria2c -i LIST -j 16``;
- ``many_small_postgres``: the same on PostgreSQL, a fresh database per run;
- ``many_small_s3``: files of 1 MiB into S3 against ``rclone copy --http-url DIR :http: :s3:...``.

The row model and how rows run are in ``rows.py``; the contenders in ``contenders.py`` and ``s3dest.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import contenders as run_one
import s3dest
from common import human
from contenders import Context, Go, Sample, TxCount
from fileserver import ServedFile, listed_path
from queuescale import SQLITE, StoreKind
from rows import Contender, Row, Target, at_least, job_key, worker_run

# The targets: asset-worker's files/s over the peer's.
SQLITE_TARGET: Final = 1.5
POSTGRES_TARGET: Final = 1.0
S3_TARGET: Final = 2.0

_FROM_LOG: Final = "from store_transactions in the worker's runner_stopped log line"
_FROM_SERVER: Final = (
    "from pg_stat_database: xact_commit + xact_rollback of the run's database before and after run"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Kind:
    """What sets one many-small row apart from the others."""

    key: str
    where: str  # ends the title's "many small assets"
    target: float  # for asset-worker's median over the peer's
    tx_source: str  # where the store transactions per job come from, as printed
    notes: tuple[str, ...] = ()  # more lines under the table
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def many_small_row(
    kind: Kind, files: list[ServedFile], runs: int, concurrency: str, worker: Go, peer: Contender
) -> Row:
    """asset-worker (``worker``) and ``peer`` fetching ``files``, one job each, in files/s."""
    size = human(files[0].size) if files else "0 B"
    return Row(
        key=kind.key,
        title=(
            f"many small assets{kind.where}: {len(files)} files of {size}, one job each, "
            f"concurrency {concurrency}"
        ),
        unit="files/s",
        value=lambda s: len(files) / s.seconds,
        runs=runs,
        cpu_per=len(files),
        counts_store_tx=True,
        contenders=[worker_run(worker), peer],
        targets=(Target(f"worker/{peer.id}", f">= {kind.target:g}", at_least(kind.target)),),
        footer=lambda result: [_tx_line(result, kind.tx_source), *kind.notes],
        facts={
            "files": len(files),
            "file_bytes": files[0].size if files else 0,
            "concurrency": concurrency,
            **kind.facts,
        },
    )


def _tx_line(result: Mapping[str, Any], source: str) -> str:
    per_job = result["contenders"]["worker"].get("median_store_tx_per_job")
    shown = "n/a" if per_job is None else f"{per_job:.2f}"
    return f"store transactions per job (asset-worker run, median): {shown}, {source}"


def _jobs(files: list[ServedFile]) -> dict[str, ServedFile]:
    return {job_key(f): f for f in files}


def _on_store(ctx: Context, files: list[ServedFile], store: StoreKind, count_tx: TxCount) -> Go:
    """asset-worker on a fresh store of ``store``'s kind each run, with local disk as destination."""
    jobs = _jobs(files)

    def go(workdir: Path) -> Sample:
        with store.fresh() as store_env:
            env = ctx.worker_env(workdir) | store_env
            return run_one.asset_worker(ctx, workdir, jobs, env=env, count_tx=count_tx)

    return go


def _aria2c(ctx: Context, files: list[ServedFile]) -> Contender:
    label = "aria2c -i LIST -j 16 (sha-256 each)"
    return Contender("aria2c", label, lambda d: run_one.aria2c_list(ctx, d, files))


def sqlite_row(ctx: Context, files: list[ServedFile], runs: int, concurrency: str) -> Row:
    """``many_small``: the worker's defaults, SQLite and local disk."""
    kind = Kind("many_small", "", SQLITE_TARGET, _FROM_LOG)
    worker = _on_store(ctx, files, SQLITE, run_one.tx_from_log)
    return many_small_row(kind, files, runs, concurrency, worker, _aria2c(ctx, files))


def postgres_row(
    ctx: Context, files: list[ServedFile], runs: int, concurrency: str, store: StoreKind, count_tx: TxCount
) -> Row:
    """``many_small_postgres``: the same files and peer, the worker's store a fresh PostgreSQL database."""
    kind = Kind(
        "many_small_postgres",
        f" ({store.name})",
        POSTGRES_TARGET,
        _FROM_SERVER,
        notes=(f"settings of this row: ASSET_WORKER_STORE={store.setting}",),
        facts={"store": store.name},
    )
    worker = _on_store(ctx, files, store, count_tx)
    return many_small_row(kind, files, runs, concurrency, worker, _aria2c(ctx, files))


def s3_row(
    ctx: Context, bucket: s3dest.Bucket, files: list[ServedFile], runs: int, concurrency: str, server: str
) -> Row:
    """``many_small_s3``: the files into S3, the worker on SQLite; rclone copies nginx's listing."""
    kind = Kind(
        "many_small_s3",
        f" into S3 ({server})",
        S3_TARGET,
        _FROM_LOG,
        notes=tuple(s3dest.described_settings(bucket.server)),
        facts={"s3_server": server},
    )
    jobs = _jobs(files)
    rclone = Contender(
        "rclone",
        f"rclone copy --http-url DIR :http: :s3:BUCKET/PREFIX --transfers {s3dest.RCLONE_TRANSFERS}",
        lambda d: s3dest.rclone_dir(ctx, d, bucket, files, listed_path()),
    )

    def worker(workdir: Path) -> Sample:
        return s3dest.asset_worker(ctx, workdir, bucket, jobs, run_one.tx_from_log)

    return many_small_row(kind, files, runs, concurrency, worker, rclone)
