"""The sink contract: where verified assets are published.

An ``Upload`` receives the bytes of one asset in order. Nothing is visible under the final key
until ``commit`` (which the transfer calls only after verification); ``abort`` removes every trace
of the attempt. Both are safe to call after a failure, and ``abort`` after ``commit`` does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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

    async def close(self) -> None: ...
