"""Reading a stored copy back to check it (``asset-worker verify``): what a destination's reader
reports for one URI, and the contract it keeps. Each kind of destination brings its own reader
(``SinkSpec.open_reader``); none of them writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Pieces of about 1 MiB: large enough that hashlib releases the GIL and thread hops are rare, small
# enough that a few files at once hold a few MiB.
PIECE = 1 << 20


@dataclass(frozen=True, slots=True)
class Found:
    """What is at the URI: its size, and its sha256 unless it was not read (the size differs)."""

    size: int
    sha256: str | None
    bytes_read: int


@dataclass(frozen=True, slots=True)
class Absent:
    """Nothing at the URI."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Something is there, or may be, but could not be read (permissions, a directory, S3 refusing)."""

    reason: str


Observation = Found | Absent | Unreadable


class Reader(Protocol):
    async def observe(self, uri: str, expected_size: int) -> Observation:
        """What is at ``uri``: its size and sha256 (not read when the size already differs from
        ``expected_size``), nothing, or why it cannot be read."""
        ...
