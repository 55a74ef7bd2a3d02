"""The durable queue and ledger: the ``Store`` contract and the backend chosen by a store URL."""

from __future__ import annotations

from worker.config import sqlite_path, store_kind
from worker.store.base import Cursor, Phase, QueueStats, Store, SubmitResult

__all__ = ["Cursor", "Phase", "QueueStats", "Store", "SubmitResult", "open_store"]


async def open_store(url: str, *, pool_size: int = 10) -> Store:
    """Open the store named by ``url``: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
    ``postgresql://user:password@host:5432/database`` (``pool_size`` connections).

    Raises ``ConfigError`` for a malformed URL or a scheme no backend serves,
    ``StoreUnavailable`` when the backend cannot be reached (yet), and ``StoreUnusable`` when it
    never will be as it stands (a SQLite file that is damaged, not a database, or read-only).
    """
    if store_kind(url) == "postgresql":
        # Imported here so a SQLite-only installation never loads the PostgreSQL driver.
        from worker.store.postgres import PostgresStore

        return await PostgresStore.open(url, pool_size=pool_size)
    # Imported here so a PostgreSQL-only deployment never loads the SQLite driver.
    from worker.store.sqlite import SqliteStore

    return await SqliteStore.open(sqlite_path(url))
