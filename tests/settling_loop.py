"""The event loop every async test runs on: one that finishes the connections it is closing before
it closes itself.

A socket transport closed while its write buffer still holds bytes (a request body cut short by a
cancellation, a response its reader stopped taking) stays open until those bytes drain. A test's
loop that closes first drops such a transport with its socket still open, and the garbage
collector reports the socket as unclosed (a ``ResourceWarning``, an error in this suite) in
whichever later test it happens to run: a failure that names the wrong test, now and then.

Only transports already closing are finished here. One that nobody closed is left as it is and
still warns: that is a leak of the code under test.
"""

from __future__ import annotations

import asyncio


class SettlingEventLoop(asyncio.SelectorEventLoop):
    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            self._finish_closing_transports()
        super().close()

    def _finish_closing_transports(self) -> None:
        # The selector loop's own register of its live transports (fd -> transport, weakly held).
        transports: dict[int, asyncio.BaseTransport] = getattr(self, "_transports", {})
        closing = [t for t in list(transports.values()) if t.is_closing() and _socket_open(t)]
        for transport in closing:
            # Drops the unsent bytes (nobody waits for them any more) and closes the socket on the
            # loop's next pass.
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
        if closing:
            self.run_until_complete(asyncio.sleep(0))


def _socket_open(transport: asyncio.BaseTransport) -> bool:
    # A transport that finished closing may still be registered until it is collected.
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.fileno() != -1
