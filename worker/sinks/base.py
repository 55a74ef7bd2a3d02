"""The sink contract: where verified assets are published.

An ``Upload`` receives the bytes of one asset in order. Nothing is visible under the final key
until ``commit`` (which the transfer calls only after verification); ``abort`` removes every trace
of the attempt. Both are safe to call after a failure, and ``abort`` after ``commit`` does nothing.
"""

from __future__ import annotations

from typing import Protocol


class Upload(Protocol):
    key: str

    async def write(self, chunk: bytes) -> None:
        """Append bytes."""
        ...

    async def restart(self) -> None:
        """Throw away everything written so far (the source could not resume)."""
        ...

    async def commit(self) -> str:
        """Make the object durable and visible under its key; return its URI."""
        ...

    async def abort(self) -> None:
        """Remove whatever this upload wrote; never raises for a missing temp object."""
        ...


class Sink(Protocol):
    def uri_for(self, key: str) -> str:
        """The URI an object under ``key`` has (``file:///...`` or ``s3://...``)."""
        ...

    async def open(self, key: str, *, content_type: str | None, expected_size: int | None) -> Upload:
        """Start writing one object under ``key`` (a relative path from ``worker.naming``)."""
        ...

    async def close(self) -> None: ...
