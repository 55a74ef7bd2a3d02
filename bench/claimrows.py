"""The claim-latency row of ``bench/run.py`` (``claim_latency_postgres``, with ``--postgres``): how long
one claim takes on PostgreSQL with a short queue and with a very long one.

Each queue is a database of its own, filled once before the row and untimed, the way another program
loads jobs in bulk (docs/operations.md): ``INSERT ... SELECT FROM generate_series`` of queued jobs,
then ``ANALYZE``. A run is a child process, ``bench/claimrun.py``, which makes N claims of up to 8
jobs with the worker's own store code and releases each claim's jobs (untimed), so the queue keeps
its length; it prints the claims' p50, p99 and slowest. The row shows the p99 in ms; its ratio is the
p99 with the long queue over the p99 with the short one, which the harness calls flat below 1.5 (its
own reading of the issue's "flat", not a figure from the issue).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import contenders as run_one
from common import BenchError
from contenders import Context, Sample
from rows import Contender, Ratio, Row, Target, below

if TYPE_CHECKING:
    from tests.pgserver import PgServer

FLAT_RATIO: Final = 1.5  # this harness's reading of "flat" for a p99 of a few milliseconds
_CHILD: Final = Path(__file__).with_name("claimrun.py")
_FILL: Final = """
    INSERT INTO asset_worker.jobs (key, provider, upstream_id, submitted_at, updated_at, due_at)
    SELECT 'cloudlayer:c' || i, 'cloudlayer', 'c' || i, $1 + i * 1e-6, $1, $1 + i * 1e-6
    FROM generate_series(1, $2) AS i"""


def claim_latency_row(ctx: Context, server: PgServer, queues: tuple[int, int], claims: int, runs: int) -> Row:
    """p99 of one claim with ``queues[0]`` and with ``queues[1]`` jobs queued, ``claims`` per run."""
    short, long = queues
    urls = {queued: _filled_database(server, queued) for queued in queues}
    return Row(
        key="claim_latency_postgres",
        title=(
            f"claim latency (PostgreSQL): p99 of {claims:,} claims of up to 8 jobs, "
            f"{short:,} and {long:,} jobs queued"
        ),
        unit="ms",
        value=lambda s: s.seconds * 1000,
        runs=runs,
        contenders=[
            _claimer(ctx, "short_queue", short, urls[short], claims),
            _claimer(ctx, "long_queue", long, urls[long], claims),
        ],
        compare=(Ratio("long_queue/short_queue", "long_queue", "short_queue", shown_on="long_queue"),),
        ratio_text=f"p99 with {long:,} jobs queued / p99 with {short:,} queued: 1 is flat",
        targets=(Target("long_queue/short_queue", f"< {FLAT_RATIO}", below(FLAT_RATIO)),),
        footer=lambda _result: [
            "CPU and RSS are the claiming child's (Python start-up included); the server's are not in them",
            "each queue a database of its own, filled once with SQL and analyzed before the row",
        ],
        facts={"queued": [short, long], "claims": claims, "claim_limit": 8},
    )


def _claimer(ctx: Context, key: str, queued: int, url: str, claims: int) -> Contender:
    label = f"{claims:,} claims, {queued:,} queued (p99)"

    def go(workdir: Path) -> Sample:
        with (workdir / "claims.log").open("wb") as log:
            argv = [sys.executable, str(_CHILD), url, str(claims)]
            run = ctx.measure(argv, 120.0 + claims / 10, log, run_one.local_env())
        error = run_one.exit_problem(run.code, workdir / "claims.log")
        if error is not None:
            return run_one.sample_of(run, error)
        try:
            summary: dict[str, Any] = json.loads(run.out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return run_one.sample_of(run, f"claimrun.py printed no summary: {run_one.gist(run.out)!r}")
        return Sample(seconds=float(summary["p99_s"]), cpu_s=run.cpu_s, peak_rss_mib=run.peak_rss_mib)

    return Contender(key, label, go, is_worker=True)


def _filled_database(server: PgServer, queued: int) -> str:
    """A database of the server with the worker's schema and ``queued`` queued jobs, analyzed."""
    url = server.create_database()
    try:
        asyncio.run(_fill(url, queued))
    except Exception as exc:  # asyncpg's errors and the network's: the server, not a contender, failed
        raise BenchError(f"PostgreSQL: could not fill a queue of {queued:,} jobs: {exc}") from exc
    return url


async def _fill(url: str, queued: int) -> None:
    import asyncpg

    from worker.log import configure
    from worker.store import open_store

    configure(level="warning", stream=sys.stderr)  # not a line per migration in the report
    await (await open_store(url, pool_size=1)).close()  # the schema, migrated
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(_FILL, time.time() - 3600, queued, timeout=600)
        await conn.execute("ANALYZE asset_worker.jobs", timeout=600)
    finally:
        await conn.close()
