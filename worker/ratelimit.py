"""Client-side rate limiting: stay inside a vendor's published request budget.

A token bucket per vendor budget: a provider whose vendor meters requests per API key (Layers'
reads) builds one limiter and passes every request through it. Its capacity is deliberately small
(a few seconds' worth of requests), so a backlog of hundreds of pending jobs turns into an even
stream of polls rather than a burst that empties the vendor's bucket and earns a row of 429s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class TokenBucket:
    """The pure part: how many tokens are available at ``now``, and how long until the next one."""

    rate_per_s: float
    capacity: float
    tokens: float = field(default=-1.0)
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.capacity < 1:
            raise ValueError("a token bucket needs a positive rate and a capacity of at least 1")
        if self.tokens < 0:
            self.tokens = self.capacity

    def take(self, now: float) -> float:
        """Take one token if available (returns 0), else return the seconds until one is."""
        elapsed = max(now - self.updated_at, 0.0)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        self.updated_at = now
        # The epsilon absorbs float rounding (0.1 s x 10/s may refill to 0.9999999999999998
        # tokens), which would otherwise ask for a wait too small to move the clock at all.
        if self.tokens >= 1.0 - 1e-9:
            self.tokens = max(self.tokens - 1.0, 0.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimiter:
    """Awaitable access to a token bucket, fair in arrival order."""

    def __init__(
        self,
        *,
        per_minute: float,
        burst_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        rate = per_minute / 60.0
        self._bucket = TokenBucket(rate_per_s=rate, capacity=max(1.0, rate * burst_s), updated_at=monotonic())
        self._monotonic = monotonic
        self._sleep = sleep
        # One waiter at a time takes the next token: requests leave in the order they arrived.
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while (delay := self._bucket.take(self._monotonic())) > 0:
                await self._sleep(delay)
