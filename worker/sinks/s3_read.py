"""Reading stored objects back for ``asset-worker verify`` (``s3://`` URIs): one streamed
GetObject each, through the same client settings as the destination, hashed piece by piece on a
thread while the next piece arrives; an object is never held whole."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from worker.errors import WorkerError
from worker.sinks.readback import PIECE, Absent, Found, Observation, Reader, Unreadable
from worker.sinks.s3_settings import S3Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client


class S3Reader:
    """``s3://bucket/key`` URIs: one GetObject each, streamed and hashed piece by piece on a thread
    while the next piece arrives; the object is never held whole."""

    def __init__(self, client: S3Client) -> None:
        self._client = client

    async def observe(self, uri: str, expected_size: int) -> Observation:
        import botocore.exceptions

        from worker.sinks.s3_errors import is_not_found, translate

        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            response = await self._client.get_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if is_not_found(exc):
                return Absent()
            return Unreadable(_reason(translate(exc, action="GetObject", key=key)))
        except Exception as exc:  # network, credentials: translated, as every S3 call of the sink is
            return Unreadable(_reason(translate(exc, action="GetObject", key=key)))
        size = response["ContentLength"]
        async with response["Body"] as body:
            if size != expected_size:
                return Found(size, None, 0)  # closed unread: the size already says it differs
            try:
                digest, read = await _hash_stream(body)
            except Exception as exc:
                return Unreadable(_reason(translate(exc, action="GetObject", key=key)))
        return Found(read, digest, read)


async def _hash_stream(body: Any) -> tuple[str, int]:
    """Hash a streamed body: each full piece is hashed on a thread while the next one is read."""
    digest = hashlib.sha256()
    hashing: asyncio.Future[None] | None = None
    piece = bytearray()
    read = 0
    try:
        while True:
            chunk: bytes = await body.read(PIECE - len(piece))
            piece += chunk
            if chunk and len(piece) < PIECE:
                continue
            if hashing is not None:
                await hashing
                hashing = None
            if piece:
                read += len(piece)
                hashing = asyncio.ensure_future(asyncio.to_thread(digest.update, piece))
                piece = bytearray()
            if not chunk:
                break
        if hashing is not None:
            await hashing
    finally:
        if hashing is not None and not hashing.done():
            # The thread cannot be stopped; let it finish before the digest is dropped.
            await asyncio.shield(hashing)
    return digest.hexdigest(), read


def _reason(exc: WorkerError) -> str:
    return f"{exc.code}: {exc.message}"


@contextlib.asynccontextmanager
async def open_s3_reader(settings: S3Settings | None, uri: str) -> AsyncIterator[Reader]:
    """A reader for ``s3://`` URIs: with the destination's settings when it is S3 (endpoint,
    region, addressing, pool), otherwise the defaults for the URI's bucket, with botocore's own
    environment and profile."""
    from worker.sinks.s3_sink import open_s3_sink

    bucket = uri.removeprefix("s3://").partition("/")[0]
    async with open_s3_sink(settings or S3Settings(bucket=bucket)) as sink:
        yield S3Reader(sink.bucket.client)
