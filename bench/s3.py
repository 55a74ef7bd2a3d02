"""Peak memory and throughput of streaming one large asset from the simulator into a real S3 server.

    .venv/bin/python bench/s3.py [--sizes 256M,1G] [--runs 3] [--part 8M] [--parts-in-flight 4]

One run starts the project's simulator and SeaweedFS (``tests/s3server.py``) on loopback, creates one
job per size, and copies each asset ``--runs`` times with the worker's real path:
``worker.transfer.fetch_to_sink`` into the S3 sink from ``worker.sinks.s3.open_s3_sink`` (multipart,
at most K = ``--parts-in-flight`` parts in flight). Each copy runs in its own child process under GNU
time, so its peak RSS is its own. The point: RSS minus a Python child's RSS after the same imports
should stay near K x part size, whatever the asset size.

Each committed object is checked (the sha256 the transfer returns, and HEAD: size and ``sha256``
metadata) against the simulator's content, then deleted. Exit status 0 if every copy was right, 1 if
any failed, 2 if the benchmark could not run, 130 after Ctrl-C or SIGTERM; SeaweedFS, the simulator
and every child are stopped in every case. Helpers come from ``bench/transfer.py`` (same directory).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
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
from transfer import (
    MIB,
    BenchError,
    Children,
    _terminate,
    find_gnu_time,
    human,
    parse_bytes,
    start_simulator,
)

from tests.s3server import S3Server, run_seaweedfs
from worker.config import HttpSettings
from worker.httpclient import new_session
from worker.models import AssetRef
from worker.simulator.content import content_sha256
from worker.sinks.s3 import S3Settings, open_s3_sink
from worker.sinks.s3_parts import part_size_for
from worker.transfer import TransferOptions, fetch_to_sink

PREFIX: Final = "bench"
KEY: Final = "asset.bin"
OBJECT_KEY: Final = f"{PREFIX}/{KEY}"
# Loopback S3 through SeaweedFS is slower than a file: allow 2 MB/s before calling a child hung.
_MIN_RATE_B_S: Final = 2e6


# --- child mode: one copy, one JSON line on stdout ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    part: int
    parts_in_flight: int


async def _copy(url: str, size: int, target: Target) -> tuple[int, str]:
    settings = S3Settings(
        bucket=target.bucket,
        prefix=PREFIX,
        endpoint_url=target.endpoint_url,
        region="us-east-1",
        path_style=True,
        part_size_min_bytes=target.part,
        max_parts_in_flight=target.parts_in_flight,
    )
    aws = aiobotocore.session.get_session()
    aws.set_credentials(target.access_key, target.secret_key)
    ref = AssetRef(asset_id=f"bench-{size}", url=url, expected_size=size)
    async with (
        new_session(HttpSettings(), read_bufsize=1 << 20) as session,
        open_s3_sink(settings, session=aws) as sink,
    ):
        copy = await fetch_to_sink(session, ref, sink, key_for=lambda _ct: KEY, options=TransferOptions())
    return copy.size, copy.sha256


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_main(url: str, size: int, target: Target) -> int:
    cpu, start = _cpu_s(), time.perf_counter()
    copied, sha256 = asyncio.run(_copy(url, size, target))
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


def run_once(
    children: Children, gnu_time: str, store: Store, url: str, size: int, expected: str, target: Target
) -> Sample:
    knobs = [target.endpoint_url, target.bucket, target.access_key, target.secret_key]
    argv = _self_argv(
        "--child", url, "--size", str(size), "--part", str(target.part),
        "--parts-in-flight", str(target.parts_in_flight), "--target", *knobs,
    )  # fmt: skip
    try:
        out, code, rss_mib, _ = timed(children, gnu_time, argv, max(120.0, size / _MIN_RATE_B_S))
        if code != 0:
            return Sample(ok=False, peak_rss_mib=rss_mib, error=f"exit status {code}")
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
        if sha256 != expected:
            problems.append(f"sha256 {sha256} != expected {expected}")
        if sample.bytes != size:
            problems.append(f"{sample.bytes} bytes copied, expected {size}")
        try:
            problems += store.check(size, expected)
        except Exception as exc:  # botocore's ClientError, or no connection: a failed run either way
            problems.append(f"HEAD of the stored object failed: {exc}")
        return dataclasses.replace(sample, ok=not problems, error="; ".join(problems) or None)
    finally:
        try:
            store.clean()
        except Exception as exc:
            print(f"!! could not delete s3://{store.bucket}/{OBJECT_KEY}: {exc}", file=sys.stderr)


def summarise(samples: list[Sample], size: int, part: int, k: int, baseline: float) -> dict[str, Any]:
    good = [s for s in samples if s.ok]
    bound_mib = k * part / MIB
    summary: dict[str, Any] = {
        "size_bytes": size,
        "part_bytes": part,
        "parts_in_flight": k,
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


def print_row(row: dict[str, Any]) -> None:
    label = f"{human(row['size_bytes']):<9}"
    if not row["ok_runs"]:
        print(f"  {label}{'FAILED':>8}")
        return
    failed = row["runs"] - row["ok_runs"]
    note = f"  {failed} run(s) FAILED" if failed else ""
    print(
        f"  {label}{row['median_mb_s']:>8.0f}{row['min_mb_s']:>6.0f}{row['max_mb_s']:>6.0f}"
        f"{row['median_cpu_s']:>7.2f}{row['median_peak_rss_mib']:>9.1f}{row['above_baseline_mib']:>8.1f}"
        f"{human(row['part_bytes']):>9} x{row['parts_in_flight']}{row['bound_mib']:>6.0f}"
        f"{row['ratio_to_bound']:>7.2f}{note}"
    )


def run_bench(sizes: list[int], runs: int, part: int, k: int) -> int:
    children = Children()
    try:
        gnu_time = find_gnu_time(children)
        if gnu_time is None:
            raise BenchError("GNU time is needed for a child's own peak RSS (apt-get install time)")
        sim = start_simulator(children)
        _, code, baseline, _ = timed(children, gnu_time, _self_argv("--baseline"), 60.0)
        if code != 0:
            raise BenchError(f"baseline child failed with exit status {code}")
        with (
            tempfile.TemporaryDirectory(prefix="bench-s3-weed-", dir="/tmp") as weed_dir,
            run_seaweedfs(Path(weed_dir)) as server,
        ):
            store = Store(server)
            try:
                target = Target(
                    server.endpoint_url, server.bucket, server.access_key, server.secret_key, part, k
                )
                print(f"simulator {sim.url}; SeaweedFS {server.endpoint_url}; {os.cpu_count()} CPUs")
                print(f"a Python child's peak RSS after the imports alone (baseline): {baseline:.1f} MiB")
                print("MB/s = 10^6 B/s, median/min/max over runs; CPU s, RSS are medians (GNU time)")
                print(f"  {'size':<9}{'MB/s':>8}{'min':>6}{'max':>6}{'CPU s':>7}{'RSS MiB':>9}"
                      f"{'-base':>8}{'part':>9} {'K':<2}{'bound':>6}{'ratio':>7}")  # fmt: skip
                report: dict[str, Any] = {
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "cpus": os.cpu_count(),
                    "python_baseline_rss_mib": round(baseline, 1),
                    "sizes": [],
                }
                all_ok = True
                for size in sizes:
                    url, seed = sim.asset(size)
                    expected = content_sha256(seed, size)
                    samples = []
                    for run in range(runs):
                        sample = run_once(children, gnu_time, store, url, size, expected, target)
                        samples.append(sample)
                        if not sample.ok:
                            all_ok = False
                            print(f"!! run {run + 1}, {human(size)}: {sample.error}", file=sys.stderr)
                    row = summarise(samples, size, part_size_for(size, part), k, baseline)
                    report["sizes"].append(row)
                    print_row(row)
            finally:
                store.close()
        report["ok"] = all_ok
        print(json.dumps(report))
        return 0 if all_ok else 1
    finally:
        children.stop_all()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/s3.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="256M,1G", help="comma-separated, binary units (%(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (%(default)s)")
    parser.add_argument("--part", type=parse_bytes, default=8 * MIB, help="part_size_min_bytes (8M)")
    parser.add_argument("--parts-in-flight", type=int, default=4, help="max_parts_in_flight K (%(default)s)")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--target", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.parts_in_flight < 1:
        parser.error("--runs and --parts-in-flight must be at least 1")
    try:
        args.size_list = [parse_bytes(part) for part in args.sizes.split(",") if part.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.baseline:
        return 0  # the imports above are the whole point: the child's RSS before any transfer
    if args.child:
        endpoint, bucket, access, secret = args.target
        target = Target(endpoint, bucket, access, secret, args.part, args.parts_in_flight)
        return child_main(args.child, args.size, target)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run_bench(args.size_list, args.runs, args.part, args.parts_in_flight)
    except KeyboardInterrupt:
        print("interrupted; SeaweedFS, the simulator and children are stopped", file=sys.stderr)
        return 130
    except (BenchError, OSError, RuntimeError) as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
