"""The SQLite store's mirror-mode transactions: discovered items become jobs, and each source's
walk has a lease and a resume position. Plain functions of a connection, run whole on the store's
thread (``sqlite_conn``) by ``SqliteStore``'s methods of the same names."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from worker.models import JobError, JobKey
from worker.store.base import Discovered, SourceCounts, WalkRecord
from worker.store.rows import error_columns, ref_columns, source_counts_from_rows, walk_from_row

_INSERT_DISCOVERED = """
    INSERT INTO jobs (key, provider, upstream_id, state, submitted_at, updated_at, due_at,
                      source, origin_created_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"""
_INSERT_ASSET = """
    INSERT INTO assets (job_key, position, asset_id, url, expected_size, expected_sha256,
                        content_type, ext, expires_at, state)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')"""


def submit_discovered(
    db: sqlite3.Connection, items: Sequence[Discovered], source: str, now: float
) -> list[bool]:
    created: list[bool] = []
    for item in items:
        key = str(item.key)
        if item.aliases and _any_exists(db, item.aliases):
            created.append(False)
            continue
        state = "downloading" if item.assets else "queued"
        cursor = db.execute(
            _INSERT_DISCOVERED,
            (
                key,
                item.key.provider,
                item.key.upstream_id,
                state,
                now,
                now,
                item.due_at,
                source,
                item.created_at,
            ),
        )
        created.append(cursor.rowcount == 1)
        if created[-1] and item.assets:
            db.executemany(
                _INSERT_ASSET,
                [(key, position, *ref_columns(ref)) for position, ref in enumerate(item.assets)],
            )
    return created


def _any_exists(db: sqlite3.Connection, keys: Sequence[JobKey]) -> bool:
    found = db.execute(
        # A failed or canceled job copied nothing: it does not stand in for the item.
        """SELECT 1 FROM jobs WHERE key IN (SELECT value FROM json_each(?))
               AND state NOT IN ('failed', 'canceled') LIMIT 1""",
        (json.dumps([str(k) for k in keys]),),
    ).fetchone()
    return found is not None


def claim_walk(
    db: sqlite3.Connection, source: str, owner: str, now: float, lease_s: float
) -> WalkRecord | None:
    db.execute(
        "INSERT INTO mirror_sources (source, updated_at) VALUES (?, ?) ON CONFLICT (source) DO NOTHING",
        (source, now),
    )
    taken = db.execute(
        """UPDATE mirror_sources SET lease_owner = ?, lease_expires_at = ?, updated_at = ?
           WHERE source = ? AND (lease_owner IS NULL OR lease_expires_at <= ?)""",
        (owner, now + lease_s, now, source, now),
    ).rowcount
    if not taken:
        return None
    return walk_from_row(db.execute("SELECT * FROM mirror_sources WHERE source = ?", (source,)).fetchone())


def save_walk(
    db: sqlite3.Connection,
    source: str,
    owner: str,
    now: float,
    lease_s: float,
    kind: str,
    position: str | None,
    pages: int,
    newest_created_at: float | None,
) -> bool:
    """False when ``owner`` no longer holds the walk."""
    return (
        db.execute(
            """UPDATE mirror_sources SET lease_expires_at = ?, updated_at = ?, walk_kind = ?,
                   walk_position = ?, walk_started_at = COALESCE(walk_started_at, ?), walk_pages = ?,
                   walk_newest_created_at = MAX(COALESCE(walk_newest_created_at, ?),
                                                COALESCE(?, walk_newest_created_at))
               WHERE source = ? AND lease_owner = ?""",
            (
                now + lease_s,
                now,
                kind,
                position,
                now,
                pages,
                newest_created_at,
                newest_created_at,
                source,
                owner,
            ),
        ).rowcount
        == 1
    )


def end_walk(
    db: sqlite3.Connection,
    source: str,
    owner: str,
    now: float,
    kind: str,
    completed: bool,
    newest_created_at: float | None,
    error: JobError | None,
) -> None:
    code, message = error_columns(error)
    if completed:
        row = db.execute(
            """SELECT newest_created_at, walk_newest_created_at FROM mirror_sources
               WHERE source = ? AND lease_owner = ?""",
            (source, owner),
        ).fetchone()
        if row is None:
            return  # no longer this owner's walk
        # The walk's newest item becomes the mark of the next incremental walk only now it is whole.
        seen = [v for v in (row[0], row[1], newest_created_at) if v is not None]
        db.execute(
            """UPDATE mirror_sources SET lease_owner = NULL, lease_expires_at = NULL, updated_at = ?,
                   walk_kind = NULL, walk_position = NULL, walk_started_at = NULL, walk_pages = 0,
                   walk_newest_created_at = NULL, last_walk_at = ?,
                   last_full_walk_at = CASE WHEN ? = 'full' THEN ? ELSE last_full_walk_at END,
                   newest_created_at = ?, error_code = ?, error_message = ?
               WHERE source = ? AND lease_owner = ?""",
            (now, now, kind, now, max(seen) if seen else None, code, message, source, owner),
        )
    else:
        db.execute(
            """UPDATE mirror_sources SET lease_owner = NULL, lease_expires_at = NULL, updated_at = ?,
                   error_code = ?, error_message = ?
               WHERE source = ? AND lease_owner = ?""",
            (now, code, message, source, owner),
        )


def walks(db: sqlite3.Connection) -> list[WalkRecord]:
    return [walk_from_row(row) for row in db.execute("SELECT * FROM mirror_sources ORDER BY source")]


def source_counts(db: sqlite3.Connection) -> dict[str, SourceCounts]:
    rows = db.execute(
        """SELECT source, state, COUNT(*) AS n, MIN(origin_created_at) AS oldest FROM jobs
           WHERE source IS NOT NULL GROUP BY source, state"""
    )
    return source_counts_from_rows(rows)
