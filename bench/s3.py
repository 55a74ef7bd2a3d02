"""Peak memory and throughput of streaming one large asset from the simulator into a real S3 server.

    .venv/bin/python bench/s3.py [--sizes 256M,1G] [--runs 3] [--configs 2x8M,4x8M,2x16M,4x16M]

One run starts the project's simulator and SeaweedFS (``tests/s3server.py``) on loopback, creates one
job per size, and copies each asset ``--runs`` times per configuration with the worker's real path:
``worker.transfer.fetch_to_sink`` into the S3 sink from ``worker.sinks.s3.open_s3_sink`` (multipart,
K = ``max_parts_in_flight`` and the part size from each ``KxPART`` of ``--configs``). Runs are
interleaved over the configurations so that machine noise spreads over all of them. Each copy runs in
its own child process under GNU time, so its peak RSS is its own. The point: RSS minus a baseline
child's RSS should be about K x part size plus a constant, whatever the asset size; a least-squares
fit over the configurations shows the factor on K x part size and the constant.

Two baselines, measured in the same run: a child that only does the imports, and a child that copies
a 64 KiB asset (both HTTP clients opened, one PutObject, no part buffer of consequence).

Each committed object is checked (the sha256 the transfer returns, and HEAD: size and ``sha256``
metadata) against the simulator's content, then deleted. Exit status 0 if every copy was right, 1 if
any failed, 2 if the benchmark could not run, 130 after Ctrl-C or SIGTERM; SeaweedFS, the simulator
and every child are stopped in every case. Helpers come from ``bench/common.py`` (same directory).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import ipaddress
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import aiobotocore.session
import botocore.session
from botocore.config import Config
from common import (
    MIB,
    BenchError,
    Children,
    Simulator,
    find_gnu_time,
    human,
    parse_bytes,
    start_simulator,
    terminate,
)

from tests.s3server import S3Server, run_seaweedfs
from worker.config import HttpSettings
from worker.egress import EgressPolicy
from worker.egress_session import new_upstream_session
from worker.models import AssetRef
from worker.simulator.content import content_sha256
from worker.sinks.s3_parts import part_size_for
from worker.sinks.s3_settings import S3Settings
from worker.sinks.s3_sink import open_s3_sink
from worker.transfer import TransferOptions, fetch_to_sink

PREFIX: Final = "bench"
KEY: Final = "asset.bin"
OBJECT_KEY: Final = f"{PREFIX}/{KEY}"
# The second baseline: small enough for one PutObject whatever the part size.
SMALL_BYTES: Final = 64 << 10
# Loopback S3 through SeaweedFS is slower than a file: allow 2 MB/s before calling a child hung.
_MIN_RATE_B_S: Final = 2e6

# The servers measured here listen on loopback, which the egress policy refuses unless allowed.
LOOPBACK_SERVERS = EgressPolicy([ipaddress.ip_network("127.0.0.0/8")])


@dataclasses.dataclass(frozen=True, slots=True)
class Knobs:
    """One configuration of the sink: K parts in flight of (at least) ``part`` bytes."""

    parts_in_flight: int
    part: int

    @classmethod
    def parse(cls, text: str) -> Knobs:
        """``"4x8M"`` → K = 4, part size 8 MiB."""
        k, sep, part = text.strip().lower().partition("x")
        if not sep or not k.isdigit() or int(k) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not KxPART, e.g. 4x8M")
        return cls(int(k), parse_bytes(part.upper()))

    @property
    def label(self) -> str:
        return f"{self.parts_in_flight} x {human(self.part)}"


# --- child mode: one copy, one JSON line on stdout ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str


async def _copy(url: str, size: int, target: Target, knobs: Knobs) -> tuple[int, str]:
    settings = S3Settings(
        bucket=target.bucket,
        prefix=PREFIX,
        endpoint_url=target.endpoint_url,
        region="us-east-1",
        path_style=True,
        part_size_min_bytes=knobs.part,
        max_parts_in_flight=knobs.parts_in_flight,
    )
    aws = aiobotocore.session.get_session()
    aws.set_credentials(target.access_key, target.secret_key)
    ref = AssetRef(asset_id=f"bench-{size}", url=url, expected_size=size)
    async with (
        new_upstream_session(HttpSettings(), LOOPBACK_SERVERS, read_bufsize=1 << 20) as session,
        open_s3_sink(settings, session=aws) as sink,
    ):
        options = TransferOptions(egress=LOOPBACK_SERVERS)
        copy = await fetch_to_sink(session, ref, sink, key_for=lambda _ct: KEY, options=options)
    return copy.size, copy.sha256


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_main(url: str, size: int, target: Target, knobs: Knobs) -> int:
    cpu, start = _cpu_s(), time.perf_counter()
    copied, sha256 = asyncio.run(_copy(url, size, target, knobs))
    result = {"bytes": copied, "seconds": time.perf_counter() - start, "cpu_s": _cpu_s() - cpu}
    print(json.dumps(result | {"sha256": sha256}), flush=True)
    return 0


# --- parent --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    ok: bool
    bytes: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0
    error: str | None = None

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0


class Store:
    """The parent's own plain botocore client: checks and deletes what a child committed."""

    def __init__(self, server: S3Server) -> None:
        # Typed as Any: only the aiobotocore stubs are installed (as in tests/s3server.py).
        self.bucket = server.bucket
        self.client: Any = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def check(self, size: int, sha256: str) -> list[str]:
        head = self.client.head_object(Bucket=self.bucket, Key=OBJECT_KEY)
        problems = []
        if int(head["ContentLength"]) != size:
            problems.append(f"stored object has {head['ContentLength']} bytes, expected {size}")
        if head.get("Metadata", {}).get("sha256") != sha256:
            problems.append(f"stored sha256 metadata {head.get('Metadata')} != {sha256}")
        return problems

    def clean(self) -> None:
        """Delete the object and abort any multipart upload a failed child left under the prefix."""
        self.client.delete_object(Bucket=self.bucket, Key=OBJECT_KEY)
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=f"{PREFIX}/")
        for upload in uploads.get("Uploads", []):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )

    def close(self) -> None:
        self.client.close()


def _self_argv(*extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *extra]


def timed(
    children: Children, gnu_time: str, argv: list[str], timeout_s: float
) -> tuple[str, int, float, float]:
    """Run ``argv`` under GNU time: (stdout, exit code, peak RSS MiB, CPU s)."""
    with tempfile.TemporaryDirectory(prefix="bench-s3-", dir="/tmp") as workdir:
        usage_file = Path(workdir) / "usage"
        wrapped = [gnu_time, "-f", "%M %U %S", "-o", str(usage_file), *argv]
        out, code, _ = children.output(wrapped, timeout_s)
        rss_kib, cpu = 0.0, 0.0
        if usage_file.exists():
            # GNU time writes "Command exited with non-zero status N" above the figures.
            lines = usage_file.read_text().strip().splitlines()
            if lines:
                rss_text, user, system = lines[-1].split()
                rss_kib, cpu = float(rss_text), float(user) + float(system)
    return out, code, rss_kib / 1024, cpu


@dataclasses.dataclass(frozen=True, slots=True)
class Bench:
    """What every run shares."""

    children: Children
    gnu_time: str
    store: Store
    target: Target


@dataclasses.dataclass(frozen=True, slots=True)
class Asset:
    url: str
    size: int
    sha256: str


def run_once(bench: Bench, asset: Asset, knobs: Knobs) -> Sample:
    target = bench.target
    argv = _self_argv(
        "--child", asset.url, "--size", str(asset.size),
        "--child-config", f"{knobs.parts_in_flight}x{knobs.part}",
        "--target", target.endpoint_url, target.bucket, target.access_key, target.secret_key,
    )  # fmt: skip
    try:
        timeout_s = max(120.0, asset.size / _MIN_RATE_B_S)
        out, code, rss_mib, _ = timed(bench.children, bench.gnu_time, argv, timeout_s)
        if code != 0:
            return Sample(ok=False, peak_rss_mib=rss_mib, error=f"exit status {code}")
        return _checked(bench.store, asset, out, rss_mib)
    finally:
        try:
            bench.store.clean()
        except Exception as exc:
            print(f"!! could not delete s3://{bench.store.bucket}/{OBJECT_KEY}: {exc}", file=sys.stderr)


def _checked(store: Store, asset: Asset, out: str, rss_mib: float) -> Sample:
    """The child's sample, failed unless its sha256, its size and the stored object are right."""
    last = (out.strip().splitlines() or [""])[-1]
    try:
        result = json.loads(last)
        sample = Sample(
            ok=True,
            bytes=int(result["bytes"]),
            seconds=float(result["seconds"]),
            cpu_s=float(result["cpu_s"]),
            peak_rss_mib=rss_mib,
        )
        sha256 = str(result["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        return Sample(ok=False, peak_rss_mib=rss_mib, error=f"unreadable child output {last!r}: {exc}")
    problems = []
    if sha256 != asset.sha256:
        problems.append(f"sha256 {sha256} != expected {asset.sha256}")
    if sample.bytes != asset.size:
        problems.append(f"{sample.bytes} bytes copied, expected {asset.size}")
    try:
        problems += store.check(asset.size, asset.sha256)
    except Exception as exc:  # botocore's ClientError, or no connection: a failed run either way
        problems.append(f"HEAD of the stored object failed: {exc}")
    return dataclasses.replace(sample, ok=not problems, error="; ".join(problems) or None)


def summarise(samples: list[Sample], size: int, knobs: Knobs, baseline: float) -> dict[str, Any]:
    good = [s for s in samples if s.ok]
    part = part_size_for(size, knobs.part)
    bound_mib = knobs.parts_in_flight * part / MIB
    summary: dict[str, Any] = {
        "size_bytes": size,
        "part_bytes": part,
        "parts_in_flight": knobs.parts_in_flight,
        "bound_mib": bound_mib,
        "runs": len(samples),
        "ok_runs": len(good),
    }
    if good:
        rates = [s.mb_s for s in good]
        rss = statistics.median(s.peak_rss_mib for s in good)
        summary |= {
            "median_mb_s": round(statistics.median(rates), 1),
            "min_mb_s": round(min(rates), 1),
            "max_mb_s": round(max(rates), 1),
            "median_cpu_s": round(statistics.median(s.cpu_s for s in good), 2),
            "median_peak_rss_mib": round(rss, 1),
            "above_baseline_mib": round(rss - baseline, 1),
            "ratio_to_bound": round((rss - baseline) / bound_mib, 2),
        }
    summary["samples"] = [
        {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(s).items()}
        | {"mb_s": round(s.mb_s, 1)}
        for s in samples
    ]
    return summary


def fit(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """Least squares of (RSS - baseline) on K x part size over ``rows``: (constant MiB, factor)."""
    points = [(r["bound_mib"], r["above_baseline_mib"]) for r in rows if r["ok_runs"]]
    if len({x for x, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return intercept, slope


HEADER: Final = (
    f"  {'size':<9}{'K x part':<13}{'bound':>6}{'MB/s':>7}{'min':>6}{'max':>6}{'CPU s':>7}"
    f"{'RSS MiB':>9}{'-base':>8}{'ratio':>7}"
)


def print_row(row: dict[str, Any]) -> None:
    knobs = f"{row['parts_in_flight']} x {human(row['part_bytes'])}"
    label = f"{human(row['size_bytes']):<9}{knobs:<13}{row['bound_mib']:>6.0f}"
    if not row["ok_runs"]:
        print(f"  {label}{'FAILED':>7}")
        return
    failed = row["runs"] - row["ok_runs"]
    note = f"  {failed} run(s) FAILED" if failed else ""
    print(
        f"  {label}{row['median_mb_s']:>7.0f}{row['min_mb_s']:>6.0f}{row['max_mb_s']:>6.0f}"
        f"{row['median_cpu_s']:>7.2f}{row['median_peak_rss_mib']:>9.1f}{row['above_baseline_mib']:>8.1f}"
        f"{row['ratio_to_bound']:>7.2f}{note}"
    )


def bench_size(
    bench: Bench, asset: Asset, configs: list[Knobs], runs: int, baseline: float
) -> list[dict[str, Any]]:
    """Every configuration ``runs`` times on one asset, interleaved; one summary row per configuration."""
    samples: dict[Knobs, list[Sample]] = {knobs: [] for knobs in configs}
    for run in range(runs):
        for knobs in configs:
            sample = run_once(bench, asset, knobs)
            samples[knobs].append(sample)
            if not sample.ok:
                where = f"run {run + 1}, {human(asset.size)}, K x part {knobs.label}"
                print(f"!! {where}: {sample.error}", file=sys.stderr)
    rows = [summarise(samples[knobs], asset.size, knobs, baseline) for knobs in configs]
    for row in rows:
        print_row(row)
    if (line := fit(rows)) is not None:
        constant, factor = line
        print(f"  fit at {human(asset.size)}: RSS - base = {constant:.1f} MiB + {factor:.2f} x K x part")
    return rows


def baselines(bench: Bench, small: Asset, runs: int) -> tuple[float, float]:
    """Peak RSS MiB of a child after its imports alone, and the median of a 64 KiB copy's."""
    _, code, imports, _ = timed(bench.children, bench.gnu_time, _self_argv("--baseline"), 60.0)
    if code != 0:
        raise BenchError(f"baseline child failed with exit status {code}")
    copies = [run_once(bench, small, Knobs(1, 8 * MIB)) for _ in range(runs)]
    if failed := [s.error for s in copies if not s.ok]:
        raise BenchError(f"the {human(SMALL_BYTES)} baseline copy failed: {failed[0]}")
    return imports, statistics.median(s.peak_rss_mib for s in copies)


def run_bench(sizes: list[int], runs: int, configs: list[Knobs]) -> int:
    children = Children()
    try:
        gnu_time = find_gnu_time(children)
        if gnu_time is None:
            raise BenchError("GNU time is needed for a child's own peak RSS (apt-get install time)")
        sim = start_simulator(children)
        with (
            tempfile.TemporaryDirectory(prefix="bench-s3-weed-", dir="/tmp") as weed_dir,
            run_seaweedfs(Path(weed_dir)) as server,
        ):
            store = Store(server)
            try:
                target = Target(server.endpoint_url, server.bucket, server.access_key, server.secret_key)
                bench = Bench(children, gnu_time, store, target)
                report = measure(bench, sim, sizes, runs, configs)
            finally:
                store.close()
        print(json.dumps(report))
        return 0 if report["ok"] else 1
    finally:
        children.stop_all()


def measure(
    bench: Bench, sim: Simulator, sizes: list[int], runs: int, configs: list[Knobs]
) -> dict[str, Any]:
    def asset(size: int) -> Asset:
        url, seed = sim.asset(size)
        return Asset(url, size, content_sha256(seed, size))

    print(f"simulator {sim.url}; SeaweedFS {bench.target.endpoint_url}; {os.cpu_count()} CPUs")
    imports, small = baselines(bench, asset(SMALL_BYTES), runs)
    print(f"peak RSS of a Python child after its imports alone (base): {imports:.1f} MiB")
    print(f"  and of one that copied {human(SMALL_BYTES)} (both clients, one PutObject): {small:.1f} MiB")
    print("MB/s = 10^6 B/s, median/min/max over runs; CPU s, RSS are medians (GNU time)")
    print("bound = K x part size (MiB); ratio = (RSS - base) / bound")
    print(HEADER)
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python_baseline_rss_mib": round(imports, 1),
        "small_copy_rss_mib": round(small, 1),
        "sizes": [],
        "fits": [],
    }
    for size in sizes:
        rows = bench_size(bench, asset(size), configs, runs, imports)
        report["sizes"] += rows
        if (line := fit(rows)) is not None:
            report["fits"].append(
                {"size_bytes": size, "constant_mib": round(line[0], 1), "factor": round(line[1], 2)}
            )
    report["ok"] = all(row["ok_runs"] == row["runs"] for row in report["sizes"])
    return report


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/s3.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="256M,1G", help="comma-separated, binary units (%(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size and configuration (%(default)s)")
    parser.add_argument(
        "--configs",
        default="2x8M,4x8M,2x16M,4x16M",
        help="comma-separated KxPART: max_parts_in_flight x part_size_min_bytes (%(default)s)",
    )
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--child-config", type=Knobs.parse, help=argparse.SUPPRESS)
    parser.add_argument("--target", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        args.size_list = [parse_bytes(part) for part in args.sizes.split(",") if part.strip()]
        args.config_list = [Knobs.parse(part) for part in args.configs.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.baseline:
        return 0  # the imports above are the whole point: the child's RSS before any transfer
    if args.child:
        return child_main(args.child, args.size, Target(*args.target), args.child_config)
    signal.signal(signal.SIGTERM, terminate)
    try:
        return run_bench(args.size_list, args.runs, args.config_list)
    except KeyboardInterrupt:
        print("interrupted; SeaweedFS, the simulator and children are stopped", file=sys.stderr)
        return 130
    except (BenchError, OSError, RuntimeError) as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
