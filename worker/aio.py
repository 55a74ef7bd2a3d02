"""Small asyncio helpers for cleanup that must not be cut short by cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("worker.aio")


def _retrieve(task: asyncio.Future[Any]) -> None:
    # A cleanup that outlived a second cancellation still has its failure logged, not lost.
    if not task.cancelled() and task.exception() is not None:
        log.warning("cleanup_failed", error=repr(task.exception()))


async def shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` to completion even if the caller is cancelled meanwhile, then re-raise.

    Used for cleanup (remove a temp file, abort an upload, release a lease). One cancellation
    waits for the cleanup to finish; a second one (an impatient operator) goes through at once,
    leaving the cleanup running in the background.
    """
    task = asyncio.ensure_future(aw)
    task.add_done_callback(_retrieve)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        raise
