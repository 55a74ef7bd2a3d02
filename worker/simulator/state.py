"""Everything one simulator instance knows: jobs, containers, files, keys, rate limits, fault rules, the
request log and its clock.

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
from worker.simulator.defaults import DEFAULT_CLOUDLAYER_KEY, DEFAULT_LAYERS_KEY, DEFAULT_LAYERS_SCOPES
from worker.simulator.faults import FaultBook
from worker.simulator.filestore import FileEntry, FileStore
from worker.simulator.layers_book import LayersBook
from worker.simulator.layers_content import LayersContainer
from worker.simulator.layers_jobs import LayersJob
from worker.simulator.ratelimit import RateLimiter
from worker.simulator.requestlog import RequestLog
from worker.simulator.specs import SpecConflict, SpecError, SpecReader

__all__ = [
    "DEFAULT_CLOUDLAYER_KEY",
    "DEFAULT_LAYERS_KEY",
    "DEFAULT_LAYERS_SCOPES",
    "STATE_KEY",
    "Clock",
    "SimulatorState",
]

Clock = Callable[[], float]


def _default_keys() -> set[str]:
    return {DEFAULT_CLOUDLAYER_KEY}


def _default_layers_keys() -> dict[str, set[str]]:
    return {DEFAULT_LAYERS_KEY: set(DEFAULT_LAYERS_SCOPES)}


@dataclass(eq=False, kw_only=True)
class SimulatorState:
    """Mutable simulator state; ``clock`` drives job progress and URL expiry, so tests can move time."""

    clock: Clock = time.time
    cloudlayer_api_keys: set[str] = field(default_factory=_default_keys)
    layers_api_keys: dict[str, set[str]] = field(default_factory=_default_layers_keys)  # key -> scopes
    seed: int = 0  # seeds generated ids and the sizes/timings of jobs created through the conversion API
    faults: FaultBook = field(default_factory=FaultBook)
    log: RequestLog = field(default_factory=RequestLog)
    files: FileStore = field(default_factory=FileStore)
    cloudlayer: CloudlayerBook = field(default_factory=CloudlayerBook)
    layers: LayersBook = field(default_factory=LayersBook)
    layers_rate: RateLimiter = field(default_factory=RateLimiter)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def add_cloudlayer_job(self, spec: Mapping[str, object], *, job_type: str | None = None) -> SimJob:
        """Create a job from a control-API spec and register its files; raises ``SpecError``.

        A job with an external ``asset_url`` registers its preview only: its asset is another host's.
        """
        job = parse_job_spec(spec, now=self.clock(), rng=self.rng, job_type=job_type)
        files = self._cloudlayer_files(job)
        for name in files:
            if name in self.files:
                raise SpecConflict(f"cloudlayer job: file name {name!r} is already taken by another asset")
        self.cloudlayer.add(job)
        for name, entry in files.items():
            self.files.add(name, entry)
        return job

    @staticmethod
    def _cloudlayer_files(job: SimJob) -> dict[str, FileEntry]:
        """The files the simulator hosts for ``job``, by name."""
        # A failed job never produces a file: its would-be URL must stay 404, like a real bucket.
        ready_at = job.finished_at if job.outcome == "success" else None
        files: dict[str, FileEntry] = {}
        if job.asset_url is None:
            files[job.file_name] = FileEntry(
                seed=job.seed,
                size=job.size,
                content_type=job.content_type,
                ready_at=ready_at,
                url_ttl_s=job.url_ttl_s,
            )
        files[job.preview_name] = FileEntry(
            seed=job.preview_seed,
            size=PREVIEW_SIZE,
            content_type="image/png",
            ready_at=ready_at,
            url_ttl_s=job.url_ttl_s,
        )
        return files

    def add_layers_container(self, spec: Mapping[str, object]) -> LayersContainer:
        """Create a Layers container from a control-API spec and register its media; raises ``SpecError``."""
        return self.layers.add_container(spec, now=self.clock(), rng=self.rng, files=self.files)

    def add_layers_job(self, spec: Mapping[str, object]) -> LayersJob:
        """Create a Layers job (and its container, unless it names one); raises ``SpecError``."""
        return self.layers.add_job(spec, now=self.clock(), rng=self.rng, files=self.files)

    def regenerate_layers_container(self, container_id: str, spec: Mapping[str, object]) -> LayersContainer:
        """Give the container new assets; raises ``SpecNotFound`` or ``SpecError``."""
        return self.layers.regenerate(container_id, spec, now=self.clock(), files=self.files)

    def set_layers_key(self, spec: Mapping[str, object]) -> set[str]:
        """Accept ``{"key", "scopes"}`` (replacing the key's scopes if known); returns the scopes."""
        reader = SpecReader(spec, "layers key")
        key = reader.text("key", "")
        raw_scopes = reader.opt_list("scopes")
        reader.finish()
        if not key:
            raise SpecError("layers key: 'key' must be a non-empty string")
        scopes = DEFAULT_LAYERS_SCOPES if raw_scopes is None else raw_scopes
        if not all(isinstance(scope, str) for scope in scopes):
            raise SpecError(f"layers key: 'scopes' must be a list of strings, got {raw_scopes!r}")
        self.layers_api_keys[key] = {str(scope) for scope in scopes}
        return self.layers_api_keys[key]

    def reset(self) -> None:
        """Forget jobs, containers, files, fault rules, rate-limit usage and the log (accepted keys and rate
        limits stay); restart the id RNG so a reset run repeats exactly."""
        self.faults.clear()
        self.log.clear()
        self.files.clear()
        self.cloudlayer.clear()
        self.layers.clear()
        self.layers_rate.refill()
        self.rng = random.Random(self.seed)


STATE_KEY = web.AppKey("simulator_state", SimulatorState)
