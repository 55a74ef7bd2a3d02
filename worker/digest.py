"""Incremental sha256 with a byte count, and the verification of a finished copy (pure)."""

from __future__ import annotations

import hashlib
import re

from worker.errors import IncompleteTransfer, IntegrityError

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def normalise_sha256(value: str | None) -> str | None:
    """Lower-case hex sha256, or ``None`` when the vendor published nothing usable."""
    if value is None:
        return None
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    return text if _SHA256_HEX.match(text) else None


class Digest:
    """sha256 and length of a byte stream, fed chunk by chunk.

    hashlib releases the GIL for large updates, so ``update`` may run in a worker thread while the
    event loop keeps receiving the next chunk.
    """

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def verify(
    *,
    size: int,
    sha256: str,
    content_length: int | None = None,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
) -> bool:
    """Check a finished copy against everything that was promised about it.

    ``content_length`` is what the file host announced for this body; fewer bytes means the
    transfer broke off. ``expected_size``/``expected_sha256`` are what the vendor published.
    Returns whether anything the vendor published was checked (``upstream_verified``).
    Raises ``IncompleteTransfer`` or ``IntegrityError`` (code ``size_mismatch`` or
    ``checksum_mismatch``).
    """
    if content_length is not None and size < content_length:
        raise IncompleteTransfer(
            f"body ended after {size} of {content_length} announced bytes",
            expected=content_length,
            actual=size,
        )
    if content_length is not None and size != content_length:
        raise IntegrityError(
            f"received {size} bytes but the file host announced {content_length}",
            expected=content_length,
            actual=size,
            code="size_mismatch",
        )
    if expected_size is not None and size != expected_size:
        raise IntegrityError(
            f"received {size} bytes but the vendor published {expected_size}",
            expected=expected_size,
            actual=size,
            code="size_mismatch",
        )
    expected_hex = normalise_sha256(expected_sha256)
    if expected_hex is not None and sha256 != expected_hex:
        raise IntegrityError(
            f"sha256 {sha256} does not match the vendor's {expected_hex}",
            expected=expected_hex,
            actual=sha256,
            code="checksum_mismatch",
        )
    return expected_size is not None or expected_hex is not None
