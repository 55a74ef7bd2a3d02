"""How far one asset's download has come: bytes, expected size, rate and ETA (pure).

The transfer tells the meter when a response starts (the file's size, the bytes already held) and
what each piece adds; that is an addition per piece, nothing more, on the hot path. Whoever
reports progress (the runner, at its cadence) takes a :meth:`TransferMeter.snapshot`, which is
where the rate is worked out: over the last ``RATE_WINDOW_S`` of snapshots, so a stall shows as a
falling rate within seconds instead of being averaged away over an hour-long download.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from worker.models import TransferProgress

# The rate is measured over about this much of the recent past.
RATE_WINDOW_S = 10.0


class TransferMeter:
    """One asset's download, from the first response to the commit."""

    def __init__(self, asset_id: str, now: Callable[[], float]) -> None:
        self.asset_id = asset_id
        self._now = now
        self.started_at = now()
        self.total: int | None = None
        # Bytes of the file held so far: resumed ones and received ones.
        self.held = 0
        # Bytes reused rather than downloaded when the latest response began (an earlier attempt's).
        self.reused = 0
        self._samples: deque[tuple[float, int]] = deque([(self.started_at, 0)])

    def start(self, total: int | None, offset: int) -> None:
        """A response begins: the file has ``total`` bytes (if known) and ``offset`` are held."""
        self.total = total
        if offset != self.held or offset == 0:
            # Bytes that were not received now (resumed from disk), or a restart from zero: the
            # rate starts afresh, or it would count them as received this instant.
            self._samples.clear()
            self._samples.append((self._now(), offset))
        self.held = offset
        self.reused = offset

    def add(self, count: int) -> None:
        self.held += count

    def snapshot(self) -> TransferProgress:
        now = self._now()
        samples = self._samples
        samples.append((now, self.held))
        # Keep one sample at least a window old, so the rate spans a whole window once there is one.
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW_S:
            samples.popleft()
        then, held_then = samples[0]
        rate = (self.held - held_then) / (now - then) if now > then else 0.0
        return TransferProgress(
            asset_id=self.asset_id,
            bytes=self.held,
            total=self.total,
            rate_bps=max(rate, 0.0),
            started_at=self.started_at,
            updated_at=now,
        )
