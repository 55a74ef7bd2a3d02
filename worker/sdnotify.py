"""systemd's notification protocol (sd_notify(3)) without libsystemd: one datagram per message.

``Type=notify`` units hand the service ``NOTIFY_SOCKET`` (a path, or ``@name`` for a socket in
the abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. The worker sends
``READY=1`` once its store is open and HTTP is listening, ``STOPPING=1`` when it starts draining
and ``WATCHDOG=1`` every half watchdog period. The pings come from a task on the event loop, not
a thread, on purpose: a loop stuck in a blocking call stops pinging, and systemd restarts it.

Outside systemd every call is a no-op. A failing send is logged once and never raised: the
notifications are a courtesy to the service manager, not a reason to stop working.
"""

from __future__ import annotations

import socket

import structlog

from worker.lease import Sleep

log = structlog.get_logger("worker.sdnotify")


def socket_address(name: str) -> str | None:
    """``NOTIFY_SOCKET`` as an ``AF_UNIX`` address: ``@name`` is the abstract ``\\0name``; only
    absolute paths and abstract names are supported (None otherwise, e.g. systemd's ``vsock:``)."""
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None


class Notifier:
    def __init__(self, notify_socket: str | None) -> None:
        self._address = socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("sd_notify_unsupported_socket", notify_socket=notify_socket)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``VAR=value`` lines in one datagram; True when it was sent."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait on a full receive queue: a missed ping is better than a stuck loop.
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify_failed", error=exc.strerror or str(exc))
            return False
        return True

    async def watchdog(self, interval_s: float, sleep: Sleep) -> None:
        """Ping ``WATCHDOG=1`` every ``interval_s`` until cancelled."""
        while True:
            self.notify("WATCHDOG=1")
            await sleep(interval_s)
