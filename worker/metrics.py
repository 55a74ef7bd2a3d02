"""Prometheus metrics of one worker, in its own registry (never the global one: tests run several
workers in one process, and each must count only its own work).

Counters and the histogram are updated where things happen (engine, HTTP client retries). The
queue's gauges (jobs by state, queue depth, oldest due job) describe the shared store, not this
process, so they are read from ``store.queue_stats`` when ``/metrics`` is scraped, within a
timeout. If the store cannot answer in time they are left out of that scrape rather than repeated
stale: an autoscaler then sees no value instead of an old one. ``deploy/`` relies on these names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from worker.errors import WorkerError
from worker.models import JobState
from worker.providers import PROVIDERS
from worker.store.base import Phase, QueueStats, SourceCounts, Store

log = structlog.get_logger("worker.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
POLL_RESULTS = ("pending", "ready", "failed", "rejected", "error")
OUTCOMES = (JobState.DONE.value, JobState.FAILED.value)
# From sub-second images to the 30-minute videos a slow file host produces.
TRANSFER_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.job_outcomes = Counter(
            "asset_worker_job_outcomes", "Jobs finished by this worker", ["provider", "outcome"], registry=r
        )
        self.polls = Counter(
            "asset_worker_polls",
            "Upstream polls by result (pending, ready, failed, rejected, error)",
            ["provider", "result"],
            registry=r,
        )
        self.retries = Counter(
            "asset_worker_retries",
            "Retries: of API requests (reason http_<status> or network) and of assets (reason: error code)",
            ["provider", "reason"],
            registry=r,
        )
        self.stored_bytes = Counter(
            "asset_worker_stored_bytes", "Bytes of the assets recorded stored", ["provider"], registry=r
        )
        self.stored_assets = Counter(
            "asset_worker_stored_assets", "Assets recorded stored", ["provider"], registry=r
        )
        self.destination_waits = Counter(
            "asset_worker_destination_waits",
            "Jobs sent back to wait because the destination was full or unreachable, by error code",
            ["code"],
            registry=r,
        )
        self.transfer_duration = Histogram(
            "asset_worker_transfer_duration_seconds",
            "Time to download, verify and publish one asset (a successful attempt)",
            buckets=TRANSFER_BUCKETS,
            registry=r,
        )
        # Every series a dashboard expects exists from the start, at zero.
        for provider in PROVIDERS:
            for outcome in OUTCOMES:
                self.job_outcomes.labels(provider=provider, outcome=outcome)
            for result in POLL_RESULTS:
                self.polls.labels(provider=provider, result=result)
            self.stored_bytes.labels(provider=provider)
            self.stored_assets.labels(provider=provider)
        self._live = _LiveCollector()
        r.register(self._live)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def track_in_flight(self, counts: Callable[[], Mapping[Phase, int]]) -> None:
        """Where ``asset_worker_in_flight`` reads the jobs this process works on (the runner)."""
        self._live.in_flight = counts

    def retry_observer(self, provider: str) -> Callable[[str, float], None]:
        """An ``HttpClient`` ``on_retry`` hook that counts the provider's request retries."""

        def observe(reason: str, _delay_s: float) -> None:
            self.retries.labels(provider=provider, reason=reason).inc()

        return observe

    async def refresh(self, store: Store, *, now: float, timeout_s: float) -> bool:
        """Read the queue gauges from the store; False (and no queue gauges) when it cannot answer."""
        try:
            async with asyncio.timeout(timeout_s):
                stats = await store.queue_stats(now=now)
                sources = await store.source_counts()
        except (WorkerError, TimeoutError) as exc:
            log.warning("metrics_queue_stats_failed", error=getattr(exc, "message", "timed out"))
            self._live.queue = None
            self._live.sources = None
            return False
        self._live.queue = (stats, now)
        self._live.sources = (sources, now)
        return True

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Gauges computed at scrape time: the queue snapshot ``refresh`` took, and in-flight jobs."""

    def __init__(self) -> None:
        self.queue: tuple[QueueStats, float] | None = None
        self.sources: tuple[Mapping[str, SourceCounts], float] | None = None
        self.in_flight: Callable[[], Mapping[Phase, int]] = dict

    def describe(self) -> Iterable[Metric]:
        return [*self._families(None, {}), *self._mirror_families(None)]

    def collect(self) -> Iterable[Metric]:
        return [*self._families(self.queue, self.in_flight()), *self._mirror_families(self.sources)]

    @staticmethod
    def _mirror_families(sources: tuple[Mapping[str, SourceCounts], float] | None) -> list[Metric]:
        jobs = GaugeMetricFamily(
            "asset_worker_mirror_jobs", "Jobs mirror sources discovered, by state", labels=["source", "state"]
        )
        age = GaugeMetricFamily(
            "asset_worker_mirror_oldest_uncopied_age_seconds",
            "Age of the oldest item a mirror source found and has not copied yet (0 when none): alert "
            "well before the vendor's retention",
            labels=["source"],
        )
        if sources is not None:
            counts, now = sources
            for source, stats in sorted(counts.items()):
                for state in JobState:
                    jobs.add_metric([source, state.value], stats.by_state.get(state, 0))
                oldest = stats.oldest_uncopied_created_at
                age.add_metric([source], 0.0 if oldest is None else max(now - oldest, 0.0))
        return [jobs, age]

    @staticmethod
    def _families(queue: tuple[QueueStats, float] | None, in_flight: Mapping[Phase, int]) -> list[Metric]:
        flying = GaugeMetricFamily(
            "asset_worker_in_flight", "Jobs this process is polling or transferring now", labels=["phase"]
        )
        for phase in Phase:
            flying.add_metric([phase.value], in_flight.get(phase, 0))
        jobs = GaugeMetricFamily("asset_worker_jobs", "Jobs in the store by state", labels=["state"])
        depth = GaugeMetricFamily(
            "asset_worker_queue_depth", "Unfinished jobs due now that no worker holds (the backlog)"
        )
        age = GaugeMetricFamily(
            "asset_worker_oldest_due_job_age_seconds",
            "How long the longest-waiting due job has been due (0 without a backlog)",
        )
        # Without a snapshot the queue families have no samples: absent, never stale.
        if queue is not None:
            stats, now = queue
            for state in JobState:
                jobs.add_metric([state.value], stats.by_state.get(state, 0))
            depth.add_metric([], stats.due)
            oldest = stats.oldest_due_at
            age.add_metric([], 0.0 if oldest is None else max(now - oldest, 0.0))
        return [flying, jobs, depth, age]
