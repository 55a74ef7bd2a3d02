"""Which sink a job's files go to: the worker's destination, or a job's own place inside it.

A per-job destination (``Job.dest``, set through the HTTP API) is always a directory or prefix
inside the worker's ``ASSET_WORKER_DEST`` (``parse_dest`` enforces it at submit time, and again
here, because the worker that runs the job may be configured differently from the one that
accepted it). So every job is served by the one sink the worker opened, with its keys placed
below the job's sub-path: the file sink's checks against symlinks leaving its root, and for S3 the
one client, its settings and the janitor watching the prefix, all apply unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from worker.errors import ConfigError, StorageRejected
from worker.models import Receipt
from worker.policy import Backoff
from worker.sinks import sink_for
from worker.sinks.base import JobDest, Sink, Upload


def parse_dest(text: str, *, base_url: str) -> JobDest:
    """Validate a per-job destination against the worker's own (``ASSET_WORKER_DEST``).

    The policy: a token holder may choose a directory or prefix *inside* the worker's destination,
    nothing else: ``/srv/assets/tenant-a`` (or ``file:///srv/assets/tenant-a``) under a file
    destination ``/srv/assets``, ``s3://bucket/prefix/tenant-a`` under ``s3://bucket/prefix``; the
    extra segments are plain names (``[A-Za-z0-9._-]``, not starting with a dot, at most
    ``MAX_DEST_DEPTH``). So the API can never write where the operator did not point the worker
    (its store, its home, another bucket), and a destination's housekeeping (the S3 janitor,
    watching the prefix) still covers every upload. Raises ``ConfigError``.
    """
    return sink_for(base_url).job_dest(text, base_url)


class SubdirSink:
    """A view of ``base`` that places every key below ``subpath``."""

    def __init__(self, base: Sink, subpath: str) -> None:
        self._base = base
        self._subpath = subpath.strip("/")
        # The URI of an object named "x" in the sub-path, without the "x": every URI of this view
        # starts with it, whatever form (file://, s3://) the base sink gives its URIs.
        self._root_uri = base.uri_for(f"{self._subpath}/x")[:-1]

    def uri_for(self, key: str) -> str:
        return self._base.uri_for(f"{self._subpath}/{key}")

    def owns(self, uri: str) -> bool:
        return uri.startswith(self._root_uri) and self._base.owns(uri)

    async def open(
        self,
        key: str,
        *,
        content_type: str | None,
        expected_size: int | None,
        expected_sha256: str | None,
    ) -> Upload:
        return await self._base.open(
            f"{self._subpath}/{key}",
            content_type=content_type,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
        )

    async def still_has(self, receipt: Receipt) -> bool:
        return await self._base.still_has(receipt)

    async def close(self) -> None:
        return None  # the base sink belongs to whoever opened it


class SinkRouter:
    """The sink for each job's destination; views are made once per destination and kept."""

    def __init__(self, default: Sink, dest_url: str) -> None:
        self.default = default
        self._dest_url = dest_url
        self._views: dict[str, Sink] = {}

    def for_dest(self, dest: str | None) -> Sink:
        """The sink for ``Job.dest``; ``StorageRejected`` (``dest_not_allowed``) when that is not
        inside this worker's destination (the job was submitted to a differently configured one)."""
        if dest is None:
            return self.default
        sink = self._views.get(dest)
        if sink is None:
            try:
                parsed = parse_dest(dest, base_url=self._dest_url)
            except ConfigError as exc:
                raise StorageRejected(exc.message, key=dest, code="dest_not_allowed") from exc
            sink = SubdirSink(self.default, parsed.subpath) if parsed.subpath else self.default
            self._views[dest] = sink
        return sink


class DestinationHealth:
    """Whether the destination takes writes, and how long jobs wait for it when it does not.

    A full disk or an unreachable S3 is a pause, not a verdict: each job that meets it goes back
    to the queue for ``delay`` (growing with consecutive failures, capped by
    ``ASSET_WORKER_DEST_RETRY_MAX_S``), and ``/readyz`` reports ``destination_unavailable``. One
    successful write clears it. With no job left to try, the state lapses after twice the last
    delay plus ``slack_s`` (a waiting job would have failed again by then if nothing changed), so
    an empty queue does not keep a worker unready forever. Pure: time and randomness come in.
    """

    def __init__(self, backoff: Backoff, *, slack_s: float = 10.0) -> None:
        self._backoff = backoff
        self._slack_s = slack_s
        self._failures = 0
        self._down_until: float | None = None

    def ready(self, now: float) -> bool:
        return self._down_until is None or now >= self._down_until

    def failed(self, now: float, rand: Callable[[], float]) -> float:
        """Record a failure at ``now``; returns how long the job that met it should wait."""
        delay = self._backoff.delay(self._failures, rand)
        self._failures += 1
        self._down_until = now + 2 * delay + self._slack_s
        return delay

    def succeeded(self) -> None:
        self._failures = 0
        self._down_until = None
