"""The sink contract: where verified assets are published.

An ``Upload`` receives the bytes of one asset in order. Nothing is visible under the final key
until ``commit`` (which the transfer calls only after verification); ``abort`` removes every trace
of the attempt. Both are safe to call after a failure, and ``abort`` after ``commit`` does nothing.

A destination that can keep a partly written object for a later process implements
``ResumableUpload`` as well (a separate capability, so every other ``Upload`` stays as it is).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from worker.envvars import Var
from worker.errors import ConfigError
from worker.models import Receipt
from worker.sinks.readback import Reader


@dataclass(frozen=True, slots=True, kw_only=True)
class Committed:
    """Where a committed object lives, and what the destination said about it."""

    uri: str
    etag: str | None = None
    version_id: str | None = None
    already_present: bool = False  # an identical object was already there; nothing was written


class Upload(Protocol):
    key: str

    async def write(self, chunk: bytes) -> None:
        """Append bytes."""
        ...

    async def restart(self) -> None:
        """Throw away everything written so far (the source could not resume)."""
        ...

    async def commit(self, *, size: int, sha256: str) -> Committed:
        """Make the object durable and visible under its key.

        Called only after the transfer verified the bytes; ``size`` and ``sha256`` are the whole
        object's (a destination may store them as metadata or compare them with what it holds).
        """
        ...

    async def abort(self) -> None:
        """Remove whatever this upload wrote; never raises for a missing temp object."""
        ...


@dataclass(frozen=True, slots=True)
class SourceEntity:
    """Which bytes a download is made of, as a later process can check again: the file host's
    validator (a strong ETag, else Last-Modified, what ``If-Range`` sends back) and the file's total
    size. Not the URL: a pre-signed URL changes with every refresh while the file stays the same.
    Together with the key (where the bytes are going) it names the entity a kept part belongs to."""

    validator: str
    total: int


@runtime_checkable
class ResumableUpload(Upload, Protocol):
    """An upload that can be continued by a later process (one that was killed or drained).

    The transfer calls ``resume`` when the file host allows it (``Accept-Ranges: bytes`` and a
    validator), before the first body byte; on cancellation it calls ``suspend`` instead of
    ``abort``. A destination that cannot keep bytes across processes simply does not implement it.
    """

    async def resume(self, entity: SourceEntity) -> int:
        """Declare that the bytes to come are ``entity``'s, and take over what an earlier process
        left of exactly that entity: returns how many of its first bytes this upload already holds
        (0: none, start from zero), written after. Called again after ``restart`` for the entity
        that then replaces the first."""
        ...

    async def replay(self, feed: Callable[[bytes], None]) -> None:
        """Pass the bytes ``resume`` found, in order, to ``feed`` (from a worker thread), so the
        transfer hashes the whole file; nothing already held is trusted without being read again."""
        ...

    async def suspend(self) -> None:
        """Stop without publishing, keeping what was written for a later ``resume`` of the same
        entity (an upload with nothing resumable aborts instead)."""
        ...


class Sink(Protocol):
    def uri_for(self, key: str) -> str:
        """The URI an object under ``key`` has (``file:///...`` or ``s3://...``)."""
        ...

    def owns(self, uri: str) -> bool:
        """Whether ``uri`` names an object inside this destination (its root, bucket and prefix)."""
        ...

    async def open(
        self,
        key: str,
        *,
        content_type: str | None,
        expected_size: int | None,
        expected_sha256: str | None,
    ) -> Upload:
        """Start writing one object under ``key`` (a relative path from ``worker.naming``).

        ``expected_size`` and ``expected_sha256`` are what the vendor published, when it did: a
        destination may size its parts by them or label the object up front.
        """
        ...

    async def still_has(self, receipt: Receipt) -> bool:
        """Whether the copy a receipt names is still there to be reused for an identical asset (a
        destination that cannot tell cheaply may trust its receipts and say True)."""
        ...

    async def close(self) -> None: ...


# Work a destination needs done now and then (the S3 janitor), and how often, in seconds.
Housekeeping = tuple[Callable[[], Awaitable[None]], float]


@dataclass(frozen=True, slots=True)
class OpenedSink:
    """A destination ready for writing, with the periodic clean-up it needs, if any."""

    sink: Sink
    housekeeping: Housekeeping | None = None
    # A look at whether this process can write there at all, run once at start: a reason it cannot,
    # or None (its jobs wait for a fix either way; this only tells the operator early).
    check: Callable[[], Awaitable[str | None]] | None = None


@dataclass(frozen=True, slots=True)
class JobDest:
    """A job's own destination: ``url`` as the store keeps it (``file:///abs/dir`` or
    ``s3://bucket/prefix``), ``subpath`` where that is below the worker's destination ("" for itself)."""

    url: str
    subpath: str


# A per-job destination's own segments below the worker's destination: plain names, none hidden
# (so none can be "..", a staging directory or a temp file's dot name).
_DEST_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
MAX_DEST_DEPTH = 8


def check_subpath(text: str, subpath: str) -> None:
    """Refuse a per-job sub-path that is not a few plain names (``ConfigError``)."""
    segments = subpath.split("/") if subpath else []
    if len(segments) > MAX_DEST_DEPTH or not all(_DEST_SEGMENT.match(s) for s in segments):
        raise ConfigError(
            f"destination {text!r}: below the worker's destination, use at most {MAX_DEST_DEPTH} plain "
            "names of letters, digits, '.', '_' and '-', none starting with a dot"
        )


def not_inside(text: str, base: str) -> ConfigError:
    return ConfigError(f"destination {text!r} is not inside the worker's destination {base}")


S = TypeVar("S")


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkSpec(Generic[S]):
    """Everything the worker needs to know about a kind of destination, exported by its module as
    ``SPEC``. ``S`` is its settings type, built by ``load`` from the destination URL and ``variables``.

    The module the registry names must be cheap to import: a heavy client library is imported
    inside ``open``, so a worker writing to disk never loads it.
    """

    name: str
    schemes: tuple[str, ...]  # URL schemes it serves, lower case ("s3")
    takes_paths: bool = False  # a plain path (no "scheme://") names this destination
    example: str  # shown in errors: "s3://BUCKET/PREFIX"
    variables: tuple[Var, ...] = ()
    # (ASSET_WORKER_DEST, environment) -> its settings; raises ConfigError.
    load: Callable[[str, Mapping[str, str]], S]
    # (a job's own destination, ASSET_WORKER_DEST) -> where it is, if inside; raises ConfigError.
    job_dest: Callable[[str, str], JobDest]
    open: Callable[[S], AbstractAsyncContextManager[OpenedSink]]
    secrets: Callable[[Mapping[str, str]], tuple[str | None, ...]] = lambda _env: ()
    # (its settings when the worker's destination is of this kind, else None; the first URI to read)
    # -> a reader of stored copies for `verify` (worker.sinks.readback), or None when it has none.
    open_reader: Callable[[Any, str], AbstractAsyncContextManager[Reader]] | None = None


AnySinkSpec = SinkSpec[Any]
