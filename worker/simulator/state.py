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

from worker.simulator.cloudlayer_account import (
    EXPIRE_WHERE,
    CloudlayerAccount,
    bulk_jobs,
    parse_churn,
    pick_assets,
)
from worker.simulator.cloudlayer_jobs import PREVIEW_SIZE, CloudlayerBook, SimJob, parse_job_spec
from worker.simulator.defaults import DEFAULT_CLOUDLAYER_KEY, DEFAULT_LAYERS_KEY, DEFAULT_LAYERS_SCOPES
from worker.simulator.faults import FaultBook
from worker.simulator.filestore import FileEntry, FileStore
from worker.simulator.layers_account import LayersAccount, bulk_container_specs, project_containers
from worker.simulator.layers_book import LayersBook
from worker.simulator.layers_content import LayersContainer, parse_container_spec
from worker.simulator.layers_jobs import LayersJob
from worker.simulator.ratelimit import RateLimiter
from worker.simulator.requestlog import RequestLog
from worker.simulator.specs import SpecConflict, SpecError, SpecNotFound, SpecReader

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
    cloudlayer_account: CloudlayerAccount = field(default_factory=CloudlayerAccount)
    layers_account: LayersAccount = field(default_factory=LayersAccount)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def add_cloudlayer_job(self, spec: Mapping[str, object], *, job_type: str | None = None) -> SimJob:
        """Create a job from a control-API spec and register its files; raises ``SpecError``.

        A job with an external ``asset_url`` registers its preview only: its asset is another host's.
        """
        job = parse_job_spec(spec, now=self.clock(), rng=self.rng, job_type=job_type)
        self._register_cloudlayer([job])
        return job

    def _register_cloudlayer(self, jobs: list[SimJob]) -> None:
        """Add the jobs and their files, all or none (a collision is the caller's mistake, answered 409)."""
        job_ids: set[str] = set()
        asset_ids: set[str] = set()
        files: dict[str, FileEntry] = {}
        for job in jobs:
            if job.id in self.cloudlayer.jobs or job.id in job_ids:
                raise SpecConflict(f"cloudlayer job: id {job.id!r} already exists")
            if self.cloudlayer.by_asset(job.asset_id) is not None or job.asset_id in asset_ids:
                raise SpecConflict(f"cloudlayer job: asset_id {job.asset_id!r} already exists")
            job_ids.add(job.id)
            asset_ids.add(job.asset_id)
            for name, entry in self._cloudlayer_files(job).items():
                if name in self.files or name in files:
                    raise SpecConflict(
                        f"cloudlayer job: file name {name!r} is already taken by another asset"
                    )
                files[name] = entry
        for job in jobs:
            self.cloudlayer.add(job)
        for name, entry in files.items():
            self.files.add(name, entry)
        # A retention period already set applies to new assets too.
        self.cloudlayer_account.sync_files(jobs, self.files)

    def add_cloudlayer_assets(self, spec: Mapping[str, object]) -> list[SimJob]:
        """Create succeeded jobs with creation times spread into the past, oldest first (see
        ``cloudlayer_account.bulk_jobs``); raises ``SpecError``."""
        jobs = bulk_jobs(spec, now=self.clock(), rng=self.rng)
        self._register_cloudlayer(jobs)
        return jobs

    def cloudlayer_assets(self) -> list[SimJob]:
        """The jobs of every asset alive now, newest asset first: exactly what the list shows."""
        return self.cloudlayer_account.listing(self.cloudlayer, self.clock())

    def expire_cloudlayer_assets(self, spec: Mapping[str, object]) -> list[str]:
        """Expire now one of ``{"oldest": N}`` (as retention does), ``{"newest": N}``, ``{"random": N}``
        (seeded; both as deletions would) or ``{"ids": [...]}``; returns the ids expired. Raises
        ``SpecError`` (``SpecNotFound`` for an id that is not alive)."""
        reader = SpecReader(spec, "cloudlayer expire")
        counts = {where: reader.opt_integer(where, minimum=0) for where in EXPIRE_WHERE}
        ids = reader.opt_list("ids")
        reader.finish()
        given = [where for where, n in counts.items() if n is not None] + (["ids"] if ids is not None else [])
        if len(given) > 1:
            raise SpecError(
                f"cloudlayer expire: give one of 'oldest', 'newest', 'random', 'ids', got {given}"
            )
        now = self.clock()
        if ids is None:
            where = given[0] if given else "oldest"
            jobs = pick_assets(self.cloudlayer_assets(), where, counts[where] or 0, self.rng)
        else:
            jobs = []
            for asset_id in ids:
                job = self.cloudlayer.by_asset(asset_id) if isinstance(asset_id, str) else None
                if job is None or not self.cloudlayer_account.alive(job, now):
                    raise SpecNotFound(f"cloudlayer expire: no alive asset {asset_id!r}")
                jobs.append(job)
        return self.cloudlayer_account.expire(jobs, self.files, now)

    def set_cloudlayer_retention(self, spec: Mapping[str, object]) -> float | None:
        """``{"retention_s": N | null}``: assets vanish N s after creation (null: never); returns it."""
        reader = SpecReader(spec, "cloudlayer retention")
        retention_s = reader.opt_number("retention_s", None)
        reader.finish()
        self.cloudlayer_account.set_retention(retention_s, self.cloudlayer, self.files)
        return retention_s

    def set_cloudlayer_churn(self, spec: Mapping[str, object]) -> dict[str, object] | None:
        """Churn on list requests (see ``cloudlayer_account.parse_churn``); returns it, None when off."""
        churn = parse_churn(spec)
        self.cloudlayer_account.set_churn(churn)
        return None if churn is None else churn.to_json()

    def churn_cloudlayer_list(self) -> None:
        """Called by each answered list request: apply the churn when this request is due for it."""
        churn = self.cloudlayer_account.churn_due()
        if churn is None:
            return
        # Expire first, so that "newest" deletes assets a walk may have passed, not the ones just added.
        if churn.expire:
            self.expire_cloudlayer_assets({churn.where: churn.expire})
        if churn.add:
            self.add_cloudlayer_assets(
                {"count": churn.add, "size": churn.size, "spacing_s": 0, "start_age_s": 0}
            )

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

    def add_layers_containers(self, project_id: str, spec: Mapping[str, object]) -> list[LayersContainer]:
        """Create a project's containers with creation times spread into the past, oldest first (see
        ``layers_account.bulk_container_specs``); raises ``SpecError``."""
        if not project_id:
            raise SpecError("layers containers: the project id must not be empty")
        pairs = bulk_container_specs(project_id, spec, now=self.clock())
        # All parsed before any is registered, so a bad spec leaves the account untouched.
        containers = [parse_container_spec(raw, now=created, rng=self.rng) for created, raw in pairs]
        for container in containers:
            self.layers.insert(container, self.files)
        return containers

    def layers_project_containers(self, project_id: str) -> list[LayersContainer]:
        """Every container of the project, newest first: what an unfiltered walk must find."""
        return project_containers(self.layers, project_id, self.clock())

    def forbid_layers_project(self, project_id: str, spec: Mapping[str, object]) -> None:
        """``{"key"?}``: refuse that key (absent or null: every key) the project's list."""
        reader = SpecReader(spec, "layers forbid")
        key = reader.opt_text("key")
        reader.finish()
        self.layers_account.forbid(project_id, key)

    def set_layers_churn(self, project_id: str, spec: Mapping[str, object]) -> None:
        """``{"add_per_list", "every"}``: every ``every``-th list request of the project first adds
        ``add_per_list`` completed containers at the head (0: stop)."""
        reader = SpecReader(spec, "layers churn")
        add = reader.integer("add_per_list", 0, minimum=0)
        every = reader.integer("every", 1, minimum=1)
        reader.finish()
        self.layers_account.set_churn(project_id, add, every)

    def churn_layers_list(self, project_id: str) -> None:
        """Called by each answered list request of the project: add the churn's containers when due."""
        if count := self.layers_account.churn_due(project_id):
            self.add_layers_containers(project_id, {"count": count, "spacing_s": 0, "start_age_s": 0})

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
        """Forget jobs, containers, files, expiries, churn, forbidden projects, fault rules, rate-limit
        usage and the log (accepted keys and rate limits stay); restart the id RNG so a reset run repeats
        exactly."""
        self.faults.clear()
        self.log.clear()
        self.files.clear()
        self.cloudlayer.clear()
        self.layers.clear()
        self.cloudlayer_account.clear()
        self.layers_account.clear()
        self.layers_rate.refill()
        self.rng = random.Random(self.seed)


STATE_KEY = web.AppKey("simulator_state", SimulatorState)
