"""The queue rows of ``bench/run.py``: how fast the worker finishes jobs when its queue is long.

One run of one case: ``asset-worker submit --from-file`` puts N jobs into a fresh store (SQLite in
the run's directory, or a fresh PostgreSQL database), then ``asset-worker run --no-http`` starts with
JSON logs (``ASSET_WORKER_LOG_FORMAT=json``), which ``run`` writes to stdout, one line each, flushed.
This parent reads them as they come and counts ``job_finished`` lines. At the M-th it notes the time
since spawn and the worker's CPU seconds and peak RSS so far (from /proc: the span the rate covers,
not the drain after it), then sends SIGTERM; the worker finishes what it holds and exits 0. The rate
is M / that time. The first M jobs finished are then checked with ``status --json KEY...``: done, the
right size and sha256, and the file on disk read back and hashed.

Every job is a finished simulator cloudlayer job whose 1 KiB asset nginx serves at ``/same/<id>``
(one file on disk for all of them; the worker reuses no copy, as cloudlayer publishes no sha256).
The simulator holds the jobs of the longest queue once, for every run and both stores.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Final

import contenders as run_one
from common import Simulator, live_usage
from contenders import Context, Sample
from fileserver import ServedFile, shared_path

_FINISHED: Final = b'"job_finished"'
_READY: Final = b'"job_ready"'  # a poll found the job finished at the vendor: it waits for a transfer

# The environment naming a fresh store for one run, made on entry and removed on exit; empty: the
# SQLite store ``Context.worker_env`` puts in the run's directory.
StoreFor = Callable[[], contextlib.AbstractContextManager[dict[str, str]]]


def job_ids(count: int) -> list[str]:
    return [f"q{index:06d}" for index in range(count)]


def job_keys(count: int) -> list[str]:
    return [f"cloudlayer:{job_id}" for job_id in job_ids(count)]


def create_jobs(sim: Simulator, base_url: str, count: int, size: int) -> None:
    """``count`` finished simulator jobs, each asset at its own nginx URL of the one shared file."""
    sim.external_jobs([(job_id, base_url + shared_path(job_id), size) for job_id in job_ids(count)])


@contextlib.contextmanager
def _in_run_dir() -> Iterator[dict[str, str]]:
    yield {}


@dataclasses.dataclass(frozen=True, slots=True)
class StoreKind:
    name: str  # "SQLite", "PostgreSQL"
    setting: str  # ASSET_WORKER_STORE, as printed
    fresh: StoreFor


SQLITE: Final = StoreKind("SQLite", "sqlite:///RUNDIR/store.db", _in_run_dir)


@dataclasses.dataclass(frozen=True, slots=True)
class QueueCase:
    queued: int  # jobs in the store when ``run`` starts
    measured: int  # finished jobs the rate is taken over
    store: StoreKind = SQLITE


@dataclasses.dataclass(slots=True)
class _Tally:
    """What the worker's log said up to the M-th job finished."""

    keys: list[str] = dataclasses.field(default_factory=list)
    ready: int = 0  # jobs polled ready, the M finished ones included
    problems: list[str] = dataclasses.field(default_factory=list)
    first_s: float | None = None
    seconds: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    tail: collections.deque[str] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=5))


def run_case(ctx: Context, workdir: Path, case: QueueCase, shared: ServedFile) -> Sample:
    """Submit ``case.queued`` jobs, run until ``case.measured`` finished, stop, check those jobs."""
    with case.store.fresh() as store_env:
        env = ctx.worker_env(workdir) | run_one.JSON_LOGS | store_env
        log_path = workdir / "worker.log"
        with log_path.open("ab") as log:
            submitted, error = run_one.submit_file(ctx, env, job_keys(case.queued), workdir, log)
            if error is not None:
                return Sample.failed(error, submit_s=submitted.wall_s)
            tally, error = run_until(ctx, env, case.measured, log, log_path)
            jobs = dict.fromkeys(tally.keys, shared)
            error = error or run_one.check_worker(ctx, env, jobs, log, by_key=True)
    return Sample(
        seconds=tally.seconds,
        cpu_s=tally.cpu_s,
        peak_rss_mib=tally.peak_rss_mib,
        error=error,
        submit_s=submitted.wall_s,
        first_done_s=tally.first_s,
        ready=tally.ready,
    )


def run_until(
    ctx: Context, env: dict[str, str], measured: int, log: IO[bytes], log_path: Path
) -> tuple[_Tally, str | None]:
    """``run --no-http`` from spawn until ``measured`` jobs finished, then SIGTERM; the tally and an error."""
    argv = [ctx.programs["asset-worker"], "run", "--no-http"]
    started = time.perf_counter()
    proc = ctx.children.spawn(argv, stdout=subprocess.PIPE, stderr=log, env=env)
    watchdog = threading.Timer(ctx.timeout_s(measured, 0), ctx.children.kill, (proc,))
    watchdog.start()
    try:
        assert proc.stdout is not None
        with proc.stdout:
            tally = _read_log(ctx, proc, proc.stdout, measured, started)
        code, _ = ctx.children.reap(proc)
    finally:
        watchdog.cancel()
    log.flush()
    return tally, _run_problem(tally, measured, code, log_path)


def _read_log(
    ctx: Context, proc: subprocess.Popen[bytes], stream: IO[bytes], measured: int, started: float
) -> _Tally:
    """Count ``job_finished`` lines to the end of the stream; stop the worker at the ``measured``-th."""
    tally = _Tally()
    for line in stream:
        tally.tail.append(line.decode(errors="replace"))
        if len(tally.keys) >= measured:
            continue  # what it does while it drains is not in the rate
        tally.ready += int(_READY in line)
        if _FINISHED not in line:
            continue
        elapsed = time.perf_counter() - started
        _count(tally, line, elapsed)
        if len(tally.keys) == measured:
            tally.seconds = elapsed
            with contextlib.suppress(OSError):  # it died this instant: the exit status will say
                tally.cpu_s, tally.peak_rss_mib = live_usage(proc.pid)
            ctx.children.kill(proc, signal.SIGTERM)
    return tally


def _count(tally: _Tally, line: bytes, elapsed: float) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        tally.problems.append(f"unreadable log line {line[:200]!r}")
        return
    if event.get("event") != "job_finished":
        return
    tally.keys.append(str(event.get("job")))
    tally.first_s = elapsed if tally.first_s is None else tally.first_s
    if event.get("outcome") != "done":
        tally.problems.append(f"{event.get('job')}: {event.get('outcome')}, {event.get('error')}")


def _run_problem(tally: _Tally, measured: int, code: int, log_path: Path) -> str | None:
    said = "".join(tally.tail)
    if (failed := run_one.exit_problem(code, log_path, said)) is not None:
        return f"run: {failed}"
    if len(tally.keys) < measured:
        return f"run ended after {len(tally.keys)} of {measured} jobs finished: {run_one.gist(said)}"
    return run_one.summarise_problems(tally.problems, measured)
