"""The cloudlayer account as its asset list shows it: order, expiry, retention, bulk assets, churn (pure).

``GET /v{1,2}/assets`` lists every asset alive at ``now`` newest first. An asset is alive once its job has
succeeded and until it expires: explicitly (``expire``, the oldest first, as retention deletes them) or by
the retention period, if one is set. Its "creation time" is when its job finished (the asset's
``timestamp``); ties (a bulk with no spacing, churn on a still clock) go to the later-registered job, so
the order is total and deterministic. An expired asset is gone everywhere: from the list, from
``/assets/:id`` and from the file host (its files' ``gone_at``).

Churn makes offsets move under a walk, deterministically: every ``every``-th list request first expires
``expire`` assets, then adds ``add`` at the head. Which assets expire matters: in a newest-first list,
retention removes the oldest, which are *ahead* of a walk and shift nothing it has yet to read; only
assets removed *behind* it (newer than its position: deletions, ``"newest"`` or ``"random"``) pull the
unread ones to lower offsets, so that a walk without overlap skips one at each page boundary. Additions
at the head push them to higher offsets (seen twice).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from worker.simulator.cloudlayer_jobs import TIMESTAMP_STYLES, CloudlayerBook, SimJob, default_seed
from worker.simulator.filestore import CONTENT_TYPES, FileStore
from worker.simulator.specs import SpecError, SpecReader

__all__ = ["EXPIRE_WHERE", "Churn", "CloudlayerAccount", "bulk_jobs", "parse_churn", "pick_assets"]

DEFAULT_BULK_SIZE = 1024
DEFAULT_SPACING_S = 60.0
# Which alive assets an expiry takes: the oldest (retention), the newest, or a seeded random choice.
EXPIRE_WHERE = ("oldest", "newest", "random")
# Enough for any account a test or benchmark builds, small enough that a typo (1e9) fails fast.
MAX_BULK_COUNT = 1_000_000


def bulk_jobs(raw: Mapping[str, object], *, now: float, rng: random.Random) -> list[SimJob]:
    """Succeeded jobs, oldest first, from ``{"count", "size", "ext", "start_age_s", "spacing_s",
    "url_ttl_s", "timestamp_style"}``: the oldest finished ``start_age_s`` ago (default
    ``count * spacing_s``), each next one ``spacing_s`` later; raises ``SpecError``.

    Built directly rather than through one job spec each: thousands must take milliseconds.
    """
    reader = SpecReader(raw, "cloudlayer assets")
    count = reader.integer("count", 1, minimum=1)
    size = reader.integer("size", DEFAULT_BULK_SIZE, minimum=0)
    ext = reader.choice("ext", tuple(CONTENT_TYPES), "pdf")
    spacing_s = reader.number("spacing_s", DEFAULT_SPACING_S)
    start_age_s = reader.number("start_age_s", count * spacing_s)
    url_ttl_s = reader.opt_number("url_ttl_s", None)
    timestamp_style = reader.choice("timestamp_style", TIMESTAMP_STYLES, "ms")
    reader.finish()
    if count > MAX_BULK_COUNT:
        raise SpecError(f"cloudlayer assets: 'count' must be <= {MAX_BULK_COUNT}, got {count}")
    if start_age_s < (count - 1) * spacing_s:
        # The newest would be created in the future, where it would not be an asset yet.
        raise SpecError(
            f"cloudlayer assets: 'start_age_s' ({start_age_s}) must be >= (count - 1) * spacing_s "
            f"({(count - 1) * spacing_s})"
        )
    jobs = []
    for i in range(count):
        job_id = f"job_{rng.getrandbits(64):016x}"
        jobs.append(
            SimJob(
                id=job_id,
                # Random, so that sorting by id never happens to give the creation order.
                asset_id=f"ast_{rng.getrandbits(64):016x}",
                seed=default_seed(job_id),
                size=size,
                ext=ext,
                pending_s=0.0,
                outcome="success",
                error_message="",
                asset_via="job",
                status_style="sdk",
                timestamp_style=timestamp_style,
                omit_optional=False,
                publish_size=True,
                url_ttl_s=url_ttl_s,
                created_at=now - start_age_s + i * spacing_s,
                job_type="html-pdf" if ext == "pdf" else "url-image",
            )
        )
    return jobs


def pick_assets(listing: list[SimJob], where: str, count: int, rng: random.Random) -> list[SimJob]:
    """``count`` of the alive assets (``listing``, newest first) chosen as ``where`` says."""
    if where == "oldest":
        return listing[::-1][:count]
    if where == "newest":
        return listing[:count]
    return rng.sample(listing, min(count, len(listing)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Churn:
    """What every ``every``-th list request does first: expire ``expire`` assets (chosen as ``where``
    says), then add ``add`` assets (of ``size`` bytes) at the head."""

    add: int
    expire: int
    every: int
    size: int
    where: str = "oldest"

    def to_json(self) -> dict[str, object]:
        """The settings as the control API shows them."""
        return {
            "add_per_list": self.add,
            "expire_per_list": self.expire,
            "every": self.every,
            "size": self.size,
            "expire_where": self.where,
        }


def parse_churn(raw: Mapping[str, object]) -> Churn | None:
    """``{"add_per_list", "expire_per_list", "expire_where", "every", "size"}``; None (no churn) when both
    counts are 0."""
    reader = SpecReader(raw, "cloudlayer churn")
    churn = Churn(
        add=reader.integer("add_per_list", 0, minimum=0),
        expire=reader.integer("expire_per_list", 0, minimum=0),
        every=reader.integer("every", 1, minimum=1),
        size=reader.integer("size", DEFAULT_BULK_SIZE, minimum=0),
        where=reader.choice("expire_where", EXPIRE_WHERE, "oldest"),
    )
    reader.finish()
    return churn if churn.add or churn.expire else None


class CloudlayerAccount:
    """Expiry, retention and churn of the account whose jobs a ``CloudlayerBook`` holds."""

    def __init__(self) -> None:
        self.expired_at: dict[str, float] = {}  # asset id -> state-clock time it was expired
        self.retention_s: float | None = None
        self.churn: Churn | None = None
        self._lists = 0  # list requests answered since the churn was set

    def gone_at(self, job: SimJob) -> float | None:
        """When the asset stops existing (expired, or past retention); None: not scheduled."""
        ends = [self.expired_at.get(job.asset_id)]
        if self.retention_s is not None and job.finished_at is not None:
            ends.append(job.finished_at + self.retention_s)
        known = [t for t in ends if t is not None]
        return min(known) if known else None

    def alive(self, job: SimJob, now: float) -> bool:
        """Whether the asset exists at ``now``: its job succeeded and it has not expired."""
        gone = self.gone_at(job)
        return job.outcome_at(now) == "success" and (gone is None or now < gone)

    def listing(self, book: CloudlayerBook, now: float) -> list[SimJob]:
        """The jobs of every alive asset, newest asset first (ties: the later-registered first)."""
        alive = [(job.finished_at or 0.0, seq, job) for seq, job in enumerate(book.jobs.values())]
        alive = [entry for entry in alive if self.alive(entry[2], now)]
        alive.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
        return [job for _, _, job in alive]

    def expired(self, book: CloudlayerBook, now: float) -> list[SimJob]:
        """The jobs whose asset existed and is gone at ``now``, in the order they went."""
        gone = []
        for job in book.jobs.values():
            end = self.gone_at(job)
            if end is not None and now >= end and job.finished_at is not None and job.finished_at < end:
                gone.append((end, job))
        gone.sort(key=lambda entry: entry[0])
        return [job for _, job in gone]

    def sync_files(self, jobs: Iterable[SimJob], files: FileStore) -> None:
        """Make the file host agree with the jobs' expiry: their files are gone exactly when they are."""
        for job in jobs:
            gone = self.gone_at(job)
            names = [job.preview_name] if job.asset_url is not None else [job.file_name, job.preview_name]
            for name in names:
                if name in files:
                    files.set_gone(name, gone)

    def expire(self, jobs: Iterable[SimJob], files: FileStore, now: float) -> list[str]:
        """Expire these assets at ``now``; returns their ids."""
        chosen = list(jobs)
        for job in chosen:
            self.expired_at.setdefault(job.asset_id, now)
        self.sync_files(chosen, files)
        return [job.asset_id for job in chosen]

    def set_retention(self, retention_s: float | None, book: CloudlayerBook, files: FileStore) -> None:
        """Keep assets ``retention_s`` after creation (None: forever), as the vendor's plan does."""
        self.retention_s = retention_s
        self.sync_files(book.jobs.values(), files)

    def set_churn(self, churn: Churn | None) -> None:
        """Churn from the next list request on (None: stop)."""
        self.churn, self._lists = churn, 0

    def churn_due(self) -> Churn | None:
        """Count one list request; the churn to apply before answering it, if this one is due."""
        if self.churn is None:
            return None
        self._lists += 1
        return self.churn if self._lists % self.churn.every == 0 else None

    def clear(self) -> None:
        """Forget expiries, retention and churn."""
        self.expired_at.clear()
        self.retention_s = None
        self.set_churn(None)
