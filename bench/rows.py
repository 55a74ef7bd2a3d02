"""The rows of ``bench/run.py``: which contenders each row runs and how, running them interleaved, and
summing their runs up (medians, ratios) into the JSON the report prints.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import contenders as run_one
from common import human
from contenders import Context, Go, Sample
from fileserver import ServedFile

# --- what a row is -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Contender:
    id: str  # its key in the JSON and in ratio names
    label: str  # the command, as printed
    go: Callable[[Path], Sample]  # one run in a fresh work directory
    is_worker: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Ratio:
    """One contender's summary figure over another's, printed on one contender's line."""

    key: str  # its name in the JSON, e.g. "worker/aria2c"
    over: str  # contender id of the numerator
    under: str  # contender id of the denominator
    shown_on: str  # contender id of the line that prints it
    tag: str = ""  # printed before it, when one line shows several
    figure: str = "median"  # the summary figure compared: "median" (in the row's unit), "median_peak_rss_mib"


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What the issue asks of a figure, printed next to it. Missing one is a finding, not a failure:
    the exit status only says whether every copy was right."""

    source: str  # a ratio key, or a contender id (then its median, in the row's unit)
    text: str  # the bound as printed: ">= 0.9", "< 5 s"
    met: Callable[[float], bool]


def at_least(bound: float) -> Callable[[float], bool]:
    return lambda value: value >= bound


def below(bound: float) -> Callable[[float], bool]:
    return lambda value: value < bound


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    key: str
    title: str
    unit: str  # of ``value``: "files/s", "MB/s", "ms"
    value: Callable[[Sample], float]
    runs: int
    contenders: list[Contender]
    cpu_per: int = 1  # CPU seconds are shown per this many files (or jobs)
    cpu_label: str = "CPU s/file"  # the CPU column's heading when ``cpu_per`` > 1
    counts_store_tx: bool = False  # per job (``cpu_per`` jobs): the worker's store transactions of run
    ratio_text: str = "asset-worker's median / the peer's median: above 1, asset-worker is faster"
    # The ratios to show; empty: every worker contender over every peer.
    compare: tuple[Ratio, ...] = ()
    targets: tuple[Target, ...] = ()
    # Lines printed under the table (figures outside the row's unit), from the row's result.
    footer: Callable[[Mapping[str, Any]], list[str]] | None = None
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def workers(self) -> list[Contender]:
        return [c for c in self.contenders if c.is_worker]

    @property
    def peers(self) -> list[Contender]:
        return [c for c in self.contenders if not c.is_worker]

    @property
    def ratios(self) -> tuple[Ratio, ...]:
        if self.compare:
            return self.compare
        several = len(self.workers) > 1
        return tuple(
            Ratio(f"{w.id}/{p.id}", w.id, p.id, shown_on=p.id, tag=f"{w.id} " if several else "")
            for w in self.workers
            for p in self.peers
        )


WORKER_RUN: Final = "asset-worker run --until-idle --no-http"


def worker_run(go: Go) -> Contender:
    """asset-worker as its user runs it: ``submit``, then ``run --until-idle --no-http``."""
    return Contender("worker", WORKER_RUN, go, is_worker=True)


def large_row(
    key: str,
    file: ServedFile,
    runs: int,
    contenders: list[Contender],
    *,
    where: str = "",
    footer: Callable[[Mapping[str, Any]], list[str]] | None = None,
    facts: Mapping[str, Any] | None = None,
    targets: tuple[Target, ...] = (),
) -> Row:
    """One job of one large file, in MB/s; ``where`` ends the title (", into S3 ...")."""
    return Row(
        key=key,
        title=f"one large file{where}: {human(file.size)} ({file.size} bytes), one job",
        unit="MB/s",
        value=lambda s: file.size / s.seconds / 1e6,
        runs=runs,
        contenders=contenders,
        targets=targets,
        footer=footer,
        facts={"bytes": file.size, **(facts or {})},
    )


def large_file_row(ctx: Context, file: ServedFile, runs: int) -> Row:
    jobs = {job_key(file): file}
    return large_row(
        "large_file",
        file,
        runs,
        [
            worker_run(lambda d: run_one.asset_worker(ctx, d, jobs)),
            Contender("curl", "curl -sS -o FILE URL", lambda d: run_one.curl_one(ctx, d, file)),
            Contender(
                "aria2c", "aria2c -x1 -s1 --checksum=sha-256", lambda d: run_one.aria2c_one(ctx, d, file)
            ),
            Contender("rclone", "rclone copyurl URL FILE", lambda d: run_one.rclone_one(ctx, d, file)),
        ],
        # The issue's: at least 0.6x a plain download, and twice a download that checks a sha256.
        targets=(
            Target("worker/curl", ">= 0.6", at_least(0.6)),
            Target("worker/aria2c", ">= 2", at_least(2.0)),
        ),
    )


def startup_row(ctx: Context, store_dir: Path, runs: int) -> Row:
    worker, python, rclone = ctx.programs["asset-worker"], ctx.programs["python"], ctx.programs["rclone"]
    store_dir.mkdir(exist_ok=True)
    empty_store = ctx.worker_env(store_dir)
    run_one.warm_up(ctx, [worker, "status"], empty_store)  # creates the empty store once, untimed
    for argv in ([worker, "--help"], [python, "-c", "pass"], [rclone, "--help"]):
        run_one.warm_up(ctx, argv)
    return Row(
        key="startup",
        title="start-up: wall time from spawn to exit",
        unit="ms",
        value=lambda s: s.seconds * 1000,
        runs=runs,
        ratio_text=(
            "asset-worker's median / the peer's median: these are times, so above 1, asset-worker is slower"
        ),
        contenders=[
            Contender(
                "help", "asset-worker --help", lambda d: run_one.command(ctx, d, [worker, "--help"]), True
            ),
            Contender(
                "status",
                "asset-worker status (empty store)",
                lambda d: run_one.command(ctx, d, [worker, "status"], empty_store),
                True,
            ),
            Contender("python", "python -c pass", lambda d: run_one.command(ctx, d, [python, "-c", "pass"])),
            Contender("rclone", "rclone --help", lambda d: run_one.command(ctx, d, [rclone, "--help"])),
        ],
    )


def job_key(file: ServedFile) -> str:
    return f"cloudlayer:{Path(file.name).stem}"


# --- running a row -------------------------------------------------------------------------------------


def interleave(row: Row, scratch: Path) -> dict[str, list[Sample]]:
    """Each contender once per round, ``row.runs`` rounds, every run in its own work directory."""
    samples: dict[str, list[Sample]] = {c.id: [] for c in row.contenders}
    for run in range(row.runs):
        for contender in row.contenders:
            workdir = Path(tempfile.mkdtemp(prefix=f"{row.key}-{contender.id}-", dir=scratch))
            try:
                sample = contender.go(workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            samples[contender.id].append(sample)
            if not sample.ok:
                print(f"!! {row.key}: {contender.label}, run {run + 1}: {sample.error}", file=sys.stderr)
    return samples


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(row: Row, contender: Contender, samples: list[Sample]) -> dict[str, Any]:
    good = [s for s in samples if s.ok]
    values = [row.value(s) for s in good]
    summary: dict[str, Any] = {
        "label": contender.label,
        "runs": len(samples),
        "ok_runs": len(good),
        "median": _median(values),
        "min": min(values, default=None),
        "max": max(values, default=None),
        "median_cpu_s": _median([s.cpu_s for s in good]),
        "median_peak_rss_mib": _median([s.peak_rss_mib for s in good]),
    }
    if row.cpu_per > 1:
        summary["median_cpu_s_per_file"] = _median([s.cpu_s / row.cpu_per for s in good])
    if row.counts_store_tx and contender.is_worker:  # None when the runs did not tell
        counted = [s.store_tx / row.cpu_per for s in good if s.store_tx is not None]
        summary["median_store_tx_per_job"] = _median(counted)
    if any(s.submit_s is not None for s in samples):
        summary["median_submit_s"] = _median([s.submit_s for s in good if s.submit_s is not None])
    if any(s.first_done_s is not None for s in good):
        summary["median_first_done_s"] = _median([s.first_done_s for s in good if s.first_done_s is not None])
    if any(s.ready is not None for s in good):
        summary["median_ready"] = _median([float(s.ready) for s in good if s.ready is not None])
    summary["samples"] = [dataclasses.asdict(s) | {"value": row.value(s) if s.ok else None} for s in samples]
    rounded: dict[str, Any] = _rounded(summary)
    return rounded


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6 if abs(value) < 1 else 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def ratios(row: Row, summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Every ratio of the row (by default each worker contender over each peer), of their medians."""
    result: dict[str, float | None] = {}
    for ratio in row.ratios:
        over, under = summaries[ratio.over][ratio.figure], summaries[ratio.under][ratio.figure]
        result[ratio.key] = round(over / under, 3) if over and under else None
    return result


def target_figure(target: Target, result: Mapping[str, Any]) -> float | None:
    """The figure a target is about: a ratio of the row, or a contender's median."""
    if target.source in result["ratios"]:
        found: float | None = result["ratios"][target.source]
        return found
    median: float | None = result["contenders"][target.source]["median"]
    return median


def judge_targets(row: Row, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    judged = []
    for target in row.targets:
        value = target_figure(target, result)
        met = None if value is None else target.met(value)
        judged.append({"figure": target.source, "value": value, "target": target.text, "met": met})
    return judged


def bench_row(row: Row, scratch: Path) -> tuple[dict[str, Any], bool]:
    samples = interleave(row, scratch)
    summaries = {c.id: summarise(row, c, samples[c.id]) for c in row.contenders}
    result = {
        "title": row.title,
        "unit": row.unit,
        "runs": row.runs,
        **row.facts,
        "contenders": summaries,
        "ratios": ratios(row, summaries),
    }
    if row.targets:
        result["targets"] = judge_targets(row, result)
    return result, all(s.ok for group in samples.values() for s in group)
