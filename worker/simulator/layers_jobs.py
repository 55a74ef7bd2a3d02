"""Simulated Layers generation jobs: specs and state over time (pure).

A job is ``running`` for ``running_s`` (forever when None), then reaches its outcome; its ``stage`` moves on
halfway, so its ETag changes mid-run too. It names its container by uuid; the book resolves or creates it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from worker.simulator.layers_content import OUTCOMES, ErrorInfo, read_error
from worker.simulator.specs import SpecError, SpecReader

__all__ = ["DEFAULT_JOB_ERROR", "JobSpec", "LayersJob", "parse_job_spec", "ulid_like"]

DEFAULT_JOB_ERROR = ErrorInfo("GENERATION_FAILED", "Content generation failed")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass(frozen=True, slots=True, kw_only=True)
class LayersJob:
    """One generation job; its container is looked up by ``container_uuid`` when shown."""

    id: str
    container_uuid: str
    project_id: str
    started_at: float
    running_s: float | None
    outcome: str
    error: ErrorInfo

    @property
    def finished_at(self) -> float | None:
        """State-clock time the job reaches its outcome; None when it runs forever."""
        return None if self.running_s is None else self.started_at + self.running_s

    def state_at(self, now: float) -> str:
        """The state at ``now``: "running" or the outcome."""
        finished = self.finished_at
        return "running" if finished is None or now < finished else self.outcome

    def stage_at(self, now: float) -> str:
        """The free-form ``stage``: it moves on halfway through, so the job's ETag changes mid-run too."""
        state = self.state_at(now)
        if state != "running":
            return "done" if state == "completed" else state
        if self.running_s is None or now - self.started_at < self.running_s / 2:
            return "preparing"
        return "rendering"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """A validated job spec; the book resolves or creates its container."""

    id: str
    running_s: float | None
    outcome: str
    error: ErrorInfo
    container: dict[str, object] | None
    container_ref: str | None


def ulid_like(now: float, rng: random.Random) -> str:
    """26 Crockford base32 characters: 48 bits of unix milliseconds, then 80 random bits."""
    value = (int(now * 1000) & ((1 << 48) - 1)) << 80 | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def parse_job_spec(raw: Mapping[str, object], *, now: float, rng: random.Random) -> JobSpec:
    """Validate a control-API job spec; raises ``SpecError``."""
    reader = SpecReader(raw, "layers job")
    job_id = reader.text("id", f"job_{ulid_like(now, rng)}")
    if job_id in ("", ".", ".."):
        raise SpecError("layers job: 'id' must not be empty, '.' or '..'")
    spec = JobSpec(
        id=job_id,
        running_s=reader.opt_number("running_s", 0.2),
        outcome=reader.choice("outcome", OUTCOMES, "completed"),
        error=read_error(reader, "error", DEFAULT_JOB_ERROR),
        container=reader.opt_object("container"),
        container_ref=reader.opt_text("container_id"),
    )
    reader.finish()
    if spec.container is not None and spec.container_ref is not None:
        raise SpecError("layers job: give either 'container' or 'container_id', not both")
    return spec
