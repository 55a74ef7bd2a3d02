"""The store contract: the durable queue and ledger every backend implements.

A job row moves through ``queued → polling → downloading → done | failed | canceled``. The
schedule lives in the row (``due_at``), so nothing is held in memory between steps: a restarted
worker picks up exactly where the last one stopped.

Leases: a worker *claims* due jobs, which sets ``lease_owner`` and ``lease_expires_at``. While it
holds the lease nobody else touches the job; a worker that dies simply stops renewing, and once
``lease_expires_at`` has passed the job is claimable again. Every write made on behalf of a claim
passes the ``owner`` and raises ``LeaseLost`` when the row is no longer leased to that owner, so a
worker that lost its lease can never overwrite its successor's progress.

All times are UNIX seconds (float) passed in by the caller: the store never reads a clock, which
keeps schedules testable.

Failures of the backend itself are ``StoreUnavailable`` when they may pass (a lock held too long, a
full disk, a database restarting: callers wait and try again) and ``StoreUnusable`` when they will
not (a SQLite file that is damaged, not a database or read-only: commands stop and say so).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker.models import AssetRef, Job, JobError, JobKey, JobState, Receipt, TransferProgress


class Phase(enum.StrEnum):
    """What a claim is for. Polls are cheap and many; transfers are heavy and few."""

    POLL = "poll"  # jobs in state queued or polling
    TRANSFER = "transfer"  # jobs in state downloading


@dataclass(frozen=True, slots=True)
class SubmitResult:
    job: Job
    created: bool  # a new row was inserted
    requeued: bool  # an existing final job was reset to queued (force)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a listing page ended: the last job's ``(submitted_at, key)``, the listing's sort order."""

    submitted_at: float
    key: str


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The queue as an operator or an autoscaler sees it at one moment."""

    by_state: dict[JobState, int]  # every state, zero included
    due: int  # unfinished jobs due now and not leased: the backlog no worker has taken yet
    oldest_due_at: float | None  # the earliest ``due_at`` among those, None when there are none


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovered:
    """An item a mirror walk found, as the job to create for it (when there is none yet): ready to
    download when the listing named its files (``assets``), else queued for a poll."""

    key: JobKey
    created_at: float | None
    due_at: float
    assets: tuple[AssetRef, ...] = ()
    # Other keys that copy the same files: when a job of one exists, none is created for the item.
    aliases: tuple[JobKey, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WalkRecord:
    """A mirror source as the store keeps it: the walk under way (or interrupted: ``kind`` and
    ``position`` say where to resume), when walks last completed, the newest item seen, the last
    error, and who holds the walk's lease."""

    source: str
    kind: str | None  # "full" or "incremental" while a walk is under way or was interrupted
    position: str | None
    started_at: float | None
    pages: int
    last_full_walk_at: float | None
    last_walk_at: float | None
    newest_created_at: float | None
    error: JobError | None
    lease_owner: str | None
    lease_expires_at: float | None


@dataclass(frozen=True, slots=True)
class SourceCounts:
    """A mirror source's jobs by state, and the creation time of the oldest item not yet copied
    (what a retention alert watches)."""

    by_state: dict[JobState, int]
    oldest_uncopied_created_at: float | None


@dataclass(frozen=True, slots=True)
class ProgressReport:
    """A claim's latest measure of its download, to be recorded on the job's row."""

    key: JobKey
    owner: str
    progress: TransferProgress


class Store(Protocol):
    @property
    def transactions(self) -> int:
        """Transactions committed or rolled back since the store opened (reads included): what
        jobs cost the store, for benchmarks and the line a run ends with."""
        ...

    async def submit(
        self, key: JobKey, *, now: float, force: bool = False, dest: str | None = None
    ) -> SubmitResult:
        """Insert a queued job due now, or return the existing one unchanged.

        Concurrent submits of one key yield one row. With ``force``, an existing job in a final
        state is reset to ``queued`` (error, polls, attempts, provider state and asset rows
        cleared; ``submitted_at`` set to ``now``; ``dest`` replaced); a job still in progress is
        left alone. ``dest`` is the job's own destination, None for the worker's default.
        """
        ...

    async def submit_many(
        self, keys: Sequence[JobKey], *, now: float, force: bool = False, dest: str | None = None
    ) -> list[SubmitResult]:
        """``submit`` for every key, in one transaction (all or none), one result per key in order.

        A key listed twice is created once (its second result says ``created=False``). Callers
        with very many keys pass them in batches of a few thousand: the results are all loaded.
        """
        ...

    async def cancel(self, key: JobKey, *, now: float) -> Job | None:
        """Move an unfinished job to ``canceled`` (``finished_at=now``, lease dropped), so the worker
        holding it loses its lease at its next write and abandons the work. A final job is returned
        unchanged; None if there is no such job."""
        ...

    async def claim(
        self,
        *,
        owner: str,
        phase: Phase,
        now: float,
        lease_s: float,
        limit: int,
        skip_providers: Sequence[str] = (),
    ) -> list[Job]:
        """Lease up to ``limit`` due jobs of ``phase``, earliest ``due_at`` first.

        A job is claimable when its state belongs to the phase, ``due_at <= now`` and it has no
        lease or its lease expired (``lease_expires_at <= now``). Claiming sets
        ``lease_owner=owner``, ``lease_expires_at=now+lease_s``; for POLL it moves ``queued`` to
        ``polling`` and sets ``polling_since=now`` when unset; for TRANSFER it increments
        ``attempts``. Two concurrent claims never return the same job. Returned jobs carry their
        asset records in position order. Jobs of a provider in ``skip_providers`` are left where
        they are (a provider this worker cannot serve yet: no API key), for a worker that can.
        """
        ...

    async def renew(self, key: JobKey, *, owner: str, now: float, lease_s: float) -> None:
        """Extend the lease to ``now + lease_s``; ``LeaseLost`` if it is not ``owner``'s."""
        ...

    async def reschedule(
        self,
        key: JobKey,
        *,
        owner: str,
        now: float,
        due_at: float,
        polls: int,
        provider_state: dict[str, Any],
    ) -> None:
        """Still pending upstream: state ``polling`` (also from ``downloading``, when the vendor took
        the job back to processing), save the poll count and provider state, set ``due_at``, drop
        the lease."""
        ...

    async def restart_polling(
        self, key: JobKey, *, owner: str, now: float, provider_state: dict[str, Any]
    ) -> None:
        """The vendor took a finished job back to processing: state ``polling`` due now, the poll
        deadline counted afresh from ``now``, every asset row dropped (the next set replaces them,
        never mixed with the old), the lease dropped."""
        ...

    async def mark_ready(
        self,
        key: JobKey,
        *,
        owner: str,
        now: float,
        assets: Sequence[AssetRef],
        provider_state: dict[str, Any],
    ) -> None:
        """Upstream finished: store the asset set (in order) and move to ``downloading``, due now.

        The poll that found the job finished is counted in ``polls``.
        Asset rows already ``stored`` whose id is in the new set keep their receipt; every other
        existing asset row of the job is replaced by the new set. The lease is dropped so a
        transfer claim picks the job up.
        """
        ...

    async def update_asset(self, key: JobKey, *, owner: str, ref: AssetRef) -> None:
        """Replace an asset's source (fresh URL, expiry, published size/checksum)."""
        ...

    async def record_receipt(self, key: JobKey, *, owner: str, receipt: Receipt) -> None:
        """Mark one asset ``stored`` with its receipt (once; a second call is a no-op)."""
        ...

    async def find_stored(self, *, sha256: str, size: int) -> Receipt | None:
        """The earliest stored receipt of any job with exactly this content, if one exists."""
        ...

    async def fail_asset(self, key: JobKey, *, owner: str, asset_id: str, error: JobError) -> None:
        """Mark one asset ``failed`` with an error."""
        ...

    async def finish(
        self,
        key: JobKey,
        *,
        owner: str,
        now: float,
        state: JobState,
        error: JobError | None = None,
        receipts: Sequence[Receipt] = (),
    ) -> None:
        """Move to a final state, set ``finished_at``, record the error, drop the lease; first record
        ``receipts`` as ``record_receipt`` does, in the same transaction (the last asset of a job
        costs one transaction, not two)."""
        ...

    async def retry_later(
        self, key: JobKey, *, owner: str, now: float, due_at: float, error: JobError | None = None
    ) -> None:
        """Keep the state, set ``due_at``, remember the last error, drop the lease."""
        ...

    async def postpone(self, key: JobKey, *, owner: str, now: float, due_at: float, error: JobError) -> None:
        """The destination is full or unreachable: the job waits until ``due_at`` without spending
        its attempts. Keeps the state, sets ``due_at``, records ``error`` as the job's error, drops
        the lease, and gives back the attempt a transfer claim counted (a ``downloading`` job's
        ``attempts`` goes down by one, never below 0). Assets are untouched. ``LeaseLost`` if the
        job is not leased to ``owner``."""
        ...

    async def release(self, key: JobKey, *, owner: str, now: float) -> None:
        """Drop the lease and make the job due now (shutdown); silent if not ``owner``'s.

        An interrupted transfer gives back the attempt its claim counted: only crashes (leases
        that simply expire) count against ``max_attempts``.
        """
        ...

    async def record_progress(self, reports: Sequence[ProgressReport]) -> None:
        """Record each report on its job, all in one transaction; a report whose job is no longer
        leased to its ``owner`` is skipped (progress is advisory: it never raises ``LeaseLost``)."""
        ...

    # -- mirror mode ------------------------------------------------------------------------

    async def submit_discovered(self, items: Sequence[Discovered], *, source: str, now: float) -> list[bool]:
        """Create a job for each item that has none (any job of that key or of one of its
        ``aliases``, whatever its state or source, counts: an item is never fetched twice), tagged
        with ``source`` and the item's creation time, all in one transaction; whether each was
        created, in order."""
        ...

    async def claim_walk(self, source: str, *, owner: str, now: float, lease_s: float) -> WalkRecord | None:
        """Take the walk lease of ``source`` (creating its record on first use) when nobody holds
        it or its lease ran out; the record, or None when another walker holds it."""
        ...

    async def save_walk(
        self,
        source: str,
        *,
        owner: str,
        now: float,
        lease_s: float,
        kind: str,
        position: str | None,
        pages: int,
        newest_created_at: float | None,
    ) -> None:
        """Record the walk's progress after a page (where to resume) and extend its lease;
        ``LeaseLost`` when ``owner`` no longer holds it."""
        ...

    async def end_walk(
        self,
        source: str,
        *,
        owner: str,
        now: float,
        kind: str,
        completed: bool,
        newest_created_at: float | None,
        error: JobError | None = None,
    ) -> None:
        """Release the walk's lease. ``completed``: the walk reached its end (its position is
        cleared, the time recorded: as a full walk too when ``kind`` is full); otherwise its kind
        and position stay for the next walker to resume, with ``error`` recorded. Silent when
        ``owner`` no longer holds it."""
        ...

    async def walks(self) -> list[WalkRecord]:
        """Every mirror source's record, by name."""
        ...

    async def source_counts(self) -> dict[str, SourceCounts]:
        """Per mirror source: its jobs by state, and the oldest uncopied item's creation time."""
        ...

    async def get(self, keys: Sequence[JobKey]) -> list[Job]:
        """The named jobs that exist, in the order asked, with their assets."""
        ...

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState] | None = None,
        limit: int | None = None,
        after: Cursor | None = None,
    ) -> list[Job]:
        """Jobs (optionally only these states), oldest submission first (ties by key), with their
        assets; with ``after``, only those sorting after that cursor (keyset pagination: stable
        while jobs are added or change state)."""
        ...

    async def queue_stats(self, *, now: float) -> QueueStats:
        """Counts by state, and the backlog due at ``now`` that no live lease holds."""
        ...

    async def due_count(
        self, *, phase: Phase, now: float, limit: int, skip_providers: Sequence[str] = ()
    ) -> int:
        """How many jobs of ``phase`` a claim at ``now`` (with the same ``skip_providers``) could
        take, counting at most ``limit``: a walk of the phase's due jobs that stops there, however
        long the queue."""
        ...

    async def unfinished(self, *, skip_providers: Sequence[str] = ()) -> tuple[bool, float | None]:
        """Whether any job (of a provider not in ``skip_providers``) is not final, and the earliest
        moment one of them may be claimed (``due_at`` or, if leased, ``lease_expires_at``,
        whichever is later); ``None`` if none.

        Asked on every pass of the claim loop: it must not count or scan the queue (an index
        lookup per phase, and a look at the leased jobs)."""
        ...

    async def ping(self) -> None:
        """Round-trip to the backend; ``StoreUnavailable`` if it cannot be reached (readiness)."""
        ...

    async def close(self) -> None: ...


def submit_results(
    names: Sequence[str], jobs: Sequence[Job], *, existing: set[str], requeued: set[str]
) -> list[SubmitResult]:
    """One result per submitted key, in order, as if the keys had been submitted one by one: only
    the first mention of a key can have created or re-queued it."""
    by_key = {str(job.key): job for job in jobs}
    seen: set[str] = set()
    results = []
    for name in names:
        first = name not in seen
        seen.add(name)
        results.append(
            SubmitResult(
                job=by_key[name], created=first and name not in existing, requeued=first and name in requeued
            )
        )
    return results


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSpec:
    """A store backend as the registry (``worker.store``) sees it, exported by its module as ``SPEC``.

    The module the registry names must be cheap to import: its database driver is imported inside
    ``open``, so a worker on SQLite never loads the PostgreSQL driver.
    """

    name: str
    schemes: tuple[str, ...]  # URL schemes it serves, lower case
    example: str  # shown in errors: "sqlite:///PATH"
    check: Callable[[str], object]  # refuses a malformed URL of its schemes (ConfigError), never connects
    open: Callable[[str, int], Awaitable[Store]]  # (URL, pool size) -> an open, migrated store
    # Whether a store is there to be read without creating one (a file store's file); read-only
    # commands ask first, so that looking never creates an empty store in the wrong place.
    exists: Callable[[str], bool] = lambda _url: True
