"""Fencing, on both stores: a write made with a token that no longer holds the job changes nothing.

A worker whose lease ran out may wake up and write: its token must be refused (``LeaseLost``) by
every write method, whether the job was taken over, its lease was dropped, or it does not exist, and
the refusal must leave every row as it was, including the rows of jobs that token still holds
legitimately (one claim leases a batch of jobs under one token). Also here: the asset writes' own
errors for an asset that does not exist, ``find_stored`` matching content exactly, and the order
claims hand jobs out in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.errors import LeaseLost
from worker.models import AssetRef, AssetState, Job, JobError, JobKey, JobState, Receipt
from worker.store import Phase, Store, open_store

A = JobKey("layers", "job-a")
B = JobKey("cloudlayer", "job-b")
GONE = JobKey("layers", "no-such-job")
OLD = "w1/0000aaaa"  # the stale token: it lost A, still holds B
NEW = "w1/1111bbbb"  # A's new holder (same worker id: only the token tells them apart)
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


def receipt(asset_id: str, *, sha256: str = "ab" * 32, size: int = 10, stored_at: float = 7.0) -> Receipt:
    """A receipt with every field set (an S3 copy found already present)."""
    return Receipt(
        asset_id=asset_id,
        uri=f"s3://bucket/assets/{asset_id}-{stored_at:g}.png",
        size=size,
        sha256=sha256,
        upstream_verified=True,
        stored_at=stored_at,
        etag=f'"etag-{asset_id}-{stored_at:g}"',
        version_id=f"v-{asset_id}-{stored_at:g}",
        origin="already_present",
    )


async def two_jobs_one_stale_token(store: Store) -> None:
    """A and B claimed together under OLD, both downloading with assets x and y; OLD kept B alive
    but let A's lease run out, and NEW took A over (A leased to NEW until 44)."""
    for key in (A, B):
        await store.submit(key, now=0.0)
    assert len(await store.claim(owner=OLD, phase=Phase.POLL, now=1.0, lease_s=10, limit=2)) == 2
    for key in (A, B):
        await store.mark_ready(key, owner=OLD, now=2.0, assets=[ref("x"), ref("y")], provider_state={"n": 1})
    assert len(await store.claim(owner=OLD, phase=Phase.TRANSFER, now=3.0, lease_s=10, limit=2)) == 2
    await store.record_receipt(A, owner=OLD, receipt=receipt("y", stored_at=4.0))
    await store.renew(B, owner=OLD, now=12.0, lease_s=10)  # B to 22; A expires at 13
    (taken,) = await store.claim(owner=NEW, phase=Phase.TRANSFER, now=14.0, lease_s=30, limit=5)
    assert (taken.key, taken.lease_owner, taken.attempts) == (A, NEW, 2)


StaleWrite = Callable[[Store, JobKey], Awaitable[None]]

# Every write made on behalf of a claim, as the stale OLD would make it at t=15.
STALE_WRITES: dict[str, StaleWrite] = {
    "renew": lambda s, k: s.renew(k, owner=OLD, now=15.0, lease_s=60),
    "reschedule": lambda s, k: s.reschedule(
        k, owner=OLD, now=15.0, due_at=90.0, polls=7, provider_state={"stale": True}
    ),
    "restart_polling": lambda s, k: s.restart_polling(k, owner=OLD, now=15.0, provider_state={"stale": 1}),
    "mark_ready": lambda s, k: s.mark_ready(
        k, owner=OLD, now=15.0, assets=[ref("z")], provider_state={"stale": True}
    ),
    "finish": lambda s, k: s.finish(k, owner=OLD, now=15.0, state=JobState.FAILED, error=ERR),
    "retry_later": lambda s, k: s.retry_later(k, owner=OLD, now=15.0, due_at=90.0, error=ERR),
    "postpone": lambda s, k: s.postpone(k, owner=OLD, now=15.0, due_at=90.0, error=ERR),
    "update_asset": lambda s, k: s.update_asset(k, owner=OLD, ref=ref("x", "https://stale.example/x")),
    "record_receipt": lambda s, k: s.record_receipt(k, owner=OLD, receipt=receipt("x", stored_at=15.0)),
    "fail_asset": lambda s, k: s.fail_asset(k, owner=OLD, asset_id="x", error=ERR),
}


@dataclass(frozen=True)
class Situation:
    """How A stands when OLD writes, and what the refusal says about it."""

    name: str
    target: JobKey
    message: str

    async def arrange(self, store: Store) -> None:
        if self.name == "lease dropped":
            await store.release(A, owner=NEW, now=14.5)


SITUATIONS = [
    Situation("taken over", A, f"job {A} is not leased to {OLD!r} (leased to {NEW!r})"),
    Situation("lease dropped", A, f"job {A} is not leased to {OLD!r} (no lease)"),
    Situation("no such job", GONE, f"job {GONE} does not exist (writer {OLD!r})"),
]


@pytest.mark.parametrize("situation", SITUATIONS, ids=lambda s: s.name)
@pytest.mark.parametrize("write", list(STALE_WRITES), ids=str)
async def test_a_stale_token_is_refused_and_changes_nothing(
    store: Store, write: str, situation: Situation
) -> None:
    """Every write by a token that does not hold the job raises LeaseLost saying who holds it, and
    leaves every job and asset row as it was, the other jobs that token still holds included."""
    await two_jobs_one_stale_token(store)
    await situation.arrange(store)
    before = await store.list_jobs()
    with pytest.raises(LeaseLost, match=re.escape(situation.message)):
        await STALE_WRITES[write](store, situation.target)
    assert await store.list_jobs() == before


def _written_by_the_holder(write: str, b: Job) -> Job:
    """What B looks like after OLD, its holder, makes ``write`` (as in STALE_WRITES) at t=15."""
    dropped = {"lease_owner": None, "lease_expires_at": None, "updated_at": 15.0}
    changes: dict[str, dict[str, object]] = {
        "renew": {"lease_expires_at": 75.0},
        "reschedule": {
            **dropped,
            "state": JobState.POLLING,
            "due_at": 90.0,
            "polls": 7,
            "provider_state": {"stale": True},
        },
        "restart_polling": {
            **dropped,
            "state": JobState.POLLING,
            "due_at": 15.0,
            "polling_since": 15.0,
            "provider_state": {"stale": 1},
            "assets": (),
        },
        "mark_ready": {**dropped, "due_at": 15.0, "polls": b.polls + 1, "provider_state": {"stale": True}},
        "finish": {**dropped, "state": JobState.FAILED, "finished_at": 15.0, "error": ERR},
        "retry_later": {**dropped, "due_at": 90.0, "error": ERR},
        "postpone": {**dropped, "due_at": 90.0, "error": ERR, "attempts": b.attempts - 1},
    }
    return dataclasses.replace(b, **changes[write])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "write", ["renew", "reschedule", "restart_polling", "mark_ready", "finish", "retry_later", "postpone"]
)
async def test_the_holders_write_lands_on_its_job_only(store: Store, write: str) -> None:
    """The same write by the token that does hold the job goes through, changes exactly what it
    says on that job, and leaves the job that token lost (now another's) alone."""
    await two_jobs_one_stale_token(store)
    a, b = await store.get([A, B])
    await STALE_WRITES[write](store, B)
    after_a, after_b = await store.get([A, B])
    assert after_a == a
    if write == "mark_ready":
        assert [x.ref for x in after_b.assets] == [ref("z")]
        after_b = dataclasses.replace(after_b, assets=b.assets)
    assert after_b == _written_by_the_holder(write, b)


async def test_the_holders_invalid_writes_change_nothing(store: Store) -> None:
    """A final state that is not final, or an asset set naming an id twice, is refused with a
    ValueError saying so, before anything is written."""
    await two_jobs_one_stale_token(store)
    before = await store.list_jobs()
    with pytest.raises(ValueError, match="finish\\(\\) needs a final state, not 'polling'"):
        await store.finish(A, owner=NEW, now=15.0, state=JobState.POLLING)
    with pytest.raises(ValueError, match=re.escape(f"job {A}: asset ids must be unique, got ['x', 'x']")):
        await store.mark_ready(A, owner=NEW, now=15.0, assets=[ref("x"), ref("x")], provider_state={})
    assert await store.list_jobs() == before


async def test_a_stale_release_is_ignored(store: Store) -> None:
    """A release by a token that lost the job is silent and changes nothing: the new holder keeps
    its lease, the job its attempts and due time."""
    await two_jobs_one_stale_token(store)
    before = await store.list_jobs()
    await store.release(A, owner=OLD, now=15.0)
    await store.release(GONE, owner=OLD, now=15.0)
    assert await store.list_jobs() == before


async def test_the_holders_writes_succeed_next_to_a_stale_token(store: Store) -> None:
    """The same writes by the token that holds the job go through (the refusal above is about the
    token, not the job): NEW renews, updates, records, fails and finishes A; OLD still renews B."""
    await two_jobs_one_stale_token(store)
    await store.renew(A, owner=NEW, now=15.0, lease_s=30)
    await store.renew(B, owner=OLD, now=15.0, lease_s=30)
    fresh = ref("x", "https://fresh.example/x")
    await store.update_asset(A, owner=NEW, ref=fresh)
    await store.record_receipt(A, owner=NEW, receipt=receipt("x", stored_at=16.0))
    await store.fail_asset(A, owner=NEW, asset_id="y", error=ERR)  # stored: keeps its receipt
    await store.finish(A, owner=NEW, now=17.0, state=JobState.DONE)
    a, b = await store.get([A, B])
    assert (a.state, a.finished_at, a.lease_owner) == (JobState.DONE, 17.0, None)
    assert [x.ref for x in a.assets] == [fresh, ref("y")]
    assert [x.receipt for x in a.assets] == [receipt("x", stored_at=16.0), receipt("y", stored_at=4.0)]
    assert (b.state, b.lease_owner, b.lease_expires_at) == (JobState.DOWNLOADING, OLD, 45.0)


@pytest.mark.parametrize("write", ["update_asset", "record_receipt", "fail_asset"])
async def test_asset_writes_name_an_asset_that_does_not_exist(store: Store, write: str) -> None:
    """The holder writing about an asset the job does not have gets a KeyError naming job and
    asset, and nothing changes."""
    await two_jobs_one_stale_token(store)
    before = await store.list_jobs()
    writes: dict[str, Callable[[], Awaitable[None]]] = {
        "update_asset": lambda: store.update_asset(A, owner=NEW, ref=ref("nope")),
        "record_receipt": lambda: store.record_receipt(A, owner=NEW, receipt=receipt("nope")),
        "fail_asset": lambda: store.fail_asset(A, owner=NEW, asset_id="nope", error=ERR),
    }
    with pytest.raises(KeyError, match=re.escape(f"job {A} has no asset 'nope'")):
        await writes[write]()
    assert await store.list_jobs() == before


async def test_fail_asset_marks_a_pending_asset_failed(store: Store) -> None:
    """fail_asset by the holder marks a pending asset failed with the error, leaving the others."""
    await two_jobs_one_stale_token(store)
    await store.fail_asset(A, owner=NEW, asset_id="x", error=ERR)
    (a,) = await store.get([A])
    assert [(x.state, x.error) for x in a.assets] == [(AssetState.FAILED, ERR), (AssetState.STORED, None)]


async def test_a_receipt_moves_the_jobs_updated_at_forward_only(store: Store) -> None:
    """Recording a receipt sets the job's updated_at to the receipt's time unless it is later
    already."""
    await two_jobs_one_stale_token(store)  # A updated at 14 by NEW's claim
    await store.record_receipt(A, owner=NEW, receipt=receipt("x", stored_at=10.0))
    (a,) = await store.get([A])
    assert a.updated_at == 14.0
    await store.mark_ready(A, owner=NEW, now=15.0, assets=[ref("x"), ref("z")], provider_state={})
    await store.claim(owner=NEW, phase=Phase.TRANSFER, now=16.0, lease_s=30, limit=1)
    await store.record_receipt(A, owner=NEW, receipt=receipt("z", stored_at=20.0))
    (a,) = await store.get([A])
    assert a.updated_at == 20.0


# -- find_stored ----------------------------------------------------------------------------

SHA_X = "11" * 32
SHA_Y = "22" * 32


async def test_find_stored_matches_both_checksum_and_size(store: Store) -> None:
    """Only a stored receipt with exactly this sha256 and this size is a copy; the earliest stored
    one wins when there are several."""
    await two_jobs_one_stale_token(store)
    x10 = receipt("x", sha256=SHA_X, size=10, stored_at=9.0)
    x11 = receipt("x", sha256=SHA_X, size=11, stored_at=5.0)
    y10 = receipt("y", sha256=SHA_Y, size=10, stored_at=3.0)
    await store.record_receipt(A, owner=NEW, receipt=x10)
    await store.record_receipt(B, owner=OLD, receipt=x11)
    await store.record_receipt(B, owner=OLD, receipt=y10)
    assert await store.find_stored(sha256=SHA_X, size=10) == x10
    assert await store.find_stored(sha256=SHA_X, size=11) == x11
    assert await store.find_stored(sha256=SHA_Y, size=10) == y10
    assert await store.find_stored(sha256=SHA_Y, size=11) is None
    assert await store.find_stored(sha256="33" * 32, size=10) is None
    # A's y (stored at 4 with the default content) is earlier than any other copy of that content.
    await store.record_receipt(B, owner=OLD, receipt=receipt("x", stored_at=2.0))  # already stored: no-op
    assert await store.find_stored(sha256="ab" * 32, size=10) == receipt("y", stored_at=4.0)


async def test_find_stored_prefers_the_earliest_copy(store: Store) -> None:
    """Of several stored copies of one content, the one stored first is returned."""
    await two_jobs_one_stale_token(store)
    await store.record_receipt(A, owner=NEW, receipt=receipt("x", sha256=SHA_X, stored_at=30.0))
    await store.record_receipt(B, owner=OLD, receipt=receipt("y", sha256=SHA_X, stored_at=20.0))
    await store.record_receipt(B, owner=OLD, receipt=receipt("x", sha256=SHA_X, stored_at=25.0))
    assert await store.find_stored(sha256=SHA_X, size=10) == receipt("y", sha256=SHA_X, stored_at=20.0)


async def test_find_stored_ignores_assets_not_stored(store: Store) -> None:
    """Pending and failed assets are never offered as copies, whatever they were expected to be."""
    await two_jobs_one_stale_token(store)
    await store.fail_asset(B, owner=OLD, asset_id="x", error=ERR)
    assert await store.find_stored(sha256="ab" * 32, size=10) == receipt("y", stored_at=4.0)
    await store.restart_polling(A, owner=NEW, now=15.0, provider_state={})  # drops A's assets
    assert await store.find_stored(sha256="ab" * 32, size=10) is None


async def test_sqlite_find_stored_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """On SQLite, find_stored is a read: it answers while another process holds the write lock
    (a long transfer's write must not stall the dedupe lookup for the busy timeout)."""
    path = tmp_path / "s.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        await two_jobs_one_stale_token(store)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            try:
                found = await asyncio.wait_for(store.find_stored(sha256="ab" * 32, size=10), timeout=3)
            finally:
                other.execute("ROLLBACK")
        assert found == receipt("y", stored_at=4.0)
    finally:
        await store.close()


# -- claim order ----------------------------------------------------------------------------


async def test_claims_hand_out_ties_by_submission_then_key(store: Store) -> None:
    """Jobs due at the same moment are claimed oldest submission first, then by key, and the
    batch comes back in that order (whatever order the rows were written in)."""
    tied = [f"t{i}" for i in range(8)]
    names = ["d", "c", *reversed(tied)]  # written in reverse of the expected order
    for name in names:
        await store.submit(JobKey("layers", name), now={"d": 1.0, "c": 2.0}.get(name, 3.0))
    assert len(await store.claim(owner=OLD, phase=Phase.POLL, now=4.0, lease_s=10, limit=20)) == len(names)
    for name in names:  # all due again at 20
        await store.reschedule(
            JobKey("layers", name), owner=OLD, now=5.0, due_at=20.0, polls=1, provider_state={}
        )
    claimed = await store.claim(owner=NEW, phase=Phase.POLL, now=20.0, lease_s=10, limit=20)
    assert [j.key.upstream_id for j in claimed] == ["d", "c", *tied]
    assert {j.lease_owner for j in claimed} == {NEW}


async def test_a_claim_leases_at_most_its_limit(store: Store) -> None:
    """A claim leases no more jobs than it has room for; with no room (limit 0) it leases none."""
    await store.submit(A, now=1.0)
    await store.submit(B, now=1.5)
    assert await store.claim(owner=OLD, phase=Phase.POLL, now=2.0, lease_s=10, limit=0) == []
    (claimed,) = await store.claim(owner=OLD, phase=Phase.POLL, now=2.0, lease_s=10, limit=1)
    assert claimed.key == A
    a, b = await store.get([A, B])
    assert (a.lease_owner, b.state, b.lease_owner) == (OLD, JobState.QUEUED, None)
