"""``asset-worker demo``: the whole worker against the built-in simulator, on this machine.

It starts the simulator on loopback, creates a few dozen cloudlayer jobs of different sizes and
durations (some fail upstream, some meet injected faults: rate limiting, 503 bursts, a broken-off
body, an expired URL, a short file), runs the real worker until nothing is left, then re-reads
every stored file from disk and checks it against the bytes the simulator generated. It exits 0
only when every job ended as planned and every file verified.

What it prints fits an 80-column terminal: a line per job as it finishes (injected faults named as
such), a line of what is under way when nothing finished for two seconds, a summary, and the
commands to look at, check and remove what it made. ``--wide`` adds full keys and the whole table,
``--json`` prints every job's status JSON (and the progress lines go to standard error).

Longer than most modules: the plan of faults and what the report says about each belong together,
and nothing else uses either.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import ipaddress
import json
import random
import shlex
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
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
from worker.statusview import job_to_json, render_table
from worker.store import Store

# cloudlayer reports upstream failures as upstream_error; Layers with its own (lower-cased) code.
_UPSTREAM_FAILURES = frozenset({"upstream_error", "render_failed"})


@dataclass(frozen=True, slots=True)
class PlannedJob:
    key: JobKey
    expected: tuple[tuple[int, int], ...]  # (seed, size) of each asset, in order
    fails_upstream: bool
    fault: str | None
    quirk: str | None = None  # an odd but valid vendor answer the worker must take in its stride


def plan_jobs(sim: Simulator, count: int, rng: random.Random) -> list[PlannedJob]:
    """Create ``count`` varied jobs in the simulator, with a handful of faults on their routes."""
    planned: list[PlannedJob] = []
    styles = ["ms", "firestore", "iso", "absent"]
    faults = ["truncate", "expired", "short_body", "reset", "http_503", "http_429"]
    for i in range(count):
        size = int(2_000 * (12_000 ** rng.random()))  # 2 KB .. 24 MB, log-uniform
        fails = i % 7 == 6
        fault = faults[i // 2] if i % 2 == 0 and i // 2 < len(faults) and not fails else None
        # One oddity per job at most, so that each line can say which one the job met.
        unknown_status = i % 9 == 8 and fault is None
        job = sim.add_cloudlayer_job(
            id=f"demo-{i:03d}",
            asset_id=f"asset-{i:03d}",
            size=size,
            pending_s=round(rng.uniform(0.1, 2.5), 2),
            outcome="error" if fails else "success",
            ext=rng.choice(["pdf", "pdf", "png", "jpg", "webp"]),
            asset_via="asset" if i % 5 == 4 else "job",
            status_style="aliases" if i % 4 == 3 else ("unknown" if unknown_status else "sdk"),
            timestamp_style=styles[i % len(styles)],
            omit_optional=i % 6 == 5,
        )
        _inject(sim, job.id, job.asset_id, fault)
        quirk = "unknown status" if unknown_status and not fails else None
        planned.append(PlannedJob(JobKey("cloudlayer", job.id), ((job.seed, job.size),), fails, fault, quirk))
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
        quirk = "no checksums" if i == 2 and not fails else None
        planned.append(PlannedJob(key, expected, fails, fault, quirk))
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


# The default output fits a terminal this wide; --wide and --json carry the details.
WIDTH = 80
# Without a finished job for this long, a line says what is still under way.
HEARTBEAT_S = 2.0
# How often the demo looks at the store for finished jobs.
WATCH_INTERVAL_S = 0.2
# A key longer than this is shortened in the default output (Layers keys are 47 characters).
KEY_WIDTH = 19


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one job ended, against its plan."""

    plan: PlannedJob
    job: Job
    as_planned: bool
    note: str


def judge(plan: PlannedJob, job: Job) -> Outcome:
    """Did the job end as planned? Re-reads its files from disk (blocking: run it on a thread)."""
    injected = " + ".join(filter(None, [plan.fault, plan.quirk]))
    if plan.fails_upstream:
        ok = job.state is JobState.FAILED and job.error is not None and job.error.code in _UPSTREAM_FAILURES
        note = "upstream failure (injected)" if ok else f"UNEXPECTED: {job.state.value}"
        return Outcome(plan, job, ok, note)
    receipts = [a.receipt for a in job.assets if a.receipt is not None]
    ok = (
        job.state is JobState.DONE
        and len(receipts) == len(plan.expected)
        and all(
            verify_on_disk(seed, size, r.uri) for (seed, size), r in zip(plan.expected, receipts, strict=True)
        )
    )
    label = "injected fault" if plan.fault else "injected"
    if ok:
        note = f"{label}: {injected}, survived" if injected else "verified"
    else:
        note = f"NOT VERIFIED ({job.state.value})" + (f", {label}: {injected}" if injected else "")
    return Outcome(plan, job, ok, note)


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1e3:.0f} kB" if size >= 1e3 else f"{size} B"


class Printer:
    """The demo's lines: short keys and lines clipped to ``WIDTH`` unless ``wide``; on standard error
    when standard output carries the JSON document."""

    def __init__(self, total: int, *, wide: bool, to_stderr: bool) -> None:
        self.total = total
        self.wide = wide
        self.stream = sys.stderr if to_stderr else sys.stdout
        self.counter_width = len(f"{total}/{total}")
        self.last_line_at = time.monotonic()

    def line(self, text: str = "", *, clip: bool = True) -> None:
        if clip and not self.wide and len(text) > WIDTH:
            text = text[: WIDTH - 1] + "…"
        print(text, file=self.stream, flush=True)
        self.last_line_at = time.monotonic()

    def paragraph(self, text: str) -> None:
        """Prose, wrapped to the width (words never broken, so a long path stays whole)."""
        wrapped = text if self.wide else textwrap.fill(text, WIDTH, break_long_words=False)
        for part in wrapped.splitlines():
            print(part, file=self.stream, flush=True)
        self.last_line_at = time.monotonic()

    def header(self) -> None:
        key_width = 0 if self.wide else KEY_WIDTH
        self.line(f"{'done':>{self.counter_width}}  {'job':<{key_width}}  {'files':>5}  {'size':>7}  note")

    def finished(self, count: int, outcome: Outcome) -> None:
        key = str(outcome.job.key)
        if not self.wide and len(key) > KEY_WIDTH:
            key = key[: KEY_WIDTH - 1] + "…"
        receipts = [a.receipt for a in outcome.job.assets if a.receipt is not None]
        files = str(len(receipts)) if receipts else "-"
        size = human_size(sum(r.size for r in receipts)) if receipts else "-"
        counter = f"{count}/{self.total}"
        key_width = 0 if self.wide else KEY_WIDTH
        self.line(
            f"{counter:>{self.counter_width}}  {key:<{key_width}}  {files:>5}  {size:>7}  {outcome.note}"
        )

    def heartbeat(self, jobs: Sequence[Job], finished: int) -> None:
        counts = collections.Counter(j.state.value for j in jobs if not j.state.is_final)
        doing = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "finishing"
        self.line(f"{'':>{self.counter_width}}  ... {finished}/{self.total} finished; {doing}")


async def watch(
    store: Store, planned: Sequence[PlannedJob], runner: asyncio.Task[None], printer: Printer
) -> list[Outcome]:
    """A line for each job as it finishes (its files re-read and checked first), and a line of
    what is under way whenever none finished for ``HEARTBEAT_S``; until every job is final or the
    runner stopped."""
    waiting = {str(p.key): p for p in planned}
    outcomes: list[Outcome] = []
    while waiting:
        runner_stopped = runner.done()
        jobs = await store.get([p.key for p in waiting.values()])
        for job in jobs:
            if job.state.is_final:
                outcome = await asyncio.to_thread(judge, waiting.pop(str(job.key)), job)
                outcomes.append(outcome)
                printer.finished(len(outcomes), outcome)
        if runner_stopped or not waiting:
            break
        if time.monotonic() - printer.last_line_at >= HEARTBEAT_S:
            printer.heartbeat(jobs, len(outcomes))
        await asyncio.wait({runner}, timeout=WATCH_INTERVAL_S)
    return outcomes


async def run_demo(
    base: Settings, *, directory: str, jobs: int, wide: bool = False, as_json: bool = False
) -> int:
    root = await asyncio.to_thread(fresh_directory, directory)
    rng = random.Random(2026)
    async with start_simulator() as sim:
        sim.set_layers_tier("pilot")
        cloudlayer_jobs = plan_jobs(sim, jobs, rng)
        layers_jobs = plan_layers(sim, max(jobs // 3, 4), rng)
        planned = cloudlayer_jobs + layers_jobs
        settings = demo_settings(base, root, sim)
        printer = Printer(len(planned), wide=wide, to_stderr=as_json)
        printer.paragraph(
            f"asset-worker demo: {len(cloudlayer_jobs)} cloudlayer jobs and {len(layers_jobs)} Layers "
            f"containers, served by the built-in simulator on {sim.host_network.split('/')[0]}. "
            "Some meet injected faults (rate limits, 503s, cut-off bodies, expired URLs) or fail "
            "upstream on purpose; each must end as planned, its files re-read from disk and "
            f"checked. Store and files: {display_path(root)}/"
        )
        printer.line()
        printer.header()
        started = time.monotonic()
        async with open_worker(settings) as worker:
            for plan in planned:
                await worker.store.submit(plan.key, now=time.time())
            runner = asyncio.create_task(
                asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), timeout=600)
            )
            try:
                outcomes = await watch(worker.store, planned, runner, printer)
                await runner
            finally:
                runner.cancel()
            missed = [p for p in planned if str(p.key) not in {str(o.plan.key) for o in outcomes}]
            for plan, job in zip(missed, await worker.store.get([p.key for p in missed]), strict=True):
                outcomes.append(await asyncio.to_thread(judge, plan, job))  # not final: a surprise
    elapsed = time.monotonic() - started
    order = {str(p.key): i for i, p in enumerate(planned)}
    outcomes.sort(key=lambda o: order[str(o.plan.key)])
    return report(outcomes, elapsed, root, printer, as_json=as_json)


def report(outcomes: list[Outcome], elapsed: float, root: Path, printer: Printer, *, as_json: bool) -> int:
    """The summary and the next steps (and the whole table with --wide, the document with --json);
    0 when every job ended as planned and every file verified."""
    surprises = sum(not o.as_planned for o in outcomes)
    done = [o for o in outcomes if o.job.state is JobState.DONE]
    receipts = [a.receipt for o in done for a in o.job.assets if a.receipt is not None]
    failed = sum(o.job.state is JobState.FAILED for o in outcomes)
    if printer.wide:
        printer.line()
        notes = {str(o.job.key): o.note for o in outcomes}
        printer.line(render_table([o.job for o in outcomes], extra=notes))
    printer.line()
    printer.paragraph(
        f"{len(outcomes)} jobs in {elapsed:.1f} s: {len(done)} done, {len(receipts)} files "
        f"({human_size(sum(r.size for r in receipts))}) re-read from disk and verified, {failed} "
        f"failed upstream as planned, {surprises} surprise{'' if surprises == 1 else 's'}."
    )
    printer.line()
    for line in next_steps(root):
        printer.line(line, clip=False)  # a command is never cut: a long path the user chose stays whole
    if as_json:
        document = {
            "directory": str(root),
            "store": f"sqlite:///{root / 'asset-worker.db'}",
            "elapsed_s": round(elapsed, 3),
            "surprises": surprises,
            "jobs": [
                {
                    **job_to_json(o.job),
                    "injected_fault": o.plan.fault,
                    "injected_quirk": o.plan.quirk,
                    "fails_upstream": o.plan.fails_upstream,
                    "as_planned": o.as_planned,
                    "note": o.note,
                }
                for o in outcomes
            ],
        }
        print(json.dumps(document, indent=2))
    return 0 if surprises == 0 else 1


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (shorter to read and to
    paste), else absolute."""
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def activation() -> str | None:
    """The command that puts asset-worker on the PATH, when the shell would not find it by name
    (the README's first command runs ``.venv/bin/asset-worker`` without activating the venv)."""
    invoked = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if invoked is None or invoked.name != "asset-worker" or shutil.which("asset-worker"):
        return None
    activate = invoked.absolute().parent / "activate"
    return f". {shlex.quote(display_path(activate))}" if activate.is_file() else None


def next_steps(root: Path) -> list[str]:
    """What to do with what the demo made: look at the store, check and find the files, remove it."""
    shown = display_path(root)
    quoted = shlex.quote(shown)
    store = shlex.quote(f"sqlite:///{shown}/asset-worker.db")
    program = "asset-worker"
    activate = activation()
    demo_only = all(e.name == "assets" or e.name.startswith("asset-worker.db") for e in root.iterdir())
    # Never suggest removing what was in the directory before the demo.
    cleanup = f"rm -r {quoted}" if demo_only else f"rm -r {quoted}/assets {quoted}/asset-worker.db*"
    first = ["  asset-worker is not on your PATH; first:", f"    {activate}"] if activate else []
    return [
        "Next steps:",
        *first,
        "  The jobs, in the store the demo made:",
        f"    {program} status --store {store}",
        "  Every stored file re-read and checked against its receipt:",
        f"    {program} verify --store {store}",
        "  The files:",
        f"    ls -R {quoted}/assets",
        "  Clean up:",
        f"    {cleanup}",
    ]
