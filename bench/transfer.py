"""Download-and-verify throughput of the worker's transfer path against two baselines, on loopback.

    .venv/bin/python bench/transfer.py [--sizes 256M,1G] [--runs 3] [--chunk 1M]

One run starts the project's simulator, creates one job per size, and downloads each asset with three
contenders, interleaved (curl, naive, worker, curl, ...) so that machine noise spreads over all:

- ``curl``: ``curl | tee FILE | sha256sum``, the reference the issue names;
- ``naive``: the obvious aiohttp + aiofiles + hashlib loop;
- ``worker``: ``worker.transfer.fetch_to_sink`` into a ``FileSink``, the production path, including
  its fsync and rename.

Each download runs in its own child process (this script's hidden ``--child`` mode) so its peak RSS
and CPU time are its own, and writes a fresh file in a temp dir under /tmp, removed after the run.
Every copy's size and sha256 are checked against the simulator's content; a mismatch or a failed
child makes the exit status 1. Sizes are binary (``1G`` = 1 GiB); rates are MB/s (10**6 bytes/s).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import hashlib
import ipaddress
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiofiles
import aiohttp
from common import (
    MIB,
    BenchError,
    Children,
    find_gnu_time,
    human,
    measure,
    parse_bytes,
    start_simulator,
    terminate,
)

from worker.config import HttpSettings
from worker.egress import EgressPolicy
from worker.egress_session import new_upstream_session
from worker.models import AssetRef
from worker.simulator.content import content_sha256
from worker.sinks.file import FileSink
from worker.transfer import TransferOptions, fetch_to_sink

KINDS: Final = ("curl", "naive", "worker")
NAIVE_CHUNK: Final = 1 << 20
CEILING_BYTES: Final = 256 * MIB
# A child slower than this is hung, not slow: every contender here moves well over 50 MB/s.
_MIN_RATE_B_S: Final = 10e6
_CURL_SCRIPT: Final = 'set -o pipefail; curl -sS --fail "$1" | tee "$2" | sha256sum'

# The servers measured here listen on loopback, which the egress policy refuses unless allowed.
LOOPBACK_SERVERS = EgressPolicy([ipaddress.ip_network("127.0.0.0/8")])


# --- child mode: one download, one JSON line on stdout ----------------------------------------------


async def _naive(url: str, file: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    received = 0
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        resp.raise_for_status()
        async with aiofiles.open(file, "wb") as out:
            async for chunk in resp.content.iter_chunked(NAIVE_CHUNK):
                digest.update(chunk)
                received += len(chunk)
                await out.write(chunk)
    return received, digest.hexdigest()


async def _worker(url: str, file: Path, size: int, chunk: int) -> tuple[int, str, float]:
    """The production path; also returns how long the commit (flush, fsync, rename) took."""
    verified_at: list[float] = []

    async def mark_verified() -> None:
        # The lease-fence hook runs after verification, right before commit: a free stopwatch,
        # and no copy of the Sink protocol here to fall out of step with worker/sinks.
        verified_at.append(time.perf_counter())

    ref = AssetRef(asset_id=f"bench-{size}", url=url, expected_size=size)
    async with new_upstream_session(HttpSettings(), LOOPBACK_SERVERS, read_bufsize=chunk) as session:
        copy = await fetch_to_sink(
            session,
            ref,
            FileSink(file.parent),
            key_for=lambda _ct: file.name,
            options=TransferOptions(chunk_bytes=chunk, egress=LOOPBACK_SERVERS),
            before_commit=mark_verified,
        )
        commit_s = time.perf_counter() - verified_at[-1]
    return copy.size, copy.sha256, commit_s


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads: hashing and writing happen in some
    return usage.ru_utime + usage.ru_stime


def child_main(kind: str, url: str, file: Path, size: int, chunk: int) -> int:
    """Download once and print bytes, seconds, CPU seconds and sha256 of this transfer alone."""
    cpu, start = _cpu_s(), time.perf_counter()
    commit_s: float | None = None
    if kind == "naive":
        received, sha256 = asyncio.run(_naive(url, file))
    elif kind == "worker":
        received, sha256, commit_s = asyncio.run(_worker(url, file, size, chunk))
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    result: dict[str, Any] = {
        "bytes": received,
        "seconds": time.perf_counter() - start,
        "cpu_s": _cpu_s() - cpu,
        "sha256": sha256,
        "commit_s": commit_s,
    }
    # The parent reads the last stdout line, so a stray log line above it does no harm.
    print(json.dumps(result), flush=True)
    return 0


def ceiling_main() -> int:
    """Single-core hashlib.sha256 over a 256 MiB buffer in 1 MiB updates; prints MB/s.

    In a child so the parent stays small: on Linux a child's ru_maxrss starts at its parent's.
    """
    view = memoryview(os.urandom(MIB) * (CEILING_BYTES // MIB))  # real pages, not the zero page
    digest = hashlib.sha256()
    start = time.perf_counter()
    for offset in range(0, CEILING_BYTES, MIB):
        digest.update(view[offset : offset + MIB])
    print(CEILING_BYTES / (time.perf_counter() - start) / 1e6, flush=True)
    return 0


# --- parent: samples ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    kind: str
    ok: bool = False
    bytes: int = 0
    seconds: float  # the transfer alone: the child's own clock; wall time for curl
    wall_s: float  # spawn to exit, interpreter start-up included
    cpu_s: float  # likewise the transfer alone for Python contenders; the whole pipeline for curl
    peak_rss_mib: float
    sha256: str = ""
    commit_s: float | None = None
    error: str | None = None

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


def _child_argv(kind: str, url: str, file: Path, size: int, chunk: int) -> list[str]:
    if kind == "curl":
        return ["bash", "-c", _CURL_SCRIPT, "bench-curl", url, str(file)]
    script = str(Path(__file__).resolve())
    knobs = ["--size", str(size), "--chunk", str(chunk)]
    return [sys.executable, script, "--child", kind, url, str(file), *knobs]


@dataclasses.dataclass(frozen=True, slots=True)
class Contest:
    """What every run of one size shares."""

    children: Children
    gnu_time: str | None
    url: str
    size: int
    chunk: int
    expected_sha256: str

    def run(self, kind: str) -> Sample:
        """One download by ``kind`` into a fresh temp dir under /tmp, judged against the expectation."""
        workdir = Path(tempfile.mkdtemp(prefix="bench-transfer-", dir="/tmp"))
        try:
            file = workdir / f"{kind}.bin"
            argv = _child_argv(kind, self.url, file, self.size, self.chunk)
            done = measure(self.children, self.gnu_time, argv, max(60.0, self.size / _MIN_RATE_B_S))
            on_disk = file.stat().st_size if file.exists() else -1
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        base = Sample(
            kind=kind,
            seconds=done.wall_s,
            wall_s=done.wall_s,
            cpu_s=done.cpu_s,
            peak_rss_mib=done.peak_rss_mib,
        )
        return self._judge(base, done.out, done.code, on_disk)

    def _judge(self, base: Sample, out: str, code: int, on_disk: int) -> Sample:
        last = (out.strip().splitlines() or [""])[-1]
        if code != 0:
            return dataclasses.replace(base, error=f"exit status {code}")
        if base.kind == "curl":
            sample = dataclasses.replace(base, bytes=on_disk, sha256=last.split(" ", 1)[0])
        else:
            try:
                result = json.loads(last)
                sample = dataclasses.replace(
                    base,
                    bytes=int(result["bytes"]),
                    seconds=float(result["seconds"]),
                    cpu_s=float(result["cpu_s"]),
                    sha256=str(result["sha256"]),
                    commit_s=result.get("commit_s"),
                )
            except (ValueError, KeyError, TypeError) as exc:
                return dataclasses.replace(base, error=f"unreadable child output {last!r}: {exc}")
        problems = []
        if sample.sha256 != self.expected_sha256:
            problems.append(f"sha256 {sample.sha256 or '(none)'} != expected {self.expected_sha256}")
        if sample.bytes != self.size or on_disk != self.size:
            problems.append(f"{sample.bytes} bytes received, {on_disk} on disk, expected {self.size}")
        return dataclasses.replace(sample, ok=not problems, error="; ".join(problems) or None)


# --- parent: report ----------------------------------------------------------------------------------


def summarise(samples: list[Sample]) -> dict[str, Any]:
    good = [s for s in samples if s.ok]
    summary: dict[str, Any] = {"runs": len(samples), "ok_runs": len(good)}
    if good:
        rates = [s.mb_s for s in good]
        summary |= {
            "median_mb_s": round(statistics.median(rates), 1),
            "min_mb_s": round(min(rates), 1),
            "max_mb_s": round(max(rates), 1),
            "median_peak_rss_mib": round(statistics.median(s.peak_rss_mib for s in good), 1),
            "median_cpu_s": round(statistics.median(s.cpu_s for s in good), 2),
        }
        commits = [s.commit_s for s in good if s.commit_s is not None]
        if commits:
            summary["median_commit_s"] = round(statistics.median(commits), 3)
    summary["samples"] = [
        {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(s).items()}
        | {"mb_s": round(s.mb_s, 1)}
        for s in samples
    ]
    return summary


def ratio(contenders: dict[str, dict[str, Any]], top: str, bottom: str) -> float | None:
    a, b = contenders[top].get("median_mb_s"), contenders[bottom].get("median_mb_s")
    return round(a / b, 2) if a and b else None


def print_size(result: dict[str, Any], ceiling_mb_s: float) -> None:
    size, chunk = result["size_bytes"], result["chunk_bytes"]
    print(f"\n{human(size)} ({size} bytes), {result['runs']} runs, worker chunk {human(chunk)}")
    print(f"  {'contender':<10}{'MB/s median':>12}{'min':>7}{'max':>7}{'CPU s':>8}{'RSS MiB':>9}  notes")
    for kind in KINDS:
        row = result["contenders"][kind]
        notes = []
        if row["ok_runs"] < row["runs"]:
            notes.append(f"{row['runs'] - row['ok_runs']} run(s) FAILED")
        if "median_commit_s" in row:
            notes.append(f"fsync+rename {row['median_commit_s']:.2f} s")
        if kind == "worker" and row["ok_runs"]:
            notes.append(f"{row['median_mb_s'] / ceiling_mb_s:.0%} of the sha256 ceiling")
        if not row["ok_runs"]:
            print(f"  {kind:<10}{'FAILED':>12}  {'; '.join(notes)}")
            continue
        print(
            f"  {kind:<10}{row['median_mb_s']:>12.0f}{row['min_mb_s']:>7.0f}{row['max_mb_s']:>7.0f}"
            f"{row['median_cpu_s']:>8.2f}{row['median_peak_rss_mib']:>9.1f}  {'; '.join(notes)}"
        )
    ratios = "   ".join(f"{k} {v:.2f}x" if v else f"{k} n/a" for k, v in result["ratios"].items())
    print(f"  ratios of medians: {ratios}")


def bench_size(contest: Contest, runs: int) -> tuple[dict[str, Any], bool]:
    samples: dict[str, list[Sample]] = {kind: [] for kind in KINDS}
    for run in range(runs):
        for kind in KINDS:  # interleaved, so a noisy moment hits every contender alike
            sample = contest.run(kind)
            samples[kind].append(sample)
            if not sample.ok:
                print(f"!! {kind} run {run + 1}, {human(contest.size)}: {sample.error}", file=sys.stderr)
    contenders = {kind: summarise(samples[kind]) for kind in KINDS}
    result = {
        "size_bytes": contest.size,
        "runs": runs,
        "chunk_bytes": contest.chunk,
        "expected_sha256": contest.expected_sha256,
        "contenders": contenders,
        "ratios": {
            "worker/curl": ratio(contenders, "worker", "curl"),
            "worker/naive": ratio(contenders, "worker", "naive"),
        },
    }
    return result, all(s.ok for group in samples.values() for s in group)


def measure_ceiling(children: Children) -> float:
    out, code, _ = children.output([sys.executable, str(Path(__file__).resolve()), "--ceiling"], 120.0)
    if code != 0:
        raise BenchError(f"sha256 ceiling child failed with exit status {code}")
    return float(out.strip().splitlines()[-1])


def baseline_rss_mib(children: Children, gnu_time: str) -> float:
    """Peak RSS of a Python child that imports what the contenders import and exits at once."""
    with tempfile.TemporaryDirectory(prefix="bench-time-", dir="/tmp") as workdir:
        usage_file = Path(workdir) / "usage"
        argv = [gnu_time, "-f", "%M", "-o", str(usage_file), sys.executable, str(Path(__file__).resolve())]
        _, code, _ = children.output([*argv, "--baseline"], 60.0)
        if code != 0:
            raise BenchError(f"baseline child failed with exit status {code}")
        return int(usage_file.read_text().strip().splitlines()[-1]) / 1024


def run_bench(sizes: list[int], runs: int, chunk: int) -> int:
    children = Children()
    try:
        sim = start_simulator(children)
        gnu_time = find_gnu_time(children)
        ceiling = measure_ceiling(children)
        baseline = baseline_rss_mib(children, gnu_time) if gnu_time else None
        rss_how = "GNU time" if gnu_time else "wait4, which includes this parent's RSS: an upper bound"
        print(f"simulator {sim.url}; {os.cpu_count()} CPUs; sha256 ceiling (1 core) {ceiling:.0f} MB/s")
        print(f"MB/s = 10^6 B/s; median/min/max over runs; CPU s and peak RSS are medians ({rss_how})")
        if baseline is not None:
            print(f"a Python child's RSS after its imports, before any transfer: {baseline:.1f} MiB")
        report: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "sha256_ceiling_mb_s": round(ceiling, 1),
            "rss_source": "gnu_time" if gnu_time else "wait4",
            "python_baseline_rss_mib": None if baseline is None else round(baseline, 1),
            "sizes": [],
        }
        all_ok = True
        for size in sizes:
            url, seed = sim.asset(size)
            contest = Contest(children, gnu_time, url, size, chunk, content_sha256(seed, size))
            result, ok = bench_size(contest, runs)
            all_ok &= ok
            report["sizes"].append(result)
            print_size(result, ceiling)
        report["ok"] = all_ok
        print(json.dumps(report))
        return 0 if all_ok else 1
    finally:
        children.stop_all()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/transfer.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="256M,1G", help="comma-separated, binary units (%(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender and size (%(default)s)")
    parser.add_argument("--chunk", type=parse_bytes, default=MIB, help="worker chunk_bytes and read_bufsize")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "URL", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        args.size_list = [parse_bytes(part) for part in args.sizes.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.baseline:
        return 0  # the imports above are the whole point: see baseline_rss_mib
    if args.ceiling:
        return ceiling_main()
    if args.child:
        kind, url, file = args.child
        return child_main(kind, url, Path(file), args.size, args.chunk)
    signal.signal(signal.SIGTERM, terminate)
    try:
        return run_bench(args.size_list, args.runs, args.chunk)
    except KeyboardInterrupt:
        print("interrupted; the simulator and children are stopped", file=sys.stderr)
        return 130
    except (BenchError, OSError) as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
