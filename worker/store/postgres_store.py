"""The shared store: one PostgreSQL database serving every replica of the worker.

Longer than most modules on purpose: one class implements the whole ``Store`` contract (twenty
operations, each a transaction of a few statements with its lease check); split up, an operation's
SQL would sit apart from its fencing. Error classification is in ``postgres_errors``, the schema in
``postgres_schema``, the URL rules in ``postgres``.

How it stays correct with many writers:

- Claims select due rows ``FOR UPDATE SKIP LOCKED`` and lease them in the same statement: two
  replicas claiming at once lock different rows, and neither waits for the other. Under READ
  COMMITTED a row another claim leased just before we locked it is re-checked against the
  ``WHERE`` clause, so it is not taken twice.
- Every write made for a claim carries ``lease_owner = $owner`` in its ``WHERE`` clause, so a
  replica that lost its lease cannot overwrite its successor (``LeaseLost``).
- Submits are ``INSERT ... ON CONFLICT DO NOTHING``: the same key from two replicas at one instant
  yields one row.
- Schema migrations run under a transaction-scoped advisory lock: replicas that start together
  migrate once.

Connection loss is ``StoreUnavailable``, never a crash. A transaction that failed *before* its
COMMIT was sent cannot have taken effect (the server rolls back a transaction whose connection
dies), so it is retried on a fresh connection with backoff for up to ``retry_window_s``; a failure
during COMMIT itself is ambiguous and is reported instead, leaving the decision to the caller,
whose operations are all safe to repeat after the lease logic has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import asyncpg
import structlog

from worker.aio import shielded
from worker.errors import ConfigError, LeaseLost, StoreUnavailable
from worker.models import AssetRecord, AssetRef, Job, JobError, JobKey, JobState, Receipt
from worker.redaction import redact_url
from worker.store import postgres_mirror, postgres_schema
from worker.store.base import (
    Cursor,
    Discovered,
    Phase,
    ProgressReport,
    QueueStats,
    SourceCounts,
    SubmitResult,
    WalkRecord,
    submit_results,
)
from worker.store.postgres_errors import TRANSIENT, describe, is_a_bug
from worker.store.postgres_stats import StatisticsKeeper
from worker.store.rows import (
    asset_from_row,
    error_columns,
    job_from_row,
    opt_float,
    progress_to_text,
    ref_columns,
    without_nul,
)

log = structlog.get_logger("worker.store")

T = TypeVar("T")
# What pool.acquire() hands out: a proxy with the connection's methods.
Conn: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
Sleep = Callable[[float], Awaitable[None]]

CONNECT_TIMEOUT_S = 10.0
# A statement that takes longer than this is treated as a lost connection: better a retry than a
# worker frozen behind a half-open TCP connection.
COMMAND_TIMEOUT_S = 30.0
DEFAULT_RETRY_WINDOW_S = 15.0

_FINAL_STATES = [s.value for s in JobState if s.is_final]
# Positive lists use the (state, due_at) index; NOT (state = ANY(final)) would scan every finished job.
_UNFINISHED_STATES = [s.value for s in JobState if not s.is_final]
# Each phase's states are written out (not a parameter) so that the planner can use the phase's
# partial index (postgres_schema, version 3): rows come in queue order and the scan stops at LIMIT.
_PHASE_WHERE = {
    Phase.POLL: "state IN ('queued', 'polling')",
    Phase.TRANSFER: "state = 'downloading'",
}


def _due(phase: Phase, skip: str) -> str:
    """The keys of the phase's jobs a claim at $1 could take, earliest first, at most $2, none of
    a provider in the array parameter ``skip``. Joined from module constants only."""
    return f"""
        SELECT key FROM asset_worker.jobs
        WHERE {_PHASE_WHERE[phase]} AND due_at <= $1
          AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
          AND provider <> ALL({skip}::text[])
        ORDER BY due_at, submitted_at, key
        LIMIT $2"""  # noqa: S608


def _claim(phase: Phase, lease: str) -> str:
    """The claim of the phase's due rows, locked (rows another claim has locked are skipped);
    ``lease`` is the constant UPDATE applied to them ($3 and $4), $5 the providers to skip."""
    return f"WITH due AS ({_due(phase, '$5')} FOR UPDATE SKIP LOCKED){lease}"


# How many of a phase's jobs a claim could take now, counting at most $2 (an index walk, no sort).
_DUE_COUNT = {phase: f"SELECT count(*) FROM ({_due(phase, '$3')}) AS due" for phase in Phase}  # noqa: S608

# The earliest moment any unfinished job may be claimed: the first unleased one of each phase in
# queue order (an index walk past the few leased rows), or a lease running out. LEAST skips NULLs.
_NEXT_CLAIMABLE = f"""
    SELECT LEAST(
        (SELECT due_at FROM asset_worker.jobs
         WHERE {_PHASE_WHERE[Phase.POLL]} AND lease_expires_at IS NULL AND provider <> ALL($1::text[])
         ORDER BY due_at, submitted_at, key LIMIT 1),
        (SELECT due_at FROM asset_worker.jobs
         WHERE {_PHASE_WHERE[Phase.TRANSFER]} AND lease_expires_at IS NULL AND provider <> ALL($1::text[])
         ORDER BY due_at, submitted_at, key LIMIT 1),
        (SELECT min(GREATEST(due_at, lease_expires_at)) FROM asset_worker.jobs
         WHERE lease_expires_at IS NOT NULL AND state IN ('queued', 'polling', 'downloading')
           AND provider <> ALL($1::text[]))
    ) AS next"""  # noqa: S608


_CLAIM = {
    Phase.POLL: _claim(
        Phase.POLL,
        """
        UPDATE asset_worker.jobs AS j
        SET lease_owner = $3, lease_expires_at = $4, updated_at = $1,
            state = CASE WHEN j.state = 'queued' THEN 'polling' ELSE j.state END,
            polling_since = COALESCE(j.polling_since, $1)
        FROM due WHERE j.key = due.key
        RETURNING j.key""",
    ),
    Phase.TRANSFER: _claim(
        Phase.TRANSFER,
        """
        UPDATE asset_worker.jobs AS j
        SET lease_owner = $3, lease_expires_at = $4, updated_at = $1, attempts = j.attempts + 1,
            progress = NULL
        FROM due WHERE j.key = due.key
        RETURNING j.key""",
    ),
}
# A page of jobs in submission order; the second from a cursor, which bounds the index range.
_LIST_JOBS = """
    SELECT key FROM asset_worker.jobs
    WHERE ($1::text[] IS NULL OR state = ANY($1::text[]))
    ORDER BY submitted_at, key LIMIT $2"""
_LIST_JOBS_AFTER = """
    SELECT key FROM asset_worker.jobs
    WHERE ($1::text[] IS NULL OR state = ANY($1::text[]))
      AND (submitted_at, key) > ($3::float8, $4::text)
    ORDER BY submitted_at, key LIMIT $2"""
_INSERT_MANY = """
    INSERT INTO asset_worker.jobs (key, provider, upstream_id, state, submitted_at, updated_at, due_at, dest)
    SELECT key, provider, upstream_id, 'queued', $4, $4, $4, $5
    FROM unnest($1::text[], $2::text[], $3::text[]) AS given (key, provider, upstream_id)
    ON CONFLICT (key) DO NOTHING
    RETURNING key"""
_REQUEUE = """
    UPDATE asset_worker.jobs SET state = 'queued', submitted_at = $1, updated_at = $1, due_at = $1,
        dest = $2, finished_at = NULL, polling_since = NULL, polls = 0, attempts = 0,
        error_code = NULL, error_message = NULL, lease_owner = NULL, lease_expires_at = NULL,
        provider_state = '{}'
    WHERE key = ANY($3::text[]) AND state = ANY($4::text[])
    RETURNING key"""
_CANCEL = """
    UPDATE asset_worker.jobs SET state = 'canceled', finished_at = $1, updated_at = $1,
        lease_owner = NULL, lease_expires_at = NULL
    WHERE key = $2 AND NOT (state = ANY($3::text[]))"""
_UPSERT_ASSET = """
    INSERT INTO asset_worker.assets (job_key, position, asset_id, url, expected_size, expected_sha256,
                                     content_type, ext, expires_at, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending')
    ON CONFLICT (job_key, asset_id) DO UPDATE SET
        position = excluded.position, url = excluded.url, expected_size = excluded.expected_size,
        expected_sha256 = excluded.expected_sha256, content_type = excluded.content_type,
        ext = excluded.ext, expires_at = excluded.expires_at"""


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """What the pool does to a connection it takes back, after asyncpg's own step (which rolls back
    a transaction left open): nothing. The default also sends ``RESET ALL``, ``UNLISTEN *``,
    ``CLOSE ALL`` and ``pg_advisory_unlock_all()``, a round trip per store operation (a sixth of
    the statements a job costs the server) to undo session state this store never creates: its
    settings are ``SET LOCAL``, its advisory lock is transaction-scoped, it opens no cursor outside
    a transaction and listens to nothing."""


class PostgresStore:
    """The :class:`~worker.store.base.Store` on PostgreSQL; create it with :meth:`open`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        retry_window_s: float = DEFAULT_RETRY_WINDOW_S,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._pool = pool
        self._retry_window_s = retry_window_s
        self._sleep = sleep
        # Transactions that reached COMMIT or ROLLBACK (see Store.transactions).
        self.transactions = 0
        self._statistics = StatisticsKeeper()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 10,
        retry_window_s: float = DEFAULT_RETRY_WINDOW_S,
        sleep: Sleep = asyncio.sleep,
    ) -> PostgresStore:
        """Connect (``pool_size`` connections at most) and bring the schema up to date."""
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                # The worker's own name in pg_stat_activity, for whoever looks at the database.
                server_settings={"application_name": "asset-worker"},
                reset=_keep_session,
            )
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
            raise ConfigError(f"PostgreSQL store {redact_url(url)}: {exc}") from exc
        except asyncpg.InvalidCatalogNameError as exc:
            raise ConfigError(f"PostgreSQL store {redact_url(url)}: {exc}") from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"cannot reach the PostgreSQL store {redact_url(url)}: {exc}") from exc
        store = cls(pool, retry_window_s=retry_window_s, sleep=sleep)
        try:
            await store._migrate()
        except BaseException:
            await shielded(pool.close())
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        # No retries: readiness wants the answer now.
        await self._transaction(lambda conn: conn.fetchval("SELECT 1"), retry=False)

    # -- submission -------------------------------------------------------------------------

    async def submit(
        self, key: JobKey, *, now: float, force: bool = False, dest: str | None = None
    ) -> SubmitResult:
        (result,) = await self.submit_many([key], now=now, force=force, dest=dest)
        return result

    async def submit_many(
        self, keys: Sequence[JobKey], *, now: float, force: bool = False, dest: str | None = None
    ) -> list[SubmitResult]:
        names = [str(key) for key in keys]
        unique = sorted(set(names))
        parts = {str(key): key for key in keys}

        async def body(conn: Conn) -> list[SubmitResult]:
            # RETURNING names exactly the rows this statement inserted, even when another replica
            # submits the same keys at the same instant (ON CONFLICT DO NOTHING lets one win).
            created = {
                str(row["key"])
                for row in await conn.fetch(
                    _INSERT_MANY,
                    unique,
                    [parts[k].provider for k in unique],
                    [parts[k].upstream_id for k in unique],
                    now,
                    dest,
                )
            }
            requeued: set[str] = set()
            if force:
                requeued = {
                    str(row["key"])
                    for row in await conn.fetch(
                        _REQUEUE, now, dest, [k for k in unique if k not in created], _FINAL_STATES
                    )
                }
                await conn.execute(
                    "DELETE FROM asset_worker.assets WHERE job_key = ANY($1::text[])", sorted(requeued)
                )
            jobs = await _load(conn, unique)
            return submit_results(names, jobs, existing=set(unique) - created, requeued=requeued)

        results = await self._transaction(body)
        await self._statistics.inserted(self._pool, len({r.job.key for r in results if r.created}))
        return results

    async def cancel(self, key: JobKey, *, now: float) -> Job | None:
        k = str(key)

        async def body(conn: Conn) -> Job | None:
            await conn.execute(_CANCEL, now, k, _FINAL_STATES)
            jobs = await _load(conn, [k])
            return jobs[0] if jobs else None

        return await self._transaction(body)

    # -- claims and leases ------------------------------------------------------------------

    async def claim(
        self,
        *,
        owner: str,
        phase: Phase,
        now: float,
        lease_s: float,
        limit: int,
        skip_providers: Sequence[str] = (),
    ) -> list[Job]:
        if limit <= 0:
            return []
        skip = list(skip_providers)

        async def body(conn: Conn) -> list[Job]:
            rows = await conn.fetch(_CLAIM[phase], now, limit, owner, now + lease_s, skip)
            jobs = await _load(conn, [str(row["key"]) for row in rows])
            # RETURNING has no order; the contract's is the queue's.
            return sorted(jobs, key=lambda j: (j.due_at, j.submitted_at, str(j.key)))

        return await self._transaction(body)

    async def renew(self, key: JobKey, *, owner: str, now: float, lease_s: float) -> None:
        # The most frequent write (each job's check before publishing, and every heartbeat): one
        # UPDATE, atomic by itself and the same if sent twice, so sent without BEGIN and COMMIT
        # (two round trips fewer) and retried whatever happened to the first.
        await self._transaction(
            lambda conn: _update_leased(conn, key, owner, "lease_expires_at = $3", now + lease_s),
            repeatable_statement=True,
        )

    async def release(self, key: JobKey, *, owner: str, now: float) -> None:
        # LEAST keeps the job's place in the queue; an interrupted transfer gives its attempt back
        # (only crashes, leases that simply expire, count against max_attempts).
        await self._transaction(
            lambda conn: conn.execute(
                """UPDATE asset_worker.jobs SET lease_owner = NULL, lease_expires_at = NULL,
                       due_at = LEAST(due_at, $3), updated_at = $3,
                       attempts = CASE WHEN state = 'downloading' AND attempts > 0
                                       THEN attempts - 1 ELSE attempts END
                   WHERE key = $1 AND lease_owner = $2""",
                str(key),
                owner,
                now,
            )
        )

    # -- job progress -----------------------------------------------------------------------

    async def record_progress(self, reports: Sequence[ProgressReport]) -> None:
        rows = [(progress_to_text(r.progress), str(r.key), r.owner) for r in reports]
        if rows:
            await self._transaction(
                lambda conn: conn.executemany(
                    "UPDATE asset_worker.jobs SET progress = $1 WHERE key = $2 AND lease_owner = $3",
                    rows,
                )
            )

    async def reschedule(
        self,
        key: JobKey,
        *,
        owner: str,
        now: float,
        due_at: float,
        polls: int,
        provider_state: dict[str, Any],
    ) -> None:
        await self._update_leased(
            key,
            owner,
            """state = 'polling', due_at = $3, updated_at = $4, polls = $5, provider_state = $6::jsonb,
               lease_owner = NULL, lease_expires_at = NULL""",
            due_at,
            now,
            polls,
            _json(provider_state),
        )

    async def restart_polling(
        self, key: JobKey, *, owner: str, now: float, provider_state: dict[str, Any]
    ) -> None:
        async def body(conn: Conn) -> None:
            await _update_leased(
                conn,
                key,
                owner,
                """state = 'polling', due_at = $3, updated_at = $3, polling_since = $3,
                   provider_state = $4::jsonb, lease_owner = NULL, lease_expires_at = NULL""",
                now,
                _json(provider_state),
            )
            await conn.execute("DELETE FROM asset_worker.assets WHERE job_key = $1", str(key))

        await self._transaction(body)

    async def mark_ready(
        self,
        key: JobKey,
        *,
        owner: str,
        now: float,
        assets: Sequence[AssetRef],
        provider_state: dict[str, Any],
    ) -> None:
        ids = [ref.asset_id for ref in assets]
        if len(set(ids)) != len(ids):
            raise ValueError(f"job {key}: asset ids must be unique, got {ids!r}")
        k = str(key)

        async def body(conn: Conn) -> None:
            await _update_leased(
                conn,
                key,
                owner,
                """state = 'downloading', due_at = $3, updated_at = $3, provider_state = $4::jsonb,
                   polls = polls + 1, lease_owner = NULL, lease_expires_at = NULL""",
                now,
                _json(provider_state),
            )
            # Stored copies of assets still in the set are proven whole: keep them, re-fetch nothing.
            await conn.execute(
                """DELETE FROM asset_worker.assets WHERE job_key = $1
                   AND (state <> 'stored' OR NOT (asset_id = ANY($2::text[])))""",
                k,
                ids,
            )
            await conn.executemany(
                _UPSERT_ASSET, [(k, position, *ref_columns(ref)) for position, ref in enumerate(assets)]
            )

        await self._transaction(body)

    async def finish(
        self,
        key: JobKey,
        *,
        owner: str,
        now: float,
        state: JobState,
        error: JobError | None = None,
        receipts: Sequence[Receipt] = (),
    ) -> None:
        if not state.is_final:
            raise ValueError(f"finish() needs a final state, not {state.value!r}")

        async def body(conn: Conn) -> None:
            # The lease-checked UPDATE first: it raises LeaseLost for a job taken over (whose new
            # holder may have replaced its asset rows), and holds the job's row until COMMIT, so the
            # receipts after it need no check of their own, nor an updated_at (it set it).
            await _update_leased(
                conn,
                key,
                owner,
                """state = $3, finished_at = $4, updated_at = $4, error_code = $5, error_message = $6,
                   lease_owner = NULL, lease_expires_at = NULL""",
                state.value,
                now,
                *error_columns(error),
            )
            for receipt in receipts:
                await _store_receipt(conn, key, receipt)

        await self._transaction(body)

    async def retry_later(
        self, key: JobKey, *, owner: str, now: float, due_at: float, error: JobError | None = None
    ) -> None:
        # Without a new error the previous one stays: it is still the last thing that went wrong.
        await self._update_leased(
            key,
            owner,
            """due_at = $3, updated_at = $4, error_code = COALESCE($5, error_code),
               error_message = COALESCE($6, error_message), lease_owner = NULL, lease_expires_at = NULL""",
            due_at,
            now,
            *error_columns(error),
        )

    async def postpone(self, key: JobKey, *, owner: str, now: float, due_at: float, error: JobError) -> None:
        # The destination, not the job, is at fault: the attempt the transfer claim counted is
        # given back (as release does), so waiting out a full disk never fails a job.
        await self._update_leased(
            key,
            owner,
            """due_at = $3, updated_at = $4, error_code = $5, error_message = $6,
               attempts = CASE WHEN state = 'downloading' AND attempts > 0
                               THEN attempts - 1 ELSE attempts END,
               lease_owner = NULL, lease_expires_at = NULL""",
            due_at,
            now,
            *error_columns(error),
        )

    # -- assets -----------------------------------------------------------------------------

    async def update_asset(self, key: JobKey, *, owner: str, ref: AssetRef) -> None:
        async def body(conn: Conn) -> None:
            await _check_leased(conn, key, owner)
            status = await conn.execute(
                """UPDATE asset_worker.assets SET url = $1, expected_size = $2, expected_sha256 = $3,
                       content_type = $4, ext = $5, expires_at = $6
                   WHERE job_key = $7 AND asset_id = $8""",
                *ref_columns(ref)[1:],
                str(key),
                ref.asset_id,
            )
            if not _count(status):
                raise KeyError(f"job {key} has no asset {ref.asset_id!r}")

        await self._transaction(body)

    async def record_receipt(self, key: JobKey, *, owner: str, receipt: Receipt) -> None:
        await self._transaction(lambda conn: _record_receipt(conn, key, owner, receipt))

    async def find_stored(self, *, sha256: str, size: int) -> Receipt | None:
        row = await self._transaction(
            lambda conn: conn.fetchrow(
                """SELECT * FROM asset_worker.assets WHERE state = 'stored' AND sha256 = $1 AND size = $2
                   ORDER BY stored_at LIMIT 1""",
                sha256,
                size,
            ),
            read_only=True,
        )
        return None if row is None else asset_from_row(row).receipt

    async def fail_asset(self, key: JobKey, *, owner: str, asset_id: str, error: JobError) -> None:
        async def body(conn: Conn) -> None:
            await _check_leased(conn, key, owner)
            # A stored asset is proven whole; a late failure report must not throw its receipt away.
            status = await conn.execute(
                """UPDATE asset_worker.assets SET state = 'failed', error_code = $1, error_message = $2
                   WHERE job_key = $3 AND asset_id = $4 AND state <> 'stored'""",
                *error_columns(error),
                str(key),
                asset_id,
            )
            if not _count(status):
                await _check_asset_exists(conn, key, asset_id)

        await self._transaction(body)

    # -- reading ----------------------------------------------------------------------------

    # -- mirror mode (postgres_mirror) --------------------------------------------------------

    async def submit_discovered(self, items: Sequence[Discovered], *, source: str, now: float) -> list[bool]:
        if not items:
            return []
        created = await self._transaction(
            lambda conn: postgres_mirror.submit_discovered(conn, items, source, now)
        )
        await self._statistics.inserted(self._pool, sum(created))
        return created

    async def claim_walk(self, source: str, *, owner: str, now: float, lease_s: float) -> WalkRecord | None:
        return await self._transaction(
            lambda conn: postgres_mirror.claim_walk(conn, source, owner, now, lease_s)
        )

    async def save_walk(
        self,
        source: str,
        *,
        owner: str,
        now: float,
        lease_s: float,
        kind: str,
        position: str | None,
        pages: int,
        newest_created_at: float | None,
    ) -> None:
        saved = await self._transaction(
            lambda conn: postgres_mirror.save_walk(
                conn, source, owner, now, lease_s, kind, position, pages, newest_created_at
            )
        )
        if not saved:
            raise LeaseLost(f"the walk of {source} is no longer held by {owner}")

    async def end_walk(
        self,
        source: str,
        *,
        owner: str,
        now: float,
        kind: str,
        completed: bool,
        newest_created_at: float | None,
        error: JobError | None = None,
    ) -> None:
        await self._transaction(
            lambda conn: postgres_mirror.end_walk(
                conn, source, owner, now, kind, completed, newest_created_at, error
            )
        )

    async def walks(self) -> list[WalkRecord]:
        return await self._transaction(postgres_mirror.walks, read_only=True)

    async def source_counts(self) -> dict[str, SourceCounts]:
        return await self._transaction(postgres_mirror.source_counts, read_only=True)

    async def get(self, keys: Sequence[JobKey]) -> list[Job]:
        wanted = [str(k) for k in keys]
        jobs = await self._transaction(lambda conn: _load(conn, wanted), read_only=True)
        found = {str(job.key): job for job in jobs}
        return [found[k] for k in wanted if k in found]

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        limit: int | None = None,
        after: Cursor | None = None,
    ) -> list[Job]:
        wanted = None if states is None else [s.value for s in states]
        # Two statements, not one whose cursor may be NULL ("$3 IS NULL OR ..."): behind an OR the cursor
        # cannot bound the index range (in a generic plan), and every page would read from the first job.
        sql, args = (
            (_LIST_JOBS, [wanted, limit])
            if after is None
            else (_LIST_JOBS_AFTER, [wanted, limit, after.submitted_at, after.key])
        )

        async def body(conn: Conn) -> list[Job]:
            rows = await conn.fetch(sql, *args)
            return await _load(conn, [str(row["key"]) for row in rows])

        return await self._transaction(body, read_only=True)

    async def due_count(
        self, *, phase: Phase, now: float, limit: int, skip_providers: Sequence[str] = ()
    ) -> int:
        skip = list(skip_providers)
        count = await self._transaction(
            lambda conn: conn.fetchval(_DUE_COUNT[phase], now, limit, skip), read_only=True
        )
        return int(count or 0)

    async def unfinished(self, *, skip_providers: Sequence[str] = ()) -> tuple[bool, float | None]:
        skip = list(skip_providers)
        row = _one(await self._transaction(lambda conn: conn.fetchrow(_NEXT_CLAIMABLE, skip), read_only=True))
        # Every unfinished job is either unleased (found in its phase's index) or leased.
        moment = opt_float(row["next"])
        return moment is not None, moment

    async def queue_stats(self, *, now: float) -> QueueStats:
        async def body(conn: Conn) -> QueueStats:
            counts = await conn.fetch("SELECT state, count(*) AS n FROM asset_worker.jobs GROUP BY state")
            backlog = _one(
                await conn.fetchrow(
                    """SELECT count(*) AS n, min(due_at) AS oldest FROM asset_worker.jobs
                   WHERE state = ANY($1::text[]) AND due_at <= $2
                     AND (lease_expires_at IS NULL OR lease_expires_at <= $2)""",
                    _UNFINISHED_STATES,
                    now,
                )
            )
            by_state = dict.fromkeys(JobState, 0)
            for row in counts:
                by_state[JobState(row["state"])] = int(row["n"])
            return QueueStats(
                by_state=by_state,
                due=int(backlog["n"]),
                oldest_due_at=opt_float(backlog["oldest"]),
            )

        return await self._transaction(body, read_only=True)

    # -- plumbing ---------------------------------------------------------------------------

    async def _update_leased(self, key: JobKey, owner: str, assignments: str, *params: Any) -> None:
        await self._transaction(lambda conn: _update_leased(conn, key, owner, assignments, *params))

    async def _transaction(
        self,
        body: Callable[[Conn], Awaitable[T]],
        *,
        retry: bool = True,
        read_only: bool = False,
        repeatable_statement: bool = False,
    ) -> T:
        """Run ``body`` in one transaction on a pooled connection.

        Connection trouble before COMMIT is retried with backoff (see the module docstring);
        past ``retry_window_s``, or during COMMIT, it becomes ``StoreUnavailable``, as does any
        other error about the database's state (a full disk, a revoked privilege, a dropped table,
        a read-only standby after a failover): the worker backs off and carries on. An error about
        the statement itself (a constraint violated, a value the column cannot hold, an SQL
        mistake) is a bug, not an outage, and is raised as the driver reported it, as SQLite's are:
        waiting would repeat it forever and hide it. ``read_only`` reads see one snapshot (a job
        and its assets from one commit). ``repeatable_statement``: ``body`` writes with a single
        statement that does the same if it runs twice; it is sent without BEGIN and COMMIT (it
        commits by itself) and retried like a transaction that failed before COMMIT.

        Nothing here is ``StoreUnusable``: on a shared server a revoked privilege or a dropped table
        is one operator's change that another undoes while every replica waits, and a restarted
        replica would only re-run the migrations (recreating a dropped schema, empty).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._retry_window_s if retry else 0.0)
        delay = 0.1
        while True:
            committing = False
            try:
                async with self._pool.acquire() as conn:
                    if repeatable_statement:
                        try:
                            return await body(conn)
                        finally:
                            self.transactions += 1
                    tx = (
                        conn.transaction(isolation="repeatable_read", readonly=True)
                        if read_only
                        else conn.transaction()
                    )
                    await tx.start()
                    try:
                        result = await body(conn)
                    except BaseException:
                        self.transactions += 1
                        await shielded(_rollback_quietly(tx))
                        raise
                    committing = True
                    self.transactions += 1
                    await tx.commit()
                    return result
            except TRANSIENT as exc:
                reason = f"PostgreSQL store: {describe(exc)}"
                if committing or loop.time() + delay > deadline:
                    raise StoreUnavailable(reason) from exc
                log.warning("store_retrying", error=reason, retry_in_s=round(delay, 2))
            except asyncpg.PostgresError as exc:
                if is_a_bug(exc):
                    raise
                raise StoreUnavailable(f"PostgreSQL store: {describe(exc)}") from exc
            await self._sleep(delay)
            delay = min(delay * 2, 2.0) * (0.5 + random.random() / 2)

    async def _migrate(self) -> None:
        """Bring the schema to the newest version, once, even if several replicas start together.

        A schema already current is only read: a role with no right to create anything (a
        least-privilege worker, a program that only submits) starts as long as someone migrated.
        """
        migrations = postgres_schema.MIGRATIONS  # read at call time, so a test can add one

        async def current(conn: Conn) -> int:
            if await conn.fetchval("SELECT to_regclass('asset_worker.schema_version')") is None:
                return 0
            return int(await conn.fetchval("SELECT max(version) FROM asset_worker.schema_version") or 0)

        async def body(conn: Conn) -> None:
            version = await current(conn)
            if version == len(migrations):
                return
            await conn.execute("SELECT pg_advisory_xact_lock($1)", postgres_schema.MIGRATION_LOCK_ID)
            await conn.execute("CREATE SCHEMA IF NOT EXISTS asset_worker")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS asset_worker.schema_version (version integer NOT NULL)"
            )
            version = await current(conn)  # another replica may have migrated while we waited
            if version > len(migrations):
                raise ConfigError(
                    f"the store has schema version {version}, newer than this asset-worker knows "
                    f"({len(migrations)}); upgrade asset-worker"
                )
            for number, statements in enumerate(migrations[version:], start=version + 1):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO asset_worker.schema_version (version) VALUES ($1)", number)
                log.info("store_migrated", backend="postgresql", version=number)

        try:
            await self._transaction(body)
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, asyncpg.InsufficientPrivilegeError):
                raise ConfigError(
                    "the PostgreSQL role cannot create or migrate the asset_worker schema "
                    f"({exc.__cause__}); grant it CREATE on the database once, or migrate with a "
                    "role that has it"
                ) from exc
            raise


async def _rollback_quietly(tx: asyncpg.transaction.Transaction) -> None:
    # On a dead connection the rollback fails too; the server has rolled back already.
    with contextlib.suppress(*TRANSIENT, asyncpg.InterfaceError):
        await tx.rollback()


def _json(state: dict[str, Any]) -> str:
    """Provider state as jsonb text; jsonb cannot hold U+0000, so NULs become U+FFFD (as in SQLite)."""
    return json.dumps(without_nul(state))


def _one(row: asyncpg.Record | None) -> asyncpg.Record:
    """The row an aggregate query always returns."""
    if row is None:
        raise RuntimeError("an aggregate query returned no row")
    return row


def _count(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3`` or ``DELETE 0``."""
    return int(status.rsplit(" ", 1)[-1])


async def _update_leased(conn: Conn, key: JobKey, owner: str, assignments: str, *params: Any) -> None:
    """``UPDATE asset_worker.jobs SET <assignments>`` on a job leased to ``owner`` ($1 = key, $2 =
    owner; ``assignments`` numbers its own parameters from $3)."""
    # assignments is always a constant of this module; values travel as parameters.
    sql = "UPDATE asset_worker.jobs SET " + assignments + " WHERE key = $1 AND lease_owner = $2"  # noqa: S608
    if _count(await conn.execute(sql, str(key), owner, *params)) != 1:
        raise await _lease_lost(conn, key, owner)


async def _check_leased(conn: Conn, key: JobKey, owner: str) -> None:
    # FOR SHARE: the lease cannot be taken over between this check and the write that follows.
    held = await conn.fetchval(
        "SELECT 1 FROM asset_worker.jobs WHERE key = $1 AND lease_owner = $2 FOR SHARE", str(key), owner
    )
    if held is None:
        raise await _lease_lost(conn, key, owner)


async def _lease_lost(conn: Conn, key: JobKey, owner: str) -> LeaseLost:
    row = await conn.fetchrow("SELECT lease_owner FROM asset_worker.jobs WHERE key = $1", str(key))
    if row is None:
        return LeaseLost(f"job {key} does not exist (writer {owner!r})")
    holder = row["lease_owner"]
    held = "no lease" if holder is None else f"leased to {holder!r}"
    return LeaseLost(f"job {key} is not leased to {owner!r} ({held})")


async def _record_receipt(conn: Conn, key: JobKey, owner: str, receipt: Receipt) -> None:
    """Mark an asset stored (idempotent: a stored one keeps its first receipt), under the lease."""
    await _check_leased(conn, key, owner)
    if await _store_receipt(conn, key, receipt):
        await conn.execute(
            "UPDATE asset_worker.jobs SET updated_at = GREATEST(updated_at, $1) WHERE key = $2",
            receipt.stored_at,
            str(key),
        )


async def _store_receipt(conn: Conn, key: JobKey, receipt: Receipt) -> bool:
    """Write the receipt on the asset's row unless it is stored already; whether it was written.
    Not fenced by itself: its caller checks the lease in the same transaction."""
    k = str(key)
    status = await conn.execute(
        """UPDATE asset_worker.assets SET state = 'stored', uri = $1, size = $2, sha256 = $3,
               upstream_verified = $4, stored_at = $5, etag = $6, version_id = $7, origin = $8,
               error_code = NULL, error_message = NULL
           WHERE job_key = $9 AND asset_id = $10 AND state <> 'stored'""",
        receipt.uri,
        receipt.size,
        receipt.sha256,
        receipt.upstream_verified,
        receipt.stored_at,
        receipt.etag,
        receipt.version_id,
        receipt.origin,
        k,
        receipt.asset_id,
    )
    if _count(status):
        return True
    await _check_asset_exists(conn, key, receipt.asset_id)
    return False


async def _check_asset_exists(conn: Conn, key: JobKey, asset_id: str) -> None:
    found = await conn.fetchval(
        "SELECT 1 FROM asset_worker.assets WHERE job_key = $1 AND asset_id = $2", str(key), asset_id
    )
    if found is None:
        raise KeyError(f"job {key} has no asset {asset_id!r}")


async def _load(conn: Conn, keys: Sequence[str]) -> list[Job]:
    """The jobs named by ``keys`` that exist, in that order, each with its assets by position."""
    job_rows = await conn.fetch("SELECT * FROM asset_worker.jobs WHERE key = ANY($1::text[])", list(keys))
    asset_rows = await conn.fetch(
        """SELECT * FROM asset_worker.assets WHERE job_key = ANY($1::text[])
           ORDER BY job_key, position""",
        list(keys),
    )
    assets: dict[str, list[AssetRecord]] = {}
    for row in asset_rows:
        assets.setdefault(str(row["job_key"]), []).append(asset_from_row(row))
    jobs = {str(row["key"]): job_from_row(row, tuple(assets.get(str(row["key"]), ()))) for row in job_rows}
    return [jobs[k] for k in keys if k in jobs]
