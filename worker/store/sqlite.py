"""The embedded store: one SQLite file, safe to share between the CLI and a running worker.

Longer than most modules on purpose: one class implements the whole ``Store`` contract (twenty
operations, each a transaction of a few statements with its lease check); split up, an operation's
SQL would sit apart from its fencing. Error classification is in ``sqlite_errors``, the schema in
``sqlite_schema``.

Why these settings: WAL lets readers go on while one writer commits; ``busy_timeout`` makes a
second process wait for the write lock instead of failing at once; and every read-then-write runs
inside ``BEGIN IMMEDIATE``, which takes the write lock *before* the read, so two processes can never
both see one job as due and both claim it. Within one process a single connection on one thread
serves every task, a whole transaction per hand-off (``sqlite_conn``).

Failures are told apart by SQLite's result code, never by message text (``sqlite_errors``): a
lock held too long or a full disk may pass (``StoreUnavailable``, the caller waits and tries again);
a damaged, foreign, read-only or unopenable file, or an I/O error, will not (``StoreUnusable``: the
command stops with one line saying which file and what to do).

The file is created readable by its owner only: jobs carry vendor URLs (pre-signed, until they
expire) and provider state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.aio import shielded
from worker.errors import ConfigError, LeaseLost
from worker.models import AssetRecord, AssetRef, Job, JobError, JobKey, JobState, Receipt
from worker.redaction import redact_url
from worker.store import sqlite_mirror, sqlite_schema
from worker.store.base import (
    Cursor,
    Discovered,
    Phase,
    ProgressReport,
    QueueStats,
    SourceCounts,
    Store,
    StoreSpec,
    SubmitResult,
    WalkRecord,
    submit_results,
)
from worker.store.rows import (
    asset_from_row,
    error_columns,
    job_from_row,
    opt_float,
    progress_to_text,
    ref_columns,
    without_nul,
)
from worker.store.sqlite_conn import SqliteConnection
from worker.store.sqlite_errors import open_error

Conn = sqlite3.Connection

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
_PHASE_INDEX = {Phase.POLL: "jobs_poll_due", Phase.TRANSFER: "jobs_transfer_due"}
_SELECT_DUE = {
    phase: f"""
    SELECT key FROM jobs INDEXED BY {_PHASE_INDEX[phase]}
    WHERE {_PHASE_WHERE[phase]} AND due_at <= ? AND (lease_expires_at IS NULL OR lease_expires_at <= ?)
      AND provider NOT IN (SELECT value FROM json_each(?))
    ORDER BY due_at, submitted_at, key
    LIMIT ?"""  # noqa: S608
    for phase in Phase
}
# The earliest moment a job of the phase may be claimed: the first unleased one in queue order
# (a walk of the phase's index that passes only the few leased rows), or a lease running out.
_NEXT_UNLEASED = {
    phase: f"""
    SELECT due_at FROM jobs INDEXED BY {_PHASE_INDEX[phase]}
    WHERE {_PHASE_WHERE[phase]} AND lease_expires_at IS NULL
      AND provider NOT IN (SELECT value FROM json_each(?))
    ORDER BY due_at, submitted_at, key LIMIT 1"""  # noqa: S608
    for phase in Phase
}
_NEXT_LEASE_END = """
    SELECT MIN(MAX(due_at, lease_expires_at)) AS next FROM jobs INDEXED BY jobs_leased
    WHERE lease_expires_at IS NOT NULL AND state IN ('queued', 'polling', 'downloading')
      AND provider NOT IN (SELECT value FROM json_each(?))"""
_CLAIM = {
    Phase.POLL: """
        UPDATE jobs SET lease_owner = ?, lease_expires_at = ?, updated_at = ?,
            state = CASE WHEN state = 'queued' THEN 'polling' ELSE state END,
            polling_since = COALESCE(polling_since, ?)
        WHERE key IN (SELECT value FROM json_each(?))""",
    Phase.TRANSFER: """
        UPDATE jobs SET lease_owner = ?, lease_expires_at = ?, updated_at = ?,
            attempts = attempts + 1, progress = NULL
        WHERE key IN (SELECT value FROM json_each(?))""",
}
# A page of jobs in submission order; the second from a cursor, which bounds the index range.
_LIST_JOBS = """
    SELECT key FROM jobs
    WHERE (? IS NULL OR state IN (SELECT value FROM json_each(?)))
    ORDER BY submitted_at, key LIMIT ?"""
_LIST_JOBS_AFTER = """
    SELECT key FROM jobs
    WHERE (? IS NULL OR state IN (SELECT value FROM json_each(?)))
      AND (submitted_at, key) > (?, ?)
    ORDER BY submitted_at, key LIMIT ?"""
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
    """The :class:`~worker.store.base.Store` on one SQLite file; create it with :meth:`open`.

    Each operation is one transaction, written as a plain function of the connection and run whole
    on the store's thread (``sqlite_conn``).
    """

    def __init__(self, db: SqliteConnection) -> None:
        self._db = db

    @property
    def transactions(self) -> int:
        return self._db.transactions

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open (creating it and its directories if needed) and migrate the database at ``path``.

        ``StoreUnusable`` when the file cannot serve as a store whatever we wait for (damaged, not
        a database, read-only, not creatable), ``StoreUnavailable`` when it may pass (locked).
        """
        db = await SqliteConnection.open(path)
        store = cls(db)
        try:
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

        def body(db: Conn) -> list[SubmitResult]:
            # The write lock is held from BEGIN IMMEDIATE on: what exists now is what exists when
            # the inserts run, so "created" is exact without a statement per key.
            existing = {
                str(row["key"]): str(row["state"])
                for row in db.execute(
                    "SELECT key, state FROM jobs WHERE key IN (SELECT value FROM json_each(?))",
                    (json.dumps(names),),
                )
            }
            db.executemany(_INSERT, [(str(k), k.provider, k.upstream_id, now, now, now, dest) for k in keys])
            requeued = sorted(k for k, state in existing.items() if force and JobState(state).is_final)
            if requeued:
                db.executemany(_REQUEUE, [(now, now, now, dest, k, _FINAL_STATES) for k in requeued])
                db.execute(
                    "DELETE FROM assets WHERE job_key IN (SELECT value FROM json_each(?))",
                    (json.dumps(requeued),),
                )
            jobs = _load(db, sorted(set(names)))
            return submit_results(names, jobs, existing=set(existing), requeued=set(requeued))

        return await self._db.transaction(body)

    async def cancel(self, key: JobKey, *, now: float) -> Job | None:
        k = str(key)

        def body(db: Conn) -> Job | None:
            db.execute(_CANCEL, (now, now, k, _FINAL_STATES))
            jobs = _load(db, [k])
            return jobs[0] if jobs else None

        return await self._db.transaction(body)

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
        skip = json.dumps(list(skip_providers))

        def body(db: Conn) -> list[Job]:
            keys = [str(row["key"]) for row in db.execute(_SELECT_DUE[phase], (now, now, skip, limit))]
            if not keys:
                return []
            lease = (owner, now + lease_s, now)
            since = (now,) if phase is Phase.POLL else ()
            db.execute(_CLAIM[phase], (*lease, *since, json.dumps(keys)))
            return _load(db, keys)

        return await self._db.transaction(body)

    async def renew(self, key: JobKey, *, owner: str, now: float, lease_s: float) -> None:
        await self._update_leased(key, owner, "UPDATE jobs SET lease_expires_at = ?", (now + lease_s,))

    async def release(self, key: JobKey, *, owner: str, now: float) -> None:
        # MIN keeps the job's place in the queue: it was already due when it was claimed. A
        # transfer interrupted on purpose (shutdown) gives its attempt back; only crashes (no
        # release) count against max_attempts.
        sql = """UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL,
                     due_at = MIN(due_at, ?), updated_at = ?,
                     attempts = CASE WHEN state = 'downloading' AND attempts > 0
                                     THEN attempts - 1 ELSE attempts END
                 WHERE key = ? AND lease_owner = ?"""
        await self._db.transaction(lambda db: db.execute(sql, (now, now, str(key), owner)))

    # -- job progress -----------------------------------------------------------------------

    async def record_progress(self, reports: Sequence[ProgressReport]) -> None:
        rows = [(progress_to_text(r.progress), str(r.key), r.owner) for r in reports]
        if rows:
            await self._db.transaction(
                lambda db: db.executemany(
                    "UPDATE jobs SET progress = ? WHERE key = ? AND lease_owner = ?", rows
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
            """UPDATE jobs SET state = 'polling', due_at = ?, updated_at = ?, polls = ?,
                   provider_state = ?,
                   lease_owner = NULL, lease_expires_at = NULL""",
            (due_at, now, polls, json.dumps(without_nul(provider_state))),
        )

    async def restart_polling(
        self, key: JobKey, *, owner: str, now: float, provider_state: dict[str, Any]
    ) -> None:
        def body(db: Conn) -> None:
            _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET state = 'polling', due_at = ?, updated_at = ?, polling_since = ?,
                       provider_state = ?, lease_owner = NULL, lease_expires_at = NULL""",
                (now, now, now, json.dumps(without_nul(provider_state))),
            )
            db.execute("DELETE FROM assets WHERE job_key = ?", (str(key),))

        await self._db.transaction(body)

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

        def body(db: Conn) -> None:
            _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET state = 'downloading', due_at = ?, updated_at = ?, provider_state = ?,
                       polls = polls + 1, lease_owner = NULL, lease_expires_at = NULL""",
                (now, now, json.dumps(without_nul(provider_state))),
            )
            # Stored copies of assets still in the set are proven whole: keep them, re-fetch nothing.
            db.execute(
                """DELETE FROM assets WHERE job_key = ?
                   AND (state != 'stored' OR asset_id NOT IN (SELECT value FROM json_each(?)))""",
                (k, json.dumps(ids)),
            )
            db.executemany(
                _UPSERT_ASSET, [(k, position, *ref_columns(ref)) for position, ref in enumerate(assets)]
            )

        await self._db.transaction(body)

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

        def body(db: Conn) -> None:
            for receipt in receipts:
                _record_receipt(db, key, owner, receipt)
            _update_leased(
                db,
                key,
                owner,
                """UPDATE jobs SET state = ?, finished_at = ?, updated_at = ?, error_code = ?,
                       error_message = ?, lease_owner = NULL, lease_expires_at = NULL""",
                (state.value, now, now, *error_columns(error)),
            )

        await self._db.transaction(body)

    async def retry_later(
        self, key: JobKey, *, owner: str, now: float, due_at: float, error: JobError | None = None
    ) -> None:
        # Without a new error the previous one stays: it is still the last thing that went wrong.
        await self._update_leased(
            key,
            owner,
            """UPDATE jobs SET due_at = ?, updated_at = ?, error_code = COALESCE(?, error_code),
                   error_message = COALESCE(?, error_message), lease_owner = NULL,
                   lease_expires_at = NULL""",
            (due_at, now, *error_columns(error)),
        )

    async def postpone(self, key: JobKey, *, owner: str, now: float, due_at: float, error: JobError) -> None:
        # The destination, not the job, is at fault: the attempt the transfer claim counted is
        # given back (as release does), so waiting out a full disk never fails a job.
        await self._update_leased(
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
        def body(db: Conn) -> None:
            _check_leased(db, key, owner)
            changed = db.execute(
                """UPDATE assets SET url = ?, expected_size = ?, expected_sha256 = ?,
                       content_type = ?, ext = ?, expires_at = ?
                   WHERE job_key = ? AND asset_id = ?""",
                (*ref_columns(ref)[1:], str(key), ref.asset_id),
            ).rowcount
            if not changed:
                raise KeyError(f"job {key} has no asset {ref.asset_id!r}")

        await self._db.transaction(body)

    async def record_receipt(self, key: JobKey, *, owner: str, receipt: Receipt) -> None:
        await self._db.transaction(lambda db: _record_receipt(db, key, owner, receipt))

    async def find_stored(self, *, sha256: str, size: int) -> Receipt | None:
        def body(db: Conn) -> Receipt | None:
            row = db.execute(
                """SELECT * FROM assets WHERE state = 'stored' AND sha256 = ? AND size = ?
                   ORDER BY stored_at LIMIT 1""",
                (sha256, size),
            ).fetchone()
            return None if row is None else asset_from_row(row).receipt

        return await self._db.transaction(body, write=False)

    async def fail_asset(self, key: JobKey, *, owner: str, asset_id: str, error: JobError) -> None:
        def body(db: Conn) -> None:
            _check_leased(db, key, owner)
            # A stored asset is proven whole; a late failure report must not throw its receipt away.
            changed = db.execute(
                """UPDATE assets SET state = 'failed', error_code = ?, error_message = ?
                   WHERE job_key = ? AND asset_id = ? AND state != 'stored'""",
                (*error_columns(error), str(key), asset_id),
            ).rowcount
            if not changed:
                _check_asset_exists(db, key, asset_id)

        await self._db.transaction(body)

    # -- reading ----------------------------------------------------------------------------

    # -- mirror mode (sqlite_mirror) ----------------------------------------------------------

    async def submit_discovered(self, items: Sequence[Discovered], *, source: str, now: float) -> list[bool]:
        if not items:
            return []
        return await self._db.transaction(lambda db: sqlite_mirror.submit_discovered(db, items, source, now))

    async def claim_walk(self, source: str, *, owner: str, now: float, lease_s: float) -> WalkRecord | None:
        return await self._db.transaction(
            lambda db: sqlite_mirror.claim_walk(db, source, owner, now, lease_s)
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
        saved = await self._db.transaction(
            lambda db: sqlite_mirror.save_walk(
                db, source, owner, now, lease_s, kind, position, pages, newest_created_at
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
        await self._db.transaction(
            lambda db: sqlite_mirror.end_walk(
                db, source, owner, now, kind, completed, newest_created_at, error
            )
        )

    async def walks(self) -> list[WalkRecord]:
        return await self._db.transaction(sqlite_mirror.walks, write=False)

    async def source_counts(self) -> dict[str, SourceCounts]:
        return await self._db.transaction(sqlite_mirror.source_counts, write=False)

    async def get(self, keys: Sequence[JobKey]) -> list[Job]:
        names = [str(k) for k in keys]

        def body(db: Conn) -> list[Job]:
            found = {str(job.key): job for job in _load(db, names)}
            return [found[name] for name in names if name in found]

        return await self._db.transaction(body, write=False)

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        limit: int | None = None,
        after: Cursor | None = None,
    ) -> list[Job]:
        wanted = None if states is None else json.dumps([s.value for s in states])
        # Two statements, not one whose cursor may be NULL ("? IS NULL OR ..."): behind an OR the cursor
        # cannot bound the index range, and every page would read the index from the first job.
        rows_at_most = -1 if limit is None else limit
        sql, args = (
            (_LIST_JOBS, [wanted, wanted, rows_at_most])
            if after is None
            else (_LIST_JOBS_AFTER, [wanted, wanted, after.submitted_at, after.key, rows_at_most])
        )

        def body(db: Conn) -> list[Job]:
            rows = db.execute(sql, args)
            return _load(db, [str(row["key"]) for row in rows])

        return await self._db.transaction(body, write=False)

    async def queue_stats(self, *, now: float) -> QueueStats:
        def body(db: Conn) -> QueueStats:
            by_state = dict.fromkeys(JobState, 0)
            for row in db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
                by_state[JobState(row["state"])] = int(row["n"])
            backlog = db.execute(
                """SELECT COUNT(*) AS n, MIN(due_at) AS oldest FROM jobs
                   WHERE state NOT IN (SELECT value FROM json_each(?)) AND due_at <= ?
                     AND (lease_expires_at IS NULL OR lease_expires_at <= ?)""",
                (_FINAL_STATES, now, now),
            ).fetchone()
            return QueueStats(
                by_state=by_state, due=int(backlog["n"]), oldest_due_at=opt_float(backlog["oldest"])
            )

        return await self._db.transaction(body, write=False)

    async def ping(self) -> None:
        await self._db.transaction(lambda db: db.execute("SELECT 1").fetchall(), write=False)

    async def due_count(
        self, *, phase: Phase, now: float, limit: int, skip_providers: Sequence[str] = ()
    ) -> int:
        sql = f"SELECT COUNT(*) FROM ({_SELECT_DUE[phase]})"  # noqa: S608 (module constants only)
        params = (now, now, json.dumps(list(skip_providers)), limit)
        return await self._db.transaction(lambda db: int(db.execute(sql, params).fetchone()[0]), write=False)

    async def unfinished(self, *, skip_providers: Sequence[str] = ()) -> tuple[bool, float | None]:
        skip = (json.dumps(list(skip_providers)),)

        def body(db: Conn) -> tuple[bool, float | None]:
            moments = [
                float(row["due_at"]) for phase in Phase for row in db.execute(_NEXT_UNLEASED[phase], skip)
            ]
            leased = db.execute(_NEXT_LEASE_END, skip).fetchone()["next"]
            if leased is not None:
                moments.append(float(leased))
            # Every unfinished job is either unleased (found in its phase's index) or leased.
            return (True, min(moments)) if moments else (False, None)

        return await self._db.transaction(body, write=False)

    # -- plumbing ---------------------------------------------------------------------------

    async def _update_leased(
        self, key: JobKey, owner: str, assignments: str, params: tuple[Any, ...]
    ) -> None:
        await self._db.transaction(lambda db: _update_leased(db, key, owner, assignments, params))

    async def _migrate(self) -> None:
        """Bring the schema to the newest version, once, even if several processes start together."""

        def body(db: Conn) -> None:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            # Read at call time, not import time, so a test can add a migration.
            migrations = sqlite_schema.MIGRATIONS
            if version > len(migrations):
                raise ConfigError(
                    f"the store has schema version {version}, newer than this asset-worker knows "
                    f"({len(migrations)}); upgrade asset-worker"
                )
            for number, statements in enumerate(migrations[version:], start=version + 1):
                for statement in statements:
                    db.execute(statement)
                # PRAGMA takes no parameters; number is an int we computed.
                db.execute(f"PRAGMA user_version = {int(number)}")

        await self._db.transaction(body)


def _update_leased(db: Conn, key: JobKey, owner: str, assignments: str, params: tuple[Any, ...]) -> None:
    """Run ``assignments`` (an ``UPDATE jobs SET ...`` without WHERE) on a job leased to ``owner``."""
    sql = assignments + " WHERE key = ? AND lease_owner = ?"
    if db.execute(sql, (*params, str(key), owner)).rowcount != 1:
        raise _lease_lost(db, key, owner)


def _check_leased(db: Conn, key: JobKey, owner: str) -> None:
    if (
        db.execute("SELECT 1 FROM jobs WHERE key = ? AND lease_owner = ?", (str(key), owner)).fetchone()
        is None
    ):
        raise _lease_lost(db, key, owner)


def _lease_lost(db: Conn, key: JobKey, owner: str) -> LeaseLost:
    row = db.execute("SELECT lease_owner FROM jobs WHERE key = ?", (str(key),)).fetchone()
    if row is None:
        return LeaseLost(f"job {key} does not exist (writer {owner!r})")
    holder = row["lease_owner"]
    held = "no lease" if holder is None else f"leased to {holder!r}"
    return LeaseLost(f"job {key} is not leased to {owner!r} ({held})")


def _record_receipt(db: Conn, key: JobKey, owner: str, receipt: Receipt) -> None:
    """Mark an asset stored (idempotent: a stored one keeps its first receipt), under the lease."""
    k = str(key)
    _check_leased(db, key, owner)
    changed = db.execute(
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
    ).rowcount
    if changed:
        db.execute("UPDATE jobs SET updated_at = MAX(updated_at, ?) WHERE key = ?", (receipt.stored_at, k))
    else:
        _check_asset_exists(db, key, receipt.asset_id)


def _check_asset_exists(db: Conn, key: JobKey, asset_id: str) -> None:
    if (
        db.execute("SELECT 1 FROM assets WHERE job_key = ? AND asset_id = ?", (str(key), asset_id)).fetchone()
        is None
    ):
        raise KeyError(f"job {key} has no asset {asset_id!r}")


def _load(db: Conn, keys: Sequence[str]) -> list[Job]:
    """The jobs named by ``keys`` that exist, in that order, each with its assets by position."""
    keys_json = json.dumps(list(keys))
    job_rows = db.execute("SELECT * FROM jobs WHERE key IN (SELECT value FROM json_each(?))", (keys_json,))
    asset_rows = db.execute(
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
    exists=lambda url: sqlite_path(url).exists(),
)
