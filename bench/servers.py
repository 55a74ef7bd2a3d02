"""The servers some rows of ``bench/run.py`` need, started only when such a row is about to run and
stopped on every way out (they are entered on the run's ``ExitStack``): PostgreSQL and an S3 server,
both on loopback, both exactly as the tests start them (``tests/pgserver.py``, ``tests/s3server.py``).

Their modules are imported here, on first use, not at the top of ``bench/run.py``: they bring asyncpg,
aiohttp and botocore into this parent, which a run without these rows has no use for.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import peers
from common import BenchError
from contenders import TxCount

if TYPE_CHECKING:
    from tests.pgserver import PgServer
    from tests.s3server import S3Server


def seaweedfs_installed() -> bool:
    """Whether ``weed`` is where the test extra puts it (``peers.find`` looks where pip installs)."""
    return peers.find("weed") is not None


def postgres(stack: contextlib.ExitStack) -> PgServer:
    """The tests' PostgreSQL: ``TEST_ASSET_WORKER_POSTGRES_URL``, else a private cluster (Debian's
    ``postgresql``, installed by apt-get when this is root and it is missing), else 127.0.0.1:5432."""
    from tests.pgserver import run_postgres

    try:
        return stack.enter_context(run_postgres())
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"--postgres: no PostgreSQL server could be started or reached: {exc}") from exc


def describe_postgres(server: PgServer) -> str:
    """Which server, and how it runs: a private cluster runs as the tests run it, with fsync off."""
    if server.bin_dir is None:
        return f"the server TEST_ASSET_WORKER_POSTGRES_URL names, at {server.host}:{server.port}"
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    version = peers.version(str(server.bin_dir / "postgres"), "--version").split(")", 1)[-1].strip()
    return (
        f"PostgreSQL {version}, a private cluster on {server.host}:{server.port} "
        "(tests/pgserver.py: fsync=off, full_page_writes=off, synchronous_commit on)"
    )


@contextlib.contextmanager
def fresh_database(server: PgServer) -> Iterator[dict[str, str]]:
    """A new empty database for one run, as the worker's store; dropped afterwards (on an external
    server too, where it would otherwise stay)."""
    from tests.pgserver import execute

    try:
        url = server.create_database()
    except Exception as exc:  # asyncpg's errors and the network's: the server, not a contender, failed
        raise BenchError(f"PostgreSQL: could not create a database: {exc}") from exc
    try:
        yield {"ASSET_WORKER_STORE": url}
    finally:
        name = database_name(url)
        with contextlib.suppress(Exception):  # a failed drop leaves a database behind, not a wrong result
            asyncio.run(execute(server.url(), f'DROP DATABASE "{name}" WITH (FORCE)'))


# How long the store's connections may take to end once the worker has exited.
_BACKENDS_GONE_S: Final = 10.0
_POLL_S: Final = 0.02


def database_name(url: str) -> str:
    """The database a URL made by ``fresh_database`` names."""
    return url.rsplit("/", 1)[1]


def transaction_counter(server: PgServer) -> TxCount:
    """``TxCount`` from the server's side: ``xact_commit + xact_rollback`` of the run's database in
    ``pg_stat_database``, before ``run`` and after it; each read waits for the database's connections
    to end first (a backend flushes its counters when it exits), so no transaction is left out and
    none of ``submit``'s counts."""

    def start(env: Mapping[str, str]) -> Callable[[str], int | None]:
        database = database_name(env["ASSET_WORKER_STORE"])
        before = transactions(server, database)
        return lambda _out: transactions(server, database) - before

    return start


def transactions(server: PgServer, database: str) -> int:
    """Transactions committed or rolled back in ``database`` so far, read over a connection to
    another database (``postgres``), so reading them adds none."""
    try:
        return asyncio.run(_transactions(server.url(), database))
    except Exception as exc:  # asyncpg's errors and the network's: the server, not a contender, failed
        raise BenchError(f"PostgreSQL: could not read pg_stat_database: {exc}") from exc


async def _transactions(url: str, database: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        active = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
        for _ in range(int(_BACKENDS_GONE_S / _POLL_S)):
            if not await conn.fetchval(active, database):
                break
            await asyncio.sleep(_POLL_S)
        await conn.execute("SELECT pg_stat_clear_snapshot()")  # no cached figures: the current ones
        counted = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1"
        return int(await conn.fetchval(counted, database) or 0)
    finally:
        await conn.close()


def seaweedfs(stack: contextlib.ExitStack, workdir: Path) -> S3Server:
    """SeaweedFS (``weed mini``) with its data in ``workdir``, its bucket ready."""
    from tests.s3server import run_seaweedfs

    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return stack.enter_context(run_seaweedfs(workdir))
    except (RuntimeError, OSError) as exc:
        raise BenchError(f"the S3 server (SeaweedFS) did not start: {exc}") from exc
