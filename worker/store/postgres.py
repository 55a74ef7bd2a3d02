"""The PostgreSQL store as the registry sees it: ``postgresql://USER:PASSWORD@HOST:5432/DATABASE``.

Cheap to import: the driver (asyncpg) and the store itself (``postgres_store``) are loaded only when
a store is opened, so a worker on SQLite never loads them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.store.base import Store, StoreSpec


def check(url: str) -> None:
    if not urlsplit(url).hostname and "host=" not in url:
        raise ConfigError(
            "ASSET_WORKER_STORE: a PostgreSQL URL needs a host, "
            "e.g. postgresql://HOST:5432/DATABASE with the user and password before the host"
        )


async def _open(url: str, pool_size: int) -> Store:
    from worker.store.postgres_store import PostgresStore

    check(url)
    return await PostgresStore.open(url, pool_size=pool_size)


SPEC = StoreSpec(
    name="postgresql",
    schemes=("postgresql", "postgres"),
    example="postgresql://HOST:5432/DATABASE (user and password in the URL)",
    check=check,
    open=_open,
)
