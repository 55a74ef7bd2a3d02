"""The suite's event loop finishes the connections it is closing, and only those."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.settling_loop import SettlingEventLoop


@pytest.fixture
def deaf_listener() -> Iterator[socket.socket]:
    """A loopback listener whose connections are accepted by the kernel and never read."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener


async def _connect(listener: socket.socket) -> asyncio.WriteTransport:
    host, port = listener.getsockname()[:2]
    transport, _protocol = await asyncio.get_running_loop().create_connection(asyncio.Protocol, host, port)
    assert isinstance(transport, asyncio.WriteTransport)
    return transport


def _fd(transport: asyncio.BaseTransport) -> int:
    return int(transport.get_extra_info("socket").fileno())


async def test_async_tests_run_on_the_settling_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), SettlingEventLoop)


def test_a_connection_closed_with_unsent_bytes_is_finished_when_the_loop_closes(
    deaf_listener: socket.socket,
) -> None:
    loop = SettlingEventLoop()

    async def cut_off() -> asyncio.WriteTransport:
        transport = await _connect(deaf_listener)
        transport.write(b"x" * (64 << 20))  # far more than the two sockets' buffers take
        transport.close()
        return transport

    try:
        transport = loop.run_until_complete(cut_off())
        # The situation itself: closing, bytes still queued, the socket still open.
        assert transport.is_closing()
        assert transport.get_write_buffer_size() > 0
        assert _fd(transport) != -1
    finally:
        loop.close()
    assert _fd(transport) == -1


def test_a_connection_nobody_closed_is_left_open_to_be_reported(deaf_listener: socket.socket) -> None:
    loop = SettlingEventLoop()
    try:
        transport = loop.run_until_complete(_connect(deaf_listener))
    finally:
        loop.close()
    assert not transport.is_closing()
    assert _fd(transport) != -1
    # Left to the garbage collector, which reports it (the transport and its socket).
    with pytest.warns(ResourceWarning, match="unclosed"):
        del transport
        gc.collect()


class _Watched(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def test_a_connection_that_finished_closing_is_left_alone() -> None:
    """A transport whose queued bytes drained and whose socket is closed may still be registered
    with the loop (until it is collected): closing the loop does not touch it again."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def read_all() -> None:
            conn, _ = listener.accept()
            with conn:
                while conn.recv(1 << 20):
                    pass

        reader = threading.Thread(target=read_all)
        reader.start()
        loop = SettlingEventLoop()

        async def send_and_close() -> asyncio.BaseTransport:
            host, port = listener.getsockname()[:2]
            transport, protocol = await asyncio.get_running_loop().create_connection(_Watched, host, port)
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(b"x" * (16 << 20))
            assert transport.get_write_buffer_size() > 0  # closed with bytes still queued
            transport.close()
            await protocol.lost
            return transport

        try:
            transport = loop.run_until_complete(asyncio.wait_for(send_and_close(), 20))
        finally:
            loop.close()
            reader.join(20)
    assert transport.is_closing() and _fd(transport) == -1
