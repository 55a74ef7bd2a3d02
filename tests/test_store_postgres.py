"""What only the shared PostgreSQL store has to get right: replicas starting and submitting at once,
rows written by other programs, and a database that goes away and comes back.

The store contract itself runs on both backends in test_store.py.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from structlog.testing import capture_logs

import worker
from tests.pgserver import PgServer, execute, private_cluster
from worker.errors import ConfigError, InvalidJob, StoreUnavailable
from worker.models import JobKey, JobState
from worker.store import Phase, open_store, postgres_schema
from worker.store.postgres_stats import StatisticsKeeper
from worker.store.postgres_store import PostgresStore

A = JobKey("layers", "job-a")


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    """Six stores opening one empty database at once: one applies the schema, the others find it."""
    stores = await asyncio.gather(*(open_store(pg_url) for _ in range(6)))
    try:
        rows = await _fetch(pg_url, "SELECT version FROM asset_worker.schema_version ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, len(postgres_schema.MIGRATIONS) + 1))
        await stores[0].submit(A, now=1.0)
        assert [j.key for j in await stores[5].list_jobs()] == [A]
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = await open_store(pg_url)
    await store.close()
    await execute(pg_url, "INSERT INTO asset_worker.schema_version (version) VALUES (99)")
    with pytest.raises(ConfigError, match="newer"):
        await open_store(pg_url)


async def test_an_unknown_database_is_a_configuration_error(pg_server: PgServer) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await open_store(pg_server.url("no_such_database"))


async def test_rows_enqueued_in_plain_sql_are_worked_like_any_other(pg_url: str) -> None:
    """The SQL enqueue of docs/operations.md works as written, and the constraints refuse rows the
    worker would misread instead of letting them in."""
    store = await open_store(pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        # Exactly the statement docs/operations.md documents.
        await conn.execute(
            """INSERT INTO asset_worker.jobs (key, provider, upstream_id)
               VALUES ('cloudlayer:from-sql', 'cloudlayer', 'from-sql')
               ON CONFLICT (key) DO NOTHING"""
        )
        (job,) = await store.get([JobKey("cloudlayer", "from-sql")])
        assert job.state is JobState.QUEUED and job.dest is None and job.provider_state == {}
        claimed = await store.claim(owner="w", phase=Phase.POLL, now=job.due_at + 1, lease_s=10, limit=5)
        assert [j.key for j in claimed] == [job.key]
        bad_rows = [
            ("Not A Provider:x", "Not A Provider", "x"),  # no provider can have that name
            ("cloudlayer:y", "cloudlayer", "z"),  # key that disagrees with its parts
            ("layers:has space", "layers", "has space"),  # id the CLI would refuse
        ]
        for key, provider, upstream_id in bad_rows:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    "INSERT INTO asset_worker.jobs (key, provider, upstream_id) VALUES ($1, $2, $3)",
                    key,
                    provider,
                    upstream_id,
                )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                """INSERT INTO asset_worker.jobs (key, provider, upstream_id, state)
                   VALUES ('layers:s', 'layers', 's', 'finished')"""
            )
        # Which providers exist is the worker's registry's to say (at submit, and at the first
        # poll for a row like this), not the table's: a worker with a new provider needs no migration.
        await conn.execute(
            """INSERT INTO asset_worker.jobs (key, provider, upstream_id)
               VALUES ('newvendor:1', 'newvendor', '1')"""
        )
        (other,) = await store.get([JobKey("newvendor", "1")])
        assert other.state is JobState.QUEUED
    finally:
        await conn.close()
        await store.close()


_SUBMITTER = """
import json, sys, time
import worker
url, go_file, keys = sys.argv[1], sys.argv[2], sys.argv[3:]
print("ready", flush=True)
while not __import__("os").path.exists(go_file):
    time.sleep(0.001)
results = worker.submit(keys, store=url)
print(json.dumps([r.created for r in results]))
"""


async def test_the_same_keys_from_four_processes_at_once_make_one_job_each(
    pg_url: str, tmp_path: Path
) -> None:
    """Concurrent duplicate submits through the public API: every key created exactly once."""
    keys = [f"cloudlayer:dup-{i}" for i in range(40)]
    go = tmp_path / "go"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SUBMITTER, pg_url, str(go), *keys, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
    go.touch()  # all four are polling for this file: they submit within a millisecond of each other
    created = []
    for proc in procs:
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        # structlog, unconfigured in this host program, may print the migration on stdout first.
        created.append(json.loads(out.splitlines()[-1]))
    assert [sum(column) for column in zip(*created, strict=True)] == [1] * len(keys)
    rows = await _fetch(pg_url, "SELECT count(*) AS n FROM asset_worker.jobs")
    assert rows[0]["n"] == len(keys)


def test_submit_validates_keys_and_destination_before_writing_anything(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad key, or a destination outside the worker's, writes nothing; a good one is stored."""
    monkeypatch.setenv("ASSET_WORKER_DEST", "s3://assets/generated")
    worker.submit("layers:job_earlier", store=pg_url)
    with pytest.raises(InvalidJob):
        worker.submit(["cloudlayer:fine", "nope:bad"], store=pg_url)
    with pytest.raises(InvalidJob, match="neither a generation job"):  # the provider's own rule
        worker.submit(["cloudlayer:fine", "layers:foo"], store=pg_url)
    with pytest.raises(ConfigError, match="not inside"):
        worker.submit("cloudlayer:fine", store=pg_url, dest="s3://other-bucket/generated")
    assert [r["key"] for r in asyncio.run(_fetch(pg_url, "SELECT key FROM asset_worker.jobs"))] == [
        "layers:job_earlier"
    ]
    (first,) = worker.submit("cloudlayer:fine", store=pg_url, dest="s3://assets/generated/tenant-a")
    assert first.created and first.job.dest == "s3://assets/generated/tenant-a"
    (again,) = worker.submit([JobKey("cloudlayer", "fine")], store=pg_url)
    assert not again.created


async def test_submit_refuses_to_block_a_running_event_loop(pg_url: str) -> None:
    with pytest.raises(RuntimeError, match="submit_async"):
        worker.submit("cloudlayer:x", store=pg_url)
    (result,) = await worker.submit_async("cloudlayer:x", store=pg_url)
    assert result.created


# -- the database goes away ---------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A private PostgreSQL this test may stop and start (the session's serves everyone else)."""
    with private_cluster() as server:
        yield server


async def test_an_outage_is_store_unavailable_and_the_same_store_recovers(own_server: PgServer) -> None:
    """While the server is down every call is StoreUnavailable (ping at once, others after their
    retry window); once it is back the same store object works again."""
    store = await PostgresStore.open(own_server.url(), retry_window_s=0.3)
    try:
        await store.submit(A, now=1.0)
        own_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.claim(owner="w", phase=Phase.POLL, now=2.0, lease_s=10, limit=1)
        with pytest.raises(StoreUnavailable):
            await store.get([A])
        own_server.start()
        await store.ping()
        (job,) = await store.claim(owner="w", phase=Phase.POLL, now=2.0, lease_s=10, limit=1)
        assert job.key == A
    finally:
        await store.close()


async def test_a_short_outage_is_ridden_out_within_the_retry_window(own_server: PgServer) -> None:
    """A write issued while the server is down succeeds once it returns, exactly once."""
    store = await PostgresStore.open(own_server.url(), retry_window_s=20)
    try:
        await store.submit(A, now=1.0)
        own_server.stop(immediate=True)  # like a crash: no clean shutdown
        restart = threading.Timer(1.0, own_server.start)
        restart.start()
        try:
            result = await store.submit(JobKey("layers", "during-outage"), now=2.0)
        finally:
            restart.join()
        assert result.created
        assert len(await store.list_jobs()) == 2
    finally:
        await store.close()


async def test_opening_a_store_on_a_stopped_server_says_so(own_server: PgServer) -> None:
    url = own_server.url()
    own_server.stop()
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        await open_store(url)


@pytest.fixture
async def role(pg_url: str) -> AsyncIterator[str]:
    """A login role of this test alone (roles belong to the whole server, which other test
    processes may share), dropped with its grants afterwards."""
    name = f"aw_role_{secrets.token_hex(4)}"
    yield name
    await execute(pg_url, f"DROP OWNED BY {name}", f"DROP ROLE {name}")


async def test_a_least_privilege_role_works_once_the_schema_exists(pg_url: str, role: str) -> None:
    """A role that may only read and write the tables starts on a migrated schema (nothing to
    create), and on an empty database is told what to grant instead of failing with a traceback."""
    await execute(pg_url, f"CREATE ROLE {role} LOGIN")
    limited_url = pg_url.replace("postgres@", f"{role}@", 1)
    with pytest.raises(ConfigError, match="grant it CREATE"):
        await open_store(limited_url)
    await (await open_store(pg_url)).close()  # migrated by a role that may
    await execute(
        pg_url,
        f"GRANT USAGE ON SCHEMA asset_worker TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA asset_worker TO {role}",
    )
    store = await open_store(limited_url)
    try:
        await store.submit(A, now=1.0)
        assert [
            j.key for j in await store.claim(owner="w", phase=Phase.POLL, now=2.0, lease_s=5, limit=1)
        ] == [A]
    finally:
        await store.close()


async def test_server_errors_that_are_not_about_the_statement_are_store_unavailable(
    pg_url: str, role: str
) -> None:
    """Too many connections (class 53) is the database's state, not a bug: StoreUnavailable, which
    the worker backs off from, never an exception that would stop it."""
    await (await open_store(pg_url)).close()
    await execute(
        pg_url,
        f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1",  # superusers would be exempt from the limit
        f"GRANT USAGE ON SCHEMA asset_worker TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA asset_worker TO {role}",
    )
    store = await PostgresStore.open(pg_url.replace("postgres@", f"{role}@", 1), retry_window_s=0.3)
    try:
        holder = asyncio.Event()
        release = asyncio.Event()

        async def hold(conn: object) -> None:
            holder.set()
            await release.wait()

        # The pool's one allowed connection is busy inside a transaction; a second call needs a
        # second connection, which the server refuses.
        busy = asyncio.create_task(store._transaction(hold))
        try:
            await holder.wait()
            with pytest.raises(StoreUnavailable, match="TooManyConnections"):
                await store.get([A])
        finally:
            release.set()
            await busy
        assert await store.get([A]) == []
    finally:
        await store.close()


async def test_a_statement_the_database_refuses_is_a_bug_raised_at_once(pg_url: str) -> None:
    """A violated constraint is a bug in the caller, not an outage: raised as the driver reported it
    on the first try (never StoreUnavailable, which every caller would retry forever), and the store
    carries on serving."""
    store = await PostgresStore.open(pg_url, retry_window_s=5.0)
    try:
        started = asyncio.get_running_loop().time()
        # Built without JobKey.parse, which would refuse the space: the table's CHECK does too.
        with pytest.raises(asyncpg.CheckViolationError):
            await store.submit(JobKey("layers", "has space"), now=1.0)
        assert asyncio.get_running_loop().time() - started < 2.0
        await store.submit(A, now=1.0)
        assert [j.key for j in await store.get([A])] == [A]
    finally:
        await store.close()


async def test_a_claim_skips_rows_another_claim_has_locked(pg_url: str) -> None:
    """SKIP LOCKED: a row locked by another transaction (a replica in the middle of claiming it) is
    passed over at once, not waited for; the claim takes the next due job instead."""
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        await store.submit(A, now=1.0)
        await store.submit(JobKey("layers", "job-b"), now=2.0)
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM asset_worker.jobs WHERE key = $1 FOR UPDATE", str(A))
        try:
            async with asyncio.timeout(5):  # a plain FOR UPDATE would wait here until the rollback
                claimed = await store.claim(owner="w", phase=Phase.POLL, now=3.0, lease_s=10, limit=2)
        finally:
            await tx.rollback()
        assert [j.key for j in claimed] == [JobKey("layers", "job-b")]
        (again,) = await store.claim(owner="w", phase=Phase.POLL, now=3.0, lease_s=10, limit=2)
        assert again.key == A
    finally:
        await other.close()
        await store.close()


# -- the planner's statistics after bulk inserts ----------------------------------------------------


async def _add_jobs(conn: asyncpg.Connection, first: int, count: int) -> None:
    await conn.execute(
        """INSERT INTO asset_worker.jobs (key, provider, upstream_id)
           SELECT 'cloudlayer:s' || i, 'cloudlayer', 's' || i FROM generate_series($1::int, $2::int) AS i""",
        first,
        first + count - 1,
    )


async def test_statistics_are_refreshed_when_inserted_rows_may_have_doubled_the_table(pg_url: str) -> None:
    """ANALYZE runs once the rows inserted since the last one reach the planner's estimate of the
    table (at least 1,000); below that nothing is asked of the server at all (shown with a closed
    pool: any use of it would be logged as a failure)."""
    await (await open_store(pg_url)).close()
    conn = await asyncpg.connect(pg_url)
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=1)
    closed = await asyncpg.create_pool(pg_url, min_size=1, max_size=1)
    await closed.close()
    keeper = StatisticsKeeper()

    async def estimate() -> float:
        sql = "SELECT reltuples FROM pg_class WHERE oid = 'asset_worker.jobs'::regclass"
        return float(await conn.fetchval(sql))

    try:
        await conn.execute("ALTER TABLE asset_worker.jobs SET (autovacuum_enabled = false)")
        with capture_logs() as events:
            await _add_jobs(conn, 0, 5000)
            await keeper.inserted(closed, 0)  # nothing inserted: nothing to do
            await keeper.inserted(pool, 5000)  # never analyzed: analyzed now
            assert (await estimate(), keeper.inserted_since_analyze) == (5000, 0)
            await _add_jobs(conn, 5000, 3000)
            await keeper.inserted(closed, 999)  # under the minimum
            await keeper.inserted(pool, 2001)  # 3,000 < the estimate of 5,000: read, not analyzed
            await keeper.inserted(closed, 1000)  # 4,000: no need to read the estimate again
            assert (await estimate(), keeper.inserted_since_analyze) == (5000, 4000)
            await _add_jobs(conn, 8000, 1500)
            await keeper.inserted(pool, 1500)  # 5,500 >= 5,000: analyzed
            assert (await estimate(), keeper.inserted_since_analyze) == (9500, 0)
        assert [e["event"] for e in events] == []
    finally:
        await pool.close()
        await conn.close()
