"""What the benchmarks share: sizes, child processes, GNU time, the simulator, signals.

Standard library only, so a benchmark's parent process stays small: on Linux a direct child's
``ru_maxrss`` starts at its parent's RSS (see ``find_gnu_time``), and a lean parent keeps even that
fallback honest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

MIB: Final = 1 << 20
API_KEY: Final = "cl-sim-key"
_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class BenchError(Exception):
    """The benchmark itself could not run (simulator, control API, a server); not a contender's failure."""


def parse_bytes(text: str) -> int:
    """``256M`` -> 268435456: binary units K, M, G (``MiB``, ``MB`` read the same), or plain bytes."""
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


def terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so the finally blocks stop every child and remove temp dirs."""
    raise KeyboardInterrupt(f"signal {signum}")


# --- child processes ---------------------------------------------------------------------------------


class Children:
    """Every subprocess of this run, each in its own process group, stopped on exit.

    Own sessions keep a terminal's Ctrl-C away from the children: only the parent gets it and stops
    them, instead of each dying with its own traceback. Killing the group also reaches a pipeline
    (and whatever ``time`` runs), not only its first process.
    """

    def __init__(self) -> None:
        self._live: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def spawn(
        self,
        argv: list[str],
        *,
        stdout: int | IO[bytes] | None,
        stderr: int | IO[bytes] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
        with self._lock:
            self._live[proc.pid] = proc
        return proc

    def reap(self, proc: subprocess.Popen[bytes]) -> tuple[int, resource.struct_rusage]:
        """Wait for ``proc``; return its exit code and rusage (``wait4``, so nothing else reaps it)."""
        _, status, usage = os.wait4(proc.pid, 0)
        with self._lock:
            proc.returncode = os.waitstatus_to_exitcode(status)
            self._live.pop(proc.pid, None)
        return proc.returncode, usage

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        with self._lock:
            if proc.returncode is None:  # not reaped yet, so the group id is still ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)

    def output(
        self,
        argv: list[str],
        timeout_s: float,
        *,
        stderr: int | IO[bytes] | None = None,
        env: dict[str, str] | None = None,
        stdout: IO[bytes] | None = None,
    ) -> tuple[str, int, resource.struct_rusage]:
        """Run ``argv`` to the end under a watchdog; return (stdout, exit code, rusage).

        With ``stdout`` given, the output goes there instead and "" is returned: a command that prints
        a hundred thousand jobs must not grow this parent by as much.
        """
        proc = self.spawn(argv, stdout=subprocess.PIPE if stdout is None else stdout, stderr=stderr, env=env)
        watchdog = threading.Timer(timeout_s, self.kill, (proc,))
        watchdog.start()
        try:
            out = ""
            if proc.stdout is not None:
                with proc.stdout:
                    out = proc.stdout.read().decode(errors="replace")
            code, usage = self.reap(proc)
        finally:
            watchdog.cancel()
        return out, code, usage

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


def find_gnu_time(children: Children) -> str | None:
    """GNU time, if it works here: the one way to get a child's own peak RSS.

    ``wait4``'s ``ru_maxrss`` for a direct child includes the RSS of this parent at fork time (Linux
    carries the old address space's high-water mark across exec), so it overstates a 10 MiB curl as
    a 40+ MiB one. A child of the 1 MiB ``time`` process starts clean.
    """
    path = shutil.which("time")
    if path is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bench-time-", dir="/tmp") as workdir:
        usage_file = Path(workdir) / "usage"
        _, code, _ = children.output([path, "-f", "%M", "-o", str(usage_file), "true"], 10.0)
        ok = code == 0 and usage_file.exists() and usage_file.read_text().strip().isdigit()
    return path if ok else None


def live_usage(pid: int) -> tuple[float, float]:
    """A running process's CPU seconds so far (user + system, every thread) and its peak RSS in MiB
    (``VmHWM``: its own address space's, unlike ``wait4``'s figure), read from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3 of proc(5)
    ticks = int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15
    hwm_kib = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm_kib = float(line.split()[1])
    return ticks / os.sysconf("SC_CLK_TCK"), hwm_kib / 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Measured:
    """One child run to its end: what it printed, how it exited, and what it cost."""

    out: str
    code: int
    wall_s: float  # spawn to exit
    cpu_s: float  # user + system of the child and everything it waited for (wait4)
    peak_rss_mib: float  # GNU time's figure for the child alone; without it wait4's upper bound


def measure(
    children: Children,
    gnu_time: str | None,
    argv: list[str],
    timeout_s: float,
    *,
    stderr: int | IO[bytes] | None = None,
    env: dict[str, str] | None = None,
    stdout: IO[bytes] | None = None,
) -> Measured:
    """Run ``argv`` under GNU time (when there is one) and the watchdog; wall clock from spawn to exit.

    ``stdout``: where its output goes instead of ``Measured.out`` (see ``Children.output``)."""
    with tempfile.TemporaryDirectory(prefix="bench-time-", dir="/tmp") as workdir:
        usage_file = Path(workdir) / "usage"
        if gnu_time is not None:
            argv = [gnu_time, "-f", "%M", "-o", str(usage_file), *argv]
        start = time.perf_counter()
        out, code, usage = children.output(argv, timeout_s, stderr=stderr, env=env, stdout=stdout)
        wall = time.perf_counter() - start
        rss_kib = float(usage.ru_maxrss)
        if gnu_time is not None and usage_file.exists():
            # GNU time writes "Command exited with non-zero status N" above the figure.
            lines = usage_file.read_text().strip().splitlines()
            if lines and lines[-1].isdigit():
                rss_kib = float(lines[-1])
    return Measured(out, code, wall, usage.ru_utime + usage.ru_stime, rss_kib / 1024)


# --- the simulator -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Simulator:
    url: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - our own simulator's http URL on loopback
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - as above
            answer: dict[str, Any] = json.load(resp)
        return answer

    def asset(self, size: int) -> tuple[str, int]:
        """A finished job of ``size`` bytes hosted by the simulator: (download URL, content seed)."""
        spec = {"id": f"bench-{size}", "size": size, "pending_s": 0}
        job = self.call("POST", "/_sim/cloudlayer/jobs", spec)
        status = self.call("GET", f"/v2/jobs/{job['id']}")
        if "assetUrl" not in status:
            raise BenchError(f"simulator job {job['id']} has no assetUrl: {status}")
        return str(status["assetUrl"]), int(job["seed"])

    def external_job(self, job_id: str, asset_url: str, size: int) -> None:
        """A finished cloudlayer job whose asset lives at ``asset_url`` (another file host)."""
        self.call("POST", "/_sim/cloudlayer/jobs", _external_spec(job_id, asset_url, size))

    def external_jobs(self, jobs: Sequence[tuple[str, str, int]], connections: int = 4) -> None:
        """``external_job`` for every (id, asset URL, size), over a few kept-alive connections at once.

        One new connection per job costs about 1 ms; 100,000 jobs over four kept-alive connections take
        about 30 s here, most of it the simulator's own work.
        """
        share = -(-len(jobs) // connections)
        batches = [jobs[start : start + share] for start in range(0, len(jobs), share)]
        errors: list[BaseException] = []
        threads = [threading.Thread(target=self._post_all, args=(b, errors), daemon=True) for b in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise BenchError(f"creating simulator jobs failed: {errors[0]}")

    def _post_all(self, jobs: Sequence[tuple[str, str, int]], errors: list[BaseException]) -> None:
        split = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        try:
            for job_id, asset_url, size in jobs:
                body = json.dumps(_external_spec(job_id, asset_url, size))
                conn.request("POST", "/_sim/cloudlayer/jobs", body, headers)
                answer = conn.getresponse()
                said = answer.read()
                if answer.status != 201:
                    raise BenchError(f"simulator answered {answer.status} for job {job_id}: {said[:200]!r}")
        except (OSError, http.client.HTTPException, BenchError) as exc:
            errors.append(exc)
        finally:
            conn.close()


def _external_spec(job_id: str, asset_url: str, size: int) -> dict[str, Any]:
    """A finished job (``pending_s`` 0) whose one asset, named like the job, lives at ``asset_url``."""
    return {"id": job_id, "asset_id": job_id, "asset_url": asset_url, "size": size, "pending_s": 0}


def _drain(stream: IO[bytes]) -> None:
    while stream.read(1 << 16):
        pass


def start_simulator(children: Children) -> Simulator:
    proc = children.spawn([sys.executable, "-m", "worker.simulator", "--port", "0"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    watchdog = threading.Timer(30.0, children.kill, (proc,))
    watchdog.start()
    try:
        first = proc.stdout.readline().decode().strip()
    finally:
        watchdog.cancel()
    prefix = "simulator listening on "
    if not first.startswith(prefix):
        raise BenchError(f"simulator did not start (first line: {first!r})")
    # Keep reading its stdout: a full pipe would stall the simulator mid-benchmark.
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return Simulator(first.removeprefix(prefix))
