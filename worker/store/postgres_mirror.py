"""The PostgreSQL store's mirror-mode statements: discovered items become jobs, and each source's
walk has a lease and a resume position. Functions of a pooled connection, each run inside one of
``PostgresStore``'s transactions by its method of the same name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from worker.models import JobError
from worker.store.base import Discovered, SourceCounts, WalkRecord
from worker.store.rows import error_columns, ref_columns, source_counts_from_rows, walk_from_row

if TYPE_CHECKING:
    from worker.store.postgres_store import Conn

_INSERT_DISCOVERED = """
    INSERT INTO asset_worker.jobs (key, provider, upstream_id, state, submitted_at, updated_at, due_at,
                                   source, origin_created_at)
    VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8) ON CONFLICT (key) DO NOTHING
    RETURNING key"""
_INSERT_ASSET = """
    INSERT INTO asset_worker.assets (job_key, position, asset_id, url, expected_size, expected_sha256,
                                     content_type, ext, expires_at, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending')"""


async def submit_discovered(conn: Conn, items: Sequence[Discovered], source: str, now: float) -> list[bool]:
    created: list[bool] = []
    for item in items:
        key = str(item.key)
        # A failed or canceled job copied nothing: it does not stand in for the item.
        if item.aliases and await conn.fetchval(
            """SELECT 1 FROM asset_worker.jobs WHERE key = ANY($1::text[])
                   AND state NOT IN ('failed', 'canceled') LIMIT 1""",
            [str(k) for k in item.aliases],
        ):
            created.append(False)
            continue
        state = "downloading" if item.assets else "queued"
        inserted = await conn.fetchval(
            _INSERT_DISCOVERED,
            key,
            item.key.provider,
            item.key.upstream_id,
            state,
            now,
            item.due_at,
            source,
            item.created_at,
        )
        created.append(inserted is not None)
        if inserted is not None and item.assets:
            await conn.executemany(
                _INSERT_ASSET,
                [(key, position, *ref_columns(ref)) for position, ref in enumerate(item.assets)],
            )
    return created


async def claim_walk(conn: Conn, source: str, owner: str, now: float, lease_s: float) -> WalkRecord | None:
    await conn.execute(
        """INSERT INTO asset_worker.mirror_sources (source, updated_at) VALUES ($1, $2)
           ON CONFLICT (source) DO NOTHING""",
        source,
        now,
    )
    row = await conn.fetchrow(
        """UPDATE asset_worker.mirror_sources SET lease_owner = $2, lease_expires_at = $3, updated_at = $4
           WHERE source = $1 AND (lease_owner IS NULL OR lease_expires_at <= $4)
           RETURNING *""",
        source,
        owner,
        now + lease_s,
        now,
    )
    return None if row is None else walk_from_row(row)


async def save_walk(
    conn: Conn,
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
    saved = await conn.fetchval(
        """UPDATE asset_worker.mirror_sources SET lease_expires_at = $3, updated_at = $4, walk_kind = $5,
               walk_position = $6, walk_started_at = COALESCE(walk_started_at, $4), walk_pages = $7,
               walk_newest_created_at = GREATEST(walk_newest_created_at, $8)
           WHERE source = $1 AND lease_owner = $2
           RETURNING source""",
        source,
        owner,
        now + lease_s,
        now,
        kind,
        position,
        pages,
        newest_created_at,
    )
    return saved is not None


async def end_walk(
    conn: Conn,
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
        await conn.execute(
            """UPDATE asset_worker.mirror_sources SET lease_owner = NULL, lease_expires_at = NULL,
                   updated_at = $3, walk_kind = NULL, walk_position = NULL, walk_started_at = NULL,
                   walk_pages = 0, last_walk_at = $3,
                   last_full_walk_at = CASE WHEN $4 = 'full' THEN $3 ELSE last_full_walk_at END,
                   newest_created_at = GREATEST(newest_created_at, walk_newest_created_at, $5),
                   walk_newest_created_at = NULL,
                   error_code = $6, error_message = $7
               WHERE source = $1 AND lease_owner = $2""",
            source,
            owner,
            now,
            kind,
            newest_created_at,
            code,
            message,
        )
    else:
        await conn.execute(
            """UPDATE asset_worker.mirror_sources SET lease_owner = NULL, lease_expires_at = NULL,
                   updated_at = $3, error_code = $4, error_message = $5
               WHERE source = $1 AND lease_owner = $2""",
            source,
            owner,
            now,
            code,
            message,
        )


async def walks(conn: Conn) -> list[WalkRecord]:
    return [
        walk_from_row(row)
        for row in await conn.fetch("SELECT * FROM asset_worker.mirror_sources ORDER BY source")
    ]


async def source_counts(conn: Conn) -> dict[str, SourceCounts]:
    rows = await conn.fetch(
        """SELECT source, state, count(*) AS n, min(origin_created_at) AS oldest FROM asset_worker.jobs
           WHERE source IS NOT NULL GROUP BY source, state"""
    )
    return source_counts_from_rows(rows)
