"""The data asset-worker moves around: job keys, jobs, assets, receipts and their states (pure)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

from worker.errors import InvalidJob
from worker.redaction import safe_text

# Upstream ids are opaque, but a key is also typed by people and passed in URLs and shell
# commands: printable, no whitespace, bounded. Sanitising for the file system happens in naming.
# No C0/C1 control characters, and no lone surrogates: JSON's "\ud800" escape produces them, and
# they cannot be encoded as UTF-8, so the store could not write the key. The API document's key
# pattern (worker/http/openapi.json) is this same class.
_PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_UPSTREAM_ID = re.compile(r"^[^\s\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,256}$")


class JobState(enum.StrEnum):
    """Where a job is in its life. ``done``, ``failed`` and ``canceled`` are final."""

    QUEUED = "queued"
    POLLING = "polling"
    DOWNLOADING = "downloading"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELED)


class AssetState(enum.StrEnum):
    PENDING = "pending"
    STORED = "stored"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class JobKey:
    """``<provider>:<upstream id>``, the identity of a job everywhere (store, CLI, logs, API)."""

    provider: str
    upstream_id: str

    @classmethod
    def parse(cls, text: str) -> JobKey:
        """The form of a key only; whether a provider of that name exists, and whether the id can
        be one of its, is ``worker.providers.parse_key``'s to say."""
        provider, sep, upstream_id = text.strip().partition(":")
        if not sep:
            raise InvalidJob(f"job key {text!r} must look like <provider>:<upstream id>")
        provider = provider.lower()
        if not _PROVIDER_NAME.match(provider):
            raise InvalidJob(
                f"job key {text!r}: the provider name must be lower-case letters, digits, '_' or '-'"
            )
        if not _UPSTREAM_ID.match(upstream_id):
            raise InvalidJob(
                f"job key {text!r}: the upstream id must be 1-256 printable characters without spaces"
            )
        return cls(provider, upstream_id)

    def __str__(self) -> str:
        return f"{self.provider}:{self.upstream_id}"


@dataclass(frozen=True, slots=True)
class JobError:
    """What went wrong, as the status shows it: a stable code and a message that is masked and
    clipped here, so no secret or 20 MB vendor text ever reaches the store, logs or API."""

    code: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", safe_text(self.code, 100))
        object.__setattr__(self, "message", safe_text(self.message))


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetRef:
    """One file a finished job produced, as the provider resolved it.

    ``url`` may be pre-signed and expire; ``expected_size`` and ``expected_sha256`` are what the
    vendor published, if anything.
    """

    asset_id: str
    url: str
    expected_size: int | None = None
    expected_sha256: str | None = None
    content_type: str | None = None
    ext: str | None = None
    expires_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """Proof that one asset is stored whole at ``uri``."""

    asset_id: str
    uri: str
    size: int
    sha256: str
    upstream_verified: bool
    stored_at: float
    etag: str | None = None
    version_id: str | None = None
    # How the copy came to be: "downloaded", "already_present" (an identical object was already
    # at the destination) or "reused" (an identical stored asset's copy was recorded instead).
    origin: str = "downloaded"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferProgress:
    """How far the download of one asset has come, as its worker measured it.

    ``total`` is the whole file's size when the vendor published it or the file host announced it;
    ``bytes`` counts everything held so far, bytes resumed from an earlier attempt included, and
    ``rate_bps`` is over the last few seconds (so a stall shows as a falling rate, not an average).
    """

    asset_id: str
    bytes: int
    total: int | None
    rate_bps: float
    started_at: float
    updated_at: float

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate; None when the size or a rate is unknown."""
        if self.total is None or self.rate_bps <= 0:
            return None
        return max(self.total - self.bytes, 0) / self.rate_bps


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetRecord:
    """An asset as the store knows it: what to fetch, and what happened."""

    ref: AssetRef
    state: AssetState = AssetState.PENDING
    receipt: Receipt | None = None
    error: JobError | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A job as the store knows it."""

    key: JobKey
    state: JobState
    submitted_at: float
    updated_at: float
    due_at: float
    finished_at: float | None = None
    polling_since: float | None = None
    polls: int = 0
    attempts: int = 0
    error: JobError | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    provider_state: dict[str, Any] = field(default_factory=dict)
    assets: tuple[AssetRecord, ...] = ()
    # Where this job's files go when it names its own destination (a file path or s3:// URL);
    # None means the worker's configured ASSET_WORKER_DEST.
    dest: str | None = None
    # The download under way, as its worker last reported it (None before the first report); a
    # report outlives its transfer, so readers show it only while the lease is live.
    progress: TransferProgress | None = None

    def lease_live(self, now: float) -> bool:
        """A worker holds the job right now (its lease has not run out)."""
        return self.lease_owner is not None and (self.lease_expires_at or 0.0) > now

    def interrupted(self, now: float) -> bool:
        """Its last holder stopped without finishing or releasing it (a crash, a hang): the lease
        ran out with the owner still recorded. The next claim takes it up again."""
        return (
            not self.state.is_final
            and self.lease_owner is not None
            and (self.lease_expires_at or 0.0) <= now
        )


@dataclass(frozen=True, slots=True)
class Pending:
    """The upstream job is not finished yet."""

    status: str
    provider_state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ready:
    """The upstream job finished; these are its files, in order."""

    assets: tuple[AssetRef, ...]
    provider_state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failed:
    """The upstream job finished without files."""

    code: str
    message: str


PollOutcome = Pending | Ready | Failed
