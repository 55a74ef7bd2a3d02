"""The S3 boundary of the exception tree: botocore and aiobotocore failures become ``StorageError``.

Most specific first: the S3 error code when the store sent one, then the HTTP status, then the
botocore exception class. ``StorageUnavailable`` (retryable) is for what may heal by itself:
throttling, 5xx, the network, expiring credentials, a part upload that vanished, and ``BadDigest``.

``StorageUnavailable`` means the destination is down (the network, 5xx, throttling, credentials
that cannot be had right now): the job waits for it without spending attempts. What went wrong with
one write only (``BadDigest``, an upload that vanished, a conflicting write) is
``StorageInterrupted``, retried from the source within the asset's attempts.

``BadDigest`` means the store received bytes whose sha256 differs from the one we computed from
the very bytes we sent: corruption between this process and the store. botocore is configured not
to retry it on its own (standard mode does not; legacy mode retried it four times); it surfaces
as ``StorageInterrupted`` with code ``storage_checksum_mismatch`` so the asset is retried from the
source by the engine's bounded retries. It deliberately does not reuse ``checksum_mismatch``,
which names a vendor's file that does not match its published digest.
"""

from __future__ import annotations

import aiohttp
import botocore.exceptions

from worker.errors import StorageError, StorageInterrupted, StorageRejected, StorageUnavailable, describe

# S3 error codes → our stable codes. Anything not listed falls back on the HTTP status.
_REJECTED: dict[str, str] = {
    "AccessDenied": "access_denied",
    "AllAccessDisabled": "access_denied",
    "AccountProblem": "access_denied",
    "InvalidAccessKeyId": "invalid_credentials",
    "SignatureDoesNotMatch": "invalid_credentials",
    "InvalidToken": "invalid_credentials",
    "NoSuchBucket": "no_such_bucket",
    "InvalidBucketName": "no_such_bucket",
    "PermanentRedirect": "wrong_region",
    "AuthorizationHeaderMalformed": "wrong_region",
    "IllegalLocationConstraintException": "wrong_region",
    "InvalidStorageClass": "invalid_storage_class",
    "EntityTooLarge": "object_too_large",
    "KeyTooLongError": "key_too_long",
    # A clock this far off will not fix itself between retries: the operator must.
    "RequestTimeTooSkewed": "clock_skew",
    "PreconditionFailed": "object_exists",
}
# This write went wrong; the destination is fine: retried within the asset's attempts.
_INTERRUPTED: dict[str, str] = {
    "BadDigest": "storage_checksum_mismatch",
    "XAmzContentSHA256Mismatch": "storage_checksum_mismatch",
    # Our upload was aborted under us (another replica's janitor, a lifecycle rule): start over.
    "NoSuchUpload": "upload_vanished",
    "OperationAborted": "storage_conflict",
    "ConditionalRequestConflict": "storage_conflict",
}
# The destination is down or refusing for now: the job waits without spending attempts.
_UNAVAILABLE: dict[str, str] = {
    "SlowDown": "storage_throttled",
    "Throttling": "storage_throttled",
    "ThrottlingException": "storage_throttled",
    "RequestLimitExceeded": "storage_throttled",
    "TooManyRequests": "storage_throttled",
    "RequestTimeout": "storage_timeout",
    "InternalError": "storage_unavailable",
    "ServiceUnavailable": "storage_unavailable",
    "ExpiredToken": "credentials_expired",
    "ExpiredTokenException": "credentials_expired",
    "TokenRefreshRequired": "credentials_expired",
}
# What a store answers when it does not understand a header we sent (checksums, If-None-Match).
_FEATURE_REJECTIONS = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest", "UnsupportedHeader"})


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a ``ClientError`` (``"404"`` for a bodiless HEAD answer), else None."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def is_not_found(exc: BaseException) -> bool:
    """A HEAD or GET of a key that does not exist (HEAD answers carry no body, only the status)."""
    return http_status(exc) == 404 and error_code(exc) in ("404", "NoSuchKey", "NotFound")


def is_feature_rejection(exc: BaseException) -> bool:
    """The store may have refused an optional header; worth one try without it."""
    return http_status(exc) == 501 or error_code(exc) in _FEATURE_REJECTIONS


def translate(exc: Exception, *, action: str, key: str) -> StorageError:
    """Map one botocore/aiobotocore/network failure of ``action`` on ``key`` to the tree."""
    message = f"S3 {action} {key}: {describe(exc)}"
    if isinstance(exc, botocore.exceptions.ClientError):
        return _translate_client_error(exc, message, key)
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return StorageRejected(message, key=key, code="no_credentials")
    if isinstance(exc, botocore.exceptions.CredentialRetrievalError):
        # The credential source (STS, instance metadata) failed to answer: it may next time.
        return StorageUnavailable(message, key=key, code="credentials_unavailable")
    if isinstance(exc, botocore.exceptions.HTTPClientError | botocore.exceptions.ConnectionError):
        return StorageUnavailable(message, key=key, code="network_error")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        # Parameter validation, an impossible configuration: retrying cannot help.
        return StorageRejected(message, key=key, code="storage_client_error")
    if isinstance(exc, aiohttp.ClientError | TimeoutError | OSError):
        return StorageUnavailable(message, key=key, code="network_error")
    return StorageRejected(message, key=key, code="storage_rejected")


def _translate_client_error(exc: botocore.exceptions.ClientError, message: str, key: str) -> StorageError:
    code = error_code(exc) or ""
    status = http_status(exc)
    if code in _INTERRUPTED:
        return StorageInterrupted(message, key=key, code=_INTERRUPTED[code])
    if code in _UNAVAILABLE:
        return StorageUnavailable(message, key=key, code=_UNAVAILABLE[code])
    if code in _REJECTED:
        return StorageRejected(message, key=key, code=_REJECTED[code])
    if status == 429 or (status is not None and status >= 500 and status != 501):
        return StorageUnavailable(message, key=key, code="storage_unavailable")
    if status == 403:
        return StorageRejected(message, key=key, code="access_denied")
    if status == 412:
        return StorageRejected(message, key=key, code="object_exists")
    return StorageRejected(message, key=key, code="storage_rejected")
