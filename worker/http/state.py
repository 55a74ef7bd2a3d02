"""What the handlers share: the store, the worker's destination, metrics and the runner's hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from worker.clock import Clock
from worker.metrics import Metrics
from worker.models import JobKey
from worker.store.base import Store

# Bodies above this are refused (413) before they are read whole; a thousand keys with long
# destinations fit in a fraction of it.
MAX_BODY_BYTES = 1 << 20
MAX_JOBS_PER_REQUEST = 1000
DEFAULT_PAGE = 100
MAX_PAGE = 1000
# A job's own destination: a path or URL of a few segments below the worker's (openapi.json).
MAX_DEST_CHARS = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    store: Store
    clock: Clock
    metrics: Metrics
    dest_url: str  # the worker's destination: every per-job destination lies inside it
    draining: Callable[[], bool]
    wake: Callable[[], None] = lambda: None  # a job was submitted: claim now
    abandon: Callable[[JobKey], object] = lambda _key: None  # a job was canceled: stop local work
    # False: the worker cannot store anything now, so /readyz answers 503 destination_unavailable.
    # Called on every probe, from the event loop: it must answer at once, without I/O.
    destination_ready: Callable[[], bool] = lambda: True
    # Readiness and metrics answer within these even when the store hangs.
    ping_timeout_s: float = 2.0
    stats_timeout_s: float = 2.0
    # A submit's body (at most MAX_BODY_BYTES) must arrive within this, or the answer is 408.
    body_timeout_s: float = 30.0


SERVICE = web.AppKey("asset_worker_service", Service)
