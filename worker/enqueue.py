"""Enqueue jobs from another Python program, without the CLI or the HTTP API.

``worker.submit(...)`` is for ordinary (synchronous) code, ``await worker.submit_async(...)`` for
code already running an event loop. Both write the same rows ``asset-worker submit`` writes, so a
running worker (or several replicas sharing a PostgreSQL store) picks the jobs up at once. Like the
CLI, every key is validated before any is written; submitting a key that already exists returns
the existing job unchanged (``created=False``), even when two programs submit it at the same
instant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from worker.config import from_env
from worker.destinations import parse_dest
from worker.models import JobKey
from worker.providers import parse_key
from worker.store import Store, SubmitResult, open_store

Keys = str | JobKey | Iterable[str | JobKey]

# Keys per transaction: large enough that a transaction's cost vanishes per key, small enough that
# a batch's results (each a whole job) stay a few MiB.
SUBMIT_BATCH = 1000


async def submit_async(
    keys: Keys,
    *,
    store: str | Store | None = None,
    dest: str | None = None,
    force: bool = False,
) -> list[SubmitResult]:
    """Submit ``keys`` (``"cloudlayer:<job id>"``, ``"layers:<container id>"``, or ``JobKey``s).

    ``store`` is a store URL (``sqlite:///...`` or ``postgresql://...``), an open ``Store``, or
    None for ``ASSET_WORKER_STORE`` from the environment. ``dest`` gives these jobs their own
    directory or prefix, which must lie inside the worker's ``ASSET_WORKER_DEST`` (read from this
    environment, as the HTTP API checks it; the worker checks again when it runs the job).
    ``force`` re-queues jobs that already finished. Returns one result per key, in order. Raises
    ``InvalidJob`` for a malformed key and ``ConfigError`` for a bad destination or store URL
    (nothing is written then), ``StoreUnavailable`` when the store cannot be reached, and
    ``StoreUnusable`` when it refuses for good (a corrupt or read-only SQLite file).
    """
    parsed = _parse(keys)
    if dest is not None:
        dest = parse_dest(dest, base_url=from_env().dest_url).url
    if store is not None and not isinstance(store, str):
        return await _submit_all(store, parsed, dest=dest, force=force)
    url = store if store is not None else from_env().store_url
    # One short-lived connection is all a batch of inserts needs.
    opened = await open_store(url, pool_size=1)
    try:
        return await _submit_all(opened, parsed, dest=dest, force=force)
    finally:
        await opened.close()


def submit(
    keys: Keys,
    *,
    store: str | None = None,
    dest: str | None = None,
    force: bool = False,
) -> list[SubmitResult]:
    """The blocking form of :func:`submit_async`, for code that runs no event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(submit_async(keys, store=store, dest=dest, force=force))
    raise RuntimeError("worker.submit() blocks; inside an event loop use `await worker.submit_async(...)`")


def _parse(keys: Keys) -> list[JobKey]:
    # A lone string is one key, not an iterable of characters.
    items: Iterable[str | JobKey] = [keys] if isinstance(keys, str | JobKey) else keys
    return [parse_key(str(key)) for key in items]


async def _submit_all(
    store: Store, keys: list[JobKey], *, dest: str | None, force: bool
) -> list[SubmitResult]:
    now = time.time()
    results = []
    for start in range(0, len(keys), SUBMIT_BATCH):
        batch = keys[start : start + SUBMIT_BATCH]
        results += await store.submit_many(batch, now=now, force=force, dest=dest)
    return results
