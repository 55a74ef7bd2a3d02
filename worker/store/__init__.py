"""The durable queue and ledger: the ``Store`` contract, and the registry of backends, one line per
backend module, from which ``ASSET_WORKER_STORE`` picks one by URL scheme (docs/architecture.md
walks through adding one)."""

from __future__ import annotations

from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.redaction import redact_url
from worker.store import postgres, sqlite
from worker.store.base import Cursor, Phase, QueueStats, Store, StoreSpec, SubmitResult

__all__ = [
    "STORES",
    "Cursor",
    "Phase",
    "QueueStats",
    "Store",
    "StoreSpec",
    "SubmitResult",
    "open_store",
    "store_for",
]

STORES: dict[str, StoreSpec] = {
    spec.name: spec
    for spec in (
        sqlite.SPEC,
        postgres.SPEC,
    )
}


def store_for(url: str) -> StoreSpec:
    """The backend ``url`` names, its URL checked (no connection made); raises ``ConfigError``."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    for spec in STORES.values():
        if scheme in spec.schemes:
            spec.check(url)
            return spec
    examples = ", ".join(spec.example for spec in STORES.values())
    raise ConfigError(f"ASSET_WORKER_STORE={redact_url(url)!r}: unsupported store (use {examples})")


async def open_store(url: str, *, pool_size: int = 10) -> Store:
    """Open the store named by ``url`` (``pool_size`` connections where the backend pools them).

    Raises ``ConfigError`` for a malformed URL or a scheme no backend serves,
    ``StoreUnavailable`` when the backend cannot be reached (yet), and ``StoreUnusable`` when it
    never will be as it stands (a SQLite file that is damaged, not a database, or read-only).
    """
    return await store_for(url).open(url, pool_size)
