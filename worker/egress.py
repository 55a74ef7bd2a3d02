"""Where a URL handed to us by upstream may lead: the egress policy (pure).

Asset URLs come from a third party's answer. If that answer is forged (a compromised vendor, an
impersonated host, plain http on the way) it can point the worker at the cloud metadata service,
a database on the pod network or the worker's own HTTP API. So every connection made for an
upstream URL is checked here, by the address actually connected to (after DNS, on every redirect
hop): only ``http``/``https``, and no loopback, private (RFC 1918), shared (CGNAT 100.64/10),
link-local (169.254/16 with the metadata address, fe80::/10), unique-local (fc00::/7), multicast,
unspecified or reserved address, unless the operator listed its network in
``ASSET_WORKER_ALLOW_NETWORKS``. IPv4 addresses embedded in IPv6 (mapped ``::ffff:a.b.c.d``,
NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged as the IPv4 address they lead to.

The API base URLs are the operator's own setting and are not subject to this policy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from worker.errors import DestinationBlocked, strip_query

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
# Redirects a file host may send before the transfer gives up (curl and browsers allow more; a
# signed-URL host needs one or two).
MAX_REDIRECTS = 5

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def refusal_reason(address: IpAddress) -> str | None:
    """Why ``address`` may not be connected to for an upstream URL, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refusal_reason(embedded)
            return None if reason is None else f"{reason} (IPv4 {embedded} inside IPv6)"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared address space (CGNAT)", address in _SHARED),
        ("unique-local", address in _UNIQUE_LOCAL),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


class EgressPolicy:
    """The policy with the operator's exceptions (``ASSET_WORKER_ALLOW_NETWORKS``)."""

    def __init__(self, allow_networks: Iterable[IpNetwork] = ()) -> None:
        self.allow_networks = tuple(allow_networks)

    def refusal(self, address: str) -> str | None:
        """Why connecting to the IP address text ``address`` is refused, or None when allowed."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
        except ValueError:
            return "not an IP address"
        if any(ip in network for network in self.allow_networks):
            return None
        return refusal_reason(ip)

    def check_url(self, url: str) -> None:
        """Refuse a URL before any connection: its scheme, and its host when that is an IP literal.

        Host names are judged later, by the addresses they resolve to (``egress_session``).
        """
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            raise DestinationBlocked(f"refused {strip_query(url)}: not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise DestinationBlocked(
                f"refused {strip_query(url)}: scheme {scheme or '(none)'!r} is not allowed "
                "(only http and https)"
            )
        if not host:
            raise DestinationBlocked(f"refused {strip_query(url)}: no host")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return
        reason = self.refusal(host)
        if reason is not None:
            raise blocked(host, host, reason)


def blocked(host: str, address: str, reason: str) -> DestinationBlocked:
    """The refusal of ``host`` at ``address``, worded for the job's error (no URL, no query)."""
    at = "" if host == address else f" at {address}"
    return DestinationBlocked(
        f"refused to connect to {host}{at}: {reason} address "
        "(allow its network in ASSET_WORKER_ALLOW_NETWORKS if it is a trusted mirror)"
    )


def redirect_refusal(from_url: str, to_url: str) -> str | None:
    """Why a file host's redirect from ``from_url`` to ``to_url`` is refused, or None."""
    source = urlsplit(from_url).scheme.lower()
    target = urlsplit(to_url).scheme.lower()
    if source == "https" and target == "http":
        return "a redirect from https to http (the signed URL and the bytes would travel in clear)"
    return None
