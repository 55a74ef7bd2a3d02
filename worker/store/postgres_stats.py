"""The planner's statistics of the jobs table, refreshed after bulk inserts (PostgreSQL).

The claims and the runner's "when is the next job due?" read a few rows in queue order from a
partial index and stop (``postgres_schema`` version 3). The planner picks that plan only when it
knows the table is large. A table just filled by a bulk submit has no statistics until autovacuum's
next round (its naptime is a minute by default), and meanwhile the planner, taking the table for a
few rows, reads every queued row and sorts them instead. Measured with 100,000 jobs submitted and
then run: 24 ms per "next due" read and 20 ms per claim before ``ANALYZE``, 0.4 ms after, and the
worker at about half its jobs/s until then.

So the store runs ``ANALYZE`` itself whenever the rows it inserted since it last did may have
doubled the table (at least ``ANALYZE_MIN_ROWS``): a few times over a submit of any size (1,000,
2,000, 4,000, ... rows), each reading a sample of at most 30,000 rows. Rows inserted by other
programs with SQL are left to autovacuum (or an ``ANALYZE`` after the load, see
docs/operations.md).
"""

from __future__ import annotations

import asyncio
from typing import Final

import asyncpg
import structlog

from worker.store.postgres_errors import describe

log = structlog.get_logger("worker.store")

ANALYZE_MIN_ROWS: Final = 1000
# The planner's row estimate: -1 for a table never analyzed (PostgreSQL 14 and later).
_ESTIMATE: Final = "SELECT reltuples FROM pg_class WHERE oid = 'asset_worker.jobs'::regclass"
# An ANALYZE waits for autovacuum's own (the same lock); that one is about to do the job anyway.
_LOCK_TIMEOUT: Final = "SET LOCAL lock_timeout = '2s'"


class StatisticsKeeper:
    """Counts the jobs this process inserted and refreshes the statistics when they may be stale."""

    def __init__(self) -> None:
        self._inserted = 0
        # The planner's estimate of the table when last read: no need to read it again before this
        # process has inserted as many rows.
        self._estimate = 0.0
        self._lock = asyncio.Lock()

    @property
    def inserted_since_analyze(self) -> int:
        return self._inserted

    async def inserted(self, pool: asyncpg.Pool, count: int) -> None:
        """Note ``count`` new rows (committed); ``ANALYZE`` the table if they may have doubled it.
        Best effort: a failure is logged and the next insert tries again."""
        self._inserted += count
        if count == 0 or not self._may_be_stale():
            return
        async with self._lock:
            if not self._may_be_stale():
                return  # another insert analyzed meanwhile
            try:
                async with pool.acquire() as conn:
                    estimate = await conn.fetchval(_ESTIMATE)
                    if estimate is not None and self._inserted < estimate:
                        self._estimate = float(estimate)
                        return
                    counted = self._inserted
                    async with conn.transaction():
                        await conn.execute(_LOCK_TIMEOUT)
                        await conn.execute("ANALYZE asset_worker.jobs")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.info("store_statistics_not_refreshed", error=describe(exc))
                return
            self._inserted -= counted
            self._estimate = 0.0

    def _may_be_stale(self) -> bool:
        """Enough rows inserted to be worth a look: at least the minimum, and at least the
        estimate last read (below it, the table cannot have doubled)."""
        return self._inserted >= max(ANALYZE_MIN_ROWS, self._estimate)
