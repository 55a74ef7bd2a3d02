"""One asset on its way into S3: the part buffer, the part tasks, commit and abort.

The design (visibility, metadata, staging, idempotency, back-pressure) is described in the module
docstring of ``worker.sinks.s3_sink``, which creates these uploads.

Longer than most modules on purpose: an upload is one state machine (single PUT or multipart, the
part tasks and their buffers, commit, abort), and its states are easier to check read together.
"""

from __future__ import annotations

import asyncio
import mmap
import weakref
from typing import TYPE_CHECKING

import structlog

from worker.aio import shielded
from worker.errors import StorageInterrupted, StorageRejected
from worker.sinks.base import Committed
from worker.sinks.s3_bucket import Bucket, ConditionalWriteRefused, ObjectInfo, Written
from worker.sinks.s3_parts import part_size_at

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from worker.sinks.s3_sink import S3Sink

log = structlog.get_logger("worker.sinks.s3")


class _Multipart:
    """One multipart upload and its part tasks (at most K running)."""

    def __init__(
        self,
        bucket: Bucket,
        key: str,
        object_key: str,
        upload_id: str,
        *,
        checksum: bool,
        buffers: _PartBuffers,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.object_key = object_key
        self.upload_id = upload_id
        self.checksum = checksum
        self.completed = False  # the object exists (at the staging key, for a staged upload)
        self._buffers = buffers
        self._tasks: set[asyncio.Task[CompletedPartTypeDef]] = set()
        self._parts: list[CompletedPartTypeDef] = []
        self._failure: BaseException | None = None  # the first part failure, raised on every call after

    def submit(self, number: int, buffer: _PartBuffer) -> None:
        """Upload ``buffer`` as part ``number``; the buffer belongs to the part until it is accepted."""
        # Owned here, never fire-and-forget: awaited by wait_below/parts or cancelled by cancel.
        self._tasks.add(asyncio.create_task(self._upload(number, buffer)))

    async def _upload(self, number: int, buffer: _PartBuffer) -> CompletedPartTypeDef:
        part = await self.bucket.upload_part(
            self.object_key, self.upload_id, number, buffer.filled(), key=self.key, checksum=self.checksum
        )
        # Reused only once the store has answered for every byte of it. After a failure or a
        # cancellation the request may still be reading it, and the upload is abandoned anyway.
        self._buffers.give_back(buffer)
        return part

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
                cancelled = StorageInterrupted(f"a part upload of {self.key} was cancelled", key=self.key)
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
    """One part's bytes, written in place into an anonymous memory map and sent from there.

    Written once (from the chunks the transfer hands over) and never copied again: the request
    body and the part checksum read the map in place. A map rather than a bytearray: its pages are
    zero until written and resident only once written, so a buffer sized for a whole part costs a
    small asset only its own size, and a map given up returns its memory to the system at once.
    """

    __slots__ = ("_view", "map", "size")

    def __init__(self, capacity: int) -> None:
        self.map = mmap.mmap(-1, capacity)
        self._view = memoryview(self.map)
        self.size = 0

    @property
    def capacity(self) -> int:
        return len(self._view)

    @property
    def full(self) -> bool:
        return self.size == len(self._view)

    def fill(self, data: memoryview) -> memoryview:
        """Copy as much of ``data`` as there is room for; return the rest."""
        count = min(len(data), len(self._view) - self.size)
        self._view[self.size : self.size + count] = data[:count]
        self.size += count
        return data[count:]

    def filled(self) -> memoryview:
        return self._view[: self.size]


class _PartBuffers:
    """The part buffers of one upload, reused from part to part; at most K of them exist.

    The bound is kept by how the upload uses them, not here: a buffer is taken for the next part
    only while fewer than K parts are in flight (``S3Upload._send_part`` waits for that), and a
    part's buffer is given back only once the store accepted the part, so the buffers in flight,
    the one being filled and the spares together never exceed K.
    """

    def __init__(self) -> None:
        self._spares: list[_PartBuffer] = []
        # The maps, not the buffers: a map lives on while any view of it does, wherever that is.
        self._alive: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()

    @property
    def alive(self) -> int:
        return len(self._alive)

    def take(self, capacity: int) -> _PartBuffer:
        while self._spares:
            buffer = self._spares.pop()
            # Part sizes only grow (size unknown: they double every 1,000 parts), so a spare of
            # another size is never needed again and is dropped before a new one is made.
            if buffer.capacity == capacity:
                buffer.size = 0
                return buffer
        buffer = _PartBuffer(capacity)
        self._alive.add(buffer.map)
        return buffer

    def give_back(self, buffer: _PartBuffer) -> None:
        self._spares.append(buffer)

    def drop_spares(self) -> None:
        self._spares.clear()


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
        self._buffers = _PartBuffers()
        self._filling: _PartBuffer | None = None  # the part being filled
        self._size = 0
        self._next_part = 1
        self._multipart: _Multipart | None = None
        self._state = "open"

    @property
    def parts_in_flight(self) -> int:
        """Part uploads started and not yet reaped (below ``max_parts_in_flight`` between writes)."""
        return self._multipart.in_flight if self._multipart is not None else 0

    @property
    def part_buffers(self) -> int:
        """Part buffers of this upload still in memory: at most ``max_parts_in_flight``."""
        return self._buffers.alive

    async def write(self, chunk: bytes) -> None:
        self._ensure_open()
        self._size += len(chunk)
        if self._present:
            return
        if self._multipart is not None:
            await self._multipart.wait_below(self._sink.settings.max_parts_in_flight)
        view = memoryview(chunk)
        while view:
            buffer = self._part_buffer()
            if buffer.full:
                # A full buffer followed by more bytes is a part, not the whole object.
                await self._send_part()
                continue
            view = buffer.fill(view)

    async def restart(self) -> None:
        self._ensure_open()
        await shielded(self._discard())
        self._size = 0
        self._next_part = 1

    async def commit(self, *, size: int, sha256: str) -> Committed:
        self._ensure_open()
        if size != self._size:
            raise StorageInterrupted(
                f"{self.key}: {self._size} bytes written but {size} verified",
                key=self.key,
                code="storage_size_mismatch",
            )
        parts = await self._finish_parts() if self._multipart is not None else []
        if await self._write_tells_if_taken():
            try:
                return await self._publish_and_settle(parts, size, sha256, unchecked=True)
            except ConditionalWriteRefused:
                # The store refused If-None-Match together with this write's other headers
                # (checksums, say): ask first, as with any store that lacks it.
                pass
        existing = await self._bucket.head(self._object_key, key=self.key)
        if existing is not None and identical(existing, size, sha256):
            return await self._already_present(existing)
        if self._present:
            raise StorageInterrupted(
                f"{self.key}: the identical object found at open is gone; the asset must be uploaded",
                key=self.key,
                code="object_changed",
            )
        if existing is not None and not self._sink.settings.overwrite:
            raise self._exists_error()
        return await self._publish_and_settle(parts, size, sha256, unchecked=False)

    async def _publish_and_settle(
        self, parts: list[CompletedPartTypeDef], size: int, sha256: str, *, unchecked: bool
    ) -> Committed:
        try:
            written = await self._publish(parts, size, sha256, unchecked=unchecked)
        except StorageRejected as exc:
            if exc.code != "object_exists":
                raise
            # If-None-Match found an object: another writer published meanwhile, or one was there
            # and no HEAD asked first (``unchecked``). Same bytes are fine.
            existing = await self._bucket.head(self._object_key, key=self.key)
            if existing is not None and identical(existing, size, sha256):
                return await self._already_present(existing)
            raise self._exists_error() from exc
        self._drop_buffers()
        self._state = "committed"
        return Committed(uri=self._sink.uri_for(self.key), etag=written.etag, version_id=written.version_id)

    async def abort(self) -> None:
        if self._state == "committed":
            return
        self._state = "aborted"
        await self._discard()

    # -- internals ---------------------------------------------------------------------------------

    async def _write_tells_if_taken(self) -> bool:
        """Whether the commit can skip its HEAD: a single PUT will carry ``If-None-Match: *`` to a
        store known to enforce it, so the write is refused if an object is there, and that refusal
        is handled as a lost race (``commit``). One request per small file fewer. The HEAD stays
        with overwrite on (an identical object is not sent again), after an identical object was
        found at open, and for multipart uploads (one request among several)."""
        return (
            self._multipart is None
            and not self._present
            and not self._sink.settings.overwrite
            and await self._bucket.refuses_overwrite(self._sink.new_staging_key)
        )

    def _ensure_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"upload of {self.key} is already {self._state}")

    def _part_buffer(self) -> _PartBuffer:
        """The buffer of the part being filled; a spare or a new one when there is none."""
        if self._filling is None:
            size = part_size_at(
                self._next_part,
                expected_size=self._expected_size,
                minimum=self._sink.settings.part_size_min_bytes,
            )
            self._filling = self._buffers.take(size)
        return self._filling

    async def _send_part(self) -> None:
        if self._next_part > self._bucket.max_parts:
            raise StorageRejected(
                f"{self.key}: more than {self._bucket.max_parts} parts; the object exceeds S3's limits",
                key=self.key,
                code="object_too_large",
            )
        multipart = self._multipart or await self._start_multipart()
        buffer, self._filling = self._filling, None
        assert buffer is not None
        multipart.submit(self._next_part, buffer)
        self._next_part += 1
        # The next part's buffer is taken only after this: fewer than K in flight plus the one
        # being filled is what keeps the upload to K buffers.
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
        self._multipart = _Multipart(
            self._bucket, self.key, target, upload_id, checksum=checksum, buffers=self._buffers
        )
        self._sink.live_uploads.add(upload_id)
        return self._multipart

    async def _finish_parts(self) -> list[CompletedPartTypeDef]:
        assert self._multipart is not None
        if self._filling is not None and self._filling.size:
            await self._send_part()
        parts = await self._multipart.parts()
        # Every part is in the store: the buffers are not needed for completing or copying.
        self._drop_buffers()
        return parts

    async def _publish(
        self, parts: list[CompletedPartTypeDef], size: int, sha256: str, *, unchecked: bool
    ) -> Written:
        if_absent = not self._sink.settings.overwrite
        multipart = self._multipart
        if multipart is None:
            return await self._bucket.put(
                self._object_key,
                self._filling.filled() if self._filling is not None else memoryview(b""),
                key=self.key,
                sha256_hex=sha256,
                content_type=self._content_type,
                if_absent=if_absent,
                unchecked=unchecked,
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

    def _drop_buffers(self) -> None:
        """Free the buffer being filled and the spares (a part task still running frees its own)."""
        self._buffers.drop_spares()
        self._filling = None

    async def _discard(self) -> None:
        """Drop the buffers, stop the part tasks, abort the upload, delete a staged object; quietly."""
        multipart, self._multipart = self._multipart, None
        self._drop_buffers()
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
