"""The HTTP session for upstream URLs (file hosts), with the egress policy enforced at the socket.

Two checks, so that no URL handed to us can reach a refused address by any route:

- the resolver drops every refused address a host name resolves to, and refuses the host when
  none is left: DNS is asked once per connection and the addresses connected are exactly the ones
  checked, so a name that resolves to a public address once and to 127.0.0.1 the next time (DNS
  rebinding) gains nothing;
- the socket factory checks the address of every socket about to connect (aiohttp does not ask
  the resolver for IP literals such as ``http://127.0.0.1/``), so nothing is ever sent to a
  refused address, not even a SYN.

A refusal surfaces as aiohttp's ``ClientConnectorError`` whose ``os_error`` is an
``EgressRefused``; ``refusal_of`` finds it, and the transfer turns it into ``DestinationBlocked``.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from worker.egress import EgressPolicy
from worker.httpclient import HttpSettings, new_session


class EgressRefused(OSError):
    """Connecting to ``address`` (for ``host``) is against the egress policy."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(errno.EACCES, f"egress to {host} ({address}) refused: {reason}")
        self.host = host
        self.address = address
        self.reason = reason


class GuardedResolver(AbstractResolver):
    """A resolver that returns only the addresses the policy allows."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.refusal(r["host"]) is None]
        if not allowed and results:
            first = results[0]["host"]
            raise EgressRefused(host, first, self._policy.refusal(first) or "refused")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(policy: EgressPolicy) -> Any:
    """A socket factory for aiohttp's connector that refuses to create a socket for a refused
    address (the last check before a packet could leave)."""

    def factory(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _canonname, sockaddr = addr_info
        address = str(sockaddr[0])
        reason = policy.refusal(address)
        if reason is not None:
            raise EgressRefused(address, address, reason)
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


def refusal_of(exc: BaseException) -> EgressRefused | None:
    """The egress refusal behind an aiohttp connection error, if that is what it was."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, EgressRefused):
        return exc.os_error
    return None


def new_upstream_session(
    settings: HttpSettings, policy: EgressPolicy, *, read_bufsize: int = 1 << 20
) -> aiohttp.ClientSession:
    """The session for URLs that come from upstream: egress-checked at resolution and at the
    socket; redirects are followed by the caller (hop by hop, each checked)."""
    return new_session(
        settings,
        connector_options={
            "resolver": GuardedResolver(policy),
            "socket_factory": guarded_socket_factory(policy),
        },
        read_bufsize=read_bufsize,
    )
