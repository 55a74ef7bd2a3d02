"""Deterministic asset bytes derived from ``(seed, size)``.

The simulator never stores files: every byte is a pure function of the seed and its offset, so a test knows
the size and sha256 of an asset without keeping it, and the file host can serve any byte range of a
multi-GiB asset.

Layout: the file is a sequence of 64 KiB blocks. All blocks share one pseudo-random base block drawn from
the seed; block ``i`` replaces the first 16 bytes of the base with ``pack(seed, i)``. Generation is
therefore a handful of slice-and-join operations per MiB (no per-byte Python), and the content is not
periodic: a duplicated, skipped or reordered block changes the sha256, which is exactly what the worker's
integrity checks must notice.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator
from functools import lru_cache

__all__ = ["BLOCK_SIZE", "DEFAULT_CHUNK_SIZE", "content_bytes", "content_sha256", "iter_content"]

BLOCK_SIZE = 64 * 1024
DEFAULT_CHUNK_SIZE = 1 << 20
_HEADER = struct.Struct("<QQ")
_U64 = (1 << 64) - 1


@lru_cache(maxsize=64)
def _base_tail(seed: int) -> memoryview:
    """The shared part of every block for ``seed`` (cached: benchmarks stream many chunks of few seeds)."""
    base = random.Random(seed).randbytes(BLOCK_SIZE)
    return memoryview(base)[_HEADER.size :]


def _header(seed: int, block: int) -> bytes:
    # Masking keeps negative or huge seeds packable; the base block still differs per full seed value.
    return _HEADER.pack(seed & _U64, block & _U64)


def _slice(seed: int, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of the endless stream for ``seed``, built with one join (one copy per byte)."""
    tail = _base_tail(seed)
    head_len = _HEADER.size
    parts: list[bytes | memoryview] = []
    block = start // BLOCK_SIZE
    while True:
        block_start = block * BLOCK_SIZE
        if block_start >= stop:
            break
        lo = max(start, block_start) - block_start
        hi = min(stop, block_start + BLOCK_SIZE) - block_start
        if lo < head_len:
            parts.append(_header(seed, block)[lo : min(hi, head_len)])
        if hi > head_len:
            parts.append(tail[max(lo, head_len) - head_len : hi - head_len])
        block += 1
    return b"".join(parts)


def iter_content(
    seed: int, size: int, start: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """Yield the bytes ``[start, size)`` of the asset ``(seed, size)`` in chunks of at most ``chunk_size``.

    Byte ``i`` depends only on ``seed`` and ``i``, so ``iter_content(seed, n)`` is a prefix of
    ``iter_content(seed, m)`` for ``n <= m``; the file host relies on this to serve ranges and short bodies.
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if not 0 <= start <= size:
        raise ValueError(f"start must be within [0, {size}], got {start}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    position = start
    while position < size:
        stop = min(position + chunk_size, size)
        yield _slice(seed, position, stop)
        position = stop


def content_bytes(seed: int, size: int) -> bytes:
    """The whole asset in memory; meant for small sizes in tests."""
    return b"".join(iter_content(seed, size))


def content_sha256(seed: int, size: int) -> str:
    """Hex sha256 of the asset, computed by streaming so it works for GiB sizes in flat memory."""
    digest = hashlib.sha256()
    for chunk in iter_content(seed, size):
        digest.update(chunk)
    return digest.hexdigest()
