"""Multipart arithmetic for S3 (pure): how large each part is so any object fits in 10,000 parts.

S3's limits: parts of 5 MiB to 5 GiB (the last one may be smaller), at most 10,000 of them, objects
up to 5 TiB. Parts need not be equal, which is what makes an unknown size workable.

- Size published: one part size for the whole object, ``ceil(size / 10,000)`` rounded up to a
  whole MiB but never below the configured minimum. Up to 78 GiB that is just the minimum (8 MiB
  by default); a 5 TiB object gets 525 MiB parts.
- Size unknown: start at the minimum (at least 8 MiB) and double every 1,000 parts. Memory stays
  at K x minimum for every ordinary asset, and 10,000 parts still hold 1000 x 8 MiB x 1023 ≈ 8 TiB.
"""

from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
MIN_PART_BYTES = 5 * MIB
MAX_PART_BYTES = 5 * GIB
MAX_PARTS = 10_000
MAX_OBJECT_BYTES = 5 * TIB
# Above this a server-side copy must itself be a multipart copy (UploadPartCopy).
MAX_SINGLE_COPY_BYTES = 5 * GIB
# With 1,000-part tiers doubling, 10,000 parts cover 1000 * base * 1023 bytes: 5 TiB needs a base of
# 5.125 MiB, so an unknown size starts at 8 MiB even when 5 MiB parts are configured.
UNKNOWN_SIZE_MIN_PART_BYTES = 8 * MIB
GROWTH_EVERY_PARTS = 1000


def round_up_mib(n: int) -> int:
    """``n`` rounded up to a whole number of MiB."""
    return -(-n // MIB) * MIB


def part_size_for(expected_size: int | None, minimum: int) -> int:
    """The part size for an object of ``expected_size`` bytes (``None``: not published).

    A multiple of 1 MiB, at least ``minimum`` and 5 MiB, at most 5 GiB, and for any size up to
    5 TiB small enough that the object fits in 10,000 parts. For an unknown size this is the size
    of the first parts; ``part_size_at`` says how it grows.
    """
    floor = max(MIN_PART_BYTES, round_up_mib(minimum))
    if expected_size is None:
        return min(MAX_PART_BYTES, max(floor, UNKNOWN_SIZE_MIN_PART_BYTES))
    needed = round_up_mib(-(-max(expected_size, 0) // MAX_PARTS))
    return min(MAX_PART_BYTES, max(floor, needed))


def part_size_at(part_number: int, *, expected_size: int | None, minimum: int) -> int:
    """The size of part ``part_number`` (1-based); constant when the size was published."""
    base = part_size_for(expected_size, minimum)
    if expected_size is not None:
        return base
    tier = (part_number - 1) // GROWTH_EVERY_PARTS
    return min(MAX_PART_BYTES, base << tier)


def copy_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges ``(first, last)`` that a multipart copy of ``size`` bytes uses."""
    return [(start, min(start + part_size, size) - 1) for start in range(0, size, part_size)]
