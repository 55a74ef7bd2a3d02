"""Simulated cloudlayer.io jobs and assets: specs, status over time, and JSON as the API shows it (pure).

A job's status is a function of the state clock: pending until ``created_at + pending_s`` (forever when
``pending_s`` is None), then its outcome. Every variation the contract says the worker must accept (status
aliases, timestamp shapes, missing optional fields, asset via the asset endpoint) is a switch on the job.
A job may also name an ``asset_url`` of its own: its asset then lives on another file host (a benchmark's
nginx), and the job publishes that URL and the given size instead of a simulator-hosted file.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from worker.simulator.filestore import CONTENT_TYPES
from worker.simulator.specs import SpecConflict, SpecError, SpecReader

__all__ = [
    "CloudlayerBook",
    "SimJob",
    "UrlMinter",
    "asset_json",
    "default_seed",
    "format_timestamp",
    "job_json",
    "job_status",
    "parse_job_spec",
]

STATUS_STYLES = ("sdk", "aliases", "unknown")
TIMESTAMP_STYLES = ("ms", "firestore", "iso", "absent")
SIM_UID = "simUser0001"
WORKER_NAME = "sim-worker-1"
PREVIEW_SIZE = 4096
_PREVIEW_SEED_SALT = 0x5EED

# Mints a fresh signed URL for (file name, TTL); the caller binds the request's base URL and the clock.
UrlMinter = Callable[[str, float | None], str]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimJob:
    """One simulated conversion job and its single asset."""

    id: str
    asset_id: str
    seed: int
    size: int
    ext: str
    pending_s: float | None
    outcome: str
    error_message: str
    asset_via: str
    status_style: str
    timestamp_style: str
    omit_optional: bool
    publish_size: bool
    url_ttl_s: float | None
    created_at: float
    job_type: str
    asset_url: str | None = None  # an external file host's URL; None: the simulator hosts the asset

    @property
    def file_name(self) -> str:
        """The asset's name on the file host."""
        return f"{self.asset_id}.{self.ext}"

    @property
    def preview_name(self) -> str:
        """The preview image's name on the file host."""
        return f"{self.asset_id}.preview.png"

    @property
    def preview_seed(self) -> int:
        """Seed of the preview bytes (distinct from the asset's, so a mix-up shows in the hash)."""
        return self.seed ^ _PREVIEW_SEED_SALT

    @property
    def finished_at(self) -> float | None:
        """State-clock time the job reaches its outcome; None when it stays pending forever."""
        return None if self.pending_s is None else self.created_at + self.pending_s

    @property
    def content_type(self) -> str:
        """MIME type the file host serves the asset with."""
        return CONTENT_TYPES[self.ext]

    def asset_link(self, mint: UrlMinter) -> str:
        """The URL the API publishes for the asset: the external one as given, else a freshly minted one."""
        return self.asset_url if self.asset_url is not None else mint(self.file_name, self.url_ttl_s)

    def outcome_at(self, now: float) -> str:
        """The semantic state at ``now`` ("pending", "success" or "error"), before any status styling."""
        finished = self.finished_at
        if finished is None or now < finished:
            return "pending"
        return self.outcome


def default_seed(job_id: str) -> int:
    # Derived from the id so a job re-created with the same id (e.g. after a reset) has the same bytes.
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big")


def _check_id(value: str, field: str) -> str:
    # "." and ".." cannot survive URL normalisation as a path segment, so no client could ever reach them.
    if value in ("", ".", ".."):
        raise SpecError(f"cloudlayer job: {field!r} must not be empty, '.' or '..'")
    return value


# Longer than any URL a real file host would hand out, short enough that a mistake is caught as one.
_MAX_ASSET_URL_CHARS = 8192


def _asset_url_problem(value: str) -> str | None:
    """What an external asset URL must be and is not, or None when it is fine."""
    if len(value) > _MAX_ASSET_URL_CHARS:
        return f"at most {_MAX_ASSET_URL_CHARS} characters"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "free of whitespace and control characters"
    parts = urlsplit(value)
    try:
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return "a URL with a valid port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "an absolute http(s) URL with a host"
    return None


def _check_asset_url(value: str | None) -> str | None:
    """The external asset URL, checked at creation: a typo answers 400 here rather than surfacing later as
    a download failure that looks like the worker's fault."""
    if value is not None and (problem := _asset_url_problem(value)) is not None:
        raise SpecError(f"cloudlayer job: 'asset_url' must be {problem}, got {value!r}")
    return value


def parse_job_spec(
    raw: Mapping[str, object], *, now: float, rng: random.Random, job_type: str | None = None
) -> SimJob:
    """Validate a control-API job spec into a ``SimJob`` created at ``now``; raises ``SpecError``."""
    reader = SpecReader(raw, "cloudlayer job")
    job_id = _check_id(reader.text("id", f"job_{rng.getrandbits(64):016x}"), "id")
    asset_id = _check_id(reader.text("asset_id", f"asset_{rng.getrandbits(64):016x}"), "asset_id")
    ext = reader.choice("ext", tuple(CONTENT_TYPES), "pdf")
    asset_url = _check_asset_url(reader.opt_text("asset_url"))
    if asset_url is not None and reader.has("seed"):
        # The bytes are the other host's: a seed would promise content the simulator cannot vouch for.
        raise SpecError("cloudlayer job: 'seed' has no meaning with 'asset_url'")
    job = SimJob(
        id=job_id,
        asset_id=asset_id,
        seed=reader.integer("seed", default_seed(job_id)),
        size=reader.integer("size", 50_000, minimum=0),
        ext=ext,
        pending_s=reader.opt_number("pending_s", 0.2),
        outcome=reader.choice("outcome", ("success", "error"), "success"),
        error_message=reader.text("error_message", "Navigation timeout of 30000 ms exceeded"),
        asset_via=reader.choice("asset_via", ("job", "asset"), "job"),
        status_style=reader.choice("status_style", STATUS_STYLES, "sdk"),
        timestamp_style=reader.choice("timestamp_style", TIMESTAMP_STYLES, "ms"),
        omit_optional=reader.flag("omit_optional", False),
        publish_size=reader.flag("publish_size", True),
        url_ttl_s=reader.opt_number("url_ttl_s", None),
        created_at=now,
        job_type=job_type or ("html-pdf" if ext == "pdf" else "url-image"),
        asset_url=asset_url,
    )
    reader.finish()
    return job


class CloudlayerBook:
    """The simulated account's jobs, and the index from asset id to job."""

    def __init__(self) -> None:
        self.jobs: dict[str, SimJob] = {}
        self._by_asset: dict[str, str] = {}

    def add(self, job: SimJob) -> None:
        """Register a job; ids must be unique (a collision is the caller's mistake, answered 409)."""
        if job.id in self.jobs:
            raise SpecConflict(f"cloudlayer job: id {job.id!r} already exists")
        if job.asset_id in self._by_asset:
            raise SpecConflict(f"cloudlayer job: asset_id {job.asset_id!r} already exists")
        self.jobs[job.id] = job
        self._by_asset[job.asset_id] = job.id

    def by_asset(self, asset_id: str) -> SimJob | None:
        """The job that produced ``asset_id``, if any."""
        job_id = self._by_asset.get(asset_id)
        return None if job_id is None else self.jobs[job_id]

    def clear(self) -> None:
        """Forget every job."""
        self.jobs.clear()
        self._by_asset.clear()


def job_status(job: SimJob, now: float) -> str:
    """The ``status`` string the API shows at ``now``, in the job's status style."""
    outcome = job.outcome_at(now)
    if job.status_style == "aliases":
        if outcome == "pending":
            elapsed = now - job.created_at
            in_first_half = job.pending_s is None or elapsed < job.pending_s / 2
            return "queued" if in_first_half else "processing"
        return "completed" if outcome == "success" else "failed"
    if job.status_style == "unknown" and outcome == "pending":
        return "rendering"
    return outcome


def format_timestamp(style: str, t: float) -> object:
    """``t`` (unix seconds) in one of the shapes cloudlayer has been seen to use; None for "absent"."""
    if style == "ms":
        return int(t * 1000)
    if style == "firestore":
        seconds = int(t)
        return {"_seconds": seconds, "_nanoseconds": round((t - seconds) * 1e9)}
    if style == "iso":
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return None


def _costs(job: SimJob) -> dict[str, object]:
    process_cost = round((job.pending_s or 0.0) * 0.0001, 6)
    bandwidth_cost = round(job.size / 1e9 * 0.05, 6)
    return {
        "apiCreditCost": 1,
        "processTimeCost": process_cost,
        "bandwidthCost": bandwidth_cost,
        "totalCost": round(1 + process_cost + bandwidth_cost, 6),
    }


def _drop_optional(body: dict[str, object], job: SimJob, optional: tuple[str, ...]) -> dict[str, object]:
    if job.omit_optional:
        for key in optional:
            body.pop(key, None)
    return {key: value for key, value in body.items() if value is not None}


def job_json(job: SimJob, now: float, mint: UrlMinter) -> dict[str, object]:
    """The body of ``GET /v2/jobs/:id`` at ``now``."""
    outcome = job.outcome_at(now)
    body: dict[str, object] = {
        "id": job.id,
        "uid": SIM_UID,
        "name": job.file_name,
        "type": job.job_type,
        "status": job_status(job, now),
        "timestamp": format_timestamp(job.timestamp_style, job.created_at),
        "workerName": WORKER_NAME,
        "self": f"/v2/jobs/{quote(job.id, safe='')}",
    }
    if outcome == "success":
        body["processTime"] = round((job.pending_s or 0.0) * 1000)
        if job.publish_size:
            body["size"] = job.size
        body["assetId"] = job.asset_id
        if job.asset_via == "job":
            body["assetUrl"] = job.asset_link(mint)
        body["previewUrl"] = mint(job.preview_name, job.url_ttl_s)
        body.update(_costs(job))
    elif outcome == "error":
        body["error"] = job.error_message
    optional = ("uid", "name", "workerName", "previewUrl", *_costs(job))
    return _drop_optional(body, job, optional)


def asset_json(job: SimJob, mint: UrlMinter) -> dict[str, object]:
    """The body of ``GET /v2/assets/:id`` for a finished, successful job."""
    finished = job.finished_at if job.finished_at is not None else job.created_at
    body: dict[str, object] = {
        "id": job.asset_id,
        "uid": SIM_UID,
        "fileId": "file_" + hashlib.sha256(job.asset_id.encode()).hexdigest()[:20],
        "jobId": job.id,
        "ext": job.ext,
        "type": "application/pdf" if job.ext == "pdf" else "image",
        "size": job.size if job.publish_size else None,
        "url": job.asset_link(mint),
        "previewUrl": mint(job.preview_name, job.url_ttl_s),
        "previewExt": "png",
        "timestamp": format_timestamp(job.timestamp_style, finished),
    }
    return _drop_optional(body, job, ("uid", "previewUrl", "previewExt"))
