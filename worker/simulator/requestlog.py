"""What the simulator was asked, in arrival order: tests assert on it (e.g. the API key never reached the
file host).

Control requests under ``/_sim/`` are not recorded, so the log shows only the traffic a real upstream would
see.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass

__all__ = ["RequestLog", "RequestRecord"]

# Bounded so a long benchmark cannot grow memory without limit; far above what any test produces.
MAX_RECORDS = 200_000


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """One request; ``status`` is filled in once answered and stays None when the connection was reset."""

    t: float
    method: str
    path: str  # as sent on the wire (percent-encoded), without the query string
    route: str
    status: int | None = None
    had_api_key: bool = False  # X-API-Key was sent (valid or not): it must never reach the file host
    had_authorization: bool = False  # same for an Authorization header (the Layers API's bearer token)
    range: str | None = None
    fault: str | None = None
    ended_t: float | None = None  # when the answer was complete or abandoned; None while in progress
    body_bytes: int = 0  # body bytes the file host handed to the connection (what a client could read)

    def to_json(self) -> dict[str, object]:
        """The record as ``GET /_sim/requests`` shows it."""
        return dataclasses.asdict(self)


class RequestLog:
    """Append-only (bounded) list of ``RequestRecord``."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=max_records)

    def append(self, record: RequestRecord) -> None:
        """Record a request as it arrives; the caller fills in the status later."""
        self._records.append(record)

    def snapshot(self, route: str | None = None) -> list[RequestRecord]:
        """Copies of the records (optionally of one route), so callers cannot disturb the log."""
        return [dataclasses.replace(rec) for rec in self._records if route is None or rec.route == route]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)
