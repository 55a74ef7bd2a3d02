"""A SQLite store that cannot be used stops every command with one line; one that is only busy or
full is waited out.

The ``asset-worker`` command as users run it (a real process, the simulator on loopback) on real
files made unusable for real: garbage bytes, a read-only file system (a read-only bind mount: root,
who runs these tests, ignores file modes), an immutable file, a schema damaged and a -wal file that
stops taking writes while the worker runs, another process holding the write lock, a full disk (a
small tmpfs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.cli_support import (
    Result,
    cli,
    cli_environment,
    only_resume_parts,
    start,
    status_json,
    wait_for_part_file,
)
from tests.security.smalldisk import fill, small_disk
from worker.models import JobKey
from worker.simulator.app import Simulator
from worker.store import open_store

# Every command that opens the store; `run` without --until-idle would otherwise retry forever.
COMMANDS = [["status"], ["submit", "cloudlayer:new"], ["run", "--until-idle"], ["run"]]
# How long a command may take to give up: far below the time it would spend retrying.
GIVE_UP_S = 20.0


@pytest.fixture
def cli_env(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    return cli_environment(tmp_path, sim)


async def finish(env: Mapping[str, str], *args: str, timeout_s: float = GIVE_UP_S) -> Result:
    """Run the command to its end; one still running after ``timeout_s`` is killed and fails the test."""
    return await collect(await start(env, *args), " ".join(args), timeout_s)


async def collect(
    proc: asyncio.subprocess.Process, label: str, timeout_s: float, *, out_so_far: bytes = b""
) -> Result:
    """What ``proc`` printed (after ``out_so_far``, already read from its stdout) and its exit code;
    killed, failing the test, if it is still running after ``timeout_s``."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"asset-worker {label} still running after {timeout_s} s:\n{err.decode()[-3000:]}")
    assert proc.returncode is not None
    return Result(proc.returncode, (out_so_far + out).decode(), err.decode())


async def read_until_event(proc: asyncio.subprocess.Process, event: str) -> bytes:
    """The log lines ``proc`` prints up to and including the first ``event``; killed, failing the
    test, if that does not come within ``GIVE_UP_S``."""
    assert proc.stdout is not None
    lines = b""
    try:
        async with asyncio.timeout(GIVE_UP_S):
            while True:
                line = await proc.stdout.readline()
                assert line, f"the command ended before logging {event}:\n{lines.decode()}"
                lines += line
                if json.loads(line)["event"] == event:
                    return lines
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


async def stop_on_failure(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` when the test fails before collecting it: no worker outlives its test."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def assert_one_unusable_line(result: Result, db: Path, *fragments: str) -> None:
    """Exit 1 and exactly one line on stderr, naming the store's file and saying what is wrong."""
    assert result.code == 1, result
    (line,) = result.err.splitlines()
    assert line.startswith(f"asset-worker: store_unusable: the SQLite store {db} "), line
    for fragment in fragments:
        assert fragment in line


def events(result_out: str) -> list[dict[str, Any]]:
    """The JSON log lines `run` printed (stdout is not a terminal here)."""
    return [json.loads(line) for line in result_out.splitlines()]


async def seed(db: Path, *keys: str) -> None:
    """A store at ``db`` holding these queued jobs, closed again (no -wal or -shm left)."""
    store = await open_store(f"sqlite:///{db}")
    try:
        for key in keys:
            await store.submit(JobKey.parse(key), now=1.0)
    finally:
        await store.close()


# -- not a database ------------------------------------------------------------------------


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
async def test_a_file_that_is_not_a_database_stops_every_command_with_one_line(
    cli_env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    """Garbage bytes where the store should be: status, submit and run (until idle or not) exit 1
    at once with one store_unusable line naming the file, and leave the bytes as they were."""
    db = tmp_path / "cli.db"
    garbage = bytes(range(256)) * 64
    db.write_bytes(garbage)
    result = await finish(cli_env, *args)
    assert_one_unusable_line(result, db, "is not a SQLite database", "SQLITE_NOTADB", "restore it")
    assert db.read_bytes() == garbage


# -- read-only -----------------------------------------------------------------------------


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only file system (a read-only bind mount of one holding a store with a
    queued job): nobody can write there, root included. Unmounted afterwards."""
    if os.geteuid() != 0:
        raise RuntimeError(f"read-only file system tests mount one and need root (uid {os.geteuid()})")
    source, target = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    target.mkdir()
    asyncio.run(seed(source / "store.db", "cloudlayer:queued"))
    bound = _run("mount", "--bind", str(source), str(target))
    if bound.returncode != 0:
        raise RuntimeError(f"read-only file system tests need a bind mount: {bound.stderr.strip()}")
    try:
        remounted = _run("mount", "-o", "remount,ro,bind", str(target))
        assert remounted.returncode == 0, remounted.stderr
        yield target
    finally:
        # Lazily if a process of a failed test still holds a file there: never leave a mount behind.
        if _run("umount", str(target)).returncode != 0:
            _run("umount", "--lazy", str(target))


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
async def test_a_store_on_a_read_only_file_system_stops_every_command_with_one_line(
    cli_env: dict[str, str], read_only_mount: Path, args: list[str]
) -> None:
    """A store on a read-only file system (which SQLite cannot even read in WAL mode: it must create
    the -shm file): every command exits 1 with one line naming the file and the way out."""
    db = read_only_mount / "store.db"
    result = await finish({**cli_env, "ASSET_WORKER_STORE": f"sqlite:///{db}"}, *args)
    assert_one_unusable_line(result, db, "cannot be opened", "SQLITE_CANTOPEN", "mounted read-write")


async def test_a_new_store_on_a_read_only_file_system_is_refused_with_one_line(
    cli_env: dict[str, str], read_only_mount: Path
) -> None:
    """Creating a store where nothing can be written: one store_unusable line naming the file."""
    db = read_only_mount / "new.db"
    result = await finish({**cli_env, "ASSET_WORKER_STORE": f"sqlite:///{db}"}, "run", "--until-idle")
    assert result.code == 1, result
    (line,) = result.err.splitlines()
    assert line.startswith(f"asset-worker: store_unusable: cannot create the SQLite store {db} "), line
    assert "Read-only file system" in line


@pytest.fixture
def immutable_store(tmp_path: Path) -> Iterator[Path]:
    """A store holding one queued job whose file is immutable (``chattr +i``: not even root may
    write it) in a writable directory. Made mutable again afterwards, so it can be deleted."""
    if os.geteuid() != 0:
        raise RuntimeError(f"read-only file tests set the immutable flag and need root (uid {os.geteuid()})")
    db = tmp_path / "store.db"
    asyncio.run(seed(db, "cloudlayer:queued"))
    locked = _run("chattr", "+i", str(db))
    if locked.returncode != 0:
        # Not a skip: a run that cannot make the file immutable has not tested what this promises.
        raise RuntimeError(f"cannot set the immutable flag on {db} (chattr +i): {locked.stderr.strip()}")
    try:
        yield db
    finally:
        _run("chattr", "-i", str(db))


@pytest.mark.parametrize("args", COMMANDS[1:], ids=" ".join)
async def test_a_read_only_store_file_stops_the_commands_that_write(
    cli_env: dict[str, str], immutable_store: Path, args: list[str]
) -> None:
    """A store file that cannot be written opens (SQLite falls back to reading), so the first write
    finds it out: submit, and run at its first claim, exit 1 with one line; status still reads it,
    and the queued job is as it was."""
    env = {**cli_env, "ASSET_WORKER_STORE": f"sqlite:///{immutable_store}"}
    result = await finish(env, *args)
    assert_one_unusable_line(result, immutable_store, "is read-only", "SQLITE_READONLY", "writable")
    assert [(s["key"], s["state"]) for s in await status_json(env)] == [("cloudlayer:queued", "queued")]


# -- damaged while the worker runs ---------------------------------------------------------


def damage_schema(db: Path) -> None:
    """Make the store's schema unreadable, as damage to its first page would: every connection,
    the running worker's included, then gets SQLITE_CORRUPT from its next statement."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as conn:
        version = int(conn.execute("PRAGMA schema_version").fetchone()[0])
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_schema SET sql = 'CREATE TABLE jobs (' WHERE name = 'jobs'")
        # A new schema version makes every other connection read the schema again.
        conn.execute(f"PRAGMA schema_version = {version + 1}")


async def test_a_store_damaged_mid_run_ends_the_run_after_draining(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The store is damaged while a download is under way: the worker stops claiming, gives the
    download its grace period, cancels it (its part kept for the next holder, nothing under a
    final name) and exits 1 with one line."""
    sim.add_cloudlayer_job(id="big", pending_s=0, size=1024 * 1024 * 1024)
    env = {**cli_env, "ASSET_WORKER_GRACE_S": "1"}
    assert (await cli(env, "submit", "cloudlayer:big")).code == 0
    proc = await start(env, "run")
    try:
        await wait_for_part_file(tmp_path / "assets", 8 << 20)
        damage_schema(tmp_path / "cli.db")
    except BaseException:
        await stop_on_failure(proc)
        raise
    result = await collect(proc, "run", GIVE_UP_S)
    assert_one_unusable_line(result, tmp_path / "cli.db", "is damaged", "SQLITE_CORRUPT")
    names = [e["event"] for e in events(result.out)]
    assert "store_unusable" in names
    order = [names.index(e) for e in ("runner_draining", "runner_grace_expired", "runner_stopped")]
    assert order == sorted(order)
    assert only_resume_parts(tmp_path / "assets")


async def test_a_write_error_while_a_download_runs_ends_the_run_at_the_next_renewal(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The store's -wal file stops taking writes during a download (an I/O error, as a failing disk
    gives): the in-flight job's first failed write (its lease renewal, or its confirmation before
    publishing) ends the run without waiting for the lease to run out; run exits 1 with one line."""
    sim.add_cloudlayer_job(id="big", pending_s=0, size=1024 * 1024 * 1024)
    # Renewals every 2 s; the claim loop writes nothing while the only job is leased.
    env = {**cli_env, "ASSET_WORKER_GRACE_S": "1", "ASSET_WORKER_LEASE_S": "6"}
    assert (await cli(env, "submit", "cloudlayer:big")).code == 0
    wal = tmp_path / "cli.db-wal"
    proc = await start(env, "run")
    try:
        await wait_for_part_file(tmp_path / "assets", 8 << 20)
        frozen = _run("chattr", "+i", str(wal))
        assert frozen.returncode == 0, frozen.stderr
        result = await collect(proc, "run", GIVE_UP_S)
    finally:
        await stop_on_failure(proc)
        _run("chattr", "-i", str(wal))
    assert_one_unusable_line(result, tmp_path / "cli.db", "hit an I/O error", "SQLITE_IOERR", "system log")
    first = next(e for e in events(result.out) if e["event"] == "store_unusable")
    assert first.get("job") == "cloudlayer:big", first  # not a claim of the job after its lease expired
    assert only_resume_parts(tmp_path / "assets")


# -- waited out ----------------------------------------------------------------------------

# The real command with SQLite's busy timeout cut from 10 s to 0.2 s, so that a lock outlasts it
# within a test of a few seconds.
SHORT_BUSY_TIMEOUT = (
    "import sys\n"
    "import worker.store.sqlite_conn\n"
    "from worker.cli import main\n"
    "worker.store.sqlite_conn.BUSY_TIMEOUT_S = 0.2\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


async def test_a_lock_held_past_the_busy_timeout_is_waited_out(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Another process holds the store's write lock (BEGIN EXCLUSIVE) for longer than SQLite waits:
    run --until-idle reports the store locked, tries again, and finishes the job once it is free."""
    sim.add_cloudlayer_job(id="locked", pending_s=0)
    assert (await cli(cli_env, "submit", "cloudlayer:locked")).code == 0
    holder = sqlite3.connect(tmp_path / "cli.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SHORT_BUSY_TIMEOUT,
            "run",
            "--until-idle",
            env=cli_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        waited = await read_until_event(proc, "store_unavailable")
        await asyncio.sleep(1.0)  # a few more busy timeouts and retries
    finally:
        holder.execute("COMMIT")
        holder.close()
    result = await collect(proc, "run --until-idle", 60, out_so_far=waited)
    assert result.code == 0, result.err
    waits = [e for e in events(result.out) if e["event"] == "store_unavailable"]
    assert waits and all("SQLITE_BUSY" in e["error"] for e in waits)
    assert [s["state"] for s in await status_json(cli_env)] == ["done"]


@pytest.fixture
def store_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of the store's own (tmpfs), so that filling it fills nothing else."""
    with small_disk(tmp_path / "small", 4 << 20) as disk:
        yield disk


async def test_a_full_disk_under_the_store_is_waited_out(
    sim: Simulator, cli_env: dict[str, str], store_disk: Path
) -> None:
    """The store's disk is full: submit says the store is unavailable (not unusable), and run
    --until-idle waits, then finishes the job once space is freed."""
    db = store_disk / "store.db"
    env = {**cli_env, "ASSET_WORKER_STORE": f"sqlite:///{db}"}
    sim.add_cloudlayer_job(id="full", pending_s=0)
    assert (await cli(env, "submit", "cloudlayer:full")).code == 0
    filler = fill(store_disk, leave_bytes=0)
    refused = await finish(env, "submit", "cloudlayer:later")
    assert refused.code == 1
    (line,) = refused.err.splitlines()
    assert line.startswith(f"asset-worker: store_unavailable: the SQLite store {db} "), line
    assert "the disk holding it is full" in line
    proc = await start(env, "run", "--until-idle")
    waited = await read_until_event(proc, "store_unavailable")
    assert "the disk holding it is full" in json.loads(waited.splitlines()[-1])["error"]
    filler.unlink()
    result = await collect(proc, "run --until-idle", 60, out_so_far=waited)
    assert result.code == 0, result.err
    assert [s["state"] for s in await status_json(env)] == ["done"]
