"""``asset-worker``: submit, run, status, cancel, retry, verify, simulate, demo, completion.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

A store that cannot be used whatever we wait for (``StoreUnusable``: a damaged or read-only file)
makes every command exit 1 with one line on stderr, ``asset-worker: store_unusable: ...``, whether
it is found at start or while ``run`` works.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog

from worker import log as worker_log
from worker.config import Settings, from_env, secret_values
from worker.destinations import parse_dest
from worker.enqueue import SUBMIT_BATCH
from worker.errors import ConfigError, InvalidJob, StoreUnusable, WorkerError
from worker.http.binding import http_binding
from worker.mirror_plan import parse_sources, source_examples
from worker.models import Job, JobKey, JobState
from worker.providers import PROVIDERS, parse_key
from worker.redaction import redact_url, register_secrets
from worker.sdnotify import Notifier
from worker.simulator import command as simulator_command
from worker.statusview import iso, job_to_json, live_progress, render_table, shown_state
from worker.store import Cursor, Phase, Store, open_store, store_for

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        # argparse's own usage errors exit 2, as ours do, and are one line as ours are: the usage
        # summary (several wrapped lines) is one --help away.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common_options() -> _Parser:
    """Options every command takes, before or after its name (``asset-worker --store X status`` and
    ``asset-worker status --store X`` alike). Unset, they are absent, so neither place overrides the
    other with a default."""
    common = _Parser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help="store URL (overrides ASSET_WORKER_STORE)")
    common.add_argument(
        "--dest", default=argparse.SUPPRESS, help="destination URL or path (overrides ASSET_WORKER_DEST)"
    )
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=["debug", "info", "warning", "error"]
    )
    common.add_argument("--log-format", default=argparse.SUPPRESS, choices=["auto", "json", "console"])
    return common


def version() -> str:
    try:
        return importlib.metadata.version("asset-worker")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(
        prog="asset-worker",
        description="Poll asynchronous generation jobs, download every asset, verify it, store it.",
        epilog="Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"asset-worker {version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add = functools.partial(commands.add_parser, parents=[common])

    examples = ", ".join(spec.key_example for spec in PROVIDERS.values())
    submit = add("submit", help=f"queue jobs by key ({examples})")
    submit.add_argument("keys", nargs="*", metavar="KEY")
    submit.add_argument(
        "--from-file",
        metavar="FILE",
        help="also read keys from FILE, one a line ('-': standard input; blank and # lines skipped)",
    )
    submit.add_argument("--force", action="store_true", help="re-queue jobs that already finished")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait until a worker has finished these jobs: exit 0 if all are done, 1 if any is not",
    )

    run = add("run", help="work the queue until stopped (SIGTERM / Ctrl-C)")
    run.add_argument("--until-idle", action="store_true", help="exit 0 once no job is left unfinished")
    run.add_argument(
        "--fail-on-failed", action="store_true", help="exit 1 if any job this run finished has failed"
    )
    run.add_argument("--concurrency", type=int, help="transfers at once (ASSET_WORKER_CONCURRENCY)")
    run.add_argument(
        "--no-http", action="store_true", help="serve no HTTP (API, /healthz, /readyz, /metrics)"
    )

    status = add("status", help="show jobs (all, or the keys given)")
    status.add_argument("keys", nargs="*", metavar="KEY")
    status.add_argument("--json", action="store_true", help="print the status JSON array")
    status.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in JobState],
        help="only jobs in this state (repeatable)",
    )
    status.add_argument("--limit", type=_at_least_one, help="at most this many jobs, oldest first")
    status.add_argument(
        "--since",
        type=_moment,
        metavar="WHEN",
        help="only jobs submitted since WHEN: an age (90s, 30m, 2h, 7d) or a UTC time (2026-11-29T10:00:00Z)",
    )

    cancel = add("cancel", help="cancel unfinished jobs (a worker holding one lets go of it)")
    cancel.add_argument("keys", nargs="+", metavar="KEY")

    retry = add("retry", help="queue finished jobs again (done, failed or canceled) to their destination")
    retry.add_argument("keys", nargs="*", metavar="KEY")
    retry.add_argument("--failed", action="store_true", help="every failed job")

    sources = source_examples()
    mirror = add("mirror", help=f"copy all an account holds ({sources}) before the vendor deletes it")
    mirror.add_argument("sources", nargs="*", metavar="SOURCE", help=sources)
    mirror.add_argument("--once", action="store_true", help="walk each source once, copy what is new, exit")
    mirror.add_argument(
        "--status",
        action="store_true",
        help="per source: last walks, newest item seen, copied, pending, failed, oldest uncopied",
    )
    mirror.add_argument("--json", action="store_true", help="with --status: a JSON array of sources")

    verify = add(
        "verify",
        help="re-read the stored files of done jobs (all, or the keys given) and compare size and "
        "sha256 with their receipts: exit 1 on any difference",
    )
    verify.add_argument("keys", nargs="*", metavar="KEY")
    verify.add_argument("--json", action="store_true", help="print one JSON object per file checked")

    completion = add(
        "completion", help='print a shell completion script (eval "$(asset-worker completion bash)")'
    )
    completion.add_argument("shell", choices=["bash", "zsh"])

    simulate = add("simulate", help="serve the simulated upstream APIs on loopback")
    simulator_command.add_arguments(simulate, port=8787, layers_port=8788)

    demo = add("demo", help="run the worker end to end against the built-in simulator")
    demo.add_argument(
        "--dir", metavar="DIR", default="asset-worker-demo", help="where the demo keeps its store and files"
    )
    demo.add_argument("--jobs", type=_at_least_one, default=36, help="how many jobs to generate")
    demo_output = demo.add_mutually_exclusive_group()
    demo_output.add_argument(
        "--wide", action="store_true", help="full keys and the whole table (wider than 80 columns)"
    )
    demo_output.add_argument("--json", action="store_true", help="print every job's status JSON at the end")
    return parser


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_SECONDS_PER = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _moment(text: str) -> float:
    """``--since``: an age before now (``30m``) or an ISO 8601 time (UTC unless it says otherwise),
    as UNIX seconds."""
    age = _AGE.match(text.strip().lower())
    if age:
        return time.time() - float(age.group(1)) * _SECONDS_PER[age.group(2)]
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an age (90s, 30m, 2h, 7d) nor a time (2026-11-29T10:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        # Needs no settings: a shell's start-up must not fail on a half-configured environment.
        from worker.completion import script

        print(script(parser, args.shell), end="")
        return EXIT_OK
    try:
        settings = from_env(
            None,
            store=getattr(args, "store", None),
            # For submit, --dest is the jobs' own destination, checked against the worker's.
            dest=None if args.command == "submit" else getattr(args, "dest", None),
            # The demo reports every job itself, the faults it injected included (their warnings
            # would only repeat them); its logs stay quiet unless asked for.
            log_level=getattr(args, "log_level", None) or ("error" if args.command == "demo" else None),
            log_format=getattr(args, "log_format", None),
            concurrency=getattr(args, "concurrency", None),
        )
    except ConfigError as exc:
        print(f"asset-worker: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Every configured secret is masked from here on: logs, errors, status output.
    register_secrets(secret_values(settings))
    # Logs go to stderr when stdout carries the command's own output (tables, JSON, keys).
    # A running worker's log is its output; other commands keep stdout for what they print.
    runs_worker = args.command == "run" or (args.command == "mirror" and not args.status)
    log_stream = sys.stdout if runs_worker else sys.stderr
    worker_log.configure(level=settings.log_level, fmt=settings.log_format, stream=log_stream)
    try:
        return asyncio.run(_dispatch(args, settings))
    except (ConfigError, InvalidJob) as exc:
        print(f"asset-worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerError as exc:
        print(f"asset-worker: {exc.code}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        # The machine said no (a port in use, a directory that cannot be written): one line, as
        # for every other error a user can fix, not a traceback.
        print(f"asset-worker: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.command:
        case "submit":
            keys = [*args.keys, *(_keys_from(args.from_file) if args.from_file else ())]
            submitted = await _submit(settings, keys, force=args.force, dest=getattr(args, "dest", None))
            if args.wait:
                return await _wait_for(settings, [parse_key(k) for k in keys])
            return submitted
        case "run":
            return await _run(
                settings,
                until_idle=args.until_idle,
                http=not args.no_http,
                fail_on_failed=args.fail_on_failed,
            )
        case "status":
            states = [JobState(s) for s in args.state] if args.state else None
            return await _status(
                settings, args.keys, as_json=args.json, states=states, limit=args.limit, since=args.since
            )
        case "cancel":
            return await _cancel(settings, args.keys)
        case "retry":
            return await _retry(settings, args.keys, every_failed=args.failed)
        case "verify":
            return await _verify(settings, args.keys, as_json=args.json)
        case "mirror":
            return await _mirror(settings, args)
        case "simulate":
            await simulator_command.run(args)
            return EXIT_OK
        case "demo":
            from worker.demo import run_demo

            outcome: int = await run_demo(
                settings, directory=args.dir, jobs=args.jobs, wide=args.wide, as_json=args.json
            )
            return outcome
    raise ConfigError(f"unknown command {args.command!r}")  # pragma: no cover


async def _submit(
    settings: Settings, raw_keys: Sequence[str], *, force: bool, dest: str | None = None
) -> int:
    """Queue jobs; ``dest`` (``submit --dest``) is their own directory or prefix, which must lie
    inside the worker's ASSET_WORKER_DEST (as the HTTP API's ``dest``)."""
    if not raw_keys:
        raise ConfigError("submit: give at least one KEY, or --from-file FILE")
    keys = [parse_key(k) for k in raw_keys]  # every key is checked before any is written
    if dest is not None:
        try:
            dest = parse_dest(dest, base_url=settings.dest_url).url
        except ConfigError as exc:
            raise ConfigError(f"--dest: {exc.message}") from None
    log = structlog.get_logger("worker.cli")
    counts = {"created": 0, "requeued": 0, "existing": 0}
    async with _opened(settings) as store:
        now = time.time()
        for start in range(0, len(keys), SUBMIT_BATCH):
            batch = keys[start : start + SUBMIT_BATCH]
            for result in await store.submit_many(batch, now=now, force=force, dest=dest):
                # One line per key at debug only: stdout names every key already, and a flushed log
                # line per key was 40 % of a 100,000-key submit.
                log.debug(
                    "job_submitted", job=str(result.job.key), created=result.created, requeued=result.requeued
                )
                counts["created" if result.created else "requeued" if result.requeued else "existing"] += 1
                print(result.job.key)
                if not result.created and not result.requeued and result.job.state.is_final:
                    # Submitting is idempotent, so this is not an error; but nothing was queued.
                    print(
                        f"asset-worker: {result.job.key} is already {result.job.state.value}; "
                        "submit --force queues it again",
                        file=sys.stderr,
                    )
    log.info("jobs_submitted", keys=len(keys), **counts)
    return EXIT_OK


def _keys_from(path: str) -> list[str]:
    """The keys of a file, one a line (blank lines and lines starting with # skipped)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--from-file {path}: cannot read it ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


async def _status(
    settings: Settings,
    raw_keys: Sequence[str],
    *,
    as_json: bool,
    states: Sequence[JobState] | None = None,
    limit: int | None = None,
    since: float | None = None,
) -> int:
    keys = [JobKey.parse(k) for k in raw_keys]
    where = redact_url(settings.store_url)
    if not store_for(settings.store_url).exists(settings.store_url):
        # Looking never creates a store (an empty one in the wrong directory would hide the real one).
        print("[]" if as_json else f"no jobs: there is no store at {where} yet")
        for key in keys:
            print(f"asset-worker: unknown job {key}", file=sys.stderr)
        return EXIT_FAILURE if keys else EXIT_OK
    async with _opened(settings) as store:
        # Every job sorts after (since, ""): listing from that cursor is "submitted since", on the
        # index the listing already walks.
        start = None if since is None else Cursor(submitted_at=since, key="")
        if as_json and not keys and states is None and limit is None:
            await _print_all_as_json(store, after=start)
            return EXIT_OK
        if keys:
            jobs = [
                j
                for j in await store.get(keys)
                if (states is None or j.state in states) and (since is None or j.submitted_at >= since)
            ][:limit]
        else:
            jobs = await store.list_jobs(states=states, limit=limit, after=start)
    filtered = states is not None or since is not None
    missing = sorted({str(k) for k in keys} - {str(j.key) for j in jobs}) if not filtered else []
    if as_json:
        print(json.dumps([job_to_json(j) for j in jobs], indent=2))
    elif jobs:
        print(render_table(jobs))
        print(_summary(jobs))
    else:
        which = "" if states is None else "/".join(s.value for s in states) + " "
        when = "" if since is None else f" submitted since {iso(since)}"
        print(f"no {which}jobs{when} in {where}")
    for name in missing:
        print(f"asset-worker: unknown job {name}", file=sys.stderr)
    return EXIT_FAILURE if missing else EXIT_OK


async def _verify(settings: Settings, raw_keys: Sequence[str], *, as_json: bool) -> int:
    """Re-read every stored file of the done jobs (or of the named ones) and compare it with its
    receipt; one line per difference (or one JSON object per file) and a summary line. Read-only:
    no store is created, nothing is written."""
    from worker import verify

    keys = [JobKey.parse(k) for k in raw_keys]
    walk = verify.Walk(unknown=[], not_done=[])
    tally = verify.Tally()
    if store_for(settings.store_url).exists(settings.store_url):
        readers = verify.Readers(settings.dest_url, settings.sink_settings())
        try:
            async with _opened(settings) as store:
                async for check in verify.check_all(verify.receipts(store, keys, walk), readers):
                    tally.add(check)
                    if as_json:
                        print(json.dumps(verify.check_to_json(check)), flush=True)
                    elif check.result is not verify.Result.OK:
                        print(verify.difference_line(check), flush=True)
        finally:
            await readers.close()
    else:
        walk.unknown += [str(k) for k in keys]
        print(f"asset-worker: there is no store at {redact_url(settings.store_url)} yet", file=sys.stderr)
    for name in walk.unknown:
        _complain(f"unknown job {name}")
    for name, state in walk.not_done:
        _complain(f"{name} is {state.value}; only a done job has files to verify")
    # With --json, standard output holds only the objects; the summary goes with the diagnostics.
    print(tally.line(), file=sys.stderr if as_json else sys.stdout)
    return EXIT_FAILURE if tally.differences or walk.unknown or walk.not_done else EXIT_OK


# How often submit --wait looks at the store.
WAIT_INTERVAL_S = 0.5


async def _wait_for(settings: Settings, keys: Sequence[JobKey]) -> int:
    """Until every job in ``keys`` is final (a worker, here or elsewhere, does the work): a line of
    counts on standard error as they change; exit 0 when all are done, 1 when any failed or was
    canceled. Interrupting the wait leaves the jobs queued."""
    from worker.live import Board, live_display

    wanted = list(dict.fromkeys(keys))
    last = ""
    jobs: list[Job] = []
    live = _live_on(sys.stderr, settings.log_format)
    async with _opened(settings) as store:

        async def board() -> Board:
            now = time.time()
            shown = collections.Counter(shown_state(job, now) for job in jobs)
            transfers = [(str(j.key), p) for j in jobs for p in [live_progress(j, now)] if p is not None]
            return Board(transfers, dict(shown.most_common()))

        # On a terminal the downloads are drawn live (from the store, whichever worker does them);
        # otherwise a line of counts each time they change.
        async with live_display(board, enabled=live, console=_stderr_console() if live else None):
            while True:
                fresh: list[Job] = []
                for start in range(0, len(wanted), STATUS_PAGE):
                    fresh += await store.get(wanted[start : start + STATUS_PAGE])
                jobs[:] = fresh
                line = _summary(jobs)
                if line != last and not live:
                    print(f"asset-worker: {line}", file=sys.stderr)
                last = line
                if all(job.state.is_final for job in jobs):
                    break
                await asyncio.sleep(WAIT_INTERVAL_S)
    if live:
        print(f"asset-worker: {last}", file=sys.stderr)
    return EXIT_OK if all(job.state is JobState.DONE for job in jobs) else EXIT_FAILURE


def _live_on(stream: TextIO, log_format: str) -> bool:
    """A live display only for a person: a terminal, and not a log asked to be JSON."""
    return stream.isatty() and log_format != "json"


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


async def _cancel(settings: Settings, raw_keys: Sequence[str]) -> int:
    """Cancel each job; exit 1 if one is unknown or already done or failed (as the API's 409)."""
    keys = [JobKey.parse(k) for k in raw_keys]
    problems = 0
    async with _opened(settings) as store:
        for key in keys:
            found = await store.get([key])
            if not found:
                problems += _complain(f"unknown job {key}")
            elif found[0].state in (JobState.DONE, JobState.FAILED):
                problems += _complain(f"{key} is already {found[0].state.value}; nothing to cancel")
            else:
                await store.cancel(key, now=time.time())
                print(f"{key} canceled")
    return EXIT_FAILURE if problems else EXIT_OK


async def _retry(settings: Settings, raw_keys: Sequence[str], *, every_failed: bool) -> int:
    """Queue finished jobs again, each to its own destination; a job in progress is left alone."""
    if not raw_keys and not every_failed:
        raise ConfigError("retry: give at least one KEY, or --failed")
    keys = [JobKey.parse(k) for k in raw_keys]
    problems = 0
    async with _opened(settings) as store:
        jobs = await store.get(keys)
        for name in sorted({str(k) for k in keys} - {str(j.key) for j in jobs}):
            problems += _complain(f"unknown job {name}")
        if every_failed:
            jobs += await store.list_jobs(states=[JobState.FAILED])
        for job in jobs:
            if not job.state.is_final:
                problems += _complain(f"{job.key} is {job.state.value}; only a finished job can be retried")
                continue
            result = await store.submit(job.key, now=time.time(), force=True, dest=job.dest)
            if result.requeued:
                print(f"{job.key} queued again")
    return EXIT_FAILURE if problems else EXIT_OK


@contextlib.asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[Store]:
    store = await open_store(settings.store_url, pool_size=settings.pg_pool_size)
    try:
        yield store
    finally:
        await store.close()


def _complain(message: str) -> int:
    print(f"asset-worker: {message}", file=sys.stderr)
    return 1


# The states as status shows them (statusview.shown_state), in the order of a job's life.
_SHOWN_ORDER = ("queued", "polling", "downloading", "retrying", "done", "failed", "canceled")


def _summary(jobs: Sequence[Job]) -> str:
    """``3 jobs: 1 retrying, 2 done``: the states as the table shows them, in their life's order."""
    now = time.time()
    counts = collections.Counter(shown_state(job, now) for job in jobs)
    parts = [f"{counts[state]} {state}" for state in _SHOWN_ORDER if counts[state]]
    return f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}: {', '.join(parts)}"


# Jobs read per page when every job is printed: memory stays flat however many there are.
STATUS_PAGE = 1000


async def _print_all_as_json(store: Store, *, after: Cursor | None = None) -> None:
    """Every job as the status JSON array, page by page (keyset order), written as it is read.

    The text is exactly ``json.dumps(jobs, indent=2)`` of the whole list.
    """
    out = sys.stdout
    first = True
    while page := await store.list_jobs(limit=STATUS_PAGE, after=after):
        for job in page:
            text = json.dumps(job_to_json(job), indent=2).replace("\n", "\n  ")
            out.write(("[\n  " if first else ",\n  ") + text)
            first = False
        last = page[-1]
        after = Cursor(submitted_at=last.submitted_at, key=str(last.key))
    out.write("[]\n" if first else "\n]\n")


async def _mirror(settings: Settings, args: argparse.Namespace) -> int:
    """``mirror --status``, or walk the sources named (else ``ASSET_WORKER_MIRROR``'s): ``--once``
    copies what is new and exits (1 if a source could not be walked), without it the worker keeps
    them mirrored as ``run`` does."""
    if args.status:
        if args.sources or args.once:
            raise ConfigError("mirror --status takes no SOURCE and no --once")
        return await _mirror_status(settings, as_json=args.json)
    if args.json:
        raise ConfigError("mirror: --json goes with --status")
    sources = parse_sources(",".join(args.sources)) if args.sources else settings.mirror.sources
    if not sources:
        raise ConfigError(f"mirror: name a SOURCE ({source_examples()}) or set ASSET_WORKER_MIRROR")
    mirrored = dataclasses.replace(settings, mirror=dataclasses.replace(settings.mirror, sources=sources))
    if not args.once:
        return await _run(mirrored, until_idle=False, http=True)
    return await _run(mirrored, until_idle=True, http=False, fail_on_walk_failure=True)


async def _mirror_status(settings: Settings, *, as_json: bool) -> int:
    from worker.mirror_view import render_sources, source_to_json

    where = redact_url(settings.store_url)
    if not store_for(settings.store_url).exists(settings.store_url):
        print("[]" if as_json else f"no mirror sources: there is no store at {where} yet")
        return EXIT_OK
    async with _opened(settings) as store:
        records = {record.source: record for record in await store.walks()}
        counts = await store.source_counts()
    now = time.time()
    names = sorted({*records, *counts, *(s.name for s in settings.mirror.sources)})
    rows = [source_to_json(name, records.get(name), counts.get(name), now=now) for name in names]
    if as_json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(render_sources(rows))
    else:
        print(f"no mirror sources in {where} (asset-worker mirror SOURCE --once starts one)")
    return EXIT_OK


async def _run(
    settings: Settings,
    *,
    until_idle: bool,
    http: bool,
    fail_on_failed: bool = False,
    fail_on_walk_failure: bool = False,
) -> int:
    # Checked before anything opens: an API that would be open to the network is a usage error.
    binding = http_binding(settings) if http else None
    if binding is not None and binding.api_token is None and settings.listen is None:
        # Not an error (the defaults must start), but say why the port is not reachable from outside.
        structlog.get_logger("worker.cli").warning(
            "http_loopback_only",
            host=binding.host,
            port=binding.port,
            reason="ASSET_WORKER_API_TOKEN is not set; set it to serve on ASSET_WORKER_LISTEN",
        )
    if binding is not None and binding.api_token is not None and len(binding.api_token) < 16:
        structlog.get_logger("worker.cli").warning("http_weak_api_token", length=len(binding.api_token))
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        logger = structlog.get_logger("worker.cli")
        if signals_seen == 1:
            logger.info("shutdown_requested", signal=signal.Signals(signum).name, grace_s=settings.grace_s)
            stop.set()
        elif main_task is not None:
            # Second signal: stop now. Cancellation still removes temp files and releases leases.
            logger.warning("shutdown_forced", signal=signal.Signals(signum).name)
            main_task.cancel()

    for name, config in settings.providers.items():
        spec = PROVIDERS.get(name)
        for event, fields in spec.advice(config.options, config.schedule) if spec is not None else ():
            # e.g. a poll schedule faster than the vendor allows
            structlog.get_logger("worker.cli").warning(event, provider=name, **fields)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        # The worker's machinery (HTTP client and server, metrics) is loaded by the command that runs
        # it, not by every command: `--help` and `status` start in a fraction of the time.
        from worker.app import open_store_when_reachable, open_worker, run_service

        store = await open_store_when_reachable(settings, stop=stop)
        if store is None:
            return EXIT_OK  # stopped before the store could be reached: nothing was claimed
        from worker.live import Board, live_display

        async with open_worker(settings, store=store) as worker:

            async def board() -> Board:
                phases = worker.runner.in_flight_by_phase()
                counts = {
                    "done": worker.engine.outcomes["done"],
                    "failed": worker.engine.outcomes["failed"],
                    "polling": phases[Phase.POLL],
                    "downloading": phases[Phase.TRANSFER],
                }
                return Board([(str(key), p) for key, p in worker.runner.transfers()], counts)

            # On a terminal a live display of the downloads sits under the log, which scrolls above.
            async with live_display(board, enabled=_live_on(sys.stdout, settings.log_format)):
                await run_service(
                    worker,
                    stop=stop,
                    until_idle=until_idle,
                    binding=binding,
                    notifier=Notifier(settings.systemd.notify_socket),
                )
            failed = worker.engine.outcomes["failed"]
            walks_failed = dict(worker.mirror.failures)
        for source, error in walks_failed.items():
            print(f"asset-worker: mirror {source}: {error.code}: {error.message}", file=sys.stderr)
        if fail_on_walk_failure and walks_failed:
            return EXIT_FAILURE
        if fail_on_failed and failed:
            print(f"asset-worker: {failed} job(s) failed in this run (asset-worker status)", file=sys.stderr)
            return EXIT_FAILURE
    except asyncio.CancelledError:
        if signals_seen >= 2:
            return EXIT_FAILURE
        raise
    except BaseExceptionGroup as group:
        # The service's task group wraps what the runner raised. A store that became unusable
        # mid-run is reported as one found unusable at start: main prints its one line, exit 1.
        unusable = group.subgroup(StoreUnusable)
        if unusable is None:
            raise
        leaf: BaseException = unusable
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
