"""``asset-worker demo``: the whole worker against the built-in simulator, on this machine.

It starts the simulator on loopback, creates a few dozen cloudlayer jobs of different sizes and
durations (some fail upstream, some meet injected faults: rate limiting, 503 bursts, a broken-off
body, an expired URL, a short file), runs the real worker until nothing is left, then re-reads
every stored file from disk and checks it against the bytes the simulator generated. It exits 0
only when every job ended as planned and every file verified.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from worker.app import open_worker
from worker.config import Settings
from worker.models import Job, JobKey, JobState
from worker.providers.base import ProviderConfig, Schedule
from worker.providers.cloudlayer import CloudlayerSettings
from worker.providers.layers import LayersSettings
from worker.simulator.app import Simulator, start_simulator
from worker.simulator.content import content_sha256
from worker.statusview import render_table

# cloudlayer reports upstream failures as upstream_error; Layers with its own (lower-cased) code.
_UPSTREAM_FAILURES = frozenset({"upstream_error", "render_failed"})


@dataclass(frozen=True, slots=True)
class PlannedJob:
    key: JobKey
    expected: tuple[tuple[int, int], ...]  # (seed, size) of each asset, in order
    fails_upstream: bool
    fault: str | None


def plan_jobs(sim: Simulator, count: int, rng: random.Random) -> list[PlannedJob]:
    """Create ``count`` varied jobs in the simulator, with a handful of faults on their routes."""
    planned: list[PlannedJob] = []
    styles = ["ms", "firestore", "iso", "absent"]
    faults = ["truncate", "expired", "short_body", "reset", "http_503", "http_429"]
    for i in range(count):
        size = int(2_000 * (12_000 ** rng.random()))  # 2 KB .. 24 MB, log-uniform
        fails = i % 7 == 6
        job = sim.add_cloudlayer_job(
            id=f"demo-{i:03d}",
            asset_id=f"asset-{i:03d}",
            size=size,
            pending_s=round(rng.uniform(0.1, 2.5), 2),
            outcome="error" if fails else "success",
            ext=rng.choice(["pdf", "pdf", "png", "jpg", "webp"]),
            asset_via="asset" if i % 5 == 4 else "job",
            status_style="aliases" if i % 4 == 3 else ("unknown" if i % 9 == 8 else "sdk"),
            timestamp_style=styles[i % len(styles)],
            omit_optional=i % 6 == 5,
        )
        fault = faults[i // 2] if i % 2 == 0 and i // 2 < len(faults) and not fails else None
        _inject(sim, job.id, job.asset_id, fault)
        planned.append(PlannedJob(JobKey("cloudlayer", job.id), ((job.seed, job.size),), fails, fault))
    return planned


def plan_layers(sim: Simulator, count: int, rng: random.Random) -> list[PlannedJob]:
    """Layers videos and slideshows, by container or by generation job; one fails upstream, one
    is a legacy container without checksums, one meets an expired media URL."""
    planned: list[PlannedJob] = []
    for i in range(count):
        fails = i == count - 1
        spec: dict[str, object] = {
            "format": "slideshow" if i % 2 else "video",
            "size": int(20_000 * (400 ** rng.random())),
            "processing_s": round(rng.uniform(0.2, 2.0), 2),
            "legacy": i == 2,
            "status_style": "generating" if i % 3 == 1 else "processing",
        }
        if i % 2:
            spec["slides"] = 3
        if fails:
            spec.update(outcome="failed", last_error={"code": "RENDER_FAILED", "message": "render failed"})
        if i % 4 == 3:
            job = sim.add_layers_job(running_s=0.5, container=spec)
            container = sim.layers_container(f"cnt_{job.container_uuid}")
            key = JobKey("layers", job.id)
        else:
            container = sim.add_layers_container(**spec)
            key = JobKey("layers", container.id)
        fault = None
        if i == 1:
            fault = "expired"
            sim.add_fault(
                route="files", match=container.generation.assets[0].asset_id, kind="expired", count=1
            )
        expected = tuple((a.seed, a.size) for a in container.generation.assets)
        planned.append(PlannedJob(key, expected, fails, fault))
    return planned


def _inject(sim: Simulator, job_id: str, asset_id: str, fault: str | None) -> None:
    match fault:
        case "truncate" | "short_body" | "reset":
            sim.add_fault(route="files", match=asset_id, kind=fault, count=1)
        case "expired":
            sim.add_fault(route="files", match=asset_id, kind="expired", count=1)
        case "http_503":
            sim.add_fault(route="cloudlayer.job", match=job_id, kind="status", status=503, count=3)
        case "http_429":
            sim.add_fault(
                route="cloudlayer.job", match=job_id, kind="status", status=429, retry_after="1", count=1
            )


def demo_settings(base: Settings, directory: Path, sim: Simulator) -> Settings:
    """The user's settings, pointed at the simulator and at the demo's own store and files.

    Polling starts at 0.2 s here only because the simulator is local; against the real API the
    default schedule (2 s, doubling, capped at 30 s) applies.
    """
    return dataclasses.replace(
        base,
        # The simulator's file host is on loopback, which the egress policy refuses: allow exactly
        # the simulator's address (as one would allow an internal vendor mirror).
        limits=dataclasses.replace(
            base.limits,
            allow_networks=(*base.limits.allow_networks, ipaddress.ip_network(sim.host_network)),
        ),
        store_url=f"sqlite:///{directory / 'asset-worker.db'}",
        dest_url=str(directory / "assets"),
        dest_settings=None,
        claim_interval_s=0.2,
        http=dataclasses.replace(base.http, backoff_initial_s=0.1, backoff_max_s=1.0),
        providers={
            "cloudlayer": ProviderConfig(
                CloudlayerSettings(api_key=sim.api_key, base_url=sim.url, api_version="v2"),
                Schedule(initial_s=0.2, max_s=1.0, multiplier=1.5, deadline_s=120.0),
            ),
            "layers": ProviderConfig(
                # The simulator runs at the pilot tier for the demo.
                LayersSettings(api_key=sim.layers_api_key, base_url=sim.layers_url, reads_per_min=1200),
                Schedule(initial_s=0.2, max_s=1.0, multiplier=1.3, deadline_s=120.0),
            ),
        },
    )


def verify_on_disk(seed: int, size: int, uri: str) -> bool:
    """Re-read a stored file and compare it with the bytes the simulator generated."""
    path = Path(unquote(urlsplit(uri).path))
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return path.stat().st_size == size and digest.hexdigest() == content_sha256(seed, size)


def fresh_directory(directory: str) -> Path:
    """The demo's directory, emptied of what an earlier demo left (its store and files only)."""
    root = Path(directory).absolute()
    for leftover in [root / "assets", *root.glob("asset-worker.db*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root


async def run_demo(base: Settings, *, directory: str, jobs: int) -> int:
    root = await asyncio.to_thread(fresh_directory, directory)
    rng = random.Random(2026)
    async with start_simulator() as sim:
        sim.set_layers_tier("pilot")
        cloudlayer_jobs = plan_jobs(sim, jobs, rng)
        layers_jobs = plan_layers(sim, max(jobs // 3, 4), rng)
        planned = cloudlayer_jobs + layers_jobs
        settings = demo_settings(base, root, sim)
        print(
            f"simulator on {sim.url} (Layers on {sim.layers_url}); {len(cloudlayer_jobs)} cloudlayer "
            f"jobs and {len(layers_jobs)} Layers containers; store and files under {root}"
        )
        started = time.monotonic()
        async with open_worker(settings) as worker:
            for plan in planned:
                await worker.store.submit(plan.key, now=time.time())
            await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), timeout=600)
            finished = await worker.store.get([p.key for p in planned])
    elapsed = time.monotonic() - started
    return report(planned, finished, elapsed)


def report(planned: list[PlannedJob], finished: list[Job], elapsed: float) -> int:
    """Print the table and a summary; 0 when every job ended as planned and verified."""
    by_key = {str(j.key): j for j in finished}
    notes: dict[str, str] = {}
    surprises = 0
    total_bytes = 0
    for plan in planned:
        job = by_key[str(plan.key)]
        fault = f" (survived {plan.fault})" if plan.fault else ""
        if plan.fails_upstream:
            ok = (
                job.state is JobState.FAILED
                and job.error is not None
                and job.error.code in _UPSTREAM_FAILURES
            )
            notes[str(plan.key)] = "failed upstream, as planned" if ok else "UNEXPECTED"
        else:
            receipts = [a.receipt for a in job.assets if a.receipt is not None]
            ok = (
                job.state is JobState.DONE
                and len(receipts) == len(plan.expected)
                and all(
                    verify_on_disk(seed, size, r.uri)
                    for (seed, size), r in zip(plan.expected, receipts, strict=True)
                )
            )
            total_bytes += sum(r.size for r in receipts)
            notes[str(plan.key)] = f"verified{fault}" if ok else f"NOT VERIFIED{fault}"
        surprises += not ok
    print(render_table([by_key[str(p.key)] for p in planned], extra=notes))
    done = sum(1 for j in by_key.values() if j.state is JobState.DONE)
    files = sum(len(j.assets) for j in by_key.values() if j.state is JobState.DONE)
    failed = sum(1 for j in by_key.values() if j.state is JobState.FAILED)
    print(
        f"\n{len(planned)} jobs in {elapsed:.1f} s: {done} done, {files} files verified on disk "
        f"({total_bytes / 1e6:.1f} MB), {failed} failed upstream as planned, {surprises} surprises"
    )
    return 0 if surprises == 0 else 1
