"""The ``asset-worker`` command as users run it: real processes, real signals, the simulator on loopback."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_support import cli, cli_environment, files_under, start, status_json, wait_for_part_file
from worker import cli as worker_cli
from worker.models import JobKey
from worker.simulator.app import Simulator
from worker.simulator.content import content_sha256
from worker.statusview import job_to_json
from worker.store import open_store


@pytest.fixture
def cli_env(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    return cli_environment(tmp_path, sim)


async def test_submit_run_status_round_trip(sim: Simulator, cli_env: dict[str, str], tmp_path: Path) -> None:
    """submit prints keys, a duplicate creates no second job, run --until-idle stores everything."""
    jobs = [sim.add_cloudlayer_job(id=f"cli-{i}", pending_s=0.1, size=100_000 + i) for i in range(3)]
    first = await cli(cli_env, "submit", "cloudlayer:cli-0", "cloudlayer:cli-1")
    assert first.code == 0, first.err
    assert first.out.split() == ["cloudlayer:cli-0", "cloudlayer:cli-1"]
    again = await cli(cli_env, "submit", "cloudlayer:cli-1", "cloudlayer:cli-2")
    assert again.out.split() == ["cloudlayer:cli-1", "cloudlayer:cli-2"]
    run = await cli(cli_env, "run", "--until-idle")
    assert run.code == 0, run.err
    # stdout is not a terminal here: every log line is one JSON object.
    events = [json.loads(line) for line in run.out.splitlines()]
    assert sum(e["event"] == "job_finished" for e in events) == 3
    assert all("timestamp" in e and e["timestamp"].endswith("Z") for e in events)
    assert sim.api_key not in run.out
    statuses = await status_json(cli_env)
    assert [s["key"] for s in statuses] == ["cloudlayer:cli-0", "cloudlayer:cli-1", "cloudlayer:cli-2"]
    for status, job in zip(statuses, jobs, strict=True):
        assert status["state"] == "done"
        (asset,) = status["assets"]
        assert asset["sha256"] == content_sha256(job.seed, job.size)
    table = await cli(cli_env, "status", "cloudlayer:cli-2")
    assert "cloudlayer:cli-2" in table.out and "done" in table.out and "cli-0" not in table.out


async def test_force_requeues_a_finished_job(sim: Simulator, cli_env: dict[str, str]) -> None:
    """submit --force runs a finished job again; without it the job stays finished."""
    sim.add_cloudlayer_job(id="again", pending_s=0)
    await cli(cli_env, "submit", "cloudlayer:again")
    await cli(cli_env, "run", "--until-idle")
    await cli(cli_env, "submit", "cloudlayer:again")
    assert (await status_json(cli_env))[0]["state"] == "done"
    forced = await cli(cli_env, "submit", "--force", "cloudlayer:again")
    assert forced.code == 0 and forced.out.strip() == "cloudlayer:again"
    assert (await status_json(cli_env))[0]["state"] == "queued"
    await cli(cli_env, "run", "--until-idle")
    assert (await status_json(cli_env))[0]["state"] == "done"
    assert len([r for r in sim.requests("files") if r.status == 200]) == 2


@pytest.mark.parametrize(
    ("args", "env_extra", "fragment"),
    [
        (["submit", "nokey"], {}, "<provider>:<upstream id>"),
        (["submit", "cloudlayer:ok", "ftp:x"], {}, "unknown provider"),
        # Each provider checks its own ids at submit: this one could never be polled.
        (["submit", "cloudlayer:ok", "layers:foo"], {}, "neither a generation job"),
        # A near miss is named with the variable meant, not a list of every variable.
        (
            ["status"],
            {"ASSET_WORKER_CONCURENCY": "2"},
            "ASSET_WORKER_CONCURENCY (did you mean ASSET_WORKER_CONCURRENCY?)",
        ),
        (["run"], {"ASSET_WORKER_POLL_INITIAL_S": "soon"}, "POLL_INITIAL_S='soon': must be a number"),
        (["status"], {"ASSET_WORKER_CONCURRENCY": "abc"}, "CONCURRENCY='abc': must be a whole number"),
        # A value given as a flag is named by its flag, wherever the flag stands.
        (["--store", "mysql://x", "status"], {}, "--store 'mysql://x': unsupported store"),
        (["status", "--store", "mysql://x"], {}, "--store 'mysql://x': unsupported store"),
        (["run", "--dest", "ftp://x/y"], {}, "unsupported scheme 'ftp'"),
        # The job API would be open to the network: refused before anything starts.
        (["run"], {"ASSET_WORKER_LISTEN": "0.0.0.0:0"}, "ASSET_WORKER_API_TOKEN"),
        (["frobnicate"], {}, "invalid choice"),
    ],
)
async def test_usage_and_config_errors_exit_2(
    cli_env: dict[str, str], args: list[str], env_extra: dict[str, str], fragment: str
) -> None:
    """Bad keys, unknown or malformed settings and unknown commands exit 2 with a clear message."""
    result = await cli({**cli_env, **env_extra}, *args)
    assert result.code == 2
    assert fragment in result.err
    assert "Traceback" not in result.err
    # One line of ours (argparse puts its usage before its own).
    assert len([line for line in result.err.splitlines() if line.startswith("asset-worker")]) == 1, result.err
    # Nothing was written for a rejected submit, not even the valid key before the bad one.
    assert (await status_json(cli_env)) == []


async def test_submit_reads_keys_from_a_file_or_standard_input(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """--from-file takes one key a line (blank lines and # comments skipped), '-' reads standard
    input; every key, on the command line and in the file, is checked before any is written."""
    listing = tmp_path / "keys.txt"
    listing.write_text("# tonight's renders\ncloudlayer:f1\n\n  cloudlayer:f2  \n")
    result = await cli(cli_env, "submit", "cloudlayer:f0", "--from-file", str(listing))
    assert result.code == 0, result.err
    assert result.out.split() == ["cloudlayer:f0", "cloudlayer:f1", "cloudlayer:f2"]
    piped = await cli(cli_env, "submit", "--from-file", "-", stdin=b"cloudlayer:f3\ncloudlayer:f1\n")
    assert piped.code == 0 and piped.out.split() == ["cloudlayer:f3", "cloudlayer:f1"]
    listing.write_text("cloudlayer:f4\nlayers:foo\n")
    refused = await cli(cli_env, "submit", "--from-file", str(listing))
    assert refused.code == 2 and "layers:foo" in refused.err
    missing = await cli(cli_env, "submit", "--from-file", str(tmp_path / "nope.txt"))
    assert missing.code == 2 and "--from-file" in missing.err
    assert sorted(j["key"] for j in await status_json(cli_env)) == [f"cloudlayer:f{i}" for i in range(4)]


async def test_status_of_unknown_key_exits_1(cli_env: dict[str, str]) -> None:
    """Asking for a job that does not exist is a failure the caller can see."""
    result = await cli(cli_env, "status", "cloudlayer:missing")
    assert result.code == 1
    assert "unknown job cloudlayer:missing" in result.err


async def test_killed_worker_is_recovered_by_the_next(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL mid-download: the next worker waits out the lease, removes the orphaned temp file and
    stores a verified copy."""
    job = sim.add_cloudlayer_job(id="killed", pending_s=0, size=64 * 1024 * 1024)
    # Half the file, then nothing for longer than the test: the worker is killed mid-download
    # however fast the machine; the next one gets the whole file.
    sim.add_fault(route="files", kind="stall_body", delay_s=120.0, count=1)
    env = {**cli_env, "ASSET_WORKER_LEASE_S": "1"}
    await cli(env, "submit", "cloudlayer:killed")
    proc = await start(env, "run")
    part = await wait_for_part_file(tmp_path / "assets", 8 << 20)
    proc.kill()
    await proc.wait()
    assert part.exists()  # the dead worker could not clean up after itself
    final = tmp_path / "assets/cloudlayer/killed" / f"{job.asset_id}.pdf"
    assert not final.exists()
    rerun = await cli(env, "run", "--until-idle", timeout_s=120)
    assert rerun.code == 0, rerun.err
    assert files_under(tmp_path / "assets") == [final]
    digest = hashlib.sha256()
    with final.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == content_sha256(job.seed, job.size)
    (status,) = await status_json(env)
    assert status["state"] == "done" and status["attempts"] == 2


@pytest.mark.parametrize("jobs", [0, 1, 5])
async def test_status_json_of_every_job_is_written_page_by_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], jobs: int
) -> None:
    """With no key, status --json reads the store a page at a time (memory flat in the number of
    jobs) and writes exactly the text of the whole array at once."""
    store = await open_store(f"sqlite:///{tmp_path / 'paged.db'}")
    try:
        await store.submit_many([JobKey("cloudlayer", f"p{i}") for i in range(jobs)], now=1.0)
        monkeypatch.setattr(worker_cli, "STATUS_PAGE", 2)
        await worker_cli._print_all_as_json(store)
        everything = await store.list_jobs()
    finally:
        await store.close()
    assert capsys.readouterr().out == json.dumps([job_to_json(j) for j in everything], indent=2) + "\n"


def test_commands_that_do_not_run_the_worker_do_not_load_its_machinery() -> None:
    """`--help`, `status` and `submit` start fast: the CLI and settings load no HTTP library, S3 client,
    PostgreSQL driver or metrics; `run` loads them when it starts the worker."""
    heavy = ("aiohttp", "aiobotocore", "asyncpg", "prometheus_client")
    probe = (
        "import sys, worker.cli as c; c.build_parser(); c.from_env({}); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_completion_and_verify_on_disk_do_not_load_the_worker_machinery(tmp_path: Path) -> None:
    """`completion` prints its script without reading settings; `verify` of files on disk loads no
    HTTP library or S3 client (only an s3:// receipt opens the S3 client)."""
    heavy = ("aiohttp", "aiobotocore", "asyncpg", "prometheus_client")
    store = f"sqlite:///{tmp_path / 'v.db'}"
    probe = (
        "import contextlib, io, sys, worker.cli as c\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    codes = [c.main(['completion', 'bash']), c.main(['verify', '--store', sys.argv[1]])]\n"
        f"print(codes, sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    env = {"PATH": "/usr/bin:/bin", "ASSET_WORKER_CONCURRENCY": "abc"}  # a bad setting: completion ignores it
    result = subprocess.run([sys.executable, "-c", probe, store], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "[0, 2] []", result.stderr
    result = subprocess.run(
        [sys.executable, "-c", probe, store], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert result.stdout.strip() == "[0, 0] []", result.stderr


async def test_common_options_stand_before_or_after_the_command_and_version_prints(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """--store, --dest, --log-level and --log-format work on either side of the command name; the
    one after it wins. --version prints the installed version."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert (await cli(cli_env, "submit", "cloudlayer:v1", "--store", other)).code == 0
    after = await cli(cli_env, "status", "--json", "--store", other)
    before = await cli(cli_env, "--store", other, "status", "--json")
    both = await cli(cli_env, "--store", "mysql://nowhere", "status", "--json", "--store", other)
    assert [j["key"] for j in json.loads(after.out)] == ["cloudlayer:v1"]
    assert before.out == after.out == both.out
    assert (await status_json(cli_env)) == []  # the default store was not touched
    logged = await cli(cli_env, "submit", "cloudlayer:v2", "--log-format", "json", "--log-level", "info")
    summary = json.loads(logged.err.splitlines()[-1])
    assert logged.code == 0 and summary["event"] == "jobs_submitted"
    assert (summary["keys"], summary["created"], summary["existing"]) == (1, 1, 0)
    detailed = await cli(cli_env, "submit", "cloudlayer:v2", "--log-format", "json", "--log-level", "debug")
    events = [json.loads(line) for line in detailed.err.splitlines()]
    last = [(e["event"], e.get("created")) for e in events[-2:]]
    assert last == [("job_submitted", False), ("jobs_submitted", 0)]
    shown = await cli(cli_env, "--version")
    installed = importlib.metadata.version("asset-worker")
    assert shown.code == 0 and shown.out.strip() == f"asset-worker {installed}"


async def test_a_run_with_failed_jobs_can_say_so_and_a_finished_job_resubmitted_is_named(
    sim: Simulator, cli_env: dict[str, str]
) -> None:
    """run --until-idle exits 0 whatever the jobs' fates; with --fail-on-failed it exits 1 when one
    of the jobs it finished failed. Submitting a finished job again prints its key, queues nothing
    and says how to queue it again."""
    sim.add_cloudlayer_job(id="ok-1", pending_s=0)
    sim.add_cloudlayer_job(id="bad-1", pending_s=0, outcome="error", error_message="render failed")
    assert (await cli(cli_env, "submit", "cloudlayer:ok-1", "cloudlayer:bad-1")).code == 0
    strict = await cli(cli_env, "run", "--until-idle", "--no-http", "--fail-on-failed")
    assert strict.code == 1 and "1 job(s) failed in this run" in strict.err
    again = await cli(cli_env, "submit", "cloudlayer:bad-1")
    assert again.code == 0 and again.out.split() == ["cloudlayer:bad-1"]
    assert "cloudlayer:bad-1 is already failed; submit --force queues it again" in again.err
    # Nothing left to do, nothing failed in this run: exit 0 even with the flag.
    assert (await cli(cli_env, "run", "--until-idle", "--no-http", "--fail-on-failed")).code == 0
    assert {j["key"]: j["state"] for j in await status_json(cli_env)} == {
        "cloudlayer:ok-1": "done",
        "cloudlayer:bad-1": "failed",
    }


async def test_a_port_in_use_or_a_demo_of_no_jobs_is_one_line(cli_env: dict[str, str]) -> None:
    """The machine refusing (a port in use) is one line and exit 1; a demo of no jobs is refused."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = str(taken.getsockname()[1])
        busy = await cli(cli_env, "simulate", "--port", port, "--layers-port", "0")
    finally:
        taken.close()
    assert busy.code == 1 and "Traceback" not in busy.err
    assert busy.err.count("\n") == 1 and "address already in use" in busy.err.lower()
    empty = await cli(cli_env, "demo", "--jobs", "0")
    assert empty.code == 2 and "must be at least 1" in empty.err and "Traceback" not in empty.err


async def test_status_filters_by_state_limits_and_sums_up_without_creating_a_store(
    sim: Simulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """status never creates a store (it says there is none yet); --state and --limit choose the
    jobs shown, and the table ends with a count by state."""
    nowhere = {**cli_env, "ASSET_WORKER_STORE": f"sqlite:///{tmp_path / 'none' / 'store.db'}"}
    looked = await cli(nowhere, "status")
    assert looked.code == 0 and "no jobs: there is no store at" in looked.out
    assert (await cli(nowhere, "status", "--json")).out.strip() == "[]"
    assert (await cli(nowhere, "status", "cloudlayer:x")).code == 1
    assert not (tmp_path / "none").exists()
    sim.add_cloudlayer_job(id="s-ok", pending_s=0)
    sim.add_cloudlayer_job(id="s-bad", pending_s=0, outcome="error", error_message="render failed")
    await cli(cli_env, "submit", "cloudlayer:s-ok", "cloudlayer:s-bad")
    await cli(cli_env, "run", "--until-idle", "--no-http")
    await cli(cli_env, "submit", "cloudlayer:s-new")
    table = await cli(cli_env, "status")
    assert table.out.rstrip().splitlines()[-1] == "3 jobs: 1 queued, 1 done, 1 failed"
    failed = await cli(cli_env, "status", "--state", "failed", "--json")
    assert [j["key"] for j in json.loads(failed.out)] == ["cloudlayer:s-bad"]
    two = await cli(cli_env, "status", "--state", "done", "--state", "queued", "--limit", "1")
    assert two.out.rstrip().splitlines()[-1] == "1 job: 1 done"
    none = await cli(cli_env, "status", "--state", "canceled")
    assert none.code == 0 and "no canceled jobs in" in none.out


async def test_status_since_shows_jobs_submitted_after_a_moment_or_an_age(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """--since takes an age or a UTC time; jobs submitted before it are left out, of the table and
    the JSON alike; a value that is neither is a one-line usage error."""
    await cli(cli_env, "submit", "cloudlayer:old")
    with sqlite3.connect(tmp_path / "cli.db") as db:  # submitted two days ago
        db.execute("UPDATE jobs SET submitted_at = submitted_at - 172800 WHERE key = 'cloudlayer:old'")
    await cli(cli_env, "submit", "cloudlayer:new")
    recent = await cli(cli_env, "status", "--since", "1d")
    assert recent.out.rstrip().splitlines()[-1] == "1 job: 1 queued" and "cloudlayer:new" in recent.out
    assert [j["key"] for j in json.loads((await cli(cli_env, "status", "--json", "--since", "36h")).out)] == [
        "cloudlayer:new"
    ]
    both = await cli(cli_env, "status", "--json", "--since", "2000-01-01T00:00:00Z")
    assert [j["key"] for j in json.loads(both.out)] == ["cloudlayer:old", "cloudlayer:new"]
    named = await cli(cli_env, "status", "--since", "1h", "cloudlayer:old", "cloudlayer:new")
    assert named.code == 0 and "cloudlayer:old" not in named.out and "cloudlayer:new" in named.out
    future = await cli(cli_env, "status", "--since", "2999-01-01T00:00:00")
    assert future.code == 0 and "no jobs submitted since 2999-01-01T00:00:00.000Z in" in future.out
    bad = await cli(cli_env, "status", "--since", "yesterday")
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1
    assert "'yesterday' is neither an age" in bad.err


async def test_cancel_and_retry_from_the_command_line(sim: Simulator, cli_env: dict[str, str]) -> None:
    """cancel ends unfinished jobs (exit 1 naming a done or unknown one); retry queues finished jobs
    again (one by one, or every failed one), leaving jobs in progress alone."""
    sim.add_cloudlayer_job(id="c-bad", pending_s=0, outcome="error", error_message="render failed")
    sim.add_cloudlayer_job(id="c-ok", pending_s=0)
    await cli(cli_env, "submit", "cloudlayer:c-bad", "cloudlayer:c-ok")
    await cli(cli_env, "run", "--until-idle", "--no-http")
    await cli(cli_env, "submit", "cloudlayer:c-later")
    canceled = await cli(cli_env, "cancel", "cloudlayer:c-later", "cloudlayer:c-ok", "cloudlayer:c-none")
    assert canceled.code == 1 and canceled.out.split("\n")[0] == "cloudlayer:c-later canceled"
    assert "cloudlayer:c-ok is already done; nothing to cancel" in canceled.err
    assert "unknown job cloudlayer:c-none" in canceled.err
    failed = await cli(cli_env, "retry", "--failed")
    assert failed.code == 0 and failed.out.strip() == "cloudlayer:c-bad queued again"
    one = await cli(cli_env, "retry", "cloudlayer:c-later")
    assert one.code == 0 and one.out.strip() == "cloudlayer:c-later queued again"
    busy = await cli(cli_env, "retry", "cloudlayer:c-bad")  # queued again just now: in progress
    assert busy.code == 1 and "cloudlayer:c-bad is queued; only a finished job can be retried" in busy.err
    assert (await cli(cli_env, "retry")).code == 2
    assert {j["key"]: j["state"] for j in await status_json(cli_env)} == {
        "cloudlayer:c-bad": "queued",
        "cloudlayer:c-ok": "done",
        "cloudlayer:c-later": "queued",
    }


async def test_submit_dest_gives_jobs_their_own_place_inside_the_workers(
    sim: Simulator, cli_env: dict[str, str]
) -> None:
    """submit --dest places these jobs' files in a directory inside ASSET_WORKER_DEST (as the API's
    dest); one outside it is refused before anything is written; an unwritable demo directory is one
    line."""
    root = Path(cli_env["ASSET_WORKER_DEST"].removeprefix("file://"))
    sim.add_cloudlayer_job(id="d-1", pending_s=0, size=5_000)
    outside = await cli(cli_env, "submit", "cloudlayer:d-1", "--dest", "/etc/elsewhere")
    assert outside.code == 2 and outside.err.startswith("asset-worker: --dest: ")
    assert (await status_json(cli_env)) == []
    inside = await cli(cli_env, "submit", "--dest", str(root / "tenant-a"), "cloudlayer:d-1")
    assert inside.code == 0, inside.err
    assert (await cli(cli_env, "run", "--until-idle", "--no-http")).code == 0
    (job,) = await status_json(cli_env)
    assert job["assets"][0]["uri"].startswith((root / "tenant-a" / "cloudlayer" / "d-1").as_uri())
    demo = await cli(cli_env, "demo", "--dir", "/proc/asset-worker-demo")
    assert demo.code == 1 and demo.err.count("\n") == 1 and "Traceback" not in demo.err


async def test_submit_wait_exits_by_how_the_jobs_ended(sim: Simulator, cli_env: dict[str, str]) -> None:
    """submit --wait returns when a worker (another process) has finished the jobs: 0 when all are
    done, 1 when one failed, with a line of counts on standard error as they change."""
    sim.add_cloudlayer_job(id="w-1", pending_s=0.3)
    sim.add_cloudlayer_job(id="w-2", pending_s=0, outcome="error", error_message="render failed")
    worker = await start(cli_env, "run", "--no-http")
    try:
        good = await cli(cli_env, "submit", "cloudlayer:w-1", "--wait", timeout_s=30)
        assert good.code == 0, good.err
        assert good.err.strip().splitlines()[-1] == "asset-worker: 1 job: 1 done"
        bad = await cli(cli_env, "submit", "cloudlayer:w-1", "cloudlayer:w-2", "--wait", timeout_s=30)
        assert bad.code == 1 and "1 done, 1 failed" in bad.err.strip().splitlines()[-1]
    finally:
        worker.terminate()
        await worker.communicate()
