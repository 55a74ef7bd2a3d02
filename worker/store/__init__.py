"""The durable queue and ledger: the ``Store`` contract and the backend chosen by a store URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from worker.config import sqlite_path
from worker.errors import ConfigError
from worker.store.base import Cursor, Phase, QueueStats, Store, SubmitResult

__all__ = ["Cursor", "Phase", "QueueStats", "Store", "SubmitResult", "open_store"]


async def open_store(url: str) -> Store:
    """Open the store named by ``url`` (``sqlite:///relative.db`` or ``sqlite:////absolute.db``).

    Raises ``ConfigError`` for a malformed URL or a scheme no backend serves.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        # Imported here so a future PostgreSQL-only deployment never loads the SQLite driver.
        from worker.store.sqlite import SqliteStore

        return await SqliteStore.open(sqlite_path(url))
    raise ConfigError(
        f"ASSET_WORKER_STORE={url!r}: unsupported store scheme {scheme!r} "
        "(use sqlite:///PATH, e.g. sqlite:///./asset-worker.db)"
    )
