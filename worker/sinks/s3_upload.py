"""One asset on its way into S3: the part buffer, the part tasks, commit and abort.

The design (visibility, metadata, staging, idempotency, back-pressure) is described in the module
docstring of ``worker.sinks.s3``, which creates these uploads.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from worker.aio import shielded
from worker.errors import StorageRejected, StorageUnavailable
from worker.sinks.base import Committed
from worker.sinks.s3_bucket import Bucket, ObjectInfo, Written
from worker.sinks.s3_parts import MAX_PARTS, part_size_at

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from worker.sinks.s3 import S3Sink

log = structlog.get_logger("worker.sinks.s3")


class _Multipart:
    """One multipart upload and its part tasks (at most K running)."""

    def __init__(self, bucket: Bucket, key: str, object_key: str, upload_id: str, *, checksum: bool) -> None:
        self.bucket = bucket
        self.key = key
        self.object_key = object_key
        self.upload_id = upload_id
        self.checksum = checksum
        self.completed = False  # the object exists (at the staging key, for a staged upload)
        self._tasks: set[asyncio.Task[CompletedPartTypeDef]] = set()
        self._parts: list[CompletedPartTypeDef] = []
        self._failure: BaseException | None = None  # the first part failure, raised on every call after

    def submit(self, number: int, data: bytes) -> None:
        coro = self.bucket.upload_part(
            self.object_key, self.upload_id, number, data, key=self.key, checksum=self.checksum
        )
        # Owned here, never fire-and-forget: awaited by wait_below/parts or cancelled by cancel.
        self._tasks.add(asyncio.create_task(coro))

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def wait_below(self, limit: int) -> None:
        """Return once fewer than ``limit`` parts are in flight; raise the first part failure."""
        self._reap()
        while len(self._tasks) >= limit:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            self._reap()

    async def parts(self) -> list[CompletedPartTypeDef]:
        await self.wait_below(1)
        return sorted(self._parts, key=lambda part: part["PartNumber"])

    def _reap(self) -> None:
        done = {task for task in self._tasks if task.done()}
        self._tasks -= done
        for task in done:
            if task.cancelled():
                cancelled = StorageUnavailable(f"a part upload of {self.key} was cancelled", key=self.key)
                self._failure = self._failure or cancelled
            elif (exc := task.exception()) is not None:
                self._failure = self._failure or exc
            else:
                self._parts.append(task.result())
        if self._failure is not None:
            raise self._failure

    async def cancel(self) -> None:
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        # Every outcome is collected, so no failure is reported as "never retrieved".
        await asyncio.gather(*tasks, return_exceptions=True)


class _PartBuffer:
    """The part being filled, kept as the pieces received and joined once, when it is sent.

    (Joining into ``bytes`` rather than growing a ``bytearray`` lets ``io.BytesIO`` share the part
    without another copy; aiohttp streams a file-like body instead of writing it in one go.)
    """

    __slots__ = ("_pieces", "size")

    def __init__(self) -> None:
        self._pieces: list[memoryview] = []
        self.size = 0

    def add(self, piece: memoryview) -> None:
        self._pieces.append(piece)
        self.size += len(piece)

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces, self.size = [], 0
        return data


class S3Upload:
    """One asset on its way into S3; see the module docstring."""

    def __init__(
        self,
        sink: S3Sink,
        key: str,
        *,
        content_type: str | None,
        expected_size: int | None,
        expected_sha256: str | None,
        present: bool,
    ) -> None:
        self.key = key
        self._sink = sink
        self._bucket = sink.bucket
        self._object_key = sink.object_key(key)
        self._content_type = content_type
        self._expected_size = expected_size
        self._expected_sha256 = expected_sha256
        self._present = present  # an identical object was found at open: nothing is uploaded
        self._buffer = _PartBuffer()
        self._size = 0
        self._next_part = 1
        self._multipart: _Multipart | None = None
        self._state = "open"

    @property
    def parts_in_flight(self) -> int:
        """Part uploads started and not yet reaped (below ``max_parts_in_flight`` between writes)."""
        return self._multipart.in_flight if self._multipart is not None else 0

    async def write(self, chunk: bytes) -> None:
        self._ensure_open()
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)  # the buffer keeps views of the chunks: they must be immutable
        self._size += len(chunk)
        if self._present:
            return
        if self._multipart is not None:
            await self._multipart.wait_below(self._sink.settings.max_parts_in_flight)
        view = memoryview(chunk)
        while view:
            limit = self._part_size()
            if self._buffer.size >= limit:
                # A full buffer followed by more bytes is a part, not the whole object.
                await self._send_part()
                continue
            room = limit - self._buffer.size
            self._buffer.add(view[:room])
            view = view[room:]

    async def restart(self) -> None:
        self._ensure_open()
        await shielded(self._discard())
        self._size = 0
        self._next_part = 1

    async def commit(self, *, size: int, sha256: str) -> Committed:
        self._ensure_open()
        if size != self._size:
            raise StorageUnavailable(
                f"{self.key}: {self._size} bytes written but {size} verified",
                key=self.key,
                code="storage_size_mismatch",
            )
        parts = await self._finish_parts() if self._multipart is not None else []
        existing = await self._bucket.head(self._object_key, key=self.key)
        if existing is not None and identical(existing, size, sha256):
            return await self._already_present(existing)
        if self._present:
            raise StorageUnavailable(
                f"{self.key}: the identical object found at open is gone; the asset must be uploaded",
                key=self.key,
                code="object_changed",
            )
        if existing is not None and not self._sink.settings.overwrite:
            raise self._exists_error()
        try:
            written = await self._publish(parts, size, sha256)
        except StorageRejected as exc:
            if exc.code != "object_exists":
                raise
            # If-None-Match lost a race: another writer published meanwhile. Same bytes are fine.
            existing = await self._bucket.head(self._object_key, key=self.key)
            if existing is not None and identical(existing, size, sha256):
                return await self._already_present(existing)
            raise
        self._state = "committed"
        return Committed(uri=self._sink.uri_for(self.key), etag=written.etag, version_id=written.version_id)

    async def abort(self) -> None:
        if self._state == "committed":
            return
        self._state = "aborted"
        await self._discard()

    # -- internals ---------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"upload of {self.key} is already {self._state}")

    def _part_size(self) -> int:
        return part_size_at(
            self._next_part,
            expected_size=self._expected_size,
            minimum=self._sink.settings.part_size_min_bytes,
        )

    async def _send_part(self) -> None:
        if self._next_part > MAX_PARTS:
            raise StorageRejected(
                f"{self.key}: more than {MAX_PARTS} parts; the object exceeds S3's limits",
                key=self.key,
                code="object_too_large",
            )
        multipart = self._multipart or await self._start_multipart()
        multipart.submit(self._next_part, self._buffer.take())
        self._next_part += 1
        await multipart.wait_below(self._sink.settings.max_parts_in_flight)

    async def _start_multipart(self) -> _Multipart:
        staged = self._expected_sha256 is None
        target = self._sink.new_staging_key() if staged else self._object_key
        upload_id, checksum = await self._bucket.create_multipart(
            target,
            key=self.key,
            sha256_hex=self._expected_sha256,
            content_type=self._content_type,
            staged=staged,
        )
        self._multipart = _Multipart(self._bucket, self.key, target, upload_id, checksum=checksum)
        self._sink.live_uploads.add(upload_id)
        return self._multipart

    async def _finish_parts(self) -> list[CompletedPartTypeDef]:
        assert self._multipart is not None
        if self._buffer.size:
            await self._send_part()
        return await self._multipart.parts()

    async def _publish(self, parts: list[CompletedPartTypeDef], size: int, sha256: str) -> Written:
        if_absent = not self._sink.settings.overwrite
        multipart = self._multipart
        if multipart is None:
            return await self._bucket.put(
                self._object_key,
                self._buffer.take(),
                key=self.key,
                sha256_hex=sha256,
                content_type=self._content_type,
                if_absent=if_absent,
            )
        if multipart.object_key == self._object_key:
            if sha256 != self._expected_sha256:
                # The transfer verified against the published digest; this would be a bug.
                raise StorageRejected(
                    f"{self.key}: verified sha256 differs from the one labelled at open", key=self.key
                )
            written = await self._bucket.complete(
                self._object_key, multipart.upload_id, parts, key=self.key, if_absent=if_absent
            )
            multipart.completed = True
            self._sink.live_uploads.discard(multipart.upload_id)
            return written
        await self._bucket.complete(
            multipart.object_key, multipart.upload_id, parts, key=self.key, if_absent=False
        )
        multipart.completed = True
        self._sink.live_uploads.discard(multipart.upload_id)
        self._sink.live_staged.add(multipart.object_key)
        written = await self._bucket.copy(
            multipart.object_key,
            self._object_key,
            key=self.key,
            size=size,
            sha256_hex=sha256,
            content_type=self._content_type,
            if_absent=if_absent,
        )
        await shielded(self._discard())
        return written

    async def _already_present(self, existing: ObjectInfo) -> Committed:
        await shielded(self._discard())
        self._state = "committed"
        log.info("s3_object_already_present", key=self.key, size=existing.size)
        return Committed(
            uri=self._sink.uri_for(self.key),
            etag=existing.etag,
            version_id=existing.version_id,
            already_present=True,
        )

    def _exists_error(self) -> StorageRejected:
        return StorageRejected(
            f"a different object already exists at {self._sink.uri_for(self.key)} (overwrite is off)",
            key=self.key,
            code="object_exists",
        )

    async def _discard(self) -> None:
        """Drop the buffer, stop the part tasks, abort the upload, delete a staged object; quietly."""
        multipart, self._multipart = self._multipart, None
        self._buffer = _PartBuffer()
        if multipart is None:
            return
        await multipart.cancel()
        if not multipart.completed:
            await self._bucket.abort_quietly(multipart.object_key, multipart.upload_id, key=self.key)
        elif multipart.object_key != self._object_key:
            await self._bucket.delete_quietly(multipart.object_key, key=self.key)
        self._sink.live_uploads.discard(multipart.upload_id)
        self._sink.live_staged.discard(multipart.object_key)


def identical(info: ObjectInfo, size: int, sha256: str) -> bool:
    return info.size == size and (info.sha256 or "").lower() == sha256.lower()
