"""How ``bench/run.py`` runs each contender once, in a fresh work directory, and judges what it left.

Every contender is a real program in a child process: asset-worker as its user runs it (``submit``,
then ``run --until-idle --no-http``), aria2c, curl and rclone. The timed span is the child's wall time
from spawn to exit; CPU is the child's user + system time from ``wait4`` (everything it waited for
included), peak RSS its own from GNU time. Checking the copies happens after the clock stops: every
file is read back and hashed here, whatever the contender claims.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import unquote, urlsplit

from common import Children, Measured, measure
from fileserver import ServedFile

# Well under Linux's limits on one command line (ARG_MAX, 2 MiB here with the environment).
_MAX_ARGV_CHARS: Final = 100_000
# A child slower than this is hung, not slow: every contender here moves more than 5 MB/s on loopback.
_MIN_RATE_B_S: Final = 5e6
_MIN_FILES_S: Final = 4.0
# Variables that would change what the worker does, if this shell happened to have them.
_WORKER_PREFIXES: Final = ("ASSET_WORKER_", "CLOUDLAYER_", "LAYERS_")
# A proxy from this shell would carry loopback traffic elsewhere (and measure the proxy).
_PROXY_VARIABLES: Final = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})


def local_env() -> dict[str, str]:
    """This environment without proxy settings, for every contender."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One run of one contender: the timed span, what it cost, and what was wrong (None: all right)."""

    seconds: float
    cpu_s: float
    peak_rss_mib: float
    error: str | None = None
    submit_s: float | None = None  # asset-worker only: every ``submit`` call, outside ``seconds``
    first_done_s: float | None = None  # queue rows: spawn to the first job finished
    ready: int | None = None  # queue rows: jobs polled ready by the time the rate's last job finished
    store_tx: int | None = None  # many-small rows: store transactions of ``run`` (None: not known)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, error: str, *, submit_s: float | None = None) -> Sample:
        """A run that went wrong before anything was timed."""
        return cls(seconds=0.0, cpu_s=0.0, peak_rss_mib=0.0, error=error, submit_s=submit_s)


# One run of a contender in a fresh work directory.
Go = Callable[[Path], Sample]

# The worker's JSON log lines, which ``run`` writes to stdout (what ``auto`` picks on a pipe anyway),
# are what the harness reads: ``job_finished`` in the queue rows, ``runner_stopped`` in the others.
JSON_LOGS: Final = {"ASSET_WORKER_LOG_FORMAT": "json"}
_STOPPED: Final = '"runner_stopped"'

# How the store transactions of one ``run`` are counted: called with the worker's environment just
# before ``run`` starts; what it returns is called with what ``run`` printed once it has exited.
TxCount = Callable[[Mapping[str, str]], Callable[[str], int | None]]


def logged_store_transactions(out: str) -> int | None:
    """``store_transactions`` of the worker's last ``runner_stopped`` JSON log line; None without it."""
    for line in reversed(out.splitlines()):
        if _STOPPED not in line:
            continue
        try:
            value = json.loads(line).get("store_transactions")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


def tx_from_log(_env: Mapping[str, str]) -> Callable[[str], int | None]:
    """``TxCount`` from the worker's own log: what its store committed or rolled back."""
    return logged_store_transactions


def sample_of(run: Measured, error: str | None) -> Sample:
    """A run measured whole (wall time, CPU, peak RSS of the child), with what was wrong, if anything."""
    return Sample(seconds=run.wall_s, cpu_s=run.cpu_s, peak_rss_mib=run.peak_rss_mib, error=error)


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """What every run shares: the processes, the programs, the file server and the worker's settings."""

    children: Children
    gnu_time: str | None
    programs: Mapping[str, str]  # name -> path: asset-worker, aria2c, curl, rclone, python
    base_url: str  # nginx, serving the files under /f/
    settings: Mapping[str, str]  # the worker's variables that differ from its defaults

    def worker_env(self, workdir: Path) -> dict[str, str]:
        """This environment without the worker's own variables, plus the settings and a fresh store
        and destination in ``workdir``: every other setting is the worker's default."""
        env = {k: v for k, v in local_env().items() if not k.startswith(_WORKER_PREFIXES)}
        return env | dict(self.settings) | store_and_dest(workdir)

    def timeout_s(self, files: int, total_bytes: int) -> float:
        return 120.0 + files / _MIN_FILES_S + total_bytes / _MIN_RATE_B_S

    def measure(
        self,
        argv: list[str],
        timeout_s: float,
        log: IO[bytes],
        env: dict[str, str] | None = None,
        stdout: IO[bytes] | None = None,
    ) -> Measured:
        return measure(
            self.children, self.gnu_time, argv, timeout_s, stderr=log, env=env or local_env(), stdout=stdout
        )


def store_and_dest(workdir: Path) -> dict[str, str]:
    """A SQLite store and a local-disk destination inside ``workdir``."""
    return {
        "ASSET_WORKER_STORE": f"sqlite:///{workdir / 'store.db'}",
        "ASSET_WORKER_DEST": str(workdir / "assets"),
    }


# --- checking copies ---------------------------------------------------------------------------------


def check_file(path: Path, expected: ServedFile) -> str | None:
    """What is wrong with the copy at ``path`` (missing, size, sha256), or None."""
    if not path.is_file():
        return f"{path.name}: missing"
    size = path.stat().st_size
    if size != expected.size:
        return f"{path.name}: {size} bytes, expected {expected.size}"
    with path.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    return None if sha256 == expected.sha256 else f"{path.name}: sha256 {sha256} != {expected.sha256}"


def summarise_problems(problems: list[str], total: int) -> str | None:
    if not problems:
        return None
    return f"{len(problems)} of {total} copies wrong, e.g. {'; '.join(problems[:3])}"


def check_dir(directory: Path, files: list[ServedFile]) -> str | None:
    problems = [p for f in files if (p := check_file(directory / f.name, f)) is not None]
    return summarise_problems(problems, len(files))


def gist(text: str) -> str:
    """The lines of a program's output that say what went wrong (those naming an error, else the last)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    telling = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
    return " | ".join(telling[-3:] or lines[-3:])[-600:]


def exit_problem(code: int, log: Path, out: str = "") -> str | None:
    """None for exit status 0; else the status and what the program said (its log, else its stdout)."""
    if code == 0:
        return None
    # aria2c reports its errors on stdout, most programs on stderr.
    said = gist(log.read_text(errors="replace")) if log.exists() else ""
    return f"exit status {code}: {said or gist(out) or '(no output)'}"


def _failed(run: Measured, log: Path) -> str | None:
    return exit_problem(run.code, log, run.out)


# --- asset-worker, end to end ------------------------------------------------------------------------


def _key_chunks(keys: list[str]) -> list[list[str]]:
    """Keys in as few ``submit`` calls as fit on a command line."""
    chunks: list[list[str]] = [[]]
    length = 0
    for key in keys:
        if chunks[-1] and length + len(key) + 1 > _MAX_ARGV_CHARS:
            chunks.append([])
            length = 0
        chunks[-1].append(key)
        length += len(key) + 1
    return chunks


def submit(ctx: Context, env: dict[str, str], keys: list[str], log: IO[bytes]) -> tuple[float, str | None]:
    """``asset-worker submit`` for every key; returns the summed wall time and an error, if any."""
    total = 0.0
    for chunk in _key_chunks(keys):
        done = ctx.measure(
            [ctx.programs["asset-worker"], "submit", *chunk], ctx.timeout_s(len(chunk), 0), log, env
        )
        total += done.wall_s
        if done.code != 0:
            return total, f"submit exited with status {done.code}"
    return total, None


def submit_file(
    ctx: Context, env: dict[str, str], keys: list[str], workdir: Path, log: IO[bytes]
) -> tuple[Measured, str | None]:
    """``asset-worker submit --from-file FILE`` with ``keys`` one a line, measured; and what went wrong:
    a non-zero exit, or not every key printed back (it prints each key it queued)."""
    listing = workdir / "keys.txt"
    listing.write_text("".join(f"{key}\n" for key in keys))
    printed = workdir / "submitted.txt"
    argv = [ctx.programs["asset-worker"], "submit", "--from-file", str(listing)]
    with printed.open("wb") as out:
        run = ctx.measure(argv, ctx.timeout_s(len(keys), 0), log, env, stdout=out)
    if run.code != 0:
        return run, f"submit --from-file exited with status {run.code}"
    with printed.open("rb") as lines:
        count = sum(1 for _ in lines)
    return run, None if count == len(keys) else f"submit --from-file printed {count} keys of {len(keys)}"


def _stored_path(asset: Mapping[str, Any]) -> Path | None:
    uri = str(asset.get("uri") or "")
    return Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else None


# What is wrong with the copy a job's asset (from ``status --json``) points at, or None.
CopyCheck = Callable[[Mapping[str, Any], ServedFile], str | None]


def check_local_copy(asset: Mapping[str, Any], expected: ServedFile) -> str | None:
    """The file a ``file://`` URI names, read back and hashed."""
    path = _stored_path(asset)
    return f"uri {asset.get('uri')!r}" if path is None else check_file(path, expected)


def _job_problem(job: Mapping[str, Any], expected: ServedFile, check_copy: CopyCheck) -> str | None:
    """What is wrong with one job of ``status --json``, and then with the copy it points at."""
    assets = job.get("assets") or []
    if job.get("state") != "done" or len(assets) != 1:
        return f"{job.get('key')}: state {job.get('state')}, error {job.get('error')}"
    asset = assets[0]
    if (asset.get("size"), asset.get("sha256")) != (expected.size, expected.sha256):
        recorded = f"{asset.get('size')} bytes, sha256 {asset.get('sha256')}"
        return (
            f"{job.get('key')}: recorded {recorded}; expected {expected.size} bytes, sha256 {expected.sha256}"
        )
    problem = check_copy(asset, expected)
    return None if problem is None else f"{job.get('key')}: {problem}"


def _status_json(
    ctx: Context, env: dict[str, str], keys: list[str] | None, log: IO[bytes]
) -> tuple[dict[str, Any], str | None]:
    """The jobs ``status --json`` shows, by key: every job, or only ``keys`` (in as few calls as fit)."""
    by_key: dict[str, Any] = {}
    for chunk in [[]] if keys is None else _key_chunks(keys):
        argv = [ctx.programs["asset-worker"], "status", "--json", *chunk]
        status = ctx.measure(argv, ctx.timeout_s(len(chunk), 0), log, env)
        if status.code != 0:
            return by_key, f"status exited with status {status.code}"
        try:
            by_key |= {str(job["key"]): job for job in json.loads(status.out)}
        except (ValueError, KeyError, TypeError) as exc:
            return by_key, f"unreadable status --json: {exc}"
    return by_key, None


def check_worker(
    ctx: Context,
    env: dict[str, str],
    jobs: Mapping[str, ServedFile],
    log: IO[bytes],
    *,
    check_copy: CopyCheck = check_local_copy,
    by_key: bool = False,
) -> str | None:
    """Every job ``done`` in ``status --json`` with the right size and sha256, and its copy right.

    ``by_key``: ask for these jobs only, not the whole queue (a queue row leaves most jobs unrun).
    """
    found, error = _status_json(ctx, env, list(jobs) if by_key else None, log)
    if error is not None:
        return error
    problems = []
    for key, expected in jobs.items():
        job = found.get(key)
        problem = f"{key}: not in status" if job is None else _job_problem(job, expected, check_copy)
        if problem is not None:
            problems.append(problem)
    return summarise_problems(problems, len(jobs))


def asset_worker(
    ctx: Context,
    workdir: Path,
    jobs: Mapping[str, ServedFile],
    *,
    env: dict[str, str] | None = None,
    check_copy: CopyCheck = check_local_copy,
    count_tx: TxCount | None = None,
) -> Sample:
    """Submit every job key, then time ``run --until-idle --no-http`` from spawn to exit; check the copies.

    ``env``: the worker's environment (default: ``ctx.worker_env(workdir)``, SQLite and local disk).
    ``count_tx``: how to count the store transactions of ``run`` (default: not counted)."""
    env = (env or ctx.worker_env(workdir)) | JSON_LOGS
    log_path = workdir / "worker.log"  # submit's and status's logs (stderr); run's log is its stdout
    with log_path.open("ab") as log:
        submit_s, error = submit(ctx, env, list(jobs), log)
        if error is not None:
            return Sample.failed(error, submit_s=submit_s)
        total_bytes = sum(f.size for f in jobs.values())
        argv = [ctx.programs["asset-worker"], "run", "--until-idle", "--no-http"]
        counted = None if count_tx is None else count_tx(env)
        run = ctx.measure(argv, ctx.timeout_s(len(jobs), total_bytes), log, env)
        store_tx = None if counted is None else counted(run.out)
        log.flush()
        error = _failed(run, log_path) or check_worker(ctx, env, jobs, log, check_copy=check_copy)
    return Sample(
        seconds=run.wall_s,
        cpu_s=run.cpu_s,
        peak_rss_mib=run.peak_rss_mib,
        error=error,
        submit_s=submit_s,
        store_tx=store_tx,
    )


# --- peers ---------------------------------------------------------------------------------------------


def _peer(ctx: Context, workdir: Path, argv: list[str], files: list[ServedFile], out: Path) -> Sample:
    """Run a peer that downloads ``files`` into ``out``, then check every copy there."""
    log_path = workdir / "stderr.log"
    with log_path.open("wb") as log:
        run = ctx.measure(argv, ctx.timeout_s(len(files), sum(f.size for f in files)), log)
    error = _failed(run, log_path) or check_dir(out, files)
    return Sample(seconds=run.wall_s, cpu_s=run.cpu_s, peak_rss_mib=run.peak_rss_mib, error=error)


def _out_dir(workdir: Path) -> Path:
    out = workdir / "out"
    out.mkdir()  # made here: curl -o does not create directories
    return out


_ARIA2C_QUIET: Final = [
    "--enable-color=false",
    "--console-log-level=error",
    "--summary-interval=0",
    "--download-result=hide",
]


def aria2c_list(ctx: Context, workdir: Path, files: list[ServedFile], parallel: int = 16) -> Sample:
    """``aria2c -i LIST -j 16``, each entry with its ``checksum=sha-256=...``, so aria2c verifies too."""
    listing = workdir / "input.txt"
    entries = (f"{ctx.base_url}{f.path}\n  out={f.name}\n  checksum=sha-256={f.sha256}\n" for f in files)
    listing.write_text("".join(entries))
    out = _out_dir(workdir)
    argv = [ctx.programs["aria2c"], "-i", str(listing), "-j", str(parallel), "-d", str(out), *_ARIA2C_QUIET]
    return _peer(ctx, workdir, argv, files, out)


def aria2c_one(ctx: Context, workdir: Path, file: ServedFile) -> Sample:
    """``aria2c -x1 -s1 --checksum=sha-256=HEX URL``: one connection, verified by aria2c."""
    out = _out_dir(workdir)
    argv = [
        ctx.programs["aria2c"], "-x1", "-s1", f"--checksum=sha-256={file.sha256}",
        "-d", str(out), "-o", file.name, *_ARIA2C_QUIET, ctx.base_url + file.path,
    ]  # fmt: skip
    return _peer(ctx, workdir, argv, [file], out)


def curl_one(ctx: Context, workdir: Path, file: ServedFile) -> Sample:
    """``curl -sS -o FILE URL``: no hashing at all, the floor of a plain download."""
    out = _out_dir(workdir)
    argv = [ctx.programs["curl"], "-sS", "-o", str(out / file.name), ctx.base_url + file.path]
    return _peer(ctx, workdir, argv, [file], out)


def rclone_one(ctx: Context, workdir: Path, file: ServedFile) -> Sample:
    """``rclone copyurl URL FILE``."""
    out = _out_dir(workdir)
    argv = [ctx.programs["rclone"], "copyurl", ctx.base_url + file.path, str(out / file.name)]
    return _peer(ctx, workdir, argv, [file], out)


# --- start-up ------------------------------------------------------------------------------------------


def command(ctx: Context, workdir: Path, argv: list[str], env: dict[str, str] | None = None) -> Sample:
    """One short command from spawn to exit; any exit status but 0 is a failure."""
    log_path = workdir / "stderr.log"
    with log_path.open("wb") as log:
        run = ctx.measure(argv, 60.0, log, env)
    return Sample(
        seconds=run.wall_s, cpu_s=run.cpu_s, peak_rss_mib=run.peak_rss_mib, error=_failed(run, log_path)
    )


def warm_up(ctx: Context, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run once untimed, so the first timed run does not pay for a cold page cache (or create the store)."""
    ctx.children.output(argv, 60.0, stderr=subprocess.DEVNULL, env=env or local_env())
