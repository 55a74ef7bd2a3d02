"""Token buckets per API key and endpoint class, as the Layers partner API limits its callers (pure).

Each (key, class) bucket holds up to the class's per-minute limit and refills continuously at limit/60
tokens per second on the state clock, so a test moves time to refill it. A request that finds its bucket
empty is told how long until the next token (the ``Retry-After`` the API answers). Limits come from a tier
(see upstream-contract.md, section 2); the reads limit can be overridden or switched off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker.simulator.specs import SpecReader

__all__ = ["ENDPOINT_CLASSES", "TIERS", "RateLimiter"]

ENDPOINT_CLASSES = ("read", "write", "job_start")
# Per-minute limits per endpoint class and tier, as the vendor documents them.
TIERS: dict[str, dict[str, int]] = {
    "standard": {"read": 120, "write": 60, "job_start": 20},
    "pilot": {"read": 1_200, "write": 600, "job_start": 60},
    "partner": {"read": 6_000, "write": 3_000, "job_start": 300},
}


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """The buckets and the limits in force; a limit of None means the class is not limited."""

    def __init__(self, tier: str = "standard") -> None:
        self.tier = tier
        self._limits: dict[str, int | None] = dict(TIERS[tier])
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def configure(self, spec: Mapping[str, object]) -> dict[str, object]:
        """Replace the limits from ``{"tier"?, "reads_per_min"?}`` (null reads: unlimited); raises
        ``SpecError``. Every bucket starts full again. Returns the new settings as ``to_json`` shows them."""
        reader = SpecReader(spec, "layers rate")
        tier = reader.choice("tier", tuple(TIERS), "standard")
        limits: dict[str, int | None] = dict(TIERS[tier])
        if reader.has("reads_per_min"):
            limits["read"] = reader.opt_integer("reads_per_min", minimum=1)
        reader.finish()
        self.tier, self._limits = tier, limits
        self._buckets.clear()
        return self.to_json()

    def limit(self, endpoint_class: str) -> int | None:
        """Requests per minute allowed for the class; None when unlimited."""
        return self._limits[endpoint_class]

    def take(self, key: str, endpoint_class: str, now: float) -> float | None:
        """Spend one token for ``key``; None when allowed, else the seconds until a token is available."""
        per_min = self._limits[endpoint_class]
        if per_min is None:
            return None
        rate = per_min / 60.0
        bucket = self._buckets.get((key, endpoint_class))
        if bucket is None:
            bucket = self._buckets[(key, endpoint_class)] = _Bucket(float(per_min), now)
        # A clock moved backwards (a test rewinding it) must not drain the bucket.
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(per_min), bucket.tokens + elapsed * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate

    def refill(self) -> None:
        """Fill every bucket (forget usage); the limits stay."""
        self._buckets.clear()

    def to_json(self) -> dict[str, object]:
        """The limits in force, as the control API shows them."""
        return {
            "tier": self.tier,
            "reads_per_min": self._limits["read"],
            "writes_per_min": self._limits["write"],
            "job_starts_per_min": self._limits["job_start"],
        }
