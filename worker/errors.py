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
    │   ├── IntegrityError                 size or sha256 mismatch → retry up to N, then failed
    │   └── SourceExpired                  403/404/410 from the file host → refresh the URL, retry
    ├── StorageError (.key)
    │   ├── StorageUnavailable             disk full, I/O error, S3 throttling → retry
    │   └── StorageRejected                permission denied, no bucket → failed
    ├── StoreUnavailable                   the job store cannot be reached or is locked → retry
    ├── LeaseLost                          the job was taken over; the old owner stops
    └── ApiError (worker/http/errors.py)   a bad HTTP API request → a JSON error with a stable code

Whether an error is worth retrying is a class attribute (``retryable``), never read from message
text. Every error carries a stable snake_case ``code`` that ends up in the status JSON.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # models imports this module; the annotation alone needs models
    from worker.models import AssetRef

_URL_WITH_QUERY = re.compile(r"\bhttps?://[^\s'\"<>]+\?[^\s'\"<>]*")


def strip_query(url: str) -> str:
    """Return ``url`` without its query string and fragment.

    Pre-signed asset URLs carry their credentials in the query, so no URL is ever logged or stored
    in an error message with it.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def strip_queries(text: str) -> str:
    """``text`` with the query string of every URL in it removed."""
    return _URL_WITH_QUERY.sub(lambda m: strip_query(m.group(0)), text)


def describe(exc: BaseException) -> str:
    """A foreign exception as text safe to log or store: its type and message, URL queries removed.

    Never ``repr()``: aiohttp's exceptions carry the request, headers (API keys) included.
    """
    text = str(exc)
    return f"{type(exc).__name__}: {strip_queries(text)}" if text else type(exc).__name__


class WorkerError(Exception):
    """Base of every error asset-worker raises on purpose."""

    code: str = "worker_error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
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


class IntegrityError(TransferError):
    """The bytes arrived but their size or sha256 is not what was promised."""

    code = "checksum_mismatch"


class SourceExpired(TransferError):
    """The file host refused a pre-signed URL (expired, or the asset was replaced)."""

    code = "source_expired"


class StorageError(WorkerError):
    """Writing to the destination failed."""

    code = "storage_error"

    def __init__(self, message: str, *, key: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.key = key


class StorageUnavailable(StorageError):
    """Transient destination trouble: full disk, I/O error, throttling."""

    code = "storage_unavailable"
    retryable = True


class StorageRejected(StorageError):
    """The destination refuses us for good: permissions, missing bucket, bad credentials."""

    code = "storage_rejected"


class StoreUnavailable(WorkerError):
    """The job store failed (locked, unreachable, I/O error); try again shortly."""

    code = "store_unavailable"
    retryable = True


class LeaseLost(WorkerError):
    """Another worker took over a job whose lease this worker let expire; stop touching it."""

    code = "lease_lost"
