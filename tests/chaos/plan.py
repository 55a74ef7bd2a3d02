"""The chaos suite's plan: 500 jobs across both providers and the faults they meet, all drawn from
one seed, so a failing run replays with the same jobs, sizes, outcomes and fault rules.

What cannot be replayed exactly is timing (which request a SIGKILL interrupts); the kill schedule
(delays, victims) still comes from the seed.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from worker.models import JobKey
from worker.simulator.app import Simulator

MIB = 1 << 20
# Change to replay another world; a failure message always names the seed it ran with.
DEFAULT_SEED = 20261129


@dataclass(frozen=True, slots=True)
class Expected:
    """What a job must end as: done with these files (seed, size in order), or failed with a code."""

    key: JobKey
    files: tuple[tuple[int, int], ...]
    failure_code: str | None = None


@dataclass(slots=True)
class Plan:
    seed: int
    jobs: list[Expected] = field(default_factory=list)
    # Assets whose vendor publishes a sha256 (Layers, not legacy): the only ones on which wrong
    # bytes can be noticed. cloudlayer publishes a size and no checksum, so a flipped byte in an
    # otherwise whole cloudlayer file cannot be told from the real one by anyone downstream.
    checksummed: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [str(job.key) for job in self.jobs]


def size_of(rng: random.Random) -> int:
    """Mostly small files (2 KB to 1 MiB, log-uniform), one in twenty of 4 to 12 MiB so that kills
    and stalls meet transfers in the middle."""
    if rng.random() < 0.05:
        return rng.randrange(4 * MIB, 12 * MIB)
    return int(2_000 * (500 ** rng.random()))


def plan_world(sim: Simulator, *, seed: int, cloudlayer: int = 400, layers: int = 100) -> Plan:
    """Create the jobs in ``sim`` and install the fault rules; returns what each job must end as."""
    rng = random.Random(seed)
    plan = Plan(seed)
    # The fleet shares one simulated account: its rate limit is not what this suite is about
    # (the RATE_LIMITED answers come from the fault rules instead).
    sim.set_layers_rate(None)
    for i in range(cloudlayer):
        fails = rng.random() < 0.04
        job = sim.add_cloudlayer_job(
            id=f"chaos-{i:03d}",
            size=size_of(rng),
            pending_s=round(rng.uniform(0, 1.5), 2),
            outcome="error" if fails else "success",
            # A vendor that echoes our key in its error text: it must never be shown unmasked.
            error_message=f"render failed for key {sim.api_key}",
            asset_via=rng.choice(["job", "job", "asset"]),
            status_style=rng.choice(["sdk", "sdk", "aliases"]),
            publish_size=rng.random() < 0.8,
            ext=rng.choice(["pdf", "png", "jpg", "webp"]),
        )
        code = "upstream_error" if fails else None
        plan.jobs.append(Expected(JobKey("cloudlayer", job.id), ((job.seed, job.size),), code))
    for i in range(layers):
        fails = rng.random() < 0.05
        spec: dict[str, object] = {
            "format": "slideshow" if i % 3 == 0 else "video",
            "size": int(20_000 * (100 ** rng.random())),
            "processing_s": round(rng.uniform(0.1, 1.5), 2),
            "legacy": rng.random() < 0.1,
        }
        if spec["format"] == "slideshow":
            spec["slides"] = rng.randint(2, 4)
        if fails:
            spec.update(
                outcome="failed",
                last_error={"code": "RENDER_FAILED", "message": f"bad key {sim.layers_api_key}"},
            )
        if i % 4 == 3:
            layers_job = sim.add_layers_job(running_s=round(rng.uniform(0.1, 1.0), 2), container=spec)
            container = sim.layers_container(f"cnt_{layers_job.container_uuid}")
            key = JobKey("layers", layers_job.id)
        else:
            container = sim.add_layers_container(**spec)
            key = JobKey("layers", container.id)
        files = tuple((a.seed, a.size) for a in container.generation.assets)
        plan.jobs.append(Expected(key, files, "render_failed" if fails else None))
        if not fails and not spec["legacy"]:
            plan.checksummed.extend(a.asset_id for a in container.generation.assets)
    _install_faults(sim, rng, plan)
    return plan


def _install_faults(sim: Simulator, rng: random.Random, plan: Plan) -> None:
    """Faults drawn per request from seeded rules, plus wrong bytes once on a few chosen files."""
    rules: list[dict[str, object]] = [
        {"route": "cloudlayer.*", "kind": "status", "status": 429, "retry_after": "0.2", "probability": 0.04},
        {"route": "cloudlayer.*", "kind": "status", "status": 503, "probability": 0.04},
        {"route": "cloudlayer.job", "kind": "reset", "probability": 0.02},
        {"route": "layers.*", "kind": "status", "status": 429, "retry_after": "0.2", "probability": 0.03},
        {"route": "layers.*", "kind": "status", "status": 503, "probability": 0.03},
        {"route": "files", "kind": "reset", "probability": 0.02},
        {"route": "files", "kind": "reset_body", "probability": 0.02},
        {"route": "files", "kind": "truncate", "probability": 0.03},
        {"route": "files", "kind": "stall_body", "delay_s": 2.5, "probability": 0.01},
        {"route": "files", "kind": "stall", "delay_s": 0.5, "probability": 0.02},
        {"route": "files", "kind": "expired", "probability": 0.03},
    ]
    for rule in rules:
        sim.add_fault(**rule, seed=rng.getrandbits(32))
    # Bursts: the next few answers of a route all fail, as during an incident upstream.
    for route, status in (("cloudlayer.job", 503), ("layers.container", 502), ("files", 500)):
        sim.add_fault(route=route, kind="status", status=status, count=6)
    for asset_id in rng.sample(plan.checksummed, 8):
        sim.add_fault(route="files", kind="wrong_bytes", match=asset_id, count=1)


def fault_report(sim: Simulator) -> Counter[str]:
    """How often each kind of fault fired, by route and kind (status faults with their status)."""
    fired: Counter[str] = Counter()
    for record in sim.requests():
        if record.fault is not None:
            detail = f" {record.status}" if record.fault == "status" else ""
            fired[f"{record.route.split('.')[0]} {record.fault}{detail}"] += 1
    return fired
