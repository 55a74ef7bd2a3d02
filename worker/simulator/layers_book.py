"""The simulated Layers account: containers and jobs by id, and their media files on the shared file host.

Pure like the model (the ``FileStore`` it fills is in-memory): creating a container registers each asset
(and each video's thumbnail) as a ``FileEntry`` that exists from the container's completion on; a
regeneration registers the new generation and retires the old one's files now or after a grace period.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from worker.simulator.filestore import FileEntry, FileStore
from worker.simulator.layers_content import (
    THUMBNAIL_SIZE,
    Generation,
    LayersContainer,
    parse_container_ref,
    parse_container_spec,
    regenerated,
)
from worker.simulator.layers_jobs import LayersJob, parse_job_spec
from worker.simulator.specs import SpecConflict, SpecError, SpecNotFound

__all__ = ["LayersBook"]


def _media_files(container: LayersContainer) -> dict[str, FileEntry]:
    """The files the container's current generation puts on the media host, by name."""
    gen = container.generation
    # A failed or canceled generation never produces files: their would-be URLs stay 404.
    ready_at = gen.ready_at if gen.outcome == "completed" else None
    files: dict[str, FileEntry] = {}
    for asset in gen.assets:
        files[asset.file_name] = FileEntry(
            seed=asset.seed,
            size=asset.size,
            content_type=asset.mime_type,
            ready_at=ready_at,
            url_ttl_s=container.url_ttl_s,
        )
        if asset.thumbnail_name is not None:
            files[asset.thumbnail_name] = FileEntry(
                seed=asset.thumbnail_seed,
                size=THUMBNAIL_SIZE,
                content_type="image/jpeg",
                ready_at=ready_at,
                url_ttl_s=container.url_ttl_s,
            )
    return files


def _file_names(generation: Generation) -> list[str]:
    names = []
    for asset in generation.assets:
        names.append(asset.file_name)
        if asset.thumbnail_name is not None:
            names.append(asset.thumbnail_name)
    return names


def _register(files: FileStore, container: LayersContainer) -> None:
    """Add the generation's files, all or none (a name collision is the caller's mistake, answered 409)."""
    entries = _media_files(container)
    for name in entries:
        if name in files:
            raise SpecConflict(f"layers container: file name {name!r} is already taken by another asset")
    for name, entry in entries.items():
        files.add(name, entry)


class LayersBook:
    """Containers by uuid and jobs by id."""

    def __init__(self) -> None:
        self.containers: dict[str, LayersContainer] = {}
        self.jobs: dict[str, LayersJob] = {}

    def container(self, ref: str) -> LayersContainer | None:
        """The container named ``cnt_<uuid>`` or by its bare uuid, if any."""
        container_uuid = parse_container_ref(ref)
        return None if container_uuid is None else self.containers.get(container_uuid)

    def add_container(
        self, spec: Mapping[str, object], *, now: float, rng: random.Random, files: FileStore
    ) -> LayersContainer:
        """Create a container from a control-API spec and register its media; raises ``SpecError``."""
        container = parse_container_spec(spec, now=now, rng=rng)
        self.insert(container, files)
        return container

    def insert(self, container: LayersContainer, files: FileStore) -> None:
        """Register an already built container and its media; raises ``SpecConflict``."""
        if container.uuid in self.containers:
            raise SpecConflict(f"layers container: id {container.id!r} already exists")
        _register(files, container)
        self.containers[container.uuid] = container

    def add_job(
        self, spec: Mapping[str, object], *, now: float, rng: random.Random, files: FileStore
    ) -> LayersJob:
        """Create a job with a new container (timed like the job unless its spec says otherwise) or for an
        existing one; raises ``SpecError``."""
        job_spec = parse_job_spec(spec, now=now, rng=rng)
        if job_spec.id in self.jobs:
            raise SpecConflict(f"layers job: id {job_spec.id!r} already exists")
        if job_spec.container_ref is not None:
            found = self.container(job_spec.container_ref)
            if found is None:
                raise SpecError(f"layers job: no container {job_spec.container_ref!r}")
            container = found
        else:
            defaults: dict[str, object] = {
                "queued_s": 0.0,
                "processing_s": job_spec.running_s,
                "outcome": job_spec.outcome,
            }
            if job_spec.outcome == "failed":
                defaults["last_error"] = job_spec.error.to_json()
            container_spec = {**defaults, **(job_spec.container or {})}
            container = self.add_container(container_spec, now=now, rng=rng, files=files)
        job = LayersJob(
            id=job_spec.id,
            container_uuid=container.uuid,
            project_id=container.project_id,
            started_at=now,
            running_s=job_spec.running_s,
            outcome=job_spec.outcome,
            error=job_spec.error,
        )
        self.jobs[job.id] = job
        return job

    def regenerate(
        self, ref: str, spec: Mapping[str, object], *, now: float, files: FileStore
    ) -> LayersContainer:
        """Replace the container's assets with a new generation; raises ``SpecNotFound`` or ``SpecError``."""
        old = self.container(ref)
        if old is None:
            raise SpecNotFound(f"layers container: no container {ref!r}")
        new, old_gone_at = regenerated(old, spec, now=now)
        _register(files, new)
        if old_gone_at is not None:
            for name in _file_names(old.generation):
                files.retire(name, old_gone_at)
        self.containers[new.uuid] = new
        return new

    def clear(self) -> None:
        """Forget every container and job."""
        self.containers.clear()
        self.jobs.clear()
