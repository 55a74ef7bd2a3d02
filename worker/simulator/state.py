"""Everything one simulator instance knows: jobs, files, fault rules, the request log and its clock.

Tests in the same event loop reach this object directly (through ``Simulator.state``); the HTTP control API
under ``/_sim/`` is a thin layer over the same methods, so both paths behave identically.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from worker.simulator.cloudlayer_jobs import PREVIEW_SIZE, CloudlayerBook, SimJob, parse_job_spec
from worker.simulator.faults import FaultBook
from worker.simulator.filestore import FileEntry, FileStore
from worker.simulator.requestlog import RequestLog
from worker.simulator.specs import SpecConflict

__all__ = ["DEFAULT_CLOUDLAYER_KEY", "STATE_KEY", "Clock", "SimulatorState"]

Clock = Callable[[], float]
DEFAULT_CLOUDLAYER_KEY = "cl-sim-key"


def _default_keys() -> set[str]:
    return {DEFAULT_CLOUDLAYER_KEY}


@dataclass(eq=False, kw_only=True)
class SimulatorState:
    """Mutable simulator state; ``clock`` drives job progress and URL expiry, so tests can move time."""

    clock: Clock = time.time
    cloudlayer_api_keys: set[str] = field(default_factory=_default_keys)
    seed: int = 0  # seeds generated ids and the sizes/timings of jobs created through the conversion API
    faults: FaultBook = field(default_factory=FaultBook)
    log: RequestLog = field(default_factory=RequestLog)
    files: FileStore = field(default_factory=FileStore)
    cloudlayer: CloudlayerBook = field(default_factory=CloudlayerBook)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def add_cloudlayer_job(self, spec: Mapping[str, object], *, job_type: str | None = None) -> SimJob:
        """Create a job from a control-API spec and register its files; raises ``SpecError``."""
        job = parse_job_spec(spec, now=self.clock(), rng=self.rng, job_type=job_type)
        for name in (job.file_name, job.preview_name):
            if name in self.files:
                raise SpecConflict(f"cloudlayer job: file name {name!r} is already taken by another asset")
        self.cloudlayer.add(job)
        # A failed job never produces a file: its would-be URL must stay 404, like a real bucket.
        ready_at = job.finished_at if job.outcome == "success" else None
        self.files.add(
            job.file_name,
            FileEntry(
                seed=job.seed,
                size=job.size,
                content_type=job.content_type,
                ready_at=ready_at,
                url_ttl_s=job.url_ttl_s,
            ),
        )
        self.files.add(
            job.preview_name,
            FileEntry(
                seed=job.preview_seed,
                size=PREVIEW_SIZE,
                content_type="image/png",
                ready_at=ready_at,
                url_ttl_s=job.url_ttl_s,
            ),
        )
        return job

    def reset(self) -> None:
        """Forget jobs, files, fault rules and the log; restart the id RNG so a reset run repeats exactly."""
        self.faults.clear()
        self.log.clear()
        self.files.clear()
        self.cloudlayer.clear()
        self.rng = random.Random(self.seed)


STATE_KEY = web.AppKey("simulator_state", SimulatorState)
