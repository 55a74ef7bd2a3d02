"""Mirror mode: walk a vendor's listing of an account and turn every item into an ordinary job
(same store, same verification, same dedupe), before the vendor's retention deletes it.

One walk per source at a time across replicas: the walker holds the source's lease in the store,
saves where it is after every page (which renews the lease), and a walker that dies leaves the
walk to be resumed from its last page once the lease runs out. The kind of walk, when an
incremental walk may stop and how urgent an item is are decided in ``mirror_plan`` (pure).

Reads: the listing goes through the provider's own API client, so it spends the same retries and
rate budget as polls; before each page the walk yields to polls (``yield_to_polls``: while the
runner's poll pool is full, submitted jobs' polls go first).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from worker.aio import shielded
from worker.clock import Clock
from worker.config import MirrorSettings
from worker.errors import LeaseLost, WorkerError, describe
from worker.mirror_plan import INCREMENTAL, MirrorSource, due_at, may_stop, walk_kind
from worker.models import JobError
from worker.providers.base import Lister
from worker.store.base import Discovered, Store

log = structlog.get_logger("worker.mirror")


@dataclass(frozen=True, slots=True)
class WalkOutcome:
    """What one walk of one source did."""

    source: str
    kind: str
    pages: int
    items: int
    created: int
    completed: bool
    error: JobError | None = None


async def _no_wait() -> None:
    return None


class Mirror:
    def __init__(
        self,
        *,
        store: Store,
        listers: Mapping[str, Lister],
        settings: MirrorSettings,
        clock: Clock,
        owner: str,
        yield_to_polls: Callable[[], Awaitable[None]] = _no_wait,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._listers = listers
        self._settings = settings
        self._clock = clock
        self._owner = owner
        self._yield = yield_to_polls
        self._wake = wake
        # Each source whose last walk here failed, with why (cleared by a walk that completes).
        self.failures: dict[str, JobError] = {}

    async def walk_all(self, sources: Sequence[MirrorSource]) -> list[WalkOutcome]:
        """One walk of each source in turn (a source another replica is walking is skipped); a
        source that fails is recorded and the others carry on."""
        outcomes = []
        for source in sources:
            try:
                outcome = await self.walk(source)
            except WorkerError as exc:
                # The store could not even hand out the walk's lease (down, or locked): this
                # source waits for the next round; the others carry on.
                self.failures[source.name] = JobError(exc.code, exc.message)
                log.warning("mirror_walk_failed", source=source.name, error=exc.code, message=exc.message)
                continue
            except Exception as exc:
                # A bug, or an answer no check foresaw: this source's walk is lost for this round
                # (its place is saved), the others are walked.
                self.failures[source.name] = JobError("internal_error", describe(exc))
                log.exception("mirror_walk_crashed", source=source.name, error=describe(exc))
                continue
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    async def run(self, sources: Sequence[MirrorSource], *, stop: asyncio.Event) -> None:
        """Walk every source now and then every ``interval_s`` until ``stop``. A walk that breaks
        (a bug) is logged and tried again next round: it must not take the worker down with it."""
        while not stop.is_set():
            try:
                await self.walk_all(sources)
            except Exception as exc:
                log.exception("mirror_crashed", error=describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._settings.interval_s)

    async def walk(self, source: MirrorSource) -> WalkOutcome | None:
        """Walk ``source`` once (resuming an interrupted walk); None when another walker has it."""
        now = self._clock.now()
        record = await self._store.claim_walk(
            source.name, owner=self._owner, now=now, lease_s=self._settings.lease_s
        )
        if record is None:
            log.info("mirror_walk_busy", source=source.name)
            return None
        kind = walk_kind(record, now=now, full_interval_s=self._settings.full_interval_s)
        resumed = record.kind == kind and record.position is not None
        start = record.position if resumed else None
        pages = record.pages if resumed else 0
        newest_known = record.newest_created_at
        newest_seen: float | None = None
        items = created = 0
        log.info("mirror_walk_started", source=source.name, kind=kind, resumed_at=start)
        lister = self._listers.get(source.provider)
        try:
            if lister is None:
                raise WorkerError(
                    f"{source.provider} is not configured in this worker (no API key)",
                    code="provider_not_configured",
                )
            since = newest_known if kind == INCREMENTAL else None
            walk = lister.walk(source.scope, start=start, since=since)
            try:
                async for page in walk:
                    found = [
                        Discovered(
                            key=item.key,
                            created_at=item.created_at,
                            due_at=due_at(
                                item.created_at, now=self._clock.now(), retention_s=self._settings.retention_s
                            ),
                            assets=item.assets,
                            aliases=item.aliases,
                        )
                        for item in page.items
                    ]
                    made = await self._store.submit_discovered(
                        found, source=source.name, now=self._clock.now()
                    )
                    pages += 1
                    items += len(made)
                    created += sum(made)
                    if any(made):
                        self._wake()
                    stamps = [item.created_at for item in page.items if item.created_at is not None]
                    if stamps:
                        newest_seen = max(stamps) if newest_seen is None else max(newest_seen, *stamps)
                    await self._store.save_walk(
                        source.name,
                        owner=self._owner,
                        now=self._clock.now(),
                        lease_s=self._settings.lease_s,
                        kind=kind,
                        position=page.resume,
                        pages=pages,
                        newest_created_at=newest_seen,
                    )
                    if kind == INCREMENTAL and may_stop(page.items, made, newest_known):
                        break
                    await self._yield()
            finally:
                # Leaving early (an incremental walk's stop, an error) closes the listing's generator.
                close = getattr(walk, "aclose", None)
                if close is not None:
                    await close()
        except LeaseLost:
            # Another walker took the source over (this one was too slow to save a page in time):
            # it resumes from the last page saved; nothing to hand back.
            log.warning("mirror_walk_taken_over", source=source.name)
            return WalkOutcome(source.name, kind, pages, items, created, completed=False)
        except WorkerError as exc:
            error = JobError(exc.code, exc.message)
            await shielded(self._end(source, kind, completed=False, newest=newest_seen, error=error))
            self.failures[source.name] = error
            log.warning(
                "mirror_walk_failed", source=source.name, kind=kind, error=exc.code, message=exc.message
            )
            return WalkOutcome(source.name, kind, pages, items, created, completed=False, error=error)
        except BaseException:
            # Cancelled (a drain) or a bug: the walk stays where it was saved, for whoever is next.
            await shielded(self._end(source, kind, completed=False, newest=newest_seen, error=None))
            raise
        await self._end(source, kind, completed=True, newest=newest_seen, error=None)
        self.failures.pop(source.name, None)
        log.info("mirror_walk_finished", source=source.name, kind=kind, pages=pages, items=items, new=created)
        return WalkOutcome(source.name, kind, pages, items, created, completed=True)

    async def _end(
        self,
        source: MirrorSource,
        kind: str,
        *,
        completed: bool,
        newest: float | None,
        error: JobError | None,
    ) -> None:
        with contextlib.suppress(WorkerError):
            await self._store.end_walk(
                source.name,
                owner=self._owner,
                now=self._clock.now(),
                kind=kind,
                completed=completed,
                newest_created_at=newest,
                error=error,
            )
