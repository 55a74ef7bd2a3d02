"""Download-and-verify throughput of the worker's transfer path against two baselines, on loopback.

    .venv/bin/python bench/transfer.py [--sizes 256M,1G] [--runs 3] [--chunk 1M]

One run of this script starts the project's simulator, creates one job per size, and downloads each
asset with three contenders, interleaved (curl, naive, worker, curl, ...) so that machine noise
spreads over all of them:

- ``curl``: ``curl | tee FILE | sha256sum``, the reference the issue names;
- ``naive``: the obvious aiohttp + aiofiles + hashlib loop;
- ``worker``: ``worker.transfer.fetch_to_sink`` into a ``FileSink``, the path production uses
  (including its fsync before the rename).

Each download runs in its own child process (this script with the hidden ``--child`` mode) so its
peak RSS can be read from ``wait4``, and writes a fresh file in a temp dir under /tmp that is removed
after the run. Every copy's sha256 is checked against the simulator's content; any mismatch or failed
child makes the exit status 1. Sizes are binary (``1G`` = 1 GiB); throughput is in MB/s (10**6 B/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

import aiofiles
import aiohttp

from worker.config import HttpSettings
from worker.httpclient import new_session
from worker.models import AssetRef
from worker.simulator.content import content_sha256
from worker.sinks.base import Upload
from worker.sinks.file import FileSink
from worker.transfer import TransferOptions, fetch_to_sink

KINDS: Final = ("curl", "naive", "worker")
API_KEY: Final = "cl-sim-key"
NAIVE_CHUNK: Final = 1 << 20
CEILING_BYTES: Final = 256 << 20
MIB: Final = 1 << 20
_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# A child slower than this is hung, not slow: even the worst contender here moves >100 MB/s.
_MIN_RATE_B_S: Final = 10e6
_CURL_SCRIPT: Final = 'set -o pipefail; curl -sS --fail "$1" | tee "$2" | sha256sum'


class BenchError(Exception):
    """The benchmark itself could not run (simulator, control API); not a contender's failure."""


def parse_bytes(text: str) -> int:
    """``256M`` -> 268435456; binary units K, M, G, or a plain number of bytes."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1] if number[-1:] in ("K", "M", "G") else ""
    number = number.removesuffix(unit)
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (try 256M or 1G)")
    return int(number) * _UNITS[unit]


def human(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


# --- child mode: one download, one JSON line on stdout ---------------------------------------------


class _TimedUpload:
    """Delegates to the real upload, timing ``commit`` (flush + fsync + rename) separately."""

    def __init__(self, inner: Upload) -> None:
        self._inner = inner
        self.key = inner.key
        self.commit_s = 0.0

    async def write(self, chunk: bytes) -> None:
        await self._inner.write(chunk)

    async def restart(self) -> None:
        await self._inner.restart()

    async def commit(self) -> str:
        start = time.perf_counter()
        try:
            return await self._inner.commit()
        finally:
            self.commit_s = time.perf_counter() - start

    async def abort(self) -> None:
        await self._inner.abort()


class _TimedSink:
    """A ``FileSink`` whose uploads report their commit time: the durability cost curl does not pay."""

    def __init__(self, inner: FileSink) -> None:
        self._inner = inner
        self.upload: _TimedUpload | None = None

    def uri_for(self, key: str) -> str:
        return self._inner.uri_for(key)

    async def open(self, key: str, *, content_type: str | None, expected_size: int | None) -> Upload:
        self.upload = _TimedUpload(
            await self._inner.open(key, content_type=content_type, expected_size=expected_size)
        )
        return self.upload

    async def close(self) -> None:
        await self._inner.close()


async def _child_naive(url: str, file: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    received = 0
    start = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        resp.raise_for_status()
        async with aiofiles.open(file, "wb") as out:
            async for chunk in resp.content.iter_chunked(NAIVE_CHUNK):
                digest.update(chunk)
                received += len(chunk)
                await out.write(chunk)
    return {"bytes": received, "seconds": time.perf_counter() - start, "sha256": digest.hexdigest()}


async def _child_worker(url: str, file: Path, size: int, chunk: int) -> dict[str, Any]:
    sink = _TimedSink(FileSink(file.parent))
    ref = AssetRef(asset_id=f"bench-{size}", url=url, expected_size=size)
    start = time.perf_counter()
    async with new_session(HttpSettings(), read_bufsize=chunk) as session:
        copy = await fetch_to_sink(
            session,
            ref,
            sink,
            key_for=lambda _ct: file.name,
            options=TransferOptions(chunk_bytes=chunk),
        )
    seconds = time.perf_counter() - start
    commit_s = sink.upload.commit_s if sink.upload is not None else 0.0
    return {"bytes": copy.size, "seconds": seconds, "sha256": copy.sha256, "commit_s": commit_s}


def child_main(kind: str, url: str, file: Path, size: int, chunk: int) -> int:
    if kind == "naive":
        result = asyncio.run(_child_naive(url, file))
    elif kind == "worker":
        result = asyncio.run(_child_worker(url, file, size, chunk))
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    # The parent reads the last stdout line, so a stray log line above it does no harm.
    print(json.dumps(result), flush=True)
    return 0


# --- parent: processes ------------------------------------------------------------------------------


class Children:
    """Every subprocess this run started, each in its own process group, stopped on exit.

    Own sessions keep a terminal's Ctrl-C away from the children: the parent alone gets it and then
    stops them in order, instead of every child dying with its own traceback. Killing the group
    also reaches the pipeline of the curl contender, not just its bash.
    """

    def __init__(self) -> None:
        self._live: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def spawn(self, argv: list[str], *, stdout: int | IO[bytes] | None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=stdout, start_new_session=True)
        with self._lock:
            self._live[proc.pid] = proc
        return proc

    def reap(self, proc: subprocess.Popen[bytes]) -> tuple[int, int]:
        """Wait for ``proc``; return (exit code, peak RSS in KiB of the largest process in its group)."""
        _, status, usage = os.wait4(proc.pid, 0)
        with self._lock:
            proc.returncode = os.waitstatus_to_exitcode(status)
            self._live.pop(proc.pid, None)
        return proc.returncode, usage.ru_maxrss

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with self._lock:
            if proc.returncode is None:  # not reaped yet, so the group id is still ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)

    def stop_all(self, grace_s: float = 5.0) -> None:
        with self._lock:
            procs = list(self._live.values())
        for proc in procs:
            self.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc)
                proc.wait()
            with self._lock:
                self._live.pop(proc.pid, None)


@dataclass(frozen=True, slots=True)
class Simulator:
    url: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the URL is our own simulator's, http on loopback
            self.url + path,
            data=data,
            method=method,
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - as above
            answer: dict[str, Any] = json.load(resp)
        return answer

    def asset(self, size: int) -> tuple[str, int]:
        """A finished job of ``size`` bytes: (download URL, content seed)."""
        job = self.call(
            "POST", "/_sim/cloudlayer/jobs", {"id": f"bench-{size}", "size": size, "pending_s": 0}
        )
        status = self.call("GET", f"/v2/jobs/{job['id']}")
        if "assetUrl" not in status:
            raise BenchError(f"simulator job {job['id']} has no assetUrl: {status}")
        return str(status["assetUrl"]), int(job["seed"])


def _drain(stream: IO[bytes]) -> None:
    while stream.read(1 << 16):
        pass


def start_simulator(children: Children) -> Simulator:
    proc = children.spawn([sys.executable, "-m", "worker.simulator", "--port", "0"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    timer = threading.Timer(30.0, children.kill, (proc,))
    timer.start()
    try:
        first = proc.stdout.readline().decode().strip()
    finally:
        timer.cancel()
    prefix = "simulator listening on "
    if not first.startswith(prefix):
        raise BenchError(f"simulator did not start (first line: {first!r})")
    # Keep draining its stdout: a full pipe would block the simulator mid-benchmark.
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return Simulator(first.removeprefix(prefix))


# --- parent: samples --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    kind: str
    ok: bool
    bytes: int
    seconds: float  # the transfer itself (the child's clock; wall time for curl)
    wall_s: float  # spawn to reap, including interpreter start-up
    peak_rss_mib: float
    sha256: str
    commit_s: float | None = None
    error: str | None = None

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


def _argv(kind: str, url: str, file: Path, size: int, chunk: int) -> list[str]:
    if kind == "curl":
        return ["bash", "-c", _CURL_SCRIPT, "bench-curl", url, str(file)]
    script = str(Path(__file__).resolve())
    return [
        sys.executable,
        script,
        "--child",
        kind,
        url,
        str(file),
        "--size",
        str(size),
        "--chunk",
        str(chunk),
    ]


def run_once(children: Children, kind: str, url: str, size: int, chunk: int, expected: str) -> Sample:
    """One download by ``kind`` into a fresh temp dir, checked against ``expected``."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-transfer-", dir="/tmp"))
    try:
        file = workdir / f"{kind}.bin"
        start = time.perf_counter()
        proc = children.spawn(_argv(kind, url, file, size, chunk), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        timer = threading.Timer(max(60.0, size / _MIN_RATE_B_S), children.kill, (proc,))
        timer.start()
        try:
            out = proc.stdout.read().decode(errors="replace")
            proc.stdout.close()
            code, maxrss_kib = children.reap(proc)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        on_disk = file.stat().st_size if file.exists() else -1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _judge(kind, out, code, wall, maxrss_kib / 1024, on_disk, size, expected)


def _judge(
    kind: str, out: str, code: int, wall: float, rss_mib: float, on_disk: int, size: int, expected: str
) -> Sample:
    lines = out.strip().splitlines()
    last = lines[-1] if lines else ""
    base = Sample(kind, False, 0, wall, wall, rss_mib, "")
    if code != 0:
        return _replace(base, error=f"exit status {code}")
    if kind == "curl":
        sample = _replace(base, bytes=on_disk, sha256=last.split(" ", 1)[0])
    else:
        try:
            result = json.loads(last)
            sample = _replace(
                base,
                bytes=int(result["bytes"]),
                seconds=float(result["seconds"]),
                sha256=str(result["sha256"]),
                commit_s=result.get("commit_s"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            return _replace(base, error=f"unreadable child output {last!r}: {exc}")
    problems = []
    if sample.sha256 != expected:
        problems.append(f"sha256 {sample.sha256 or '(none)'} != expected {expected}")
    if sample.bytes != size or on_disk != size:
        problems.append(f"{sample.bytes} bytes received, {on_disk} on disk, expected {size}")
    return _replace(sample, ok=not problems, error="; ".join(problems) or None)


def _replace(sample: Sample, **changes: Any) -> Sample:
    return Sample(**{**asdict(sample), **changes})


def sha256_ceiling() -> float:
    """Single-core hashlib.sha256 over an in-memory buffer in 1 MiB updates, MB/s."""
    view = memoryview(bytes(CEILING_BYTES))
    digest = hashlib.sha256()
    start = time.perf_counter()
    for offset in range(0, CEILING_BYTES, MIB):
        digest.update(view[offset : offset + MIB])
    return CEILING_BYTES / (time.perf_counter() - start) / 1e6


# --- parent: report ---------------------------------------------------------------------------------


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
        }
        commits = [s.commit_s for s in good if s.commit_s is not None]
        if commits:
            summary["median_commit_s"] = round(statistics.median(commits), 3)
    summary["samples"] = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(s).items()}
        | {"mb_s": round(s.mb_s, 1)}
        for s in samples
    ]
    return summary


def ratio(summary: dict[str, dict[str, Any]], a: str, b: str) -> float | None:
    top, bottom = summary[a].get("median_mb_s"), summary[b].get("median_mb_s")
    return round(top / bottom, 2) if top and bottom else None


def print_size(size: int, result: dict[str, Any]) -> None:
    print(
        f"\n{human(size)} ({size} bytes), {result['runs']} runs, worker chunk {human(result['chunk_bytes'])}"
    )
    print(f"  {'contender':<10}{'median MB/s':>12}{'min':>9}{'max':>9}{'peak RSS MiB':>14}  notes")
    for kind in KINDS:
        row = result["contenders"][kind]
        note = f"fsync+rename {row['median_commit_s']:.2f} s" if "median_commit_s" in row else ""
        if row["ok_runs"] < row["runs"]:
            note = f"{row['runs'] - row['ok_runs']} FAILED run(s) " + note
        if not row["ok_runs"]:
            print(f"  {kind:<10}{'FAILED':>12}  {note}")
            continue
        print(
            f"  {kind:<10}{row['median_mb_s']:>12.0f}{row['min_mb_s']:>9.0f}{row['max_mb_s']:>9.0f}"
            f"{row['median_peak_rss_mib']:>14.1f}  {note}"
        )
    ratios = "   ".join(f"{k} {v:.2f}x" if v else f"{k} n/a" for k, v in result["ratios"].items())
    print(f"  ratios: {ratios}")


def bench_size(
    children: Children, sim: Simulator, size: int, runs: int, chunk: int
) -> tuple[dict[str, Any], bool]:
    url, seed = sim.asset(size)
    expected = content_sha256(seed, size)
    samples: dict[str, list[Sample]] = {kind: [] for kind in KINDS}
    for run in range(runs):
        for kind in KINDS:
            sample = run_once(children, kind, url, size, chunk, expected)
            samples[kind].append(sample)
            if not sample.ok:
                print(f"!! {kind} run {run + 1} at {human(size)} FAILED: {sample.error}", file=sys.stderr)
    contenders = {kind: summarise(samples[kind]) for kind in KINDS}
    result = {
        "size_bytes": size,
        "runs": runs,
        "chunk_bytes": chunk,
        "expected_sha256": expected,
        "contenders": contenders,
        "ratios": {
            "worker/curl": ratio(contenders, "worker", "curl"),
            "worker/naive": ratio(contenders, "worker", "naive"),
        },
    }
    return result, all(s.ok for group in samples.values() for s in group)


def run_bench(sizes: list[int], runs: int, chunk: int) -> int:
    children = Children()
    try:
        sim = start_simulator(children)
        ceiling = sha256_ceiling()
        print(f"simulator at {sim.url}; {os.cpu_count()} CPUs; sha256 ceiling (1 core) {ceiling:.0f} MB/s")
        print("MB/s = 10^6 bytes/s of transfer time; median, min, max over the runs; RSS = largest process")
        report: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "sha256_ceiling_mb_s": round(ceiling, 1),
            "sizes": [],
        }
        all_ok = True
        for size in sizes:
            result, ok = bench_size(children, sim, size, runs, chunk)
            all_ok &= ok
            report["sizes"].append(result)
            print_size(size, result)
        report["ok"] = all_ok
        print(json.dumps(report))
        return 0 if all_ok else 1
    finally:
        children.stop_all()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/transfer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="256M,1G", help="comma-separated, binary units (default: %(default)s)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per contender and size (default: %(default)s)"
    )
    parser.add_argument(
        "--chunk", type=parse_bytes, default=1 << 20, help="worker chunk_bytes and read_bufsize"
    )
    parser.add_argument("--child", nargs=3, metavar=("KIND", "URL", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        args.size_list = [parse_bytes(part) for part in args.sizes.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the simulator and any child.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        kind, url, file = args.child
        return child_main(kind, url, Path(file), args.size, args.chunk)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_bench(args.size_list, args.runs, args.chunk)
    except KeyboardInterrupt:
        print("interrupted; subprocesses stopped", file=sys.stderr)
        return 130
    except (BenchError, OSError) as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
