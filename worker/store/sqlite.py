"""The embedded store: one SQLite file, safe to share between the CLI and a running worker.

Longer than most modules on purpose: one class implements the whole ``Store`` contract (twenty
operations, each a transaction of a few statements with its lease check); split up, an operation's
SQL would sit apart from its fencing. Error classification is in ``sqlite_errors``, the schema in
``sqlite_schema``.

Why these settings: WAL lets readers go on while one writer commits; ``busy_timeout`` makes a
second process wait for the write lock instead of failing at once; and every read-then-write runs
inside ``BEGIN IMMEDIATE``, which takes the write lock *before* the read, so two processes can never
both see one job as due and both claim it. Within one process a single connection serves every
task, so an ``asyncio.Lock`` keeps their transactions from interleaving on it.

Failures are told apart by SQLite's result code, never by message text (``sqlite_errors``): a
lock held too long or a full disk may pass (``StoreUnavailable``, the caller waits and tries again);
a damaged, foreign, read-only or unopenable file, or an I/O error, will not (``StoreUnusable``: the
command stops with one line saying which file and what to do).

The file is created readable by its owner only: jobs carry vendor URLs (pre-signed, until they
expire) and provider state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosqlite

from worker.aio import shielded
from worker.errors import ConfigError, LeaseLost
from worker.models import AssetRecord, AssetRef, Job, JobError, JobKey, JobState, Receipt
from worker.redaction import redact_url
from worker.store import sqlite_schema
from worker.store.base import Cursor, Phase, QueueStats, Store, StoreSpec, SubmitResult, submit_results
from worker.store.rows import (
    asset_from_row,
    error_columns,
    job_from_row,
    opt_float,
    ref_columns,
    without_nul,
)
from worker.store.sqlite_errors import open_error, store_error

BUSY_TIMEOUT_S = 10.0

# Lists travel as one JSON parameter read through json_each(): no SQL is ever built from strings
# and no list is too long for SQLite's parameter limit.
_FINAL_STATES = json.dumps([s.value for s in JobState if s.is_final])

# Each phase's states are written out (not a parameter) so that the planner can use the phase's
# partial index (sqlite_schema, version 4): rows come in queue order and the scan stops at LIMIT.
# The queries are joined from these constants only (hence the noqa: no outside text reaches them).
_PHASE_WHERE = {
    Phase.POLL: "state IN ('queued', 'polling')",
    Phase.TRANSFER: "state = 'downloading'",
}
_SELECT_DUE = {
    phase: f"""
    SELECT key FROM jobs INDEXED BY {index}
    WHERE {where} AND due_at <= ? AND (lease_expires_at IS NULL OR lease_expires_at <= ?)
    ORDER BY due_at, submitted_at, key
    LIMIT ?"""  # noqa: S608
    for phase, where, index in (
        (Phase.POLL, _PHASE_WHERE[Phase.POLL], "jobs_poll_due"),
        (Phase.TRANSFER, _PHASE_WHERE[Phase.TRANSFER], "jobs_transfer_due"),
    )
}
# The earliest moment a job of the phase may be claimed: the first unleased one in queue order
# (a walk of the phase's index that passes only the few leased rows), or a lease running out.
_NEXT_UNLEASED = {
    phase: f"""
    SELECT due_at FROM jobs INDEXED BY {index}
    WHERE {where} AND lease_expires_at IS NULL
    ORDER BY due_at, submitted_at, key LIMIT 1"""  # noqa: S608
    for phase, where, index in (
        (Phase.POLL, _PHASE_WHERE[Phase.POLL], "jobs_poll_due"),
        (Phase.TRANSFER, _PHASE_WHERE[Phase.TRANSFER], "jobs_transfer_due"),
    )
}
_NEXT_LEASE_END = """
    SELECT MIN(MAX(due_at, lease_expires_at)) AS next FROM jobs INDEXED BY jobs_leased
    WHERE lease_expires_at IS NOT NULL AND state IN ('queued', 'polling', 'downloading')"""
_CLAIM = {
    Phase.POLL: """
        UPDATE jobs SET lease_owner = ?, lease_expires_at = ?, updated_at = ?,
            state = CASE WHEN state = 'queued' THEN 'polling' ELSE state END,
            polling_since = COALESCE(polling_since, ?)
        WHERE key IN (SELECT value FROM json_each(?))""",
    Phase.TRANSFER: """
        UPDATE jobs SET lease_owner = ?, lease_expires_at = ?, updated_at = ?,
            attempts = attempts + 1
        WHERE key IN (SELECT value FROM json_each(?))""",
}
# ON CONFLICT DO NOTHING makes concurrent submits of one key race safely: one insert wins.
_INSERT = """
    INSERT INTO jobs (key, provider, upstream_id, state, submitted_at, updated_at, due_at, dest)
    VALUES (?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"""
_REQUEUE = """
    UPDATE jobs SET state = 'queued', submitted_at = ?, updated_at = ?, due_at = ?, dest = ?,
        finished_at = NULL, polling_since = NULL, polls = 0, attempts = 0,
        error_code = NULL, error_message = NULL, lease_owner = NULL, lease_expires_at = NULL,
        provider_state = '{}'
    WHERE key = ? AND state IN (SELECT value FROM json_each(?))"""
_CANCEL = """
    UPDATE jobs SET state = 'canceled', finished_at = ?, updated_at = ?,
        lease_owner = NULL, lease_expires_at = NULL
    WHERE key = ? AND state NOT IN (SELECT value FROM json_each(?))"""
_UPSERT_ASSET = """
    INSERT INTO assets (job_key, position, asset_id, url, expected_size, expected_sha256,
                        content_type, ext, expires_at, state)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')
    ON CONFLICT (job_key, asset_id) DO UPDATE SET
        position = excluded.position, url = excluded.url, expected_size = excluded.expected_size,
        expected_sha256 = excluded.expected_sha256, content_type = excluded.content_type,
        ext = excluded.ext, expires_at = excluded.expires_at"""


class SqliteStore:
    """The :class:`~worker.store.base.Store` on one SQLite file; create it with :meth:`open`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open (creating it and its directories if needed) and migrate the database at ``path``.

        ``StoreUnusable`` when the file cannot serve as a store whatever we wait for (damaged, not
        a database, read-only, not creatable), ``StoreUnavailable`` when it may pass (locked).
        """
        try:
            await asyncio.to_thread(_create_private, path)
            # isolation_level=None: the sqlite3 module opens no transactions behind our back, so
            # the BEGIN IMMEDIATE in _transaction is the only one.
            db = await aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise open_error(exc, path) from exc
        try:
            db.row_factory = sqlite3.Row
            await _configure(db, path)
            store = cls(db, path)
            await store._migrate()
        except sqlite3.Error as exc:
            await shielded(db.close())
            raise open_error(exc, path) from exc
        except BaseException:
            await shielded(db.close())
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

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
        async with self._transaction() as db:
            # The write lock is held from BEGIN IMMEDIATE on: what exists now is what exists when
            # the inserts run, so "created" is exact without a statement (and a thread hop) per key.
            existing = {
                str(row["key"]): str(row["state"])
                for row in await db.execute_fetchall(
                    "SELECT key, state FROM jobs WHERE key IN (SELECT value FROM json_each(?))",
                    (json.dumps(names),),
                )
            }
            await db.executemany(
                _INSERT, [(str(k), k.provider, k.upstream_id, now, now, now, dest) for k in keys]
            )
            requeued = sorted(k for k, state in existing.items() if force and JobState(state).is_final)
            if requeued:
                await db.executemany(_REQUEUE, [(now, now, now, dest, k, _FINAL_STATES) for k in requeued])
                await _run(
                    db,
                    "DELETE FROM assets WHERE job_key IN (SELECT value FROM json_each(?))",
                    (json.dumps(requeued),),
                )
            jobs = await _load(db, sorted(set(names)))
        return submit_results(names, jobs, existing=set(existing), requeued=set(requeued))

    async def cancel(self, key: JobKey, *, now: float) -> Job | None:
        k = str(key)
        async with self._transaction() as db:
            await _run(db, _CANCEL, (now, now, k, _FINAL_STATES))
            jobs = await _load(db, [k])
        return jobs[0] if jobs else None

    # -- claims and leases ------------------------------------------------------------------

    async def claim(self, *, owner: str, phase: Phase, now: float, lease_s: float, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        async with self._transaction() as db:
            rows = await db.execute_fetchall(_SELECT_DUE[phase], (now, now, limit))
            keys = [str(row["key"]) for row in rows]
            if not keys:
                return []
            lease = (owner, now + lease_s, now)
            since = (now,) if phase is Phase.POLL else ()
            await _run(db, _CLAIM[phase], (*lease, *since, json.dumps(keys)))
            return await _load(db, keys)

    async def renew(self, key: JobKey, *, owner: str, now: float, lease_s: float) -> None:
        async with self._transaction() as db:
            await _update_leased(db, key, owner, "UPDATE jobs SET lease_expires_at = ?", (now + lease_s,))

    async def release(self, key: JobKey, *, owner: str, now: float) -> None:
        async with self._transaction() as db:
            # MIN keeps the job's place in the queue: it was already due when it was claimed.
            # A transfer interrupted on purpose (shutdown) gives its attempt back; only crashes
            # (no release) count against max_attempts.
            await _run(
                db,
                """UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL,
                       due_at = MIN(due_at, ?), updated_at = ?,
                       attempts = CASE WHEN state = 'downloading' AND attempts > 0
                                       THEN attempts - 1 ELSE attempts END
                   WHERE key = ? AND lease_owner = ?""",
                (now, now, str(key), owner),
            )

    # -- job progress -----------------------------------------------------------------------

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
        async with self._transaction() as db:
            await _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET state = 'polling', due_at = ?, updated_at = ?, polls = ?,
                       provider_state = ?,
                       lease_owner = NULL, lease_expires_at = NULL""",
                (due_at, now, polls, json.dumps(without_nul(provider_state))),
            )

    async def restart_polling(
        self, key: JobKey, *, owner: str, now: float, provider_state: dict[str, Any]
    ) -> None:
        async with self._transaction() as db:
            await _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET state = 'polling', due_at = ?, updated_at = ?, polling_since = ?,
                       provider_state = ?, lease_owner = NULL, lease_expires_at = NULL""",
                (now, now, now, json.dumps(without_nul(provider_state))),
            )
            await _run(db, "DELETE FROM assets WHERE job_key = ?", (str(key),))

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
        async with self._transaction() as db:
            await _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET state = 'downloading', due_at = ?, updated_at = ?, provider_state = ?,
                       polls = polls + 1, lease_owner = NULL, lease_expires_at = NULL""",
                (now, now, json.dumps(without_nul(provider_state))),
            )
            # Stored copies of assets still in the set are proven whole: keep them, re-fetch nothing.
            await _run(
                db,
                """DELETE FROM assets WHERE job_key = ?
                   AND (state != 'stored' OR asset_id NOT IN (SELECT value FROM json_each(?)))""",
                (k, json.dumps(ids)),
            )
            rows = [(k, position, *ref_columns(ref)) for position, ref in enumerate(assets)]
            async with db.executemany(_UPSERT_ASSET, rows):
                pass

    async def finish(
        self, key: JobKey, *, owner: str, now: float, state: JobState, error: JobError | None = None
    ) -> None:
        if not state.is_final:
            raise ValueError(f"finish() needs a final state, not {state.value!r}")
        async with self._transaction() as db:
            await _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, error_code = ?,
                       error_message = ?, lease_owner = NULL, lease_expires_at = NULL""",
                (state.value, now, now, *error_columns(error)),
            )

    async def retry_later(
        self, key: JobKey, *, owner: str, now: float, due_at: float, error: JobError | None = None
    ) -> None:
        async with self._transaction() as db:
            # Without a new error the previous one stays: it is still the last thing that went wrong.
            await _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET due_at = ?, updated_at = ?, error_code = COALESCE(?, error_code),
                       error_message = COALESCE(?, error_message), lease_owner = NULL,
                       lease_expires_at = NULL""",
                (due_at, now, *error_columns(error)),
            )

    async def postpone(self, key: JobKey, *, owner: str, now: float, due_at: float, error: JobError) -> None:
        async with self._transaction() as db:
            # The destination, not the job, is at fault: the attempt the transfer claim counted is
            # given back (as release does), so waiting out a full disk never fails a job.
            await _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET due_at = ?, updated_at = ?, error_code = ?, error_message = ?,
                       attempts = CASE WHEN state = 'downloading' AND attempts > 0
                                       THEN attempts - 1 ELSE attempts END,
                       lease_owner = NULL, lease_expires_at = NULL""",
                (due_at, now, *error_columns(error)),
            )

    # -- assets -----------------------------------------------------------------------------

    async def update_asset(self, key: JobKey, *, owner: str, ref: AssetRef) -> None:
        async with self._transaction() as db:
            await _check_leased(db, key, owner)
            changed = await _run(
                db,
                """UPDATE assets SET url = ?, expected_size = ?, expected_sha256 = ?,
                       content_type = ?, ext = ?, expires_at = ?
                   WHERE job_key = ? AND asset_id = ?""",
                (*ref_columns(ref)[1:], str(key), ref.asset_id),
            )
            if not changed:
                raise KeyError(f"job {key} has no asset {ref.asset_id!r}")

    async def record_receipt(self, key: JobKey, *, owner: str, receipt: Receipt) -> None:
        k = str(key)
        async with self._transaction() as db:
            await _check_leased(db, key, owner)
            changed = await _run(
                db,
                """UPDATE assets SET state = 'stored', uri = ?, size = ?, sha256 = ?,
                       upstream_verified = ?, stored_at = ?, etag = ?, version_id = ?, origin = ?,
                       error_code = NULL, error_message = NULL
                   WHERE job_key = ? AND asset_id = ? AND state != 'stored'""",
                (
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
                ),
            )
            if changed:
                await _run(
                    db,
                    "UPDATE jobs SET updated_at = MAX(updated_at, ?) WHERE key = ?",
                    (receipt.stored_at, k),
                )
            else:
                await _check_asset_exists(db, key, receipt.asset_id)

    async def find_stored(self, *, sha256: str, size: int) -> Receipt | None:
        async with self._transaction(write=False) as db:
            rows = list(
                await db.execute_fetchall(
                    """SELECT * FROM assets WHERE state = 'stored' AND sha256 = ? AND size = ?
                       ORDER BY stored_at LIMIT 1""",
                    (sha256, size),
                )
            )
        return asset_from_row(rows[0]).receipt if rows else None

    async def fail_asset(self, key: JobKey, *, owner: str, asset_id: str, error: JobError) -> None:
        async with self._transaction() as db:
            await _check_leased(db, key, owner)
            # A stored asset is proven whole; a late failure report must not throw its receipt away.
            changed = await _run(
                db,
                """UPDATE assets SET state = 'failed', error_code = ?, error_message = ?
                   WHERE job_key = ? AND asset_id = ? AND state != 'stored'""",
                (*error_columns(error), str(key), asset_id),
            )
            if not changed:
                await _check_asset_exists(db, key, asset_id)

    # -- reading ----------------------------------------------------------------------------

    async def get(self, keys: Sequence[JobKey]) -> list[Job]:
        async with self._transaction(write=False) as db:
            found = {str(job.key): job for job in await _load(db, [str(k) for k in keys])}
        return [found[str(k)] for k in keys if str(k) in found]

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        limit: int | None = None,
        after: Cursor | None = None,
    ) -> list[Job]:
        wanted = None if states is None else json.dumps([s.value for s in states])
        after_at, after_key = (None, None) if after is None else (after.submitted_at, after.key)
        async with self._transaction(write=False) as db:
            rows = await db.execute_fetchall(
                """SELECT key FROM jobs
                   WHERE (? IS NULL OR state IN (SELECT value FROM json_each(?)))
                     AND (? IS NULL OR (submitted_at, key) > (?, ?))
                   ORDER BY submitted_at, key LIMIT ?""",
                (wanted, wanted, after_at, after_at, after_key, -1 if limit is None else limit),
            )
            return await _load(db, [str(row["key"]) for row in rows])

    async def queue_stats(self, *, now: float) -> QueueStats:
        async with self._transaction(write=False) as db:
            counts = await db.execute_fetchall("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            backlog = await db.execute_fetchall(
                """SELECT COUNT(*) AS n, MIN(due_at) AS oldest FROM jobs
                   WHERE state NOT IN (SELECT value FROM json_each(?)) AND due_at <= ?
                     AND (lease_expires_at IS NULL OR lease_expires_at <= ?)""",
                (_FINAL_STATES, now, now),
            )
        by_state = dict.fromkeys(JobState, 0)
        for row in counts:
            by_state[JobState(row["state"])] = int(row["n"])
        (row,) = backlog
        return QueueStats(by_state=by_state, due=int(row["n"]), oldest_due_at=opt_float(row["oldest"]))

    async def ping(self) -> None:
        async with self._transaction(write=False) as db:
            await db.execute_fetchall("SELECT 1")

    async def unfinished(self) -> tuple[bool, float | None]:
        async with self._transaction(write=False) as db:
            moments: list[float] = []
            for phase in Phase:
                for row in await db.execute_fetchall(_NEXT_UNLEASED[phase]):
                    moments.append(float(row["due_at"]))
            (leased,) = await db.execute_fetchall(_NEXT_LEASE_END)
            if leased["next"] is not None:
                moments.append(float(leased["next"]))
        # Every unfinished job is either unleased (found in its phase's index) or leased.
        return (True, min(moments)) if moments else (False, None)

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self, *, write: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction at a time on this connection; rolled back on any error or cancellation.

        Writers take the write lock up front (IMMEDIATE); readers get a consistent snapshot of a
        job and its assets without blocking anyone (DEFERRED, never upgraded to a write).
        """
        async with self._lock:
            try:
                # BEGIN is inside the try: cancelled while waiting for it, it still runs on the
                # thread, and the rollback below must follow it.
                await _run(self._db, "BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
                yield self._db
                await self._db.commit()
            except BaseException as exc:
                # Statements run in order on aiosqlite's thread, so this rollback lands after
                # whatever the cancelled await had queued; rollback() is a no-op once committed.
                with contextlib.suppress(sqlite3.Error):
                    await shielded(self._db.rollback())
                if isinstance(exc, sqlite3.Error):
                    # Locked past the busy timeout: the caller backs off and tries again. A damaged
                    # or read-only file: it stops, since no retry would ever succeed. Anything else
                    # SQLite reports (a constraint, a malformed statement) is a bug and stays as is.
                    mapped = store_error(exc, self._path)
                    if mapped is not None:
                        raise mapped from exc
                raise

    async def _migrate(self) -> None:
        """Bring the schema to the newest version, once, even if several processes start together."""
        async with self._transaction() as db:
            rows = await db.execute_fetchall("PRAGMA user_version")
            version = int(next(iter(rows))[0])
            # Read at call time, not import time, so a test can add a migration.
            migrations = sqlite_schema.MIGRATIONS
            if version > len(migrations):
                raise ConfigError(
                    f"the store has schema version {version}, newer than this asset-worker knows "
                    f"({len(migrations)}); upgrade asset-worker"
                )
            for number, statements in enumerate(migrations[version:], start=version + 1):
                for statement in statements:
                    await _run(db, statement)
                # PRAGMA takes no parameters; number is an int we computed.
                await _run(db, f"PRAGMA user_version = {int(number)}")


def _create_private(path: Path) -> None:
    """Create ``path``'s directories and, if it does not exist, the file itself with mode 0600.

    SQLite would create the file with 0644 (less the umask), readable by every local user; it gives
    the -wal and -shm files the mode of the database file, so creating this one first covers all
    three. An existing file keeps the mode its operator gave it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


async def _configure(db: aiosqlite.Connection, path: Path) -> None:
    await _run(db, f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    rows = await db.execute_fetchall("PRAGMA journal_mode = WAL")
    mode = str(next(iter(rows))[0]).lower()
    if mode != "wal":
        # Without WAL (e.g. on a network file system) concurrent CLI and worker access is unsafe.
        raise ConfigError(f"cannot use {path} as a store: SQLite refused WAL mode (got {mode!r})")
    await _run(db, "PRAGMA synchronous = NORMAL")
    await _run(db, "PRAGMA foreign_keys = ON")


async def _run(db: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> int:
    """Execute one statement and return how many rows it changed."""
    async with db.execute(sql, params) as cursor:
        return cursor.rowcount


async def _update_leased(
    db: aiosqlite.Connection, key: JobKey, owner: str, assignments: str, params: tuple[Any, ...]
) -> None:
    """Run ``assignments`` (an ``UPDATE jobs SET ...`` without WHERE) on a job leased to ``owner``."""
    sql = assignments + " WHERE key = ? AND lease_owner = ?"
    if await _run(db, sql, (*params, str(key), owner)) != 1:
        raise await _lease_lost(db, key, owner)


async def _check_leased(db: aiosqlite.Connection, key: JobKey, owner: str) -> None:
    rows = await db.execute_fetchall(
        "SELECT 1 FROM jobs WHERE key = ? AND lease_owner = ?", (str(key), owner)
    )
    if not list(rows):
        raise await _lease_lost(db, key, owner)


async def _lease_lost(db: aiosqlite.Connection, key: JobKey, owner: str) -> LeaseLost:
    rows = list(await db.execute_fetchall("SELECT lease_owner FROM jobs WHERE key = ?", (str(key),)))
    if not rows:
        return LeaseLost(f"job {key} does not exist (writer {owner!r})")
    holder = rows[0]["lease_owner"]
    held = "no lease" if holder is None else f"leased to {holder!r}"
    return LeaseLost(f"job {key} is not leased to {owner!r} ({held})")


async def _check_asset_exists(db: aiosqlite.Connection, key: JobKey, asset_id: str) -> None:
    rows = await db.execute_fetchall(
        "SELECT 1 FROM assets WHERE job_key = ? AND asset_id = ?", (str(key), asset_id)
    )
    if not list(rows):
        raise KeyError(f"job {key} has no asset {asset_id!r}")


async def _load(db: aiosqlite.Connection, keys: Sequence[str]) -> list[Job]:
    """The jobs named by ``keys`` that exist, in that order, each with its assets by position."""
    keys_json = json.dumps(list(keys))
    job_rows = await db.execute_fetchall(
        "SELECT * FROM jobs WHERE key IN (SELECT value FROM json_each(?))", (keys_json,)
    )
    asset_rows = await db.execute_fetchall(
        """SELECT * FROM assets WHERE job_key IN (SELECT value FROM json_each(?))
           ORDER BY job_key, position""",
        (keys_json,),
    )
    assets: dict[str, list[AssetRecord]] = {}
    for row in asset_rows:
        assets.setdefault(str(row["job_key"]), []).append(asset_from_row(row))
    jobs = {str(row["key"]): job_from_row(row, tuple(assets.get(str(row["key"]), ()))) for row in job_rows}
    return [jobs[k] for k in keys if k in jobs]


def sqlite_path(url: str) -> Path:
    """The database file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` store URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigError(f"ASSET_WORKER_STORE={redact_url(url)!r} is not a sqlite:/// URL")
    if parts.netloc:
        raise ConfigError(f"ASSET_WORKER_STORE={url!r}: use three slashes, sqlite:///PATH")
    raw = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not raw:
        raise ConfigError(f"ASSET_WORKER_STORE={url!r}: no database path given")
    return Path(raw).expanduser().absolute()


async def _open(url: str, _pool_size: int) -> Store:
    return await SqliteStore.open(sqlite_path(url))


SPEC = StoreSpec(
    name="sqlite",
    schemes=("sqlite",),
    example="sqlite:///PATH",
    check=sqlite_path,
    open=_open,
)
