"""The store contract, run against both backends: SQLite and PostgreSQL (through ``store_url``).

Tests about one backend's files or schema bookkeeping name that backend in their own URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pgserver import PgServer
from worker.errors import ConfigError, LeaseLost
from worker.models import AssetRef, AssetState, JobError, JobKey, JobState, Receipt, TransferProgress
from worker.store import Cursor, Phase, Store, open_store, sqlite_schema
from worker.store.base import Discovered, ProgressReport

A = JobKey("layers", "job-a")
B = JobKey("cloudlayer", "job-b")
C = JobKey("layers", "job-c")
ERR = JobError(code="upstream_unavailable", message="503 from the API")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


def ref(asset_id: str, url: str | None = None) -> AssetRef:
    return AssetRef(
        asset_id=asset_id,
        url=url or f"https://files.example/{asset_id}?sig=1",
        expected_size=10,
        expected_sha256="ab" * 32,
        content_type="image/png",
        ext="png",
        expires_at=500.0,
    )


def receipt(asset_id: str, *, uri: str | None = None, stored_at: float = 7.0) -> Receipt:
    return Receipt(
        asset_id=asset_id,
        uri=uri or f"file:///assets/{asset_id}.png",
        size=10,
        sha256="ab" * 32,
        upstream_verified=True,
        stored_at=stored_at,
    )


async def ready(store: Store, key: JobKey, ids: list[str], *, owner: str = "w1", now: float = 2.0) -> None:
    """Submit ``key``, poll-claim it and mark it ready with ``ids``, then transfer-claim it."""
    await store.submit(key, now=now - 1)
    assert [
        j.key for j in await store.claim(owner=owner, phase=Phase.POLL, now=now, lease_s=30, limit=1)
    ] == [key]
    await store.mark_ready(key, owner=owner, now=now, assets=[ref(i) for i in ids], provider_state={})
    claimed = await store.claim(owner=owner, phase=Phase.TRANSFER, now=now, lease_s=30, limit=1)
    assert [j.key for j in claimed] == [key]


# -- submit ---------------------------------------------------------------------------------


async def test_submit_creates_a_queued_job_once(store: Store) -> None:
    """A first submit inserts a queued job due now; a second returns it unchanged."""
    first = await store.submit(A, now=10.0)
    assert (first.created, first.requeued) == (True, False)
    assert first.job.key == A
    assert first.job.state is JobState.QUEUED
    assert (first.job.submitted_at, first.job.due_at, first.job.updated_at) == (10.0, 10.0, 10.0)
    again = await store.submit(A, now=20.0)
    assert (again.created, again.requeued) == (False, False)
    assert again.job == first.job


async def test_force_requeues_a_final_job_and_clears_it(store: Store) -> None:
    """With force, a failed job returns to queued with no assets, error, counters or lease."""
    await ready(store, A, ["x"])
    await store.record_receipt(A, owner="w1", receipt=receipt("x"))
    await store.finish(A, owner="w1", now=3.0, state=JobState.FAILED, error=ERR)
    result = await store.submit(A, now=50.0, force=True)
    assert (result.created, result.requeued) == (False, True)
    job = result.job
    assert job.state is JobState.QUEUED
    assert (job.submitted_at, job.due_at, job.finished_at, job.polling_since) == (50.0, 50.0, None, None)
    assert (job.polls, job.attempts, job.error, job.assets, job.provider_state) == (0, 0, None, (), {})
    assert (job.lease_owner, job.lease_expires_at) == (None, None)


async def test_force_leaves_a_job_in_progress_alone(store: Store) -> None:
    """With force, a job still being polled keeps its state and lease."""
    await store.submit(A, now=1.0)
    (claimed,) = await store.claim(owner="w1", phase=Phase.POLL, now=2.0, lease_s=30, limit=1)
    result = await store.submit(A, now=3.0, force=True)
    assert (result.created, result.requeued) == (False, False)
    assert result.job == claimed


async def test_submit_many_answers_each_key_in_order_as_one_by_one_submits_would(store: Store) -> None:
    """One transaction for a batch: each key's result in the order given; a key listed twice is
    created (or re-queued) by its first mention only; finished jobs re-queue with force, jobs in
    progress and new ones do not; the batch's dest goes to what it creates or re-queues."""
    await ready(store, B, ["x"])
    await store.finish(B, owner="w1", now=3.0, state=JobState.FAILED, error=ERR)
    await store.submit(C, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=4.0, lease_s=30, limit=1)  # C, in progress
    results = await store.submit_many([A, B, C, A, B], now=9.0, force=True, dest="/srv/t")
    assert [r.job.key for r in results] == [A, B, C, A, B]
    assert [(r.created, r.requeued) for r in results] == [
        (True, False),
        (False, True),
        (False, False),
        (False, False),
        (False, False),
    ]
    queued, polling = JobState.QUEUED, JobState.POLLING
    assert [r.job.state for r in results] == [queued, queued, polling, queued, queued]
    assert (results[0].job.dest, results[1].job.dest, results[2].job.dest) == ("/srv/t", "/srv/t", None)
    assert results[1].job.assets == () and results[1].job.submitted_at == 9.0
    assert results[0].job == results[3].job
    assert await store.submit_many([], now=9.0) == []
    again = await store.submit_many([A, B], now=10.0)
    assert [(r.created, r.requeued) for r in again] == [(False, False), (False, False)]


# -- claim ----------------------------------------------------------------------------------


async def test_claim_waits_for_due_at(store: Store) -> None:
    """A rescheduled job is not claimed before its due_at and is claimed at it."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=1.0, lease_s=30, limit=1)
    await store.reschedule(A, owner="w1", now=2.0, due_at=100.0, polls=1, provider_state={})
    assert await store.claim(owner="w1", phase=Phase.POLL, now=99.9, lease_s=30, limit=1) == []
    assert len(await store.claim(owner="w1", phase=Phase.POLL, now=100.0, lease_s=30, limit=1)) == 1


async def test_claim_respects_phase(store: Store) -> None:
    """Queued jobs are only poll-claimed; downloading jobs are only transfer-claimed."""
    await store.submit(A, now=1.0)
    assert await store.claim(owner="w1", phase=Phase.TRANSFER, now=5.0, lease_s=30, limit=5) == []
    await store.claim(owner="w1", phase=Phase.POLL, now=5.0, lease_s=30, limit=5)
    await store.mark_ready(A, owner="w1", now=6.0, assets=[ref("x")], provider_state={})
    assert await store.claim(owner="w1", phase=Phase.POLL, now=7.0, lease_s=30, limit=5) == []
    (job,) = await store.claim(owner="w1", phase=Phase.TRANSFER, now=7.0, lease_s=30, limit=5)
    assert job.key == A


async def test_claim_takes_earliest_due_first_up_to_limit(store: Store) -> None:
    """Claims return at most ``limit`` jobs, earliest due_at first."""
    keys = [JobKey("layers", f"j{i}") for i in range(5)]
    for i, key in enumerate(keys):
        await store.submit(key, now=10.0 - i)  # j4 is due first, j0 last
    claimed = await store.claim(owner="w1", phase=Phase.POLL, now=20.0, lease_s=30, limit=3)
    assert [j.key for j in claimed] == [keys[4], keys[3], keys[2]]
    rest = await store.claim(owner="w1", phase=Phase.POLL, now=20.0, lease_s=30, limit=3)
    assert [j.key for j in rest] == [keys[1], keys[0]]


async def test_leased_job_is_claimed_again_only_after_expiry(store: Store) -> None:
    """A leased job is invisible to other claims until lease_expires_at, then it is taken over."""
    await store.submit(A, now=1.0)
    (job,) = await store.claim(owner="w1", phase=Phase.POLL, now=1.0, lease_s=10, limit=1)
    assert (job.lease_owner, job.lease_expires_at) == ("w1", 11.0)
    assert await store.claim(owner="w2", phase=Phase.POLL, now=10.9, lease_s=10, limit=1) == []
    (taken,) = await store.claim(owner="w2", phase=Phase.POLL, now=11.0, lease_s=10, limit=1)
    assert (taken.lease_owner, taken.lease_expires_at) == ("w2", 21.0)
    with pytest.raises(LeaseLost):
        await store.renew(A, owner="w1", now=12.0, lease_s=10)


async def test_poll_claim_moves_queued_to_polling_once(store: Store) -> None:
    """The first poll claim sets polling and polling_since; later claims keep polling_since."""
    await store.submit(A, now=1.0)
    (job,) = await store.claim(owner="w1", phase=Phase.POLL, now=3.0, lease_s=30, limit=1)
    assert (job.state, job.polling_since, job.attempts) == (JobState.POLLING, 3.0, 0)
    await store.reschedule(A, owner="w1", now=4.0, due_at=5.0, polls=1, provider_state={})
    (again,) = await store.claim(owner="w1", phase=Phase.POLL, now=6.0, lease_s=30, limit=1)
    assert (again.state, again.polling_since, again.polls) == (JobState.POLLING, 3.0, 1)


async def test_transfer_claims_count_attempts(store: Store) -> None:
    """Every transfer claim increments attempts; poll claims do not."""
    await ready(store, A, ["x"])
    (job,) = await store.get([A])
    assert job.attempts == 1
    await store.retry_later(A, owner="w1", now=3.0, due_at=4.0, error=ERR)
    (job,) = await store.claim(owner="w1", phase=Phase.TRANSFER, now=4.0, lease_s=30, limit=1)
    assert job.attempts == 2


async def test_concurrent_claims_from_two_connections_never_overlap(store: Store, store_url: str) -> None:
    """Many claims racing from two connections on one database hand out every job exactly once."""
    keys = [JobKey("layers", f"j{i:03}") for i in range(60)]
    for key in keys:
        await store.submit(key, now=1.0)
    other = await open_store(store_url)
    try:
        claims = [
            s.claim(owner=f"w{n}", phase=Phase.POLL, now=2.0, lease_s=60, limit=2)
            for n in range(25)
            for s in (store, other)
        ]
        results = await asyncio.gather(*claims)
    finally:
        await other.close()
    claimed = [job.key for batch in results for job in batch]
    assert len(claimed) == len(set(claimed)) == len(keys)


async def test_claims_are_exclusive_across_processes(store: Store, store_url: str) -> None:
    """A second process claiming from the same database never receives a job this one holds."""
    keys = [JobKey("layers", f"p{i:03}") for i in range(200)]
    for key in keys:
        await store.submit(key, now=1.0)
    script = (
        "import asyncio, json, sys\n"
        "from worker.store import Phase, open_store\n"
        "async def main():\n"
        "    s = await open_store(sys.argv[1]); got = []\n"
        "    print('ready', flush=True)\n"
        "    while batch := await s.claim(owner='proc', phase=Phase.POLL, now=2.0, lease_s=60, limit=1):\n"
        "        got += [str(j.key) for j in batch]\n"
        "    await s.close(); print(json.dumps(got))\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, store_url, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"  # start racing only once both are connected
    mine: list[str] = []
    while batch := await store.claim(owner="main", phase=Phase.POLL, now=2.0, lease_s=60, limit=1):
        mine += [str(j.key) for j in batch]
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    theirs: list[str] = json.loads(out)
    assert sorted(mine + theirs) == sorted(str(k) for k in keys)


# -- leases ---------------------------------------------------------------------------------


async def test_renew_extends_only_the_owners_lease(store: Store) -> None:
    """The owner's renew moves lease_expires_at; anyone else's raises LeaseLost naming the job."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=1.0, lease_s=10, limit=1)
    await store.renew(A, owner="w1", now=5.0, lease_s=10)
    (job,) = await store.get([A])
    assert job.lease_expires_at == 15.0
    with pytest.raises(LeaseLost, match=str(A)):
        await store.renew(A, owner="w2", now=6.0, lease_s=10)


async def test_every_owner_guarded_write_raises_lease_lost(store: Store) -> None:
    """Writes by a worker that does not hold the lease raise LeaseLost and change nothing."""
    await ready(store, A, ["x"])
    before = await store.get([A])
    writes: list[Callable[[], Awaitable[None]]] = [
        lambda: store.renew(A, owner="w2", now=3.0, lease_s=5),
        lambda: store.reschedule(A, owner="w2", now=3.0, due_at=9.0, polls=2, provider_state={}),
        lambda: store.mark_ready(A, owner="w2", now=3.0, assets=[ref("y")], provider_state={}),
        lambda: store.update_asset(A, owner="w2", ref=ref("x", "https://new.example/x")),
        lambda: store.record_receipt(A, owner="w2", receipt=receipt("x")),
        lambda: store.fail_asset(A, owner="w2", asset_id="x", error=ERR),
        lambda: store.finish(A, owner="w2", now=3.0, state=JobState.DONE),
        lambda: store.retry_later(A, owner="w2", now=3.0, due_at=9.0, error=ERR),
        lambda: store.postpone(A, owner="w2", now=3.0, due_at=9.0, error=ERR),
        lambda: store.renew(B, owner="w1", now=3.0, lease_s=5),  # no such job
    ]
    for write in writes:
        with pytest.raises(LeaseLost):
            await write()
    assert await store.get([A]) == before


async def test_release_makes_the_job_claimable_now_by_another_owner(store: Store) -> None:
    """Release drops the lease so another owner claims at once; a stranger's release is ignored."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=2.0, lease_s=60, limit=1)
    await store.release(A, owner="w2", now=3.0)
    assert await store.claim(owner="w2", phase=Phase.POLL, now=3.0, lease_s=60, limit=1) == []
    await store.release(A, owner="w1", now=3.0)
    (job,) = await store.claim(owner="w2", phase=Phase.POLL, now=3.0, lease_s=60, limit=1)
    assert (job.key, job.lease_owner) == (A, "w2")


async def test_cancelled_calls_leave_the_store_usable(store: Store) -> None:
    """Cancelling a call mid-transaction rolls it back cleanly; the next call works."""
    await store.submit(A, now=1.0)
    for step in range(16):  # cancel ever later: before BEGIN, mid-transaction, after COMMIT
        task = asyncio.create_task(store.claim(owner="gone", phase=Phase.POLL, now=2.0, lease_s=60, limit=1))
        await asyncio.sleep(step * 0.0002)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        (job,) = await store.get([A])
        if job.lease_owner == "gone":  # the claim committed before the cancellation landed
            await store.release(A, owner="gone", now=2.0)
    (job,) = await store.claim(owner="w1", phase=Phase.POLL, now=2.0, lease_s=60, limit=1)
    assert job.lease_owner == "w1"


# -- progress round trips -------------------------------------------------------------------


async def test_reschedule_round_trips(store: Store) -> None:
    """Reschedule saves polls, provider state and due_at and drops the lease."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=2.0, lease_s=30, limit=1)
    await store.reschedule(A, owner="w1", now=3.0, due_at=8.0, polls=4, provider_state={"status": "running"})
    (job,) = await store.get([A])
    assert (job.state, job.due_at, job.updated_at, job.polls) == (JobState.POLLING, 8.0, 3.0, 4)
    assert job.provider_state == {"status": "running"}
    assert (job.lease_owner, job.lease_expires_at) == (None, None)


async def test_mark_ready_round_trips(store: Store) -> None:
    """mark_ready stores the assets in order, moves to downloading due now and drops the lease."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=2.0, lease_s=30, limit=1)
    refs = [ref("z"), ref("a"), ref("m")]
    await store.mark_ready(A, owner="w1", now=3.0, assets=refs, provider_state={"n": 3})
    (job,) = await store.get([A])
    assert (job.state, job.due_at, job.lease_owner, job.provider_state) == (
        JobState.DOWNLOADING,
        3.0,
        None,
        {"n": 3},
    )
    assert [a.ref for a in job.assets] == refs
    assert all(a.state is AssetState.PENDING and a.receipt is None and a.error is None for a in job.assets)


async def test_mark_ready_keeps_receipts_of_assets_still_in_the_set(store: Store) -> None:
    """A new asset set keeps stored assets it still names and replaces every other row."""
    await ready(store, A, ["a", "b", "c"])
    await store.record_receipt(A, owner="w1", receipt=receipt("a"))
    await store.record_receipt(A, owner="w1", receipt=receipt("b"))
    await store.fail_asset(A, owner="w1", asset_id="c", error=ERR)
    new = [ref("c"), ref("a", "https://fresh.example/a"), ref("d")]
    await store.mark_ready(A, owner="w1", now=3.0, assets=new, provider_state={})
    (job,) = await store.get([A])
    assert [a.ref for a in job.assets] == new
    assert [a.state for a in job.assets] == [AssetState.PENDING, AssetState.STORED, AssetState.PENDING]
    assert job.assets[1].receipt == receipt("a")
    assert job.assets[0].error is None


async def test_mark_ready_rejects_duplicate_asset_ids(store: Store) -> None:
    """An asset set naming one id twice is refused before anything is written."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=2.0, lease_s=30, limit=1)
    with pytest.raises(ValueError, match="unique"):
        await store.mark_ready(A, owner="w1", now=3.0, assets=[ref("x"), ref("x")], provider_state={})
    (job,) = await store.get([A])
    assert (job.state, job.lease_owner) == (JobState.POLLING, "w1")


async def test_update_asset_replaces_the_source(store: Store) -> None:
    """update_asset swaps the URL and published details of one asset and leaves the others."""
    await ready(store, A, ["x", "y"])
    fresh = AssetRef(asset_id="x", url="https://fresh.example/x?sig=2", expires_at=900.0)
    await store.update_asset(A, owner="w1", ref=fresh)
    (job,) = await store.get([A])
    assert [a.ref for a in job.assets] == [fresh, ref("y")]
    with pytest.raises(KeyError):
        await store.update_asset(A, owner="w1", ref=ref("nope"))


async def test_record_receipt_round_trips_and_is_idempotent(store: Store) -> None:
    """A receipt marks the asset stored; a second receipt for it changes nothing."""
    await ready(store, A, ["x", "y"])
    await store.record_receipt(A, owner="w1", receipt=receipt("x"))
    await store.record_receipt(A, owner="w1", receipt=receipt("x", uri="file:///other", stored_at=9.0))
    (job,) = await store.get([A])
    x, y = job.assets
    assert (x.state, x.receipt, x.error) == (AssetState.STORED, receipt("x"), None)
    assert (y.state, y.receipt) == (AssetState.PENDING, None)
    with pytest.raises(KeyError):
        await store.record_receipt(A, owner="w1", receipt=receipt("nope"))


async def test_fail_asset_round_trips(store: Store) -> None:
    """fail_asset marks a pending asset failed with its error but never a stored one."""
    await ready(store, A, ["x", "y"])
    await store.record_receipt(A, owner="w1", receipt=receipt("y"))
    await store.fail_asset(A, owner="w1", asset_id="x", error=ERR)
    await store.fail_asset(A, owner="w1", asset_id="y", error=ERR)
    (job,) = await store.get([A])
    x, y = job.assets
    assert (x.state, x.error, x.receipt) == (AssetState.FAILED, ERR, None)
    assert (y.state, y.receipt, y.error) == (AssetState.STORED, receipt("y"), None)


async def test_finish_round_trips(store: Store) -> None:
    """finish records the final state, finished_at and error and drops the lease."""
    await ready(store, A, ["x"])
    await store.finish(A, owner="w1", now=4.0, state=JobState.FAILED, error=ERR)
    (job,) = await store.get([A])
    assert (job.state, job.finished_at, job.updated_at, job.error) == (JobState.FAILED, 4.0, 4.0, ERR)
    assert (job.lease_owner, job.lease_expires_at) == (None, None)
    with pytest.raises(ValueError, match="final"):
        await store.finish(B, owner="w1", now=4.0, state=JobState.POLLING)


async def test_finish_records_the_last_receipts_in_the_same_transaction(store: Store) -> None:
    """finish(receipts=...) stores them and ends the job in one transaction; under another owner it
    changes nothing, receipts included."""
    await ready(store, A, ["x", "y"])
    await store.record_receipt(A, owner="w1", receipt=receipt("x"))
    with pytest.raises(LeaseLost):
        await store.finish(A, owner="w2", now=4.0, state=JobState.DONE, receipts=[receipt("y")])
    (job,) = await store.get([A])
    assert job.state is JobState.DOWNLOADING and [a.state for a in job.assets] == [
        AssetState.STORED,
        AssetState.PENDING,
    ]
    before = store.transactions
    await store.finish(A, owner="w1", now=5.0, state=JobState.DONE, receipts=[receipt("y", stored_at=5.0)])
    assert store.transactions == before + 1
    (job,) = await store.get([A])
    assert job.state is JobState.DONE and [a.receipt for a in job.assets] == [
        receipt("x"),
        receipt("y", stored_at=5.0),
    ]


async def test_finish_after_a_takeover_that_replaced_the_assets_is_lease_lost(store: Store) -> None:
    """The old holder's finish, with a receipt for an asset the new holder has since dropped (the
    vendor took the job back to processing), fails with LeaseLost and changes nothing: never an
    error about the missing asset, which would read as a crash of the old holder."""
    await ready(store, A, ["x"])
    taken = await store.claim(owner="w2", phase=Phase.TRANSFER, now=100.0, lease_s=30, limit=1)
    assert [j.key for j in taken] == [A]
    await store.restart_polling(A, owner="w2", now=101.0, provider_state={})
    with pytest.raises(LeaseLost):
        await store.finish(A, owner="w1", now=102.0, state=JobState.DONE, receipts=[receipt("x")])
    (job,) = await store.get([A])
    assert job.state is JobState.POLLING and job.assets == ()


async def test_retry_later_round_trips(store: Store) -> None:
    """retry_later keeps the state, sets due_at, remembers the last error and drops the lease."""
    await ready(store, A, ["x"])
    await store.retry_later(A, owner="w1", now=3.0, due_at=10.0, error=ERR)
    (job,) = await store.get([A])
    assert (job.state, job.due_at, job.updated_at, job.error) == (JobState.DOWNLOADING, 10.0, 3.0, ERR)
    assert job.lease_owner is None
    await store.claim(owner="w1", phase=Phase.TRANSFER, now=10.0, lease_s=30, limit=1)
    await store.retry_later(A, owner="w1", now=11.0, due_at=12.0)
    (job,) = await store.get([A])
    assert (job.due_at, job.error) == (12.0, ERR)


DISK_FULL = JobError(code="disk_full", message="cannot write /assets/x.png: no space left on device")


async def test_postpone_waits_until_due_at_and_gives_back_the_attempt(store: Store) -> None:
    """postpone keeps a downloading job downloading, records the error, drops the lease and refunds
    the transfer claim's attempt, leaving the assets alone; the job is claimed again at due_at."""
    await ready(store, A, ["x", "y"])
    await store.record_receipt(A, owner="w1", receipt=receipt("x"))
    (before,) = await store.get([A])
    assert before.attempts == 1
    await store.postpone(A, owner="w1", now=3.0, due_at=50.0, error=DISK_FULL)
    (job,) = await store.get([A])
    assert (job.state, job.due_at, job.updated_at, job.error, job.attempts) == (
        JobState.DOWNLOADING,
        50.0,
        3.0,
        DISK_FULL,
        0,
    )
    assert (job.lease_owner, job.lease_expires_at) == (None, None)
    assert job.assets == before.assets
    assert (job.polls, job.provider_state, job.finished_at) == (before.polls, before.provider_state, None)
    assert await store.claim(owner="w2", phase=Phase.TRANSFER, now=49.9, lease_s=30, limit=1) == []
    (again,) = await store.claim(owner="w2", phase=Phase.TRANSFER, now=50.0, lease_s=30, limit=1)
    assert (again.key, again.attempts, again.lease_owner) == (A, 1, "w2")


async def test_postpone_of_a_polling_job_keeps_its_state_and_counters(store: Store) -> None:
    """A postponed polling job stays polling with its polls and attempts, and the new error replaces
    the last one."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=1.0, lease_s=30, limit=1)
    await store.reschedule(A, owner="w1", now=2.0, due_at=3.0, polls=2, provider_state={"s": 1})
    await store.claim(owner="w1", phase=Phase.POLL, now=3.0, lease_s=30, limit=1)
    await store.retry_later(A, owner="w1", now=4.0, due_at=5.0, error=ERR)
    await store.claim(owner="w1", phase=Phase.POLL, now=5.0, lease_s=30, limit=1)
    await store.postpone(A, owner="w1", now=6.0, due_at=60.0, error=DISK_FULL)
    (job,) = await store.get([A])
    assert (job.state, job.polls, job.attempts, job.polling_since) == (JobState.POLLING, 2, 0, 1.0)
    assert (job.due_at, job.error, job.lease_owner, job.provider_state) == (60.0, DISK_FULL, None, {"s": 1})


async def test_postpone_by_a_worker_that_lost_the_lease_changes_nothing(store: Store) -> None:
    """A postpone from the worker whose lease expired and was taken over raises LeaseLost and
    neither refunds an attempt nor moves the job: the successor's claim stands."""
    await ready(store, A, ["x"], owner="w1", now=2.0)  # leased to w1 until 32
    (taken,) = await store.claim(owner="w2", phase=Phase.TRANSFER, now=40.0, lease_s=30, limit=1)
    assert (taken.lease_owner, taken.attempts) == ("w2", 2)
    with pytest.raises(LeaseLost, match="w2"):
        await store.postpone(A, owner="w1", now=41.0, due_at=99.0, error=DISK_FULL)
    assert await store.get([A]) == [taken]


# -- reading --------------------------------------------------------------------------------


async def test_get_returns_existing_jobs_in_the_order_asked(store: Store) -> None:
    """get skips unknown keys and keeps the caller's order."""
    await store.submit(A, now=1.0)
    await store.submit(C, now=2.0)
    assert [j.key for j in await store.get([C, B, A])] == [C, A]
    assert await store.get([]) == []


async def test_list_jobs_filters_by_state_in_submission_order(store: Store) -> None:
    """list_jobs returns oldest submissions first, optionally only some states, up to a limit."""
    await store.submit(C, now=3.0)
    await store.submit(A, now=1.0)
    await store.submit(B, now=2.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=5.0, lease_s=30, limit=1)  # takes A
    await store.finish(A, owner="w1", now=6.0, state=JobState.DONE)
    assert [j.key for j in await store.list_jobs()] == [A, B, C]
    assert [j.key for j in await store.list_jobs(states=[JobState.DONE])] == [A]
    assert [j.key for j in await store.list_jobs(states=[JobState.QUEUED])] == [B, C]
    assert [j.key for j in await store.list_jobs(limit=2)] == [A, B]
    assert await store.list_jobs(states=[]) == []


async def test_due_count_counts_what_a_claim_could_take_up_to_a_limit(store: Store) -> None:
    """due_count: the jobs of one phase that are due and not leased (or whose lease ran out), and
    never more than the limit asked for."""
    for i in range(5):
        await store.submit(JobKey("layers", f"d{i}"), now=float(i))
    assert await store.due_count(phase=Phase.POLL, now=2.0, limit=10) == 3
    assert await store.due_count(phase=Phase.POLL, now=9.0, limit=4) == 4
    assert await store.due_count(phase=Phase.TRANSFER, now=9.0, limit=10) == 0
    await store.claim(owner="w1", phase=Phase.POLL, now=9.0, lease_s=10, limit=2)  # d0, d1 until 19
    assert await store.due_count(phase=Phase.POLL, now=9.0, limit=10) == 3
    assert await store.due_count(phase=Phase.POLL, now=19.0, limit=10) == 5  # the leases ran out
    await store.mark_ready(JobKey("layers", "d0"), owner="w1", now=12.0, assets=[ref("x")], provider_state={})
    assert await store.due_count(phase=Phase.TRANSFER, now=12.0, limit=10) == 1
    assert await store.due_count(phase=Phase.TRANSFER, now=11.0, limit=10) == 0  # due from 12


async def test_unfinished_finds_the_next_claimable_moment(store: Store) -> None:
    """unfinished says whether any job is not final, and the earliest of due_at, or lease expiry
    when later."""
    assert await store.unfinished() == (False, None)
    await store.submit(A, now=5.0)
    await store.submit(B, now=10.0)
    await store.submit(C, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=1.0, lease_s=1, limit=1)  # takes C
    await store.finish(C, owner="w1", now=1.5, state=JobState.CANCELED)
    assert await store.unfinished() == (True, 5.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=5.0, lease_s=20, limit=1)  # A, leased to 25
    assert await store.unfinished() == (True, 10.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=10.0, lease_s=30, limit=1)  # B, leased to 40
    assert await store.unfinished() == (True, 25.0)


async def test_list_jobs_pages_with_a_cursor_that_survives_new_submissions(store: Store) -> None:
    """Keyset pages: each page starts after the last job of the previous one, ties broken by key."""
    keys = [JobKey("layers", f"p{i}") for i in range(5)]
    for key in keys:
        await store.submit(key, now=1.0)  # one timestamp: the key alone orders them
    first = await store.list_jobs(limit=2)
    assert [j.key for j in first] == keys[:2]
    last = first[-1]
    await store.submit(JobKey("cloudlayer", "p-early"), now=0.5)  # sorts before the cursor
    await store.submit(JobKey("layers", "zz-late"), now=9.0)
    second = await store.list_jobs(limit=2, after=Cursor(last.submitted_at, str(last.key)))
    assert [j.key for j in second] == keys[2:4]
    rest = await store.list_jobs(after=Cursor(second[-1].submitted_at, str(second[-1].key)))
    assert [j.key for j in rest] == [keys[4], JobKey("layers", "zz-late")]
    done = await store.list_jobs(states=[JobState.QUEUED], after=Cursor(9.0, "layers:zz-late"))
    assert done == []


async def test_cancel_ends_an_unfinished_job_and_takes_its_lease(store: Store) -> None:
    """A canceled job is final, its lease gone: the worker's next write raises LeaseLost."""
    await ready(store, A, ["x"])
    job = await store.cancel(A, now=9.0)
    assert job is not None
    assert (job.state, job.finished_at, job.lease_owner) == (JobState.CANCELED, 9.0, None)
    with pytest.raises(LeaseLost):
        await store.record_receipt(A, owner="w1", receipt=receipt("x"))
    assert await store.claim(owner="w2", phase=Phase.TRANSFER, now=99.0, lease_s=30, limit=5) == []
    assert await store.unfinished() == (False, None)


async def test_cancel_leaves_final_jobs_alone_and_reports_unknown_ones(store: Store) -> None:
    await ready(store, A, ["x"])
    await store.finish(A, owner="w1", now=5.0, state=JobState.DONE)
    job = await store.cancel(A, now=9.0)
    assert job is not None
    assert (job.state, job.finished_at) == (JobState.DONE, 5.0)
    assert await store.cancel(B, now=9.0) is None
    requeued = await store.submit(A, now=10.0, force=True)  # a canceled or done job can be retried
    assert requeued.requeued


async def test_a_job_keeps_the_destination_it_was_submitted_with(store: Store) -> None:
    """dest is stored on first submit, untouched by a plain resubmit, replaced by a forced requeue."""
    first = await store.submit(A, now=1.0, dest="s3://other-bucket/prefix")
    assert first.job.dest == "s3://other-bucket/prefix"
    again = await store.submit(A, now=2.0, dest="/elsewhere")
    assert (again.created, again.job.dest) == (False, "s3://other-bucket/prefix")
    assert (await store.submit(B, now=1.5)).job.dest is None
    await store.claim(owner="w1", phase=Phase.POLL, now=3.0, lease_s=30, limit=1)  # A, due first
    await store.finish(A, owner="w1", now=4.0, state=JobState.FAILED, error=ERR)
    forced = await store.submit(A, now=5.0, force=True, dest="/elsewhere")
    assert (forced.requeued, forced.job.dest) == (True, "/elsewhere")
    claimed = await store.claim(owner="w1", phase=Phase.POLL, now=6.0, lease_s=30, limit=2)
    assert {j.key: j.dest for j in claimed} == {B: None, A: "/elsewhere"}


async def test_queue_stats_counts_states_and_the_unleased_backlog(store: Store) -> None:
    """The backlog is what is due and not held by a live lease; its age is from the oldest due_at."""
    empty = await store.queue_stats(now=0.0)
    assert (empty.due, empty.oldest_due_at) == (0, None)
    assert empty.by_state == dict.fromkeys(JobState, 0)
    await store.submit(A, now=1.0)
    await store.submit(B, now=2.0)
    await store.submit(C, now=50.0)  # not due yet at 10
    await store.claim(owner="w1", phase=Phase.POLL, now=3.0, lease_s=30, limit=1)  # A, leased to 33
    stats = await store.queue_stats(now=10.0)
    assert (stats.due, stats.oldest_due_at) == (1, 2.0)
    assert stats.by_state[JobState.QUEUED] == 2
    assert stats.by_state[JobState.POLLING] == 1
    later = await store.queue_stats(now=60.0)  # A's lease expired; C is due
    assert (later.due, later.oldest_due_at) == (3, 1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=60.0, lease_s=30, limit=3)
    for key in (A, B, C):
        await store.finish(key, owner="w1", now=61.0, state=JobState.DONE)
    final = await store.queue_stats(now=70.0)
    assert (final.due, final.by_state[JobState.DONE]) == (0, 3)


async def test_nul_characters_from_upstream_are_stored_as_replacement_characters(store: Store) -> None:
    """PostgreSQL cannot hold U+0000 in text or jsonb; both backends store U+FFFD instead, so an
    odd upstream answer never makes a write fail."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w1", phase=Phase.POLL, now=1.0, lease_s=30, limit=1)
    state = {"last_status": "pend\x00ing", "nested": ["a\x00b"]}
    await store.reschedule(A, owner="w1", now=2.0, due_at=3.0, polls=1, provider_state=state)
    await store.claim(owner="w1", phase=Phase.POLL, now=3.0, lease_s=30, limit=1)
    await store.finish(A, owner="w1", now=4.0, state=JobState.FAILED, error=JobError("x\x00", "m\x00m"))
    (job,) = await store.get([A])
    assert job.provider_state == {"last_status": "pend\ufffding", "nested": ["a\ufffdb"]}
    assert job.error == JobError("x\ufffd", "m\ufffdm")


async def test_ping_answers_while_the_store_is_open(store: Store) -> None:
    await store.ping()


# -- durability and schema ------------------------------------------------------------------


async def test_data_survives_closing_and_reopening(store_url: str) -> None:
    """Everything written is read back identically after a restart."""
    first = await open_store(store_url)
    try:
        await ready(first, A, ["x", "y"])
        await first.record_receipt(A, owner="w1", receipt=receipt("x"))
        await first.submit(B, now=4.0)
        before = await first.list_jobs()
    finally:
        await first.close()
    second = await open_store(store_url)
    try:
        assert await second.list_jobs() == before
        assert await second.unfinished() == (True, 4.0)  # A's lease (to 32) outlives B's due time
    finally:
        await second.close()


def _user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


async def test_migrations_run_once_on_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening an older file applies only the missing migrations, and reopening applies none."""
    path = tmp_path / "s.db"
    url = f"sqlite:///{path}"
    store = await open_store(url)
    await store.submit(A, now=1.0)
    await store.close()
    assert _user_version(path) == len(sqlite_schema.MIGRATIONS)
    # A later release adds a column; re-running its ALTER TABLE would fail with "duplicate column".
    extra = ("ALTER TABLE jobs ADD COLUMN note TEXT",)
    current = len(sqlite_schema.MIGRATIONS)
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", (*sqlite_schema.MIGRATIONS, extra))
    for _ in range(2):
        store = await open_store(url)
        try:
            assert [j.key for j in await store.list_jobs()] == [A]
        finally:
            await store.close()
        assert _user_version(path) == current + 1


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer asset-worker is refused with a ConfigError, not misread."""
    path = tmp_path / "s.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigError, match="newer"):
        await open_store(f"sqlite:///{path}")


async def test_open_store_creates_directories_and_uses_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative sqlite URL opens under the working directory, creating parents, in WAL mode."""
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:///nested/dir/s.db")
    await store.close()
    path = tmp_path / "nested" / "dir" / "s.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("url", ["postgresql:///worker", "redis://localhost", "s.db"])
async def test_open_store_rejects_other_schemes(url: str) -> None:
    """Store URLs no backend serves are a ConfigError."""
    with pytest.raises(ConfigError):
        await open_store(url)


# -- a model of leases and schedules --------------------------------------------------------

OWNERS = ("w1", "w2", "w3")
KEYS = tuple(JobKey("layers", f"m{i}") for i in range(4))
LEASE_S = 10.0
_ops = st.one_of(
    st.tuples(st.just("claim"), st.sampled_from(OWNERS), st.integers(1, 3)),
    st.tuples(
        st.sampled_from(["reschedule", "release", "finish"]), st.sampled_from(OWNERS), st.integers(0, 3)
    ),
    st.tuples(st.just("tick"), st.just(""), st.integers(1, 15)),
)


@dataclass
class Modelled:
    """What the store should hold for one job."""

    due_at: float = 0.0
    owner: str | None = None
    expires_at: float = 0.0
    final: bool = False

    def claimable(self, now: float) -> bool:
        return not self.final and self.due_at <= now and (self.owner is None or self.expires_at <= now)


@settings(max_examples=40, deadline=None)
@given(st.lists(_ops, max_size=30))
def test_claims_follow_a_simple_model(ops: list[tuple[str, str, int]]) -> None:
    """Random claims, reschedules, releases and finishes agree with a plain model of leases."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run_model(f"sqlite:///{tmp}/m.db", ops))


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(_ops, max_size=30))
def test_postgres_claims_follow_the_same_model(pg_server: PgServer, ops: list[tuple[str, str, int]]) -> None:
    """The same model on PostgreSQL, a fresh database per example."""
    asyncio.run(_run_model(pg_server.create_database(), ops))


async def _run_model(url: str, ops: list[tuple[str, str, int]]) -> None:
    store = await open_store(url)
    try:
        model = {key: Modelled() for key in KEYS}
        for key in KEYS:
            await store.submit(key, now=0.0)
        now = 0.0
        for op, owner, n in ops:
            if op == "tick":
                now += n
            elif op == "claim":
                await _model_claim(store, model, owner, now, n)
            else:
                await _model_write(store, model[KEYS[n]], op, owner, KEYS[n], now)
        # Whether any job is left, and when the next may be claimed: its due time, or its lease's
        # end when later (an expired lease still counts until the next claim or release).
        left = [m for m in model.values() if not m.final]
        moment = min((max(m.due_at, m.expires_at) if m.owner else m.due_at for m in left), default=None)
        assert await store.unfinished() == (bool(left), moment)
    finally:
        await store.close()


async def _model_claim(store: Store, model: dict[JobKey, Modelled], owner: str, now: float, n: int) -> None:
    due = [k for k, m in model.items() if m.claimable(now)]
    expected = sorted(due, key=lambda k: (model[k].due_at, str(k)))[:n]
    claimed = await store.claim(owner=owner, phase=Phase.POLL, now=now, lease_s=LEASE_S, limit=n)
    assert [j.key for j in claimed] == expected
    for key in expected:
        model[key].owner, model[key].expires_at = owner, now + LEASE_S


async def _model_write(store: Store, m: Modelled, op: str, owner: str, key: JobKey, now: float) -> None:
    if op == "release":
        await store.release(key, owner=owner, now=now)
        if m.owner == owner:
            m.due_at, m.owner = min(m.due_at, now), None
        return
    try:
        if op == "reschedule":
            await store.reschedule(key, owner=owner, now=now, due_at=now + 5, polls=1, provider_state={})
        else:
            await store.finish(key, owner=owner, now=now, state=JobState.DONE)
    except LeaseLost:
        assert m.owner != owner
        return
    assert m.owner == owner
    m.owner = None
    if op == "reschedule":
        m.due_at = now + 5
    else:
        m.final = True


async def test_first_release_file_is_brought_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database written by the first schema version opens with every later migration applied,
    its receipts intact and the new receipt fields at their defaults."""
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:1])
    old = await open_store(url)  # creates the first schema version only
    await old.close()
    # A job and a receipt as the first release wrote them (its columns only).
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            """INSERT INTO jobs (key, provider, upstream_id, state, submitted_at, updated_at, due_at)
               VALUES (?, ?, ?, 'downloading', 1.0, 2.0, 2.0)""",
            (str(A), A.provider, A.upstream_id),
        )
        db.execute(
            """INSERT INTO assets (job_key, position, asset_id, url, state, uri, size, sha256,
                                   upstream_verified, stored_at)
               VALUES (?, 0, 'x', 'u', 'stored', 'file:///x', 3, ?, 0, 3.0)""",
            (str(A), "a" * 64),
        )
        db.commit()
    monkeypatch.undo()
    receipt = Receipt(
        asset_id="x", uri="file:///x", size=3, sha256="a" * 64, upstream_verified=False, stored_at=3.0
    )
    store = await open_store(url)
    try:
        assert _user_version(path) == len(sqlite_schema.MIGRATIONS)
        (job,) = await store.get([A])
        assert job.assets[0].receipt == receipt
        assert job.dest is None
        assert await store.find_stored(sha256="a" * 64, size=3) == receipt
        assert await store.find_stored(sha256="a" * 64, size=4) is None
    finally:
        await store.close()


async def test_restart_polling_resets_deadline_and_assets(store: Store) -> None:
    """Going back to polling counts the deadline from now and drops every asset row."""
    await store.submit(A, now=1.0)
    await store.claim(owner="w", phase=Phase.POLL, now=1.0, lease_s=10, limit=1)
    await store.mark_ready(A, owner="w", now=2.0, assets=[AssetRef(asset_id="x", url="u")], provider_state={})
    await store.claim(owner="w2", phase=Phase.TRANSFER, now=3.0, lease_s=10, limit=1)
    await store.restart_polling(A, owner="w2", now=50.0, provider_state={"k": 1})
    (job,) = await store.get([A])
    assert job.state is JobState.POLLING and job.polling_since == 50.0 and job.due_at == 50.0
    assert job.assets == () and job.lease_owner is None and job.provider_state == {"k": 1}
    with pytest.raises(LeaseLost):
        await store.restart_polling(A, owner="w2", now=51.0, provider_state={})


async def test_progress_is_recorded_for_the_lease_holder_only_and_cleared_by_the_next_claim(
    store: Store,
) -> None:
    await ready(store, A, ["a1"], owner="w1")
    report = TransferProgress(
        asset_id="a1", bytes=4096, total=10_000, rate_bps=2048.0, started_at=2.0, updated_at=4.0
    )
    stale = TransferProgress(asset_id="a1", bytes=1, total=None, rate_bps=0.0, started_at=2.0, updated_at=4.0)
    before = store.transactions
    # Two reports in one call, one of them from a worker that does not hold the job: skipped, no error.
    await store.record_progress([ProgressReport(A, "w1", report), ProgressReport(A, "w2", stale)])
    assert store.transactions == before + 1
    (job,) = await store.get([A])
    assert job.progress == report
    # The lease runs out; the next transfer claim starts the job's progress afresh.
    (again,) = await store.claim(owner="w3", phase=Phase.TRANSFER, now=100.0, lease_s=30, limit=1)
    assert again.key == A and again.progress is None
    (job,) = await store.get([A])
    assert job.progress is None
    await store.record_progress([ProgressReport(A, "w1", report)])  # the old holder is fenced off
    (job,) = await store.get([A])
    assert job.progress is None


async def test_progress_of_another_shape_reads_as_no_report(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/s.db"
    store = await open_store(store_url)
    try:
        await ready(store, A, ["a1"])
    finally:
        await store.close()
    path = store_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE jobs SET progress = ? WHERE key = ?", ('{"bytes": "many"}', str(A)))
    store = await open_store(store_url)
    try:
        (job,) = await store.get([A])
    finally:
        await store.close()
    assert job.progress is None and job.state is JobState.DOWNLOADING


# -- mirror mode ------------------------------------------------------------------------------


async def test_discovered_items_become_jobs_once_and_are_counted_by_source(store: Store) -> None:
    listed = AssetRef(asset_id="ast_1", url="https://files.example/ast_1?sig=1", expected_size=10, ext="pdf")
    first = [
        Discovered(key=JobKey("cloudlayer", "asset/ast_1"), created_at=50.0, due_at=5.0, assets=(listed,)),
        Discovered(key=JobKey("layers", "cnt_2"), created_at=40.0, due_at=5.0),
    ]
    assert await store.submit_discovered(first, source="cloudlayer", now=5.0) == [True, True]
    # Found again (another walk, another replica), and a key a user submitted by hand: none is new.
    await store.submit(JobKey("layers", "cnt_3"), now=5.0)
    again = [
        *first,
        Discovered(key=JobKey("layers", "cnt_3"), created_at=30.0, due_at=5.0),
        # The asset of a job a user submitted by its job id: copied through that job already.
        Discovered(
            key=JobKey("cloudlayer", "asset/ast_4"),
            created_at=20.0,
            due_at=5.0,
            aliases=(JobKey("layers", "cnt_3"),),
        ),
    ]
    assert await store.submit_discovered(again, source="cloudlayer", now=6.0) == [False, False, False, False]
    assert await store.get([JobKey("cloudlayer", "asset/ast_4")]) == []
    ready, queued, manual = await store.get(
        [JobKey("cloudlayer", "asset/ast_1"), JobKey("layers", "cnt_2"), JobKey("layers", "cnt_3")]
    )
    assert ready.state is JobState.DOWNLOADING and [a.ref for a in ready.assets] == [listed]
    assert queued.state is JobState.QUEUED and queued.assets == ()
    assert manual.submitted_at == 5.0
    # Claimable as any job: the ready one by a transfer claim, without a poll.
    (claimed,) = await store.claim(owner="w", phase=Phase.TRANSFER, now=6.0, lease_s=30, limit=5)
    assert claimed.key == ready.key
    counts = await store.source_counts()
    assert set(counts) == {"cloudlayer"}
    assert counts["cloudlayer"].by_state[JobState.DOWNLOADING] == 1
    assert counts["cloudlayer"].by_state[JobState.QUEUED] == 1
    assert counts["cloudlayer"].oldest_uncopied_created_at == 40.0
    await store.finish(claimed.key, owner="w", now=7.0, state=JobState.DONE)
    await store.submit(JobKey("layers", "cnt_2"), now=8.0)  # still queued: no change
    assert (await store.source_counts())["cloudlayer"].oldest_uncopied_created_at == 40.0


async def test_a_walk_is_held_by_one_walker_and_resumed_where_it_stopped(store: Store) -> None:
    first = await store.claim_walk("cloudlayer", owner="a", now=10.0, lease_s=30)
    assert first is not None and first.kind is None and first.position is None
    assert await store.claim_walk("cloudlayer", owner="b", now=11.0, lease_s=30) is None
    await store.save_walk(
        "cloudlayer",
        owner="a",
        now=12.0,
        lease_s=30,
        kind="full",
        position="160",
        pages=2,
        newest_created_at=99.0,
    )
    with pytest.raises(LeaseLost):
        await store.save_walk(
            "cloudlayer",
            owner="b",
            now=12.0,
            lease_s=30,
            kind="full",
            position="0",
            pages=1,
            newest_created_at=None,
        )
    # a crashes; its lease runs out; b resumes from the page a saved.
    resumed = await store.claim_walk("cloudlayer", owner="b", now=43.0, lease_s=30)
    assert resumed is not None
    # The walk's newest item is its own until it completes: the mark an incremental walk stops at
    # is still the one it started from.
    assert (resumed.kind, resumed.position, resumed.pages, resumed.newest_created_at) == (
        "full",
        "160",
        2,
        None,
    )
    assert resumed.started_at == 12.0
    # a, back from the dead, can no longer end it.
    await store.end_walk(
        "cloudlayer", owner="a", now=44.0, kind="full", completed=True, newest_created_at=None
    )
    (record,) = await store.walks()
    assert record.lease_owner == "b" and record.position == "160"
    await store.end_walk(
        "cloudlayer", owner="b", now=45.0, kind="full", completed=True, newest_created_at=80.0
    )
    (record,) = await store.walks()
    assert (record.kind, record.position, record.lease_owner) == (None, None, None)
    # Complete now: the newest item of the whole walk (a's part included) becomes the mark.
    assert (record.last_full_walk_at, record.last_walk_at, record.newest_created_at) == (45.0, 45.0, 99.0)


async def test_a_walk_that_failed_keeps_its_place_and_its_error(store: Store) -> None:
    assert await store.claim_walk("layers:prj_1", owner="a", now=10.0, lease_s=30) is not None
    await store.save_walk(
        "layers:prj_1", owner="a", now=11.0, lease_s=30, kind="incremental", position="cur-2", pages=1,
        newest_created_at=5.0,
    )  # fmt: skip
    error = JobError("forbidden_scope", "the key cannot read project prj_1")
    await store.end_walk(
        "layers:prj_1",
        owner="a",
        now=12.0,
        kind="incremental",
        completed=False,
        newest_created_at=None,
        error=error,
    )
    (record,) = await store.walks()
    assert (record.kind, record.position, record.error) == ("incremental", "cur-2", error)
    assert record.last_walk_at is None and record.lease_owner is None
    assert await store.claim_walk("layers:prj_1", owner="b", now=13.0, lease_s=30) is not None
