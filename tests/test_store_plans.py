"""The queries the claim loop runs on every pass stay on their indexes, however long the queue;
so does a page of the job listing after its cursor.

A claim, and the runner's "is anything left, and when is the next one due?", must read a few rows
in queue order and stop: a sort of every due row, or a scan of the table, would make a worker with
100,000 queued jobs slower for every job it runs. Checked on each backend's own plan for a queue
large enough that its planner would rather scan if the index could not serve.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from worker.enqueue import submit_async
from worker.store import open_store
from worker.store import postgres_store as pg
from worker.store import sqlite as lite
from worker.store.base import Phase

QUEUED = 20_000


async def test_sqlite_claims_and_the_next_due_moment_read_an_index_in_queue_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    await (await open_store(url)).close()  # the schema, migrated
    with sqlite3.connect(tmp_path / "plans.db") as db:
        db.executemany(
            """INSERT INTO jobs (key, provider, upstream_id, state, submitted_at, updated_at, due_at)
               VALUES (?, 'cloudlayer', ?, ?, ?, ?, ?)""",
            (
                (f"cloudlayer:j{i}", f"j{i}", ("queued", "polling", "downloading", "done")[i % 4], i, i, i)
                for i in range(QUEUED)
            ),
        )
        db.execute("ANALYZE")
        queries: list[tuple[str, tuple[Any, ...]]] = [
            *((lite._SELECT_DUE[phase], (1e9, 1e9, '["layers"]', 32)) for phase in Phase),
            *((lite._NEXT_UNLEASED[phase], ('["layers"]',)) for phase in Phase),
            *(
                (f"SELECT COUNT(*) FROM ({lite._SELECT_DUE[phase]})", (1e9, 1e9, "[]", 16))  # noqa: S608
                for phase in Phase
            ),
            (lite._NEXT_LEASE_END, ('["layers"]',)),
        ]
        for sql, params in queries:
            plan = " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "TEMP B-TREE" not in plan, plan  # no sort
            assert "USING INDEX jobs_" in plan or "USING COVERING INDEX jobs_" in plan, plan
        # A page of the job listing after a cursor (status --json, GET /v1/jobs, verify) starts
        # at the cursor in the index: 1,000 pages must not read 1,000 times more than one.
        for states in (None, '["done"]'):
            params = (states, states, 12_345.0, "cloudlayer:j12345", 100)
            plan = " | ".join(
                row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {lite._LIST_JOBS_AFTER}", params)
            )
            assert "TEMP B-TREE" not in plan, plan
            assert "SEARCH jobs USING INDEX jobs_submitted ((submitted_at,key)>(?,?))" in plan, plan


@pytest.fixture
async def big_queue(pg_url: str) -> str:
    await (await open_store(pg_url)).close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            """INSERT INTO asset_worker.jobs
                   (key, provider, upstream_id, state, submitted_at, updated_at, due_at)
               SELECT 'cloudlayer:j' || i, 'cloudlayer', 'j' || i,
                      (ARRAY['queued', 'polling', 'downloading', 'done'])[i % 4 + 1], i, i, i
               FROM generate_series(1, $1) AS i""",
            QUEUED,
        )
        await conn.execute("ANALYZE asset_worker.jobs")
    finally:
        await conn.close()
    return pg_url


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


async def test_postgres_claims_and_the_next_due_moment_read_an_index_in_queue_order(big_queue: str) -> None:
    conn = await asyncpg.connect(big_queue)
    try:
        await _assert_claims_walk_their_index(conn)
    finally:
        await conn.close()


async def test_postgres_a_bulk_submit_leaves_statistics_that_keep_claims_on_their_index(pg_url: str) -> None:
    """Jobs submitted as ``submit`` sends them (batches of 1,000) and no ANALYZE by anyone else
    (autovacuum off for the table): the store refreshes the planner's statistics itself, so the
    claims walk their index. Left to autovacuum, a table never analyzed passes for empty for up to
    a minute, and every claim read and sorted the whole queue."""
    await (await open_store(pg_url)).close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("ALTER TABLE asset_worker.jobs SET (autovacuum_enabled = false)")
        await submit_async([f"cloudlayer:b{i}" for i in range(QUEUED)], store=pg_url)
        estimate = await conn.fetchval(
            "SELECT reltuples FROM pg_class WHERE oid = 'asset_worker.jobs'::regclass"
        )
        assert QUEUED / 2 <= estimate <= QUEUED
        await _assert_claims_walk_their_index(conn)
    finally:
        await conn.close()


async def test_postgres_a_page_after_a_cursor_starts_at_the_cursor_in_the_index(big_queue: str) -> None:
    """A page of the job listing after a cursor (status --json, GET /v1/jobs, verify) is an index
    range from the cursor, in the generic plan PostgreSQL switches a prepared statement to (asyncpg
    prepares every statement) as well as in a custom one."""
    conn = await asyncpg.connect(big_queue)
    try:
        await conn.execute(f"PREPARE page(text[], bigint, float8, text) AS {pg._LIST_JOBS_AFTER}")
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            for states in ("NULL", "ARRAY['done']"):
                (document,) = json.loads(
                    await conn.fetchval(
                        f"EXPLAIN (FORMAT JSON) EXECUTE page({states}, 100, 12345, 'cloudlayer:j12345')"
                    )
                )
                nodes = _nodes(document["Plan"])
                kinds = [node["Node Type"] for node in nodes]
                assert "Sort" not in kinds and "Seq Scan" not in kinds, (mode, kinds)
                (scan,) = [node for node in nodes if node.get("Index Name") == "jobs_submitted"]
                assert "ROW(submitted_at, key) > ROW(" in scan.get("Index Cond", ""), (mode, scan)
    finally:
        await conn.close()


async def _assert_claims_walk_their_index(conn: asyncpg.Connection) -> None:
    queries: list[tuple[str, tuple[Any, ...]]] = [
        *((pg._CLAIM[phase], (1e9, 32, "owner", 1e9 + 30, ["layers"])) for phase in Phase),
        (pg._NEXT_CLAIMABLE, (["layers"],)),
        *((pg._DUE_COUNT[phase], (1e9, 16, [])) for phase in Phase),
    ]
    for sql, params in queries:
        (document,) = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *params))
        nodes = _nodes(document["Plan"])
        kinds = [node["Node Type"] for node in nodes]
        assert "Sort" not in kinds and "Seq Scan" not in kinds, kinds
        assert {node.get("Index Name") for node in nodes} & {"jobs_poll_due", "jobs_transfer_due"}, kinds
