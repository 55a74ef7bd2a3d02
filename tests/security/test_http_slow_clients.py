"""Clients that hold connections open without finishing a request (slowloris): the header timeout
closes them, the connection cap bounds them, the body timeout bounds a trickled body, and /healthz
keeps answering throughout (or, past the cap, again as soon as the stalled ones are dropped).

A real worker serves on loopback with short timeouts; the hostile clients are raw sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from tests.conftest import SettingsFactory
from tests.http_support import TOKEN
from worker.app import http_service, open_worker
from worker.http.server import serve

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@asynccontextmanager
async def guarded(
    make_settings: SettingsFactory,
    *,
    header_timeout_s: float,
    max_connections: int = 512,
    body_timeout_s: float = 30.0,
) -> AsyncIterator[tuple[str, int]]:
    """A worker's HTTP service on 127.0.0.1 with these limits; yields its address."""
    async with open_worker(make_settings()) as worker:
        service = http_service(worker, draining=lambda: False)
        service = dataclasses.replace(service, body_timeout_s=body_timeout_s)
        async with serve(
            service,
            host="127.0.0.1",
            port=0,
            api_token=TOKEN,
            header_timeout_s=header_timeout_s,
            max_connections=max_connections,
        ) as bound:
            yield bound


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, object]:
    """One HTTP answer (status, JSON body) read off a keep-alive connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(v) for k, _, v in (line.partition(":") for line in lines) if k.lower() == "content-length"
    )
    return int(lines[0].split()[1]), json.loads(await reader.readexactly(length))


async def healthz(host: str, port: int) -> int | None:
    """/healthz on a new connection: its status, or None when the server closed it unanswered."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(HEALTHZ)
        status, _ = await asyncio.wait_for(read_answer(reader), 5)
        return status
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """What the server still sent before closing; a TimeoutError (a failed test) if it never does."""
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    except ConnectionResetError:
        return b""


async def trickle(writer: asyncio.StreamWriter, byte: bytes = b"a", every_s: float = 0.1) -> None:
    """Send one byte every ``every_s`` until the connection breaks: data that must not count as
    progress."""
    try:
        while not writer.is_closing():
            writer.write(byte)
            await writer.drain()
            await asyncio.sleep(every_s)
    except (ConnectionError, OSError):
        return


@dataclass
class Clients:
    """Raw connections and the tasks feeding them, all closed or canceled when the test ends."""

    connections: list[Connection] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def open(self, host: str, port: int, first: bytes) -> Connection:
        connection = await asyncio.open_connection(host, port)
        self.connections.append(connection)
        connection[1].write(first)
        return connection


@asynccontextmanager
async def clients() -> AsyncIterator[Clients]:
    """Clients that never outlive the test, even a failed one (a socket left to the garbage
    collector is a ResourceWarning in whichever test runs next)."""
    held = Clients()
    try:
        yield held
    finally:
        for task in held.tasks:
            task.cancel()
        await asyncio.gather(*held.tasks, return_exceptions=True)
        for _, writer in held.connections:
            writer.close()


async def test_a_slow_header_flood_neither_blocks_healthz_nor_stays_open(
    make_settings: SettingsFactory,
) -> None:
    """200 connections that send half a request head and stall (half of them trickling a byte every
    0.1 s) do not delay /healthz, and the server closes each, unanswered, after the header timeout."""
    timeout_s = 2.0
    loop = asyncio.get_running_loop()
    async with guarded(make_settings, header_timeout_s=timeout_s) as (host, port), clients() as flood:
        opened = []
        for _ in range(200):
            opened.append(loop.time())
            await flood.open(host, port, HALF_HEAD)
        flood.tasks += [asyncio.create_task(trickle(writer)) for _, writer in flood.connections[::2]]
        asked = loop.time()
        assert await healthz(host, port) == 200
        assert loop.time() - asked < timeout_s / 2
        assert not any(r.at_eof() for r, _ in flood.connections), "answered while the flood was open"

        async def closed_at(reader: asyncio.StreamReader) -> float:
            assert await closed_by_server(reader, timeout_s + 5) == b""
            return loop.time()

        closed = await asyncio.gather(*(closed_at(reader) for reader, _ in flood.connections))
        lived = [end - start for start, end in zip(opened, closed, strict=True)]
        # Not before the timeout (so it was the timeout), and trickling did not extend it.
        assert min(lived) >= timeout_s * 0.9 and max(lived) < timeout_s + 2.0, (min(lived), max(lived))


async def test_connections_past_the_cap_are_closed_at_once(make_settings: SettingsFactory) -> None:
    """With max_connections=5 held by stalled clients, a sixth connection is closed at once,
    unanswered (even for /healthz); /healthz answers again once the header timeout drops them."""
    timeout_s = 1.0
    loop = asyncio.get_running_loop()
    guard = guarded(make_settings, header_timeout_s=timeout_s, max_connections=5)
    async with guard as (host, port), clients() as stalled:
        for _ in range(5):
            reader, writer = await stalled.open(host, port, HEALTHZ)
            assert (await read_answer(reader))[0] == 200  # so the server counts this connection
            writer.write(HALF_HEAD)
        refused_at = loop.time()
        assert await healthz(host, port) is None
        assert loop.time() - refused_at < timeout_s / 2, "closed at once, not by the header timeout"
        assert not any(reader.at_eof() for reader, _ in stalled.connections)

        async with asyncio.timeout(timeout_s + 5):
            while True:
                if await healthz(host, port) == 200:
                    break
                await asyncio.sleep(0.05)
        # Each is dropped by its own timer: the first freed slot is enough for /healthz.
        for reader, _ in stalled.connections:
            assert await closed_by_server(reader, 5) == b""


async def test_a_trickled_body_is_answered_408_and_closed(make_settings: SettingsFactory) -> None:
    """A submit whose body trickles in is answered 408 request_timeout (JSON) once body_timeout_s
    has passed, and the server then closes the connection although bytes still arrive."""
    body_timeout_s = 0.5
    loop = asyncio.get_running_loop()
    guard = guarded(make_settings, header_timeout_s=0.5, body_timeout_s=body_timeout_s)
    async with guard as (host, port), clients() as slow:
        head = (
            "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n"
        )
        reader, writer = await slow.open(host, port, head.encode() + b'{"jobs": [')
        sent = loop.time()
        slow.tasks.append(asyncio.create_task(trickle(writer, b" ")))
        status, body = await asyncio.wait_for(read_answer(reader), body_timeout_s + 5)
        answered = loop.time() - sent
        assert (status, body) == (
            408,
            {"error": {"code": "request_timeout", "message": "the body did not arrive within 0.5 s"}},
        )
        assert body_timeout_s * 0.9 <= answered < body_timeout_s + 2.0, answered
        assert await closed_by_server(reader, 5) == b""
