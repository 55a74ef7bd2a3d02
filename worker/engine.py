"""One job's lifecycle, one step at a time: poll it, or transfer its assets, then record the result.

A little over 400 lines on purpose: the handling of every error a step can meet reads top to bottom
in one place (vendor rules live with the providers, destination rules with the sinks).

The engine holds no state between steps: everything it decides goes to the store (a new
``due_at``, the asset set, a receipt, a final state), so any worker can take the next step.

Error handling by class, never by message:

- while polling, ``UpstreamUnavailable`` (already retried per request) reschedules the poll;
  ``UpstreamRejected`` and ``InvalidJob`` fail the job with their code; the poll deadline fails it
  with ``poll_timeout``.
- while transferring an asset, ``SourceExpired`` fetches a fresh URL and tries again;
  ``IncompleteTransfer``, ``IntegrityError`` and other retryable errors back off and try again, up
  to ``max_attempts``; then the asset fails with the last error's code. ``StorageRejected``,
  ``UpstreamRejected``, ``DestinationBlocked`` and ``AssetTooLarge`` fail the asset at once. A job
  whose assets all stored is ``done``; one with any failed asset is ``failed`` with the first
  asset error.
- ``StorageUnavailable`` (a full disk, an unreachable S3) is not the asset's fault: the whole job
  goes back to the queue for a while (``DestinationHealth``), its attempt given back, and nothing
  is downloaded again until the destination takes writes.
"""

from __future__ import annotations

import collections
import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import structlog

from worker.clock import Clock
from worker.destinations import DestinationHealth, SinkRouter
from worker.digest import normalise_sha256
from worker.errors import (
    AssetSetChanged,
    InvalidJob,
    LeaseLost,
    SourceExpired,
    StorageUnavailable,
    StoreUnavailable,
    StoreUnusable,
    UpstreamRejected,
    UpstreamUnavailable,
    WorkerError,
)
from worker.lease import Lease, Sleep, deliberate_sleep
from worker.meter import TransferMeter
from worker.metrics import Metrics
from worker.models import (
    AssetRecord,
    AssetRef,
    AssetState,
    Failed,
    Job,
    JobError,
    JobState,
    Pending,
    Ready,
    Receipt,
)
from worker.naming import choose_ext, render_key
from worker.policy import Backoff
from worker.providers.base import Provider
from worker.sinks.base import Sink
from worker.store.base import Store
from worker.transfer import TransferOptions, fetch_to_sink

log = structlog.get_logger("worker.engine")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    """What the engine decides by. How often each job is polled, when polling gives up and when a
    URL is refreshed before its expiry are its provider's (``Provider.schedule``)."""

    path_template: str
    max_attempts: int
    transfer: TransferOptions
    retry_backoff: Backoff
    # How long a job waits for a full or unreachable destination (grows, capped).
    destination_backoff: Backoff = field(default_factory=lambda: Backoff(initial_s=1.0, max_s=60.0))


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        providers: Mapping[str, Provider],
        sinks: SinkRouter,
        session: aiohttp.ClientSession,
        settings: EngineSettings,
        clock: Clock,
        sleep: Sleep | None = None,
        rand: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._providers = providers
        self._sinks = sinks
        self._metrics = metrics or Metrics()
        self._session = session
        self._settings = settings
        self._clock = clock
        self._sleep = sleep or clock.sleep
        self._rand = rand
        self.destination = DestinationHealth(settings.destination_backoff)
        # Jobs this engine finished, by final state: what `run --fail-on-failed` reports on.
        self.outcomes: collections.Counter[str] = collections.Counter()

    # -- polling ------------------------------------------------------------------------------

    async def poll(self, job: Job, lease: Lease) -> bool:
        """Poll once. Returns True when the job became ready for transfer."""
        owner = lease.token
        polls = self._metrics.polls
        try:
            provider = self._provider(job)
        except InvalidJob as exc:
            polls.labels(provider=job.key.provider, result="rejected").inc()
            await self._finish(job, owner, JobState.FAILED, JobError(exc.code, exc.message))
            return False
        now = self._clock.now()
        started = job.polling_since if job.polling_since is not None else now
        deadline_s = provider.schedule.deadline_s
        deadline_at = started + deadline_s
        if now >= deadline_at:
            last = job.provider_state.get("last_status", "pending")
            message = f"still {last!r} upstream after {deadline_s:g} s of polling"
            await self._finish(job, owner, JobState.FAILED, JobError("poll_timeout", message))
            return False
        try:
            outcome = await provider.poll(job)
        except (UpstreamRejected, InvalidJob) as exc:
            polls.labels(provider=job.key.provider, result="rejected").inc()
            await self._finish(job, owner, JobState.FAILED, JobError(exc.code, exc.message))
            return False
        except WorkerError as exc:
            if not exc.retryable:
                raise
            polls.labels(provider=job.key.provider, result="error").inc()
            # The request-level retries gave up; the poll schedule decides when to try again.
            await self._reschedule(job, owner, deadline_at, {"last_error": exc.code})
            log.warning("job_poll_failed", job=str(job.key), error=exc.code, message=exc.message)
            return False
        lease.touch()
        result = {Pending: "pending", Ready: "ready", Failed: "failed"}[type(outcome)]
        polls.labels(provider=job.key.provider, result=result).inc()
        match outcome:
            case Pending(status=status, provider_state=state):
                await self._reschedule(job, owner, deadline_at, {**state, "last_status": status})
                log.debug("job_polled", job=str(job.key), status=status, polls=job.polls + 1)
                return False
            case Ready(assets=assets, provider_state=state):
                if not assets:
                    await self._finish(
                        job,
                        owner,
                        JobState.FAILED,
                        JobError("no_assets", "finished upstream without any file"),
                    )
                    return False
                await self._store.mark_ready(
                    job.key, owner=owner, now=self._clock.now(), assets=assets, provider_state=state
                )
                log.info("job_ready", job=str(job.key), assets=len(assets), polls=job.polls + 1)
                return True
            case Failed(code=code, message=message):
                await self._finish(job, owner, JobState.FAILED, JobError(code, message))
                return False
        raise AssertionError(f"unexpected poll outcome {outcome!r}")  # pragma: no cover

    async def _reschedule(self, job: Job, owner: str, deadline_at: float, state: dict[str, object]) -> None:
        # The clock is read after the poll: its request retries may have taken minutes, and the
        # next poll must still wait a whole delay from now.
        now = self._clock.now()
        delay = self._provider(job).schedule.backoff.delay(job.polls, self._rand)
        # Never sleep past the deadline: the next claim then fails the job on time.
        due_at = min(now + delay, deadline_at)
        await self._store.reschedule(
            job.key, owner=owner, now=now, due_at=due_at, polls=job.polls + 1, provider_state=state
        )

    # -- transfer -----------------------------------------------------------------------------

    async def transfer(self, job: Job, lease: Lease) -> None:
        """Store every pending asset of a ``downloading`` job, then finish it."""
        owner = lease.token
        if job.attempts > self._settings.max_attempts:
            error = job.error or JobError("too_many_attempts", "the job was interrupted too often")
            await self._finish(job, owner, JobState.FAILED, error)
            return
        first_error: JobError | None = None
        pending = [record for record in job.assets if record.state is AssetState.PENDING]
        stored: list[Receipt] = []
        # The last asset's receipt is written by finish() itself: one transaction, not two. The
        # others are written as each is stored, so a crash in between fetches none of them again.
        deferred: list[Receipt] = []
        try:
            for record in job.assets:
                if record.state is AssetState.STORED:
                    continue
                if record.state is AssetState.FAILED:
                    first_error = first_error or record.error
                    continue
                last = record is pending[-1]
                receipt, asset_error = await self._store_asset(job, record, lease, record_receipt=not last)
                first_error = first_error or asset_error
                if receipt is not None:
                    stored.append(receipt)
                    if last:
                        deferred.append(receipt)
        except AssetSetChanged as changed:
            await self._resolve_again(job, owner, changed)
            return
        except StorageUnavailable as down:
            await self._wait_for_destination(job, owner, down)
            return
        state = JobState.FAILED if first_error is not None else JobState.DONE
        await self._finish(job, owner, state, first_error, stored=stored, unrecorded=deferred)

    async def _wait_for_destination(self, job: Job, owner: str, down: StorageUnavailable) -> None:
        """The destination is full or unreachable: the job goes back to the queue for a while,
        its attempt given back; what it stored so far stays stored."""
        now = self._clock.now()
        delay = self.destination.failed(now, self._rand)
        error = JobError(down.code, down.message)
        await self._store.postpone(job.key, owner=owner, now=now, due_at=now + delay, error=error)
        self._metrics.destination_waits.labels(code=down.code).inc()
        log.warning(
            "destination_unavailable",
            job=str(job.key),
            error=down.code,
            message=down.message,
            retry_in_s=round(delay, 3),
        )

    async def _resolve_again(self, job: Job, owner: str, changed: AssetSetChanged) -> None:
        """The vendor replaced the job's files: start over from the new set (or from polling).

        Receipts of the old set are dropped from the job (their copies stay where they are), so a
        job never ends with a mix of old and new files.
        """
        now = self._clock.now()
        old_ids = [a.ref.asset_id for a in job.assets]
        history = {**job.provider_state, "asset_set_changed_at": now, "replaced_asset_ids": old_ids}
        new = changed.assets
        log.warning(
            "asset_set_changed",
            job=str(job.key),
            old_assets=old_ids,
            new_assets=None if new is None else [a.asset_id for a in new],
            message=changed.message,
        )
        if new is None:
            await self._store.restart_polling(job.key, owner=owner, now=now, provider_state=history)
        elif not new:
            error = JobError("no_assets", "the vendor replaced the job's files with none")
            await self._finish(job, owner, JobState.FAILED, error)
        else:
            await self._store.mark_ready(job.key, owner=owner, now=now, assets=new, provider_state=history)

    async def _reuse(self, ref: AssetRef, sink: Sink) -> Receipt | None:
        """A stored copy with exactly the content the vendor published, if this worker holds one."""
        if ref.expected_sha256 is None or ref.expected_size is None:
            return None
        sha256 = normalise_sha256(ref.expected_sha256)
        if sha256 is None:
            return None
        found = await self._store.find_stored(sha256=sha256, size=ref.expected_size)
        # Only a copy inside the job's destination counts: after a change of ASSET_WORKER_DEST
        # (another directory, bucket or prefix), or for a job with its own destination, the asset
        # is published where the job's files belong.
        if found is None or not sink.owns(found.uri):
            return None
        if not await sink.still_has(found):
            return None
        return Receipt(
            asset_id=ref.asset_id,
            uri=found.uri,
            size=found.size,
            sha256=found.sha256,
            upstream_verified=True,
            stored_at=self._clock.now(),
            etag=found.etag,
            version_id=found.version_id,
            origin="reused",
        )

    async def _store_asset(
        self, job: Job, record: AssetRecord, lease: Lease, *, record_receipt: bool
    ) -> tuple[Receipt | None, JobError | None]:
        """Store one asset: its receipt (recorded unless ``record_receipt`` is False, when the
        caller records it), or the error it failed with (recorded)."""
        owner = lease.token
        try:
            sink = self._sinks.for_dest(job.dest)
            receipt = await self._reuse(record.ref, sink) or await self._fetch_with_retries(
                job, record.ref, lease, sink
            )
        except (LeaseLost, StoreUnavailable, StoreUnusable, AssetSetChanged, StorageUnavailable):
            raise  # not the asset's fault: the job as a whole waits, moves on or stops
        except WorkerError as exc:
            error = JobError(exc.code, exc.message)
            await self._store.fail_asset(job.key, owner=owner, asset_id=record.ref.asset_id, error=error)
            log.warning(
                "asset_failed",
                job=str(job.key),
                asset=record.ref.asset_id,
                error=exc.code,
                message=exc.message,
            )
            return None, error
        if record_receipt:
            await self._store.record_receipt(job.key, owner=owner, receipt=receipt)
        self._metrics.stored_assets.labels(provider=job.key.provider).inc()
        self._metrics.stored_bytes.labels(provider=job.key.provider).inc(receipt.size)
        log.info(
            "asset_stored",
            job=str(job.key),
            asset=receipt.asset_id,
            uri=receipt.uri,
            size=receipt.size,
            sha256=receipt.sha256,
            upstream_verified=receipt.upstream_verified,
        )
        return receipt, None

    async def _fetch_with_retries(self, job: Job, ref: AssetRef, lease: Lease, sink: Sink) -> Receipt:
        provider = self._provider(job)
        attempts = self._settings.max_attempts
        needs_refresh = False
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                # A retry may come long after the claim (a stalled socket, a backoff): check the
                # job is still ours before opening the destination, whose clean-up of orphaned temp
                # files would otherwise delete the live temp file of a worker that took it over.
                await lease.confirm()
            if (
                ref.expires_at is not None
                and self._clock.now() > ref.expires_at - provider.schedule.expiry_margin_s
            ):
                needs_refresh = True
            try:
                if needs_refresh:
                    ref = await provider.refresh(job, ref)
                    await self._store.update_asset(job.key, owner=lease.token, ref=ref)
                    needs_refresh = False
                started = time.monotonic()
                meter = TransferMeter(ref.asset_id, self._clock.now)

                def received(count: int, meter: TransferMeter = meter) -> None:
                    lease.touch()
                    meter.add(count)

                lease.meter = meter
                try:
                    copy = await fetch_to_sink(
                        self._session,
                        ref,
                        sink,
                        key_for=functools.partial(self._key, job, ref),
                        options=self._settings.transfer,
                        on_start=meter.start,
                        on_progress=received,
                        keep_alive=lease.touch,
                        keep_on_cancel=lambda: not lease.revoked,
                        before_commit=lease.confirm,
                        wall_clock=self._clock.now,
                    )
                finally:
                    lease.meter = None
            except (AssetSetChanged, StorageUnavailable):
                raise
            except WorkerError as exc:
                if not exc.retryable or attempt == attempts:
                    raise
                self._metrics.retries.labels(provider=job.key.provider, reason=exc.code).inc()
                log.info(
                    "asset_retry",
                    job=str(job.key),
                    asset=ref.asset_id,
                    error=exc.code,
                    attempt=attempt,
                    message=exc.message,
                )
                if isinstance(exc, SourceExpired):
                    # A fresh URL is worth trying at once; waiting would not make the old one work.
                    needs_refresh = True
                    continue
                await self._pause(exc, attempt)
                continue
            self._metrics.transfer_duration.observe(time.monotonic() - started)
            self.destination.succeeded()
            return Receipt(
                asset_id=ref.asset_id,
                uri=copy.committed.uri,
                etag=copy.committed.etag,
                version_id=copy.committed.version_id,
                origin="already_present" if copy.committed.already_present else "downloaded",
                size=copy.size,
                sha256=copy.sha256,
                upstream_verified=copy.upstream_verified,
                stored_at=self._clock.now(),
            )
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def _pause(self, exc: WorkerError, attempt: int) -> None:
        """Back off before the next attempt (the server's ``Retry-After`` when it gave one)."""
        delay = self._settings.retry_backoff.delay(attempt - 1, self._rand)
        if isinstance(exc, UpstreamUnavailable) and exc.retry_after_s is not None:
            delay = exc.retry_after_s
        await deliberate_sleep(self._sleep, delay)

    def _key(self, job: Job, ref: AssetRef, content_type: str | None) -> str:
        ext = choose_ext(hint=ref.ext, url=ref.url, content_type=content_type)
        return render_key(
            self._settings.path_template,
            provider=job.key.provider,
            job=self._provider(job).folder(job),
            asset=ref.asset_id,
            ext=ext,
        )

    # -- shared -------------------------------------------------------------------------------

    def _provider(self, job: Job) -> Provider:
        provider = self._providers.get(job.key.provider)
        if provider is None:
            raise InvalidJob(f"no provider {job.key.provider!r} is configured in this worker")
        return provider

    async def _finish(
        self,
        job: Job,
        owner: str,
        state: JobState,
        error: JobError | None,
        *,
        stored: Sequence[Receipt] = (),
        unrecorded: Sequence[Receipt] = (),
    ) -> None:
        """End the job (recording ``unrecorded`` receipts in the same transaction); its log line
        counts what the claim found stored plus ``stored``, what this claim stored."""
        now = self._clock.now()
        await self._store.finish(job.key, owner=owner, now=now, state=state, error=error, receipts=unrecorded)
        self.outcomes[state.value] += 1
        self._metrics.job_outcomes.labels(provider=job.key.provider, outcome=state.value).inc()
        copies = [a.receipt for a in job.assets if a.receipt is not None] + list(stored)
        log.info(
            "job_finished",
            job=str(job.key),
            provider=job.key.provider,
            outcome=state.value,
            duration_s=round(now - job.submitted_at, 3),
            bytes=sum(r.size for r in copies),
            assets=len(job.assets),
            assets_stored=len(copies),
            attempts=job.attempts,
            polls=job.polls,
            error_code=error.code if error else None,
            error=error.message if error else None,
        )
