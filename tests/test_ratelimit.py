"""The client-side token bucket."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from worker.ratelimit import RateLimiter, TokenBucket


@given(
    rate=st.floats(min_value=0.1, max_value=100),
    capacity=st.floats(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=200),
)
def test_bucket_never_exceeds_its_budget(rate: float, capacity: float, gaps: list[float]) -> None:
    """However requests arrive, tokens granted by time t never exceed capacity + rate * t."""
    bucket = TokenBucket(rate_per_s=rate, capacity=capacity, updated_at=0.0)
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait == 0:
            granted += 1
        else:
            assert wait <= 1 / rate + 1e-9
        assert granted <= capacity + rate * now + 1e-6


async def test_limiter_spreads_a_burst() -> None:
    """A burst of 30 acquisitions at 600/min with a 1 s burst allowance is spread over about 2 s."""
    clock = [0.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds
        await asyncio.sleep(0)

    limiter = RateLimiter(per_minute=600, burst_s=1.0, monotonic=lambda: clock[0], sleep=fake_sleep)
    await asyncio.gather(*(limiter.acquire() for _ in range(30)))
    # 10 tokens up front, then one every 0.1 s: the 30th is granted at 2.0 s.
    assert abs(clock[0] - 2.0) < 1e-6
    assert all(abs(s - 0.1) < 1e-6 for s in slept)
