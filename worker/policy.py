"""Retry and polling policy: backoff schedules, ``Retry-After`` parsing, status classification (pure).

Nothing here sleeps or reads a clock: callers pass ``now`` and a random source, so every delay the
worker will take can be computed and asserted in tests.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable
from dataclasses import dataclass

# The statuses the vendors' SDKs retry; every other 4xx is a permanent answer.
RETRYABLE_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter, bounded below by ``initial_s`` and above by ``max_s``.

    Delay ``n`` (0-based) is ``min(max_s, initial_s * multiplier**n)`` reduced by up to ``jitter``
    of itself, but never below ``initial_s``: the vendor asks for no polls faster than that, and
    spreading the rest keeps many jobs submitted together from polling in lock-step.
    """

    initial_s: float
    max_s: float
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and self.max_s >= self.initial_s):
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {self.initial_s}, {self.max_s}")
        if self.multiplier < 1:
            raise ValueError(f"backoff multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {self.jitter}")

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        """The delay before try ``attempt + 1``; ``rand()`` returns a float in [0, 1)."""
        # Cap the exponent so huge attempt counts cannot overflow a float.
        exponent = min(max(attempt, 0), 1000)
        try:
            base = self.initial_s * self.multiplier**exponent
        except OverflowError:
            base = math.inf
        capped = min(self.max_s, base)
        return max(self.initial_s, capped * (1.0 - self.jitter * rand()))


def parse_retry_after(value: str | None, *, now: float, max_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    The result is clamped to ``[0, max_s]`` so a hostile or confused server cannot park a worker
    for a day. Anything unparseable gives ``None`` (the caller falls back to its own backoff).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if math.isnan(seconds):
            return None
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), max_s)


def is_retryable_status(status: int) -> bool:
    """Whether an HTTP status from an API call is worth asking again."""
    return status in RETRYABLE_STATUSES


def is_expired_source_status(status: int) -> bool:
    """Whether a file host's answer means the pre-signed URL no longer works.

    403 is how S3 says "expired"; 404 and 410 appear when an asset was replaced or removed.
    """
    return status in (403, 404, 410)


class SpeedFloor:
    """Whether a stream keeps to a minimum speed, in fixed windows: at least ``min_bps * window_s``
    bytes must arrive in every ``window_s`` (time paused for something other than the stream, such
    as a slow destination, does not count). ``min_bps`` 0 turns the floor off.

    Counting a piece is one addition; the clock is read only when a window ends (``check``), so
    the floor costs nothing per piece of a fast stream.
    """

    def __init__(self, *, min_bps: int, window_s: float, now: float) -> None:
        self._quota = min_bps * window_s
        self._window_s = window_s
        self._start = now
        self._bytes = 0
        self._paused_at: float | None = None

    def deadline(self) -> float | None:
        """When the current window ends (None: no floor)."""
        return None if self._quota <= 0 else self._start + self._window_s

    def add(self, count: int) -> None:
        self._bytes += count

    def pause(self, now: float) -> None:
        """Stop counting time (the stream is not being read, through no fault of its own)."""
        self._paused_at = now

    def resume(self, now: float) -> None:
        if self._paused_at is not None:
            self._start += now - self._paused_at
            self._paused_at = None

    def check(self, now: float) -> bool:
        """At or after the deadline: True when the window ended short of its quota (a stall);
        otherwise a new window starts. Before the deadline, or while paused: False."""
        deadline = self.deadline()
        if deadline is None or self._paused_at is not None or now < deadline:
            return False
        if self._bytes < self._quota:
            return True
        self._start, self._bytes = now, 0
        return False

    def next_check(self, now: float) -> float:
        """When to ``check`` again: the window's end, or a window from now while paused."""
        deadline = self.deadline()
        if deadline is None or self._paused_at is not None or deadline <= now:
            return now + self._window_s
        return deadline

    def describe(self) -> str:
        rate = self._quota / self._window_s
        return (
            f"slower than {rate:g} bytes/s for {self._window_s:g} s "
            "(ASSET_WORKER_MIN_SPEED_BPS, ASSET_WORKER_MIN_SPEED_WINDOW_S)"
        )
