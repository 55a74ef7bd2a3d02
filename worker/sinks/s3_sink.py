"""The S3 sink (``s3://bucket/prefix``): a verified object under the key, or no object at all.

One aiobotocore client per process (``open_s3_sink`` / ``S3Sink.connect``), credentials from
botocore's standard chain, errors translated in ``s3_errors``, calls made by ``s3_bucket.Bucket``.

Streaming. Bytes are copied once, into a part buffer (``s3_parts`` sizes it from the published
size), and sent from there as they are (``s3_bucket.PartBody``). An asset no larger than one part
is sent at commit as a single ``PutObject``; as soon as more than one part's worth arrives, a
multipart upload starts and each full part is sent by its own task. At most
``max_parts_in_flight`` (K) parts are in flight: ``write()`` does not return while K are, so the
transfer stops reading its source while the store is behind. The buffer being filled counts
against the same K: a buffer for the next part is taken only while fewer than K parts are in
flight, and a part's buffer is reused once the store accepted the part. So an upload holds at most
K part buffers, K x part size, plus per request in flight a few hundred KiB that aiohttp and
botocore read from the buffer in slices (bench/README.md has the measured figures).

Visibility and the ``sha256`` metadata. S3 only shows an object once ``PutObject`` or
``CompleteMultipartUpload`` succeeds, and both happen in ``commit()``, which the transfer calls only
after it verified size and sha256. The whole-file sha256 is stored as metadata ``sha256`` (a
multipart object's S3 checksum is a checksum of part checksums, not the file's digest):

- Known at open (the vendor published it): set on ``CreateMultipartUpload`` at the final key;
  ``CompleteMultipartUpload`` makes the object and its metadata visible at once.
- Single ``PutObject``: known at commit, sent with the object; its ``ChecksumSHA256`` is the
  transfer's own digest, so the store checks the whole file end to end.
- Unknown and multipart: the upload goes to a staging key ``<prefix>/.asset-worker-staging/<token>``,
  is completed there, then copied server side to the final key with the metadata (``CopyObject``
  with ``MetadataDirective=REPLACE``, a multipart ``UploadPartCopy`` above 5 GiB), and the staged
  object is deleted. Completing at the final key and copying in place afterwards was rejected: the
  object would be readable without its sha256 for the length of the copy (minutes for large
  files), forever if the worker died in between, and another replica's idempotency check would
  see an object that does not match. The price is a server-side copy (no bytes through the worker)
  and a short-lived staged object, which the janitor removes if a crash leaves it behind.

Idempotency. An object already under the key with the same size and ``sha256`` metadata is not
written again (``Committed(already_present=True)``): checked at open when size and sha256 are
published (the bytes are then still read and verified, but not uploaded), otherwise at commit. A
different object is refused (``StorageRejected``, code ``object_exists``) unless ``overwrite``;
without ``overwrite`` the final write also carries ``If-None-Match: *`` so two replicas racing for
a key cannot both win. Where the store is known to enforce that header (``Bucket.refuses_overwrite``
probes it once), a single ``PutObject`` is sent without a HEAD first: its refusal is the check.

Failure and cancellation. ``abort()`` (shielded by the transfer) cancels the part tasks, aborts the
multipart upload and deletes a staged object; failures there are logged, not raised, so the
original error reaches the caller. What a crash leaves behind, ``abort_stale_uploads`` (the
janitor) removes: multipart uploads and staged objects under the prefix older than
``janitor_age_s``, except this process's own live ones. The janitor regards everything under the
prefix as this deployment's, and its age must exceed the longest transfer of any replica.

Permissions: s3:PutObject, s3:GetObject (HEAD), s3:DeleteObject (staged objects),
s3:AbortMultipartUpload, s3:ListBucket and s3:ListBucketMultipartUploads on the prefix.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import aiobotocore.session
import structlog
from botocore.config import Config

from worker.errors import ConfigError, StorageError, StorageRejected, WorkerError
from worker.models import Receipt
from worker.sinks.base import OpenedSink
from worker.sinks.s3_bucket import Bucket, client_config, s3_options
from worker.sinks.s3_settings import S3Settings
from worker.sinks.s3_signing import BEFORE_SIGN_EVENT, unsigned_payload_when_checksummed
from worker.sinks.s3_upload import S3Upload, identical

log = structlog.get_logger("worker.sinks.s3")

STAGING_DIR = ".asset-worker-staging"


@dataclass(frozen=True, slots=True, kw_only=True)
class JanitorReport:
    aborted_uploads: int
    removed_staged: int


class S3Sink:
    """Publishes assets under ``s3://bucket/prefix/``; keys are relative paths from ``worker.naming``."""

    def __init__(
        self,
        bucket: Bucket,
        settings: S3Settings,
        *,
        exit_stack: AsyncExitStack | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.bucket = bucket
        self.settings = settings
        self._exit_stack = exit_stack
        self._wall_clock = wall_clock
        # This process's uploads and staged objects in progress: the janitor leaves them alone.
        self.live_uploads: set[str] = set()
        self.live_staged: set[str] = set()

    @classmethod
    async def connect(
        cls,
        settings: S3Settings,
        *,
        session: aiobotocore.session.AioSession | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> S3Sink:
        """Create the process's one S3 client; ``close()`` releases it.

        ``session`` defaults to one using botocore's standard credential chain; tests pass one with
        explicit credentials.
        """
        session = session or aiobotocore.session.get_session()
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                session.create_client(
                    "s3", endpoint_url=settings.endpoint_url, config=client_config(settings)
                )
            )
        except ValueError as exc:  # a malformed endpoint URL, an unknown region format
            await stack.aclose()
            raise ConfigError(f"cannot create the S3 client: {exc}") from exc
        unsigned = client.meta.config.merge(
            Config(s3={**s3_options(settings), "payload_signing_enabled": False})
        )
        client.meta.events.register(BEFORE_SIGN_EVENT, unsigned_payload_when_checksummed(unsigned))
        return cls(Bucket(client, settings), settings, exit_stack=stack, wall_clock=wall_clock)

    def object_key(self, key: str) -> str:
        segments = key.split("/")
        if (
            not key
            or "\x00" in key
            or any(s in ("", ".", "..") for s in segments)
            or segments[0] == STAGING_DIR
        ):
            # Keys are sanitised by naming.render_key; this is the last line of defence.
            raise StorageRejected(
                f"key {key!r} is not a valid relative object key", key=key, code="invalid_key"
            )
        return f"{self.settings.prefix}/{key}" if self.settings.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.settings.bucket}/{self.object_key(key)}"

    def owns(self, uri: str) -> bool:
        prefix = f"{self.settings.prefix}/" if self.settings.prefix else ""
        staging = f"s3://{self.settings.bucket}/{prefix}{STAGING_DIR}/"
        return uri.startswith(f"s3://{self.settings.bucket}/{prefix}") and not uri.startswith(staging)

    def new_staging_key(self) -> str:
        return f"{self._staging_prefix()}{secrets.token_hex(16)}"

    async def open(
        self,
        key: str,
        *,
        content_type: str | None,
        expected_size: int | None,
        expected_sha256: str | None,
    ) -> S3Upload:
        object_key = self.object_key(key)
        present = False
        if expected_size is not None and expected_sha256 is not None:
            # Everything needed to decide is known: refuse or skip before any byte is uploaded.
            existing = await self.bucket.head(object_key, key=key)
            if existing is not None and identical(existing, expected_size, expected_sha256):
                present = True
            elif existing is not None and not self.settings.overwrite:
                raise StorageRejected(
                    f"a different object already exists at {self.uri_for(key)} (overwrite is off)",
                    key=key,
                    code="object_exists",
                )
        return S3Upload(
            self,
            key,
            content_type=content_type,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            present=present,
        )

    async def still_has(self, receipt: Receipt) -> bool:
        # Trusted: the worker never deletes a published object, and asking would cost a request
        # per reused asset (a HEAD), paid on the path that exists to save requests.
        return True

    async def close(self) -> None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.aclose()

    async def abort_stale_uploads(self, *, older_than_s: float | None = None) -> JanitorReport:
        """Abort multipart uploads and delete staged objects under the prefix older than the age.

        Meant for the runner, at start and then periodically. This process's own uploads in
        progress are skipped whatever their age; a single failed abort is logged and skipped.
        """
        age = self.settings.janitor_age_s if older_than_s is None else older_than_s
        cutoff = self._wall_clock() - age
        prefix = f"{self.settings.prefix}/" if self.settings.prefix else ""
        aborted = removed = 0
        async for object_key, upload_id, initiated in self.bucket.list_uploads(prefix):
            if upload_id in self.live_uploads or initiated.timestamp() > cutoff:
                continue
            try:
                await self.bucket.abort_multipart(object_key, upload_id, key=object_key)
            except StorageError as exc:
                log.warning("s3_stale_upload_abort_failed", key=object_key, error=str(exc))
                continue
            aborted += 1
            log.info("s3_stale_upload_aborted", key=object_key, initiated=initiated.isoformat())
        async for object_key, modified in self.bucket.list_objects(self._staging_prefix()):
            if object_key in self.live_staged or modified.timestamp() > cutoff:
                continue
            try:
                await self.bucket.delete(object_key, key=object_key)
            except StorageError as exc:
                log.warning("s3_stale_staged_delete_failed", key=object_key, error=str(exc))
                continue
            removed += 1
            log.info("s3_stale_staged_removed", key=object_key, modified=modified.isoformat())
        log.info("s3_janitor_finished", aborted_uploads=aborted, removed_staged=removed)
        return JanitorReport(aborted_uploads=aborted, removed_staged=removed)

    def _staging_prefix(self) -> str:
        return f"{self.settings.prefix}/{STAGING_DIR}/" if self.settings.prefix else f"{STAGING_DIR}/"


@asynccontextmanager
async def open_s3_sink(
    settings: S3Settings,
    *,
    session: aiobotocore.session.AioSession | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[S3Sink]:
    """The S3 sink with its one client, closed on exit."""
    sink = await S3Sink.connect(settings, session=session, wall_clock=wall_clock)
    try:
        yield sink
    finally:
        await sink.close()


@asynccontextmanager
async def open_for_worker(settings: S3Settings) -> AsyncIterator[OpenedSink]:
    """The sink as a worker runs it: its janitor run once now, then every quarter janitor age (a
    dead worker's uploads are gone within 1.25 ages)."""
    async with open_s3_sink(settings) as sink:

        async def janitor() -> None:
            report = await sink.abort_stale_uploads()
            log.info(
                "s3_janitor", aborted_uploads=report.aborted_uploads, removed_staged=report.removed_staged
            )

        try:
            await janitor()
        except WorkerError as exc:
            log.warning("housekeeping_failed", error=exc.code, message=exc.message)
        yield OpenedSink(sink, (janitor, settings.janitor_age_s / 4))
