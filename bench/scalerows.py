"""The rows of ``bench/run.py`` about scale: a long queue (SQLite, PostgreSQL), ``submit`` and
``status`` over many jobs, and one large file into S3. The row model and how rows run are in
``rows.py``; the contenders in ``queuescale.py``, ``s3dest.py`` and ``contenders.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import contenders as run_one
import queuescale
import s3dest
from common import human
from contenders import Context, Sample
from fileserver import ServedFile
from queuescale import QueueCase
from rows import Contender, Ratio, Row, Target, at_least, below, job_key, large_row, worker_run

# The targets.
RATIO_TARGET: Final = 0.9  # rate with the long queue / rate with the short one
SUBMIT_TARGET_S: Final = 5.0  # submit --from-file of the long list of keys
# This harness's reading of "memory stays flat": the RSS of status --json over ten times the jobs
# within 10 % (a list held whole would grow with the jobs, by about 2 KiB each).
STATUS_FLAT_RSS_RATIO: Final = 1.10

# A child that parses what ``status --json`` printed, so the jobs never sit in this parent's memory:
# prints how many jobs, how many of them queued, how many distinct keys.
_COUNT_JOBS: Final = (
    "import json, sys\n"
    "jobs = json.load(open(sys.argv[1], encoding='utf-8'))\n"
    "print(len(jobs), sum(job['state'] == 'queued' for job in jobs), len({job['key'] for job in jobs}))"
)


# --- queue scale ---------------------------------------------------------------------------------------


def queue_scale_row(
    ctx: Context,
    key: str,
    name: str,
    cases: tuple[QueueCase, QueueCase],
    shared: ServedFile,
    runs: int,
    concurrency: str,
) -> Row:
    """jobs/s over the first M jobs finished, with a short queue (M jobs) and a long one."""
    short, long = cases
    measured, store = short.measured, short.store
    return Row(
        key=key,
        title=(
            f"{name}: jobs/s over the first {measured:,} jobs finished, {store.name}, "
            f"{human(shared.size)} assets, concurrency {concurrency}"
        ),
        unit="jobs/s",
        value=lambda s: measured / s.seconds,
        runs=runs,
        cpu_per=measured,
        cpu_label="CPU s/job",
        contenders=[
            _queue_contender("short_queue", short, ctx, shared),
            _queue_contender("long_queue", long, ctx, shared),
        ],
        compare=(Ratio("long_queue/short_queue", "long_queue", "short_queue", shown_on="long_queue"),),
        ratio_text=f"rate with {long.queued:,} jobs queued / rate with {short.queued:,} queued: 1 is flat",
        targets=(Target("long_queue/short_queue", f">= {RATIO_TARGET}", at_least(RATIO_TARGET)),),
        footer=lambda result: [
            *_queue_footer(result),
            f"settings of this row: ASSET_WORKER_LOG_FORMAT=json (its job_finished lines are counted), "
            f"ASSET_WORKER_STORE={store.setting}",
        ],
        facts={
            "store": store.name,
            "queued": [short.queued, long.queued],
            "measured_jobs": measured,
            "asset_bytes": shared.size,
            "concurrency": concurrency,
        },
    )


def _queue_contender(key: str, case: QueueCase, ctx: Context, shared: ServedFile) -> Contender:
    label = f"asset-worker run --no-http, {case.queued:,} queued"
    return Contender(key, label, lambda d: queuescale.run_case(ctx, d, case, shared), is_worker=True)


def _queue_footer(result: Mapping[str, Any]) -> list[str]:
    """What the rate leaves out: submit before the run, start-up, how far polling ran ahead."""
    lines = []
    for figure, text, form in (
        ("median_submit_s", "submit --from-file before run (not in jobs/s)", "{:.2f} s"),
        ("median_first_done_s", "first job finished after spawn", "{:.2f} s"),
        ("median_ready", "jobs polled ready when the last one counted finished", "{:,.0f}"),
    ):
        cells = [
            f"{queued:,} queued " + ("-" if summary.get(figure) is None else form.format(summary[figure]))
            for queued, summary in zip(result["queued"], result["contenders"].values(), strict=True)
        ]
        lines.append(f"{text}: {'; '.join(cells)}")
    return lines


# --- submit and status at scale ------------------------------------------------------------------------


def submit_status_row(ctx: Context, scratch: Path, counts: tuple[int, int], runs: int) -> Row:
    """``submit --from-file`` into a fresh store, and ``status --json`` over a full one, at two sizes."""
    small, large = counts
    sizes = (("small", small), ("large", large))
    stores = {count: _filled_store(ctx, scratch / f"status-{count}", count) for count in counts}
    return Row(
        key="submit_status",
        title=f"submit and status at scale: SQLite, {small:,} and {large:,} jobs, no peer",
        unit="s",
        value=lambda s: s.seconds,
        runs=runs,
        contenders=[
            *(_submit(ctx, size, count) for size, count in sizes),
            *(_status(ctx, size, count, stores[count]) for size, count in sizes),
        ],
        compare=(
            Ratio(
                "status_large/status_small",
                "status_large",
                "status_small",
                shown_on="status_large",
                tag="RSS ",
                figure="median_peak_rss_mib",
            ),
        ),
        ratio_text=f"peak RSS of status --json over {large:,} jobs / over {small:,}: 1 is flat",
        targets=(
            Target("submit_large", f"< {SUBMIT_TARGET_S:.0f} s", below(SUBMIT_TARGET_S)),
            Target(
                "status_large/status_small", f"< {STATUS_FLAT_RSS_RATIO:.2f}", below(STATUS_FLAT_RSS_RATIO)
            ),
        ),
        facts={"jobs": [small, large]},
    )


def _filled_store(ctx: Context, workdir: Path, count: int) -> dict[str, str]:
    """A store holding ``count`` queued jobs, made once, untimed; the environment that opens it."""
    workdir.mkdir(parents=True)
    env = ctx.worker_env(workdir)
    with (workdir / "submit.log").open("wb") as log:
        _, error = run_one.submit_file(ctx, env, queuescale.job_keys(count), workdir, log)
    if error is not None:
        print(f"!! submit_status: filling a store of {count:,} jobs: {error}", file=sys.stderr)
    return env


def _submit(ctx: Context, size: str, count: int) -> Contender:
    """``submit --from-file`` of ``count`` keys into a fresh store."""

    def go(workdir: Path) -> Sample:
        keys = queuescale.job_keys(count)
        with (workdir / "submit.log").open("wb") as log:
            run, error = run_one.submit_file(ctx, ctx.worker_env(workdir), keys, workdir, log)
        return run_one.sample_of(run, error)

    return Contender(f"submit_{size}", f"asset-worker submit --from-file, {count:,} keys", go, True)


def _status(ctx: Context, size: str, count: int, env: dict[str, str]) -> Contender:
    """``status --json`` over the store ``env`` names, which holds ``count`` jobs; its output to a file."""

    def go(workdir: Path) -> Sample:
        printed, log_path = workdir / "status.json", workdir / "status.log"
        with log_path.open("wb") as log, printed.open("wb") as out:
            argv = [ctx.programs["asset-worker"], "status", "--json"]
            run = ctx.measure(argv, ctx.timeout_s(count, 0), log, env, stdout=out)
        error = run_one.exit_problem(run.code, log_path) or _count_problem(ctx, printed, count)
        return run_one.sample_of(run, error)

    return Contender(f"status_{size}", f"asset-worker status --json, {count:,} jobs", go, True)


def _count_problem(ctx: Context, printed: Path, count: int) -> str | None:
    """Whether ``status --json`` printed valid JSON with every job, each once, each queued."""
    out, code, _ = ctx.children.output([sys.executable, "-c", _COUNT_JOBS, str(printed)], 120.0)
    if code != 0:
        return f"status --json printed no valid JSON array of jobs ({run_one.gist(out) or 'see above'})"
    found = out.split()
    if found == [str(count)] * 3:
        return None
    return f"status --json: (jobs, queued, distinct keys) {found}, expected {count} of each"


# --- one large file into S3 ----------------------------------------------------------------------------


def large_s3_row(ctx: Context, bucket: s3dest.Bucket, file: ServedFile, runs: int, server_name: str) -> Row:
    jobs = {job_key(file): file}
    return large_row(
        "large_file_s3",
        file,
        runs,
        [
            worker_run(lambda d: s3dest.asset_worker(ctx, d, bucket, jobs)),
            Contender(
                "rclone", "rclone copyurl URL :s3:BUCKET/KEY", lambda d: s3dest.rclone(ctx, d, bucket, file)
            ),
        ],
        where=f" into S3 ({server_name})",
        footer=lambda _: s3dest.described_settings(bucket.server),
        facts={"s3_server": server_name},
        targets=(Target("worker/rclone", ">= 1", at_least(1.0)),),  # the issue's
    )
