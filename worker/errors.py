"""The one exception tree of asset-worker.

::

    WorkerError
    ├── ConfigError (also ValueError)      bad or unknown setting → exit 2
    ├── InvalidJob                         unknown provider, malformed id → failed, never retried
    ├── UpstreamError (.url, .status)
    │   ├── UpstreamUnavailable            connect error, timeout, 5xx, 429 (.retry_after_s) → retry
    │   ├── AssetSetChanged (.assets)      the vendor replaced the files → re-resolve
    │   └── UpstreamRejected               401/403/404/other 4xx, malformed body → failed with a code
    ├── TransferError (.expected, .actual)
    │   ├── IncompleteTransfer             short body, reset → retry (resuming where possible)
    │   │   └── TransferStalled            slower than the minimum speed for a whole window → retry
    │   ├── IntegrityError                 size or sha256 mismatch → retry up to N, then failed
    │   ├── SourceExpired                  403/404/410 from the file host → refresh the URL, retry
    │   ├── DestinationBlocked             the URL leads to a refused scheme or address → failed
    │   └── AssetTooLarge                  larger than ASSET_WORKER_MAX_ASSET_BYTES → failed
    ├── StorageError (.key)
    │   ├── StorageUnavailable             disk full, I/O error, S3 unreachable → the job waits
    │   ├── StorageInterrupted             this write broke (bytes corrupted on the way) → retry
    │   └── StorageRejected                permission denied, no bucket → failed
    ├── StoreUnavailable                   the job store cannot be reached or is locked → retry
    ├── StoreUnusable                      the store is corrupt, read-only or forbidden → exit 1
    ├── LeaseLost                          the job was taken over; the old owner stops
    └── ApiError (worker/http/errors.py)   a bad HTTP API request → a JSON error with a stable code

Whether an error is worth retrying is a class attribute (``retryable``), never read from message
text. Every error carries a stable snake_case ``code`` that ends up in the status JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# strip_query and strip_queries are re-exported: most callers import them from here.
from worker.redaction import safe_text
from worker.redaction import strip_queries as strip_queries
from worker.redaction import strip_query as strip_query

if TYPE_CHECKING:  # models imports this module; the annotation alone needs models
    from worker.models import AssetRef


def describe(exc: BaseException) -> str:
    """A foreign exception as text safe to log or store: its type and message, URL queries and
    credentials removed, secrets masked, cut to a few KiB.

    Never ``repr()``: aiohttp's exceptions carry the request, headers (API keys) included.
    """
    text = str(exc)
    return f"{type(exc).__name__}: {safe_text(text)}" if text else type(exc).__name__


class WorkerError(Exception):
    """Base of every error asset-worker raises on purpose."""

    code: str = "worker_error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        # Messages carry vendor text: masked and clipped once, here, for every place they go.
        message = safe_text(message)
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(WorkerError, ValueError):
    """A setting is missing, malformed or unknown; the CLI exits with status 2."""

    code = "config_error"


class InvalidJob(WorkerError):
    """A job key names no known provider or carries an id that cannot be an upstream id."""

    code = "invalid_job"


class UpstreamError(WorkerError):
    """The vendor's API answered something other than what was asked for."""

    code = "upstream_error"

    def __init__(
        self, message: str, *, url: str = "", status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.url = strip_query(url) if url else ""
        self.status = status


class UpstreamUnavailable(UpstreamError):
    """Transient: the API could not be reached, timed out, answered 5xx or asked us to slow down."""

    code = "upstream_unavailable"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        status: int | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, url=url, status=status, code=code)
        self.retry_after_s = retry_after_s


class AssetSetChanged(UpstreamError):
    """The vendor replaced a finished job's files (a regenerate) or took it back to processing.

    ``assets`` is the new set when it is ready, ``None`` when the job must be polled again. The
    engine re-resolves from it; old and new files are never mixed in one job.
    """

    code = "asset_set_changed"

    def __init__(self, message: str, *, assets: tuple[AssetRef, ...] | None) -> None:
        super().__init__(message)
        self.assets = assets


class UpstreamRejected(UpstreamError):
    """Permanent: authentication, permission, unknown id, or a body we cannot understand."""

    code = "upstream_rejected"


class TransferError(WorkerError):
    """Moving an asset's bytes from the file host to the destination went wrong."""

    code = "transfer_error"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        expected: object = None,
        actual: object = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.expected = expected
        self.actual = actual


class IncompleteTransfer(TransferError):
    """The body ended (or the connection broke) before every promised byte arrived."""

    code = "incomplete_transfer"


class TransferStalled(IncompleteTransfer):
    """The file host sent less than the minimum speed for a whole window; resumable like a break."""

    code = "transfer_stalled"


class IntegrityError(TransferError):
    """The bytes arrived but their size or sha256 is not what was promised."""

    code = "checksum_mismatch"


class SourceExpired(TransferError):
    """The file host refused a pre-signed URL (expired, or the asset was replaced)."""

    code = "source_expired"


class DestinationBlocked(TransferError):
    """An upstream URL (or a redirect) leads to a refused scheme or to an internal address.

    Never retried: the same URL would be refused again, and a vendor answer that points inside our
    network is a reason to stop, not to insist.
    """

    code = "destination_blocked"
    retryable = False


class AssetTooLarge(TransferError):
    """The asset is larger than ``ASSET_WORKER_MAX_ASSET_BYTES``: refused before or while reading."""

    code = "asset_too_large"
    retryable = False


class StorageError(WorkerError):
    """Writing to the destination failed."""

    code = "storage_error"

    def __init__(self, message: str, *, key: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.key = key


class StorageUnavailable(StorageError):
    """Transient destination trouble: full disk, I/O error, an unreachable or throttling S3.

    Not the asset's fault: the job waits (without spending an attempt) until the destination is
    back, rather than failing for good over a full disk.
    """

    code = "storage_unavailable"
    retryable = True


class StorageInterrupted(StorageError):
    """One write went wrong in a way the next attempt need not repeat: the store received other
    bytes than we sent, the upload or temp file vanished under us, a conflicting write. Retried from
    the source within the asset's attempts (the destination itself is fine)."""

    code = "storage_interrupted"
    retryable = True


class StorageRejected(StorageError):
    """The destination refuses us for good: permissions, missing bucket, bad credentials."""

    code = "storage_rejected"


class StoreUnavailable(WorkerError):
    """The job store failed (locked, unreachable, I/O error); try again shortly."""

    code = "store_unavailable"
    retryable = True


class StoreUnusable(WorkerError):
    """The job store refuses for good (a corrupt or read-only file, a permission): waiting will not
    help, so commands exit 1 with this message instead of retrying forever."""

    code = "store_unusable"


class LeaseLost(WorkerError):
    """Another worker took over a job whose lease this worker let expire; stop touching it."""

    code = "lease_lost"
