"""systemd notifications on a unix datagram socket this test owns: the protocol's datagrams, the
settings systemd passes, and ``asset-worker run`` as a ``Type=notify`` service would see it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_support import cli_environment
from tests.http_support import listening_port, probe
from worker.config import from_env
from worker.errors import ConfigError
from worker.sdnotify import Notifier
from worker.simulator.app import Simulator


@pytest.fixture
def cli_env(tmp_path: Path, sim: Simulator) -> dict[str, str]:
    return cli_environment(tmp_path, sim)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """(NOTIFY_SOCKET value, the bound receiving socket) for a filesystem and an abstract socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = str(tmp_path / "notify.sock")
        sock.bind(name)
    else:
        name = f"@asset-worker-test-{secrets.token_hex(6)}"
        sock.bind("\0" + name[1:])
    sock.setblocking(False)
    with sock:
        yield name, sock


def test_messages_arrive_as_one_datagram(notify_socket: tuple[str, socket.socket]) -> None:
    name, sock = notify_socket
    notifier = Notifier(name)
    assert notifier.enabled
    assert notifier.notify("READY=1", "STATUS=working")
    assert sock.recv(4096) == b"READY=1\nSTATUS=working"


def test_without_a_usable_socket_nothing_is_sent_and_nothing_raised(tmp_path: Path) -> None:
    assert not Notifier(None).enabled and not Notifier(None).notify("READY=1")
    unsupported = Notifier("vsock:2:1234")
    assert not unsupported.enabled and not unsupported.notify("READY=1")
    gone = Notifier(str(tmp_path / "no-such.sock"))
    assert gone.enabled and not gone.notify("READY=1")  # logged once, never fatal


def test_settings_read_what_systemd_passes() -> None:
    env = {"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "30000000"}
    assert from_env(env).systemd.notify_socket == "@sd"
    assert from_env(env).systemd.watchdog_s == 30.0
    assert from_env({**env, "WATCHDOG_PID": str(os.getpid())}).systemd.watchdog_s == 30.0
    # A watchdog meant for another process (WATCHDOG_PID) is not ours to feed.
    assert from_env({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).systemd.watchdog_s is None
    assert from_env({}).systemd.notify_socket is None and from_env({}).systemd.watchdog_s is None
    with pytest.raises(ConfigError, match="WATCHDOG_USEC"):
        from_env({"WATCHDOG_USEC": "soon"})


async def _next_message(sock: socket.socket, timeout_s: float = 20) -> set[str]:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout_s)
    return set(data.decode().splitlines())


async def test_run_notifies_ready_watchdog_and_stopping(
    notify_socket: tuple[str, socket.socket],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """READY=1 once HTTP listens, WATCHDOG=1 pings at half the period, STOPPING=1 on SIGTERM."""
    name, sock = notify_socket
    log_path = tmp_path / "run.log"
    env = {**cli_env, "NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000", "ASSET_WORKER_LISTEN": "127.0.0.1:0"}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.cli", "run", env=env, stdout=log, stderr=log
        )
    try:
        first = await _next_message(sock)
        assert "READY=1" in first
        # The listener was up before READY=1 was sent: READY names the port it got (port 0 is only
        # resolved by binding).
        port = await listening_port(log_path)
        assert f"STATUS=working the queue, HTTP on 127.0.0.1:{port}" in first
        assert await asyncio.to_thread(probe, f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
        pings = 0
        while pings < 3:
            message = await _next_message(sock)
            assert "STOPPING=1" not in message
            pings += "WATCHDOG=1" in message
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in await _next_message(sock):
            pass
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
