"""The S3 calls the sink makes, each translated to the exception tree, with the client's settings.

Longer than most modules on purpose: it is the one wrapper around the client, so that no call can
skip the error translation and the feature fallbacks below.

Every botocore call of the S3 destination goes through ``Bucket``, so errors are translated in one
place (``s3_errors.translate``). Two optional features are used where the store has them and
dropped, once and logged, where it does not:

- SHA256 checksums (``x-amz-checksum-sha256`` on every part and single PUT): the store verifies
  what it received. ``checksum_mode="auto"`` drops them after a store refuses them, ``"require"``
  fails instead, ``"off"`` never sends them. The refusal shows on the first request carrying
  them (``PutObject`` or ``CreateMultipartUpload``); the parts of an upload created with
  checksums always carry them.
- ``If-None-Match: *`` on the final write when overwriting is off, which turns the check "is there
  already an object under the key" into an atomic one (two replicas racing for one key).

A feature is only dropped when the same request without it succeeds, so an unrelated error is
never mistaken for a missing feature.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions
import structlog
from aiobotocore.config import AioConfig

from worker.aio import shielded
from worker.errors import StorageError, StorageRejected
from worker.sinks.s3_errors import error_code, http_status, is_feature_rejection, is_not_found, translate
from worker.sinks.s3_parts import MAX_PARTS, MAX_SINGLE_COPY_BYTES, copy_ranges, part_size_for
from worker.sinks.s3_settings import S3Settings

if TYPE_CHECKING:
    from botocore.config import _S3Dict as S3ConfigDict
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

T = TypeVar("T")
log = structlog.get_logger("worker.sinks.s3")

SHA256_METADATA = "sha256"
USER_AGENT_EXTRA = "asset-worker/0.1"
# botocore's standard retry mode: exponential backoff with jitter for throttling, 5xx and network
# errors, a bounded number of attempts, and no blind retry of 4xx answers such as BadDigest (legacy
# mode retried those four times, 6-10 s). Past these attempts the asset's own retry takes over.
RETRY_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
# After a probe of If-None-Match that could not reach the store, how long commits HEAD first before
# the next probe.
PROBE_RETRY_S = 60.0


def s3_options(settings: S3Settings) -> S3ConfigDict:
    """The client configuration's ``s3`` section."""
    return {"addressing_style": "path" if settings.path_style else "auto"}


def client_config(settings: S3Settings) -> AioConfig:
    """The one client's configuration (see the module docstring of ``worker.sinks.s3_sink``)."""
    return AioConfig(
        region_name=settings.region,
        retries={"mode": "standard", "total_max_attempts": RETRY_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_pool_connections=settings.max_connections,
        s3=s3_options(settings),
        # We send SHA256 checksums ourselves where wanted; botocore's default (CRC32 on every
        # upload) would send a second checksum header that some stores refuse.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra=USER_AGENT_EXTRA,
    )


def sha256_b64(data: bytes | bytearray | memoryview) -> str:
    """The ``x-amz-checksum-sha256`` value of ``data``: base64 of the binary digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


class PartBody:
    """Bytes we hold, as the ``Body`` of a PutObject or UploadPart, sent without being copied.

    botocore takes any object with ``read``, ``seek`` and ``tell``: it finds the length with
    ``seek``/``tell``, hashes the body for SigV4 in 1 MiB reads, and rewinds it for a retry.
    aiohttp sends this object as an async iterable (it is not an ``io.IOBase``, so neither
    aiobotocore nor aiohttp treats it as a file): slices of the bytes themselves, 256 KiB at a
    time, on the event loop. What the alternatives did (bench/README.md has the figures):

    - ``io.BytesIO(data)``: aiohttp sizes a BytesIO with ``getbuffer()``, which makes the BytesIO
      copy the bytes it shared: every part in flight existed twice. A bytes ``Body`` is wrapped
      in a BytesIO by botocore itself.
    - A bytearray: aiohttp joins the first chunk of a body with the headers (``b"".join``, Python
      before 3.12.9), here the whole part.
    - An ``io.RawIOBase``: no copy of the part, but aiohttp reads a file in 256 KiB copies, each
      in a worker thread, and those thread hops made an upload cost more CPU than with BytesIO.
    """

    # Per socket write. aiohttp waits for the transport to drain between writes, and the transport
    # copies what the socket did not take at once (Python 3.11), so this bounds that copy.
    SEND_BYTES = 256 << 10

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._position = 0

    def read(self, size: int | None = -1, /) -> bytes:
        start = min(self._position, len(self._data))
        end = len(self._data) if size is None or size < 0 else min(start + size, len(self._data))
        self._position = max(self._position, end)
        return bytes(self._data[start:end])

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}[whence]
        if origin + offset < 0:
            raise ValueError(f"negative seek position {origin + offset}")
        self._position = origin + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def __aiter__(self) -> PartBody:
        return self

    async def __anext__(self) -> memoryview:
        """The next slice from the current position (botocore rewinds before each attempt)."""
        chunk = self._data[self._position : self._position + self.SEND_BYTES]
        if not chunk:
            raise StopAsyncIteration
        self._position += len(chunk)
        return chunk


def _etag(value: str | None) -> str | None:
    """An ETag without its quotes: stores differ in whether CopyObject's result has them."""
    return value.strip('"') if value else None


def hex_to_b64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a HEAD says about an object."""

    size: int
    sha256: str | None
    etag: str | None
    version_id: str | None
    last_modified: datetime | None


class ConditionalWriteRefused(StorageRejected):
    """A write that had to carry ``If-None-Match`` was refused with it (``Bucket.put``'s
    ``unchecked``); its caller asks with a HEAD and writes the ordinary way instead."""


@dataclass(frozen=True, slots=True)
class Written:
    """What the store said about an object it just wrote."""

    etag: str | None
    version_id: str | None


class Bucket:
    """One bucket through the process's one client; see the module docstring."""

    def __init__(self, client: S3Client, settings: S3Settings) -> None:
        self.client = client
        self.name = settings.bucket
        self._settings = settings
        self.checksums = settings.checksum_mode != "off"
        self.conditional_writes = True
        # Whether this store refuses a conditional PutObject over an existing object: None until
        # ``refuses_overwrite`` has found out.
        self._refuses_overwrite: bool | None = None
        self._probing = asyncio.Lock()
        # After a probe that could not reach the store, commits ask with a HEAD for this long before
        # one probes again (rather than each commit waiting out a probe in turn); an attribute so
        # tests can shorten it.
        self.probe_retry_s = PROBE_RETRY_S
        self._probe_failed_at: float | None = None
        # Above this, a server-side copy is a multipart copy; an attribute so tests can lower it.
        self.single_copy_max_bytes = MAX_SINGLE_COPY_BYTES
        # S3's limit of parts per upload (10,000 parts of 5 MiB are 50 GB); an attribute so tests
        # can lower it.
        self.max_parts = MAX_PARTS

    async def head(self, object_key: str, *, key: str) -> ObjectInfo | None:
        """The object under ``object_key``, or None when there is none."""
        try:
            resp = await self.client.head_object(Bucket=self.name, Key=object_key)
        except botocore.exceptions.ClientError as exc:
            if is_not_found(exc):
                return None
            raise translate(exc, action="HeadObject", key=key) from exc
        except Exception as exc:
            raise translate(exc, action="HeadObject", key=key) from exc
        return ObjectInfo(
            size=resp["ContentLength"],
            sha256=resp.get("Metadata", {}).get(SHA256_METADATA),
            etag=_etag(resp.get("ETag")),
            version_id=resp.get("VersionId"),
            last_modified=resp.get("LastModified"),
        )

    async def refuses_overwrite(self, probe_key: Callable[[], str]) -> bool:
        """Whether a PutObject with ``If-None-Match: *`` is refused here when an object exists.

        Then a single PUT needs no HEAD before it: the write itself says whether the key was free.
        Never while conditional writes are off (dropped after the store refused the header).
        Found out once per process, with an empty object at a key ``probe_key()`` makes (a staging
        key: the janitor removes it if the delete below fails) written twice: the second write must be
        refused with 412. A store that takes both writes ignores the header, one that refuses it
        lacks it, and either way every commit keeps asking with a HEAD first. A store that cannot
        be asked now (unreachable, throttling) is asked again ``probe_retry_s`` later.
        """
        if not self.conditional_writes:
            return False
        if self._refuses_overwrite is not None:
            return self._refuses_overwrite
        if self._probe_failed_recently():
            return False
        async with self._probing:
            if self._refuses_overwrite is None and not self._probe_failed_recently():
                try:
                    self._refuses_overwrite = await self._probe_if_none_match(probe_key())
                except StorageRejected as exc:
                    # Refused for good (access denied, say): HEAD first from now on.
                    log.info("s3_conditional_probe_refused", bucket=self.name, error=exc.code)
                    self._refuses_overwrite = False
                except StorageError as exc:
                    log.info("s3_conditional_probe_failed", bucket=self.name, error=exc.code)
                    self._probe_failed_at = time.monotonic()
        return bool(self._refuses_overwrite)

    def _probe_failed_recently(self) -> bool:
        failed = self._probe_failed_at
        return failed is not None and time.monotonic() < failed + self.probe_retry_s

    async def _probe_if_none_match(self, probe_key: str) -> bool:
        written = False
        try:
            for attempt in (1, 2):
                try:
                    await self.client.put_object(Bucket=self.name, Key=probe_key, Body=b"", IfNoneMatch="*")
                except botocore.exceptions.ClientError as exc:
                    if attempt == 2 and http_status(exc) == 412:
                        return True
                    if is_feature_rejection(exc):
                        return False
                    raise translate(exc, action="PutObject", key=probe_key) from exc
                except Exception as exc:
                    raise translate(exc, action="PutObject", key=probe_key) from exc
                written = True
            # Both writes taken: the header is ignored, so two replicas racing for one key can
            # overwrite each other; the HEAD before each write still guards every other case.
            log.warning("s3_conditional_writes_ignored", bucket=self.name)
            return False
        finally:
            if written:
                await shielded(self.delete_quietly(probe_key, key=probe_key))

    async def put(
        self,
        object_key: str,
        body: memoryview,
        *,
        key: str,
        sha256_hex: str,
        content_type: str | None,
        if_absent: bool,
        unchecked: bool = False,
    ) -> Written:
        """One PutObject carrying the whole-object sha256 as checksum and as metadata.

        ``unchecked``: no HEAD asked whether the key is free (``refuses_overwrite``), so the write
        must not go without its ``If-None-Match``: if the store refuses it with this write's other
        headers, ``ConditionalWriteRefused``, and from then on ``refuses_overwrite`` is False (the
        caller asks with a HEAD and writes again)."""
        base = self._object_args(object_key, content_type, sha256_hex)

        async def call(checksum: bool, conditional: bool) -> Written:
            args = dict(base, Body=PartBody(body))
            if checksum:
                args["ChecksumSHA256"] = hex_to_b64(sha256_hex)
            if conditional:
                args["IfNoneMatch"] = "*"
            resp = await self.client.put_object(**args)
            return Written(etag=_etag(resp.get("ETag")), version_id=resp.get("VersionId"))

        if not unchecked:
            return await self._call(call, action="PutObject", key=key, checksum=True, conditional=if_absent)
        try:
            return await self._call(
                call, action="PutObject", key=key, checksum=True, conditional=True, keep_conditional=True
            )
        except ConditionalWriteRefused:
            self._refuses_overwrite = False
            raise

    async def create_multipart(
        self, object_key: str, *, key: str, sha256_hex: str | None, content_type: str | None, staged: bool
    ) -> tuple[str, bool]:
        """Start a multipart upload; returns its id and whether its parts carry checksums."""
        base = self._object_args(object_key, content_type, sha256_hex, staged=staged)

        async def call(checksum: bool, _conditional: bool) -> tuple[str, bool]:
            args = dict(base, ChecksumAlgorithm="SHA256") if checksum else base
            resp = await self.client.create_multipart_upload(**args)
            return resp["UploadId"], checksum

        return await self._call(call, action="CreateMultipartUpload", key=key, checksum=True)

    async def upload_part(
        self, object_key: str, upload_id: str, number: int, body: memoryview, *, key: str, checksum: bool
    ) -> CompletedPartTypeDef:
        """Send one part; ``body`` is read in place and must not change until this returns."""
        args: dict[str, Any] = {
            "Bucket": self.name,
            "Key": object_key,
            "UploadId": upload_id,
            "PartNumber": number,
            "Body": PartBody(body),
        }
        if checksum:
            # hashlib releases the GIL: hashing a part in a thread keeps the loop receiving.
            args["ChecksumSHA256"] = await asyncio.to_thread(sha256_b64, body)
        try:
            resp = await self.client.upload_part(**args)
        except Exception as exc:
            raise translate(exc, action=f"UploadPart {number}", key=key) from exc
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": resp["ETag"]}
        if checksum:
            # What the store verified the part against (it answers BadDigest otherwise).
            part["ChecksumSHA256"] = args["ChecksumSHA256"]
        return part

    async def complete(
        self, object_key: str, upload_id: str, parts: list[CompletedPartTypeDef], *, key: str, if_absent: bool
    ) -> Written:
        async def call(_checksum: bool, conditional: bool) -> Written:
            args: dict[str, Any] = {
                "Bucket": self.name,
                "Key": object_key,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            }
            if conditional:
                args["IfNoneMatch"] = "*"
            resp = await self.client.complete_multipart_upload(**args)
            return Written(etag=_etag(resp.get("ETag")), version_id=resp.get("VersionId"))

        return await self._call(
            call, action="CompleteMultipartUpload", key=key, checksum=False, conditional=if_absent
        )

    async def abort_multipart(self, object_key: str, upload_id: str, *, key: str) -> None:
        """Abort an upload; one that is already gone is not an error."""
        try:
            await self.client.abort_multipart_upload(Bucket=self.name, Key=object_key, UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "NoSuchUpload":
                return
            raise translate(exc, action="AbortMultipartUpload", key=key) from exc
        except Exception as exc:
            raise translate(exc, action="AbortMultipartUpload", key=key) from exc

    async def delete(self, object_key: str, *, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.name, Key=object_key)
        except Exception as exc:
            raise translate(exc, action="DeleteObject", key=key) from exc

    async def copy(
        self,
        source_key: str,
        object_key: str,
        *,
        key: str,
        size: int,
        sha256_hex: str,
        content_type: str | None,
        if_absent: bool,
    ) -> Written:
        """Server-side copy to ``object_key`` with new metadata (multipart above 5 GiB)."""
        if size > self.single_copy_max_bytes:
            return await self._multipart_copy(
                source_key,
                object_key,
                key=key,
                size=size,
                sha256_hex=sha256_hex,
                content_type=content_type,
                if_absent=if_absent,
            )
        base = self._object_args(object_key, content_type, sha256_hex)

        async def call(_checksum: bool, conditional: bool) -> Written:
            args = dict(
                base, CopySource={"Bucket": self.name, "Key": source_key}, MetadataDirective="REPLACE"
            )
            if conditional:
                args["IfNoneMatch"] = "*"
            resp = await self.client.copy_object(**args)
            return Written(
                etag=_etag(resp.get("CopyObjectResult", {}).get("ETag")), version_id=resp.get("VersionId")
            )

        return await self._call(call, action="CopyObject", key=key, checksum=False, conditional=if_absent)

    async def _multipart_copy(
        self,
        source_key: str,
        object_key: str,
        *,
        key: str,
        size: int,
        sha256_hex: str,
        content_type: str | None,
        if_absent: bool,
    ) -> Written:
        base = self._object_args(object_key, content_type, sha256_hex)
        try:
            upload_id = (await self.client.create_multipart_upload(**base))["UploadId"]
        except Exception as exc:
            raise translate(exc, action="CreateMultipartUpload (copy)", key=key) from exc
        ranges = copy_ranges(size, part_size_for(size, self._settings.part_size_min_bytes))
        limit = asyncio.Semaphore(self._settings.max_parts_in_flight)

        async def copy_part(number: int, first: int, last: int) -> CompletedPartTypeDef:
            async with limit:
                try:
                    resp = await self.client.upload_part_copy(
                        Bucket=self.name,
                        Key=object_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self.name, "Key": source_key},
                        CopySourceRange=f"bytes={first}-{last}",
                    )
                except Exception as exc:
                    raise translate(exc, action=f"UploadPartCopy {number}", key=key) from exc
                return {"PartNumber": number, "ETag": resp["CopyPartResult"]["ETag"]}

        tasks = [asyncio.create_task(copy_part(n, a, b)) for n, (a, b) in enumerate(ranges, 1)]
        try:
            parts = list(await asyncio.gather(*tasks))
            return await self.complete(object_key, upload_id, parts, key=key, if_absent=if_absent)
        except BaseException:
            await shielded(self._cancel_copy(tasks, object_key, upload_id, key=key))
            raise

    async def _cancel_copy(
        self, tasks: list[asyncio.Task[CompletedPartTypeDef]], object_key: str, upload_id: str, *, key: str
    ) -> None:
        for task in tasks:
            task.cancel()
        # Collect every outcome (so none is reported as never retrieved) before aborting.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.abort_quietly(object_key, upload_id, key=key)

    async def abort_quietly(self, object_key: str, upload_id: str, *, key: str) -> None:
        try:
            await self.abort_multipart(object_key, upload_id, key=key)
        except Exception as exc:
            # The janitor finds it later; the original failure is what the caller must see.
            log.warning("s3_abort_failed", key=key, error=str(exc))

    async def delete_quietly(self, object_key: str, *, key: str) -> None:
        try:
            await self.delete(object_key, key=key)
        except Exception as exc:
            log.warning("s3_delete_failed", key=key, error=str(exc))

    async def list_uploads(self, prefix: str) -> AsyncIterator[tuple[str, str, datetime]]:
        """``(object key, upload id, initiated)`` of every open multipart upload under ``prefix``."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    yield upload["Key"], upload["UploadId"], upload["Initiated"]
        except Exception as exc:
            raise translate(exc, action="ListMultipartUploads", key=prefix) from exc

    async def list_objects(self, prefix: str) -> AsyncIterator[tuple[str, datetime]]:
        """``(object key, last modified)`` of every object under ``prefix``."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], item["LastModified"]
        except Exception as exc:
            raise translate(exc, action="ListObjectsV2", key=prefix) from exc

    def _object_args(
        self, object_key: str, content_type: str | None, sha256_hex: str | None, *, staged: bool = False
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.name, "Key": object_key}
        if content_type:
            args["ContentType"] = content_type
        if sha256_hex is not None:
            args["Metadata"] = {SHA256_METADATA: sha256_hex}
        # A staged object lives for seconds: a cold storage class would bill its minimum duration.
        if self._settings.storage_class and not staged:
            args["StorageClass"] = self._settings.storage_class
        return args

    async def _call(
        self,
        call: Callable[[bool, bool], Awaitable[T]],
        *,
        action: str,
        key: str,
        checksum: bool,
        conditional: bool = False,
        keep_conditional: bool = False,
    ) -> T:
        """Run ``call(checksum, conditional)`` with the optional features this store accepts;
        ``keep_conditional``: never without ``If-None-Match`` (``ConditionalWriteRefused`` instead)."""
        use_checksum = checksum and self.checksums
        use_conditional = conditional and (self.conditional_writes or keep_conditional)
        try:
            return await call(use_checksum, use_conditional)
        except botocore.exceptions.ClientError as exc:
            if not is_feature_rejection(exc):
                raise translate(exc, action=action, key=key) from exc
            first = exc
        except Exception as exc:
            raise translate(exc, action=action, key=key) from exc
        can_drop_checksum = use_checksum and self._settings.checksum_mode == "auto"
        candidates = [(False, use_conditional)] if can_drop_checksum else []
        if use_conditional and not keep_conditional:
            candidates.append((use_checksum, False))
            if can_drop_checksum:
                candidates.append((False, False))
        for with_checksum, with_conditional in candidates:
            try:
                result = await call(with_checksum, with_conditional)
            except botocore.exceptions.ClientError as exc:
                if is_feature_rejection(exc):
                    continue
                raise translate(exc, action=action, key=key) from exc
            except Exception as exc:
                raise translate(exc, action=action, key=key) from exc
            self._drop(
                first,
                action,
                checksums=use_checksum and not with_checksum,
                conditional=use_conditional and not with_conditional,
            )
            return result
        if use_conditional and keep_conditional:
            raise ConditionalWriteRefused(
                f"S3 {action} {key}: refused with If-None-Match ({error_code(first)})", key=key
            ) from first
        raise translate(first, action=action, key=key) from first

    def _drop(self, exc: Exception, action: str, *, checksums: bool, conditional: bool) -> None:
        # Concurrent uploads may all find out at once; only the first one says so.
        if checksums and self.checksums:
            self.checksums = False
            log.warning(
                "s3_checksums_unsupported", bucket=self.name, action=action, error_code=error_code(exc)
            )
        if conditional and self.conditional_writes:
            self.conditional_writes = False
            log.warning(
                "s3_conditional_writes_unsupported",
                bucket=self.name,
                action=action,
                error_code=error_code(exc),
            )
