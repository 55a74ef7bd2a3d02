"""A real PostgreSQL for tests: a private, throwaway cluster on a loopback port.

Found in this order:

1. ``TEST_ASSET_WORKER_POSTGRES_URL``: a server someone else runs (a database is created per test
   through it; the outage test still needs binaries for a private server of its own);
2. the PostgreSQL server binaries of this machine (Debian's ``postgresql`` package puts them in
   ``/usr/lib/postgresql/<version>/bin``), installing that package first when they are missing and
   this is a root shell with ``apt-get`` (CI machines start clean);
3. the machine's own server on 127.0.0.1:5432, as ``postgres`` (``PGPASSWORD`` if it needs one).

A private cluster runs with ``fsync=off``: its data is thrown away with it, and tests are about
transactions, locks and server crashes, not the durability of the disk under an OS crash
(``synchronous_commit`` stays on, so a committed transaction survives a killed server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from tests.debian import apt_install

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0
_SERVER_USER = "postgres"  # initdb and postgres refuse to run as root


@dataclass
class PgServer:
    """One PostgreSQL server; ``start``/``stop`` only for a private cluster (``data_dir`` set)."""

    host: str
    port: int
    user: str = "postgres"
    password: str | None = None
    data_dir: Path | None = None
    bin_dir: Path | None = None
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, database: str = "postgres") -> str:
        secret = f":{self.password}" if self.password else ""
        return f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        asyncio.run(execute(self.url(), f'CREATE DATABASE "{name}"'))
        return self.url(name)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.data_dir is None or self.bin_dir is None or self.log_path is None:
            raise RuntimeError("only a private cluster can be started")
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    f"listen_addresses={self.host}",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=_run_as(),
                start_new_session=True,  # a Ctrl-C of the test run is not the server's
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start; see {self.log_path}:\n{self._log_tail()}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start in {_START_TIMEOUT_S} s; see {self.log_path}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        # pg_isready, not a client connection: start() is also called from inside running event loops.
        assert self.bin_dir is not None
        probe = [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "1"]
        return subprocess.run(probe, check=False).returncode == 0

    def stop(self, *, immediate: bool = False) -> None:
        """Fast shutdown (SIGINT: sessions are terminated, then a checkpoint), or an immediate one
        (SIGQUIT: no checkpoint, like a crash)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-2000:]


@contextlib.contextmanager
def run_postgres() -> Iterator[PgServer]:
    """The test session's PostgreSQL (see the module docstring for where it comes from)."""
    external = os.environ.get("TEST_ASSET_WORKER_POSTGRES_URL")
    if external:
        yield _external(external)
        return
    bin_dir = server_binaries()
    if bin_dir is None:
        machine = PgServer(host="127.0.0.1", port=5432, password=os.environ.get("PGPASSWORD"))
        if asyncio.run(_accepts(machine.url())):
            yield machine
            return
        raise RuntimeError(
            "no PostgreSQL for the tests: no server binaries (install Debian's postgresql package), "
            "nothing usable on 127.0.0.1:5432, and TEST_ASSET_WORKER_POSTGRES_URL is not set"
        )
    with private_cluster(bin_dir) as server:
        yield server


@contextlib.contextmanager
def private_cluster(bin_dir: Path | None = None) -> Iterator[PgServer]:
    """A new cluster (initdb) on a free loopback port, started; stopped and deleted on exit."""
    bin_dir = bin_dir or server_binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (install Debian's postgresql package)")
    # Not under pytest's tmp_path: those directories are private to root, and the server runs as
    # the postgres user when the tests run as root.
    root = Path(tempfile.mkdtemp(prefix="asset-worker-pg-"))
    root.chmod(0o755)
    data_dir = root / "data"
    data_dir.mkdir(mode=0o700)
    log_path = root / "postgres.log"
    log_path.touch()
    user = _run_as()
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (root, data_dir, log_path):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            user=user,
        )
        server = PgServer(
            host="127.0.0.1", port=_free_port(), data_dir=data_dir, bin_dir=bin_dir, log_path=log_path
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def server_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, installing Debian's server if needed."""
    found = _find_binaries()
    if found is None and apt_install("postgresql"):
        found = _find_binaries()
    return found


def _find_binaries() -> Path | None:
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], check=True, capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    # Newest version first.
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    return None


def _run_as() -> str | None:
    return _SERVER_USER if os.geteuid() == 0 else None


def _external(url: str) -> PgServer:
    split = urlsplit(url)
    return PgServer(
        host=split.hostname or "127.0.0.1",
        port=split.port or 5432,
        user=split.username or "postgres",
        password=split.password,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _accepts(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    await conn.close()
    return True


async def execute(url: str, *statements: str) -> None:
    """Run ``statements`` in order on one connection to ``url`` (as whoever the URL names)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()
