"""Small asyncio helpers for cleanup that must not be cut short by cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog

from worker.errors import describe

T = TypeVar("T")
log = structlog.get_logger("worker.aio")


# Cleanups still running after their caller gave up on them (a second cancellation): whoever
# closes the resources they need (the store, the session) waits for them first.
_pending_cleanups: set[asyncio.Future[Any]] = set()


def _retrieve(task: asyncio.Future[Any]) -> None:
    _pending_cleanups.discard(task)
    # A cleanup that outlived a second cancellation still has its failure logged, not lost.
    if not task.cancelled() and task.exception() is not None:
        log.warning("cleanup_failed", error=describe(task.exception() or Exception()))


async def finish_cleanups(timeout_s: float) -> None:
    """Wait (bounded) for cleanups left running by an impatient cancellation."""
    if _pending_cleanups:
        await asyncio.wait(set(_pending_cleanups), timeout=timeout_s)


async def shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` to completion even if the caller is cancelled meanwhile, then re-raise.

    Used for cleanup (remove a temp file, abort an upload, release a lease). One cancellation
    waits for the cleanup to finish; a second one (an impatient operator) goes through at once,
    leaving the cleanup running in the background.
    """
    task = asyncio.ensure_future(aw)
    _pending_cleanups.add(task)
    task.add_done_callback(_retrieve)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        raise
