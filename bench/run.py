"""asset-worker against real peer programs on this machine, in one run, each row with its ratio.

    .venv/bin/python bench/run.py [--files 2000] [--file-size 100K] [--large-size 1G] [--runs N]
                                  [--concurrency N] [--rows many_small,large_file,startup] [--smoke]

Rows:

- ``many_small``: N files of 100 KiB, one cloudlayer job each. asset-worker as its user runs it:
  ``asset-worker submit KEY...``, then ``asset-worker run --until-idle --no-http`` on a SQLite store
  and a local-disk destination, timed from the start of ``run`` to its exit (files/s). Peer:
  ``aria2c -i LIST -j 16``, every entry with ``checksum=sha-256=...``.
- ``large_file``: one asset of 1 GiB, the worker as above (MB/s = 10**6 bytes/s). Peers on the same
  URL: ``curl -sS -o``, ``aria2c -x1 -s1 --checksum=sha-256=...``, ``rclone copyurl``.
- ``startup``: ``asset-worker --help`` and ``asset-worker status`` on an empty store, against the bare
  interpreter (``python -c pass``) and ``rclone --help``.

nginx (its own configuration and prefix in a temp dir, on a free loopback port) serves files generated
from ``worker.simulator.content``; the project's simulator plays cloudlayer, with jobs whose asset lives
at the nginx URL. Runs are interleaved (each contender once, then again) so that machine noise spreads
over all. Every copy is read back and checked (size, sha256) after the clock stops. Missing programs are
installed when this is root (apt-get, pip). The last line printed is one JSON object with every number.

Exit status: 0 if every copy was right, 1 if any contender failed or produced a wrong file, 2 if the
benchmark could not run (a missing program is named with how to install it), 130 after Ctrl-C or
SIGTERM. Every child process and temp dir is removed in every case.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import peers
import report
import rows
from common import (
    API_KEY,
    BenchError,
    Children,
    Simulator,
    find_gnu_time,
    parse_bytes,
    start_simulator,
    terminate,
)
from contenders import Context
from fileserver import ServedFile, start_nginx, write_file

from worker.config import Settings

ROW_KEYS: Final = ("many_small", "large_file", "startup")
_SMALL_SEED: Final = 0x5A11_0000
_LARGE_SEED: Final = 0x1A26_0000
# The simulator answers at once; the vendor's first poll delay (2 s) would be most of a small run.
_POLL_INITIAL_S: Final = "0.1"


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    rows: tuple[str, ...]
    files: int
    file_size: int
    large_size: int
    small_runs: int
    large_runs: int
    startup_runs: int
    concurrency: int | None


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
    return {name: _version_number(peers.version(programs[name], flag)) for name, flag in asked.items()}


def _version_number(line: str) -> str:
    found = re.search(r"v?\d+(?:\.\d+)+", line)
    return found.group(0) if found else line


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


def concurrency_text(concurrency: int | None) -> str:
    return f"{concurrency} (--concurrency)" if concurrency else f"{Settings().concurrency} (default)"


# --- files and jobs ------------------------------------------------------------------------------------


def write_files(www: Path, plan: Plan) -> tuple[list[ServedFile], ServedFile | None]:
    """The small files and the large one the chosen rows need; one seed each, so no two are alike."""
    small = []
    if "many_small" in plan.rows:
        small = [write_file(www, f"s{i:05d}.bin", _SMALL_SEED + i, plan.file_size) for i in range(plan.files)]
    large = write_file(www, "large.bin", _LARGE_SEED, plan.large_size) if "large_file" in plan.rows else None
    return small, large


def create_jobs(sim: Simulator, base_url: str, files: list[ServedFile]) -> None:
    """One finished cloudlayer job per file, its asset at nginx's URL (one request each: about 1 ms)."""
    for file in files:
        sim.external_job(rows.job_key(file).removeprefix("cloudlayer:"), base_url + file.path, file.size)


def row_builders(
    ctx: Context, plan: Plan, small: list[ServedFile], large: ServedFile | None, root: Path
) -> list[Callable[[], rows.Row]]:
    """The chosen rows, each built just before it runs (the start-up row warms its commands up)."""
    builders: dict[str, Callable[[], rows.Row]] = {
        "many_small": lambda: rows.many_small_row(
            ctx, small, plan.small_runs, concurrency_text(plan.concurrency)
        ),
        "startup": lambda: rows.startup_row(ctx, root / "startup-store", plan.startup_runs),
    }
    if large is not None:
        builders["large_file"] = lambda: rows.large_file_row(ctx, large, plan.large_runs)
    return [builders[key] for key in plan.rows]


# --- the whole run -------------------------------------------------------------------------------------


def set_up(
    children: Children, programs: dict[str, str], root: Path, plan: Plan
) -> tuple[Context, list[ServedFile], ServedFile | None]:
    """The simulator, the files, nginx serving them, and one job per file; prints what it set."""
    gnu_time = find_gnu_time(children)
    sim = start_simulator(children)
    settings = worker_settings(sim.url, plan.concurrency)
    report.print_settings(settings)
    started = time.perf_counter()
    small, large = write_files(root / "www", plan)
    base_url = start_nginx(children, programs["nginx"], root / "nginx", root / "www")
    served = [*small, *([large] if large else [])]
    create_jobs(sim, base_url, served)
    took = time.perf_counter() - started
    rss = "GNU time" if gnu_time else "wait4, which includes this parent's RSS: an upper bound"
    print(f"{len(served)} files written and as many jobs created in {took:.1f} s; nginx {base_url}")
    print(f"times are wall clock, spawn to exit; CPU from wait4; peak RSS from {rss}")
    return Context(children, gnu_time, programs, base_url, settings), small, large


def run_rows(
    ctx: Context, plan: Plan, small: list[ServedFile], large: ServedFile | None, root: Path
) -> tuple[dict[str, Any], bool]:
    """Every chosen row, one after the other, each printed as it ends; the results by row and all-ok."""
    (root / "runs").mkdir()
    results: dict[str, Any] = {}
    all_ok = True
    for build in row_builders(ctx, plan, small, large, root):
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
    children = Children()
    root = Path(tempfile.mkdtemp(prefix="bench-run-", dir="/tmp"))
    try:
        root.chmod(0o755)  # nginx's workers run unprivileged and must reach the web root inside
        ctx, small, large = set_up(children, programs, root, plan)
        results, all_ok = run_rows(ctx, plan, small, large, root)
        info["load_average_end"] = round(os.getloadavg()[0], 2)
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
    parser.add_argument("--large-size", type=parse_bytes, default=1 << 30, help="large_file: its size (1G)")
    parser.add_argument(
        "--runs", type=_positive, help="runs per contender in every row (default: 1 many_small, 3 large_file)"
    )
    parser.add_argument("--startup-runs", type=_positive, default=5, help="start-up: runs per command (5)")
    parser.add_argument(
        "--concurrency", type=_positive, help="ASSET_WORKER_CONCURRENCY (default: the worker's)"
    )
    parser.add_argument(
        "--rows", type=_row_list, default=ROW_KEYS, help=f"comma-separated: {','.join(ROW_KEYS)}"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (20 files, 8 MiB, 1 run, 3 start-ups): under a minute",
    )
    return parser


def plan_from(args: argparse.Namespace) -> Plan:
    if args.smoke:
        return Plan(args.rows, 20, 100 << 10, 8 << 20, 1, 1, 3, args.concurrency)
    return Plan(
        rows=args.rows,
        files=args.files,
        file_size=args.file_size,
        large_size=args.large_size,
        small_runs=args.runs or 1,
        large_runs=args.runs or 3,
        startup_runs=args.startup_runs,
        concurrency=args.concurrency,
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
