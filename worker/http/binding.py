"""Where the HTTP service listens, under the rule that the job API is never open by accident."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from worker.errors import ConfigError

if TYPE_CHECKING:  # config parses ASSET_WORKER_LISTEN with parse_listen below
    from worker.config import Settings

# Where `run` serves HTTP when ASSET_WORKER_LISTEN is not set: every interface with an API token,
# loopback without one (see http_binding).
DEFAULT_LISTEN = ("0.0.0.0", 8080)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a (host, port) pair; port 0 picks a free port
    (the worker logs the one it got in ``http_listening``)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:8080 or 127.0.0.1:8080")
    return host.strip("[]"), int(port_text)


def format_listen(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normal_listen(text: str) -> str:
    """ASSET_WORKER_LISTEN as settings keep it: checked, in one spelling."""
    return format_listen(parse_listen(text))


@dataclass(frozen=True, slots=True)
class HttpBinding:
    """Where ``run`` serves HTTP, and the token its job API requires (None: no token, loopback only)."""

    host: str
    port: int
    api_token: str | None = field(default=None, repr=False)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it is not trusted as loopback


def http_binding(settings: Settings) -> HttpBinding:
    """The HTTP service's address under the auth rule: the job API is never open by accident.

    With ``ASSET_WORKER_API_TOKEN`` the service binds ``ASSET_WORKER_LISTEN`` (default
    0.0.0.0:8080) and the job API requires the token. Without a token it binds loopback only:
    127.0.0.1 on the default port when ASSET_WORKER_LISTEN is not set, the given address when it is
    a loopback one; a non-loopback ASSET_WORKER_LISTEN without a token is a ``ConfigError``
    (asking for the network and getting loopback instead would look like a broken port).
    """
    host, port = DEFAULT_LISTEN if settings.listen is None else parse_listen(settings.listen)
    if settings.api_token is not None:
        return HttpBinding(host, port, settings.api_token)
    if settings.listen is None:
        return HttpBinding("127.0.0.1", port)
    if not is_loopback(host):
        raise ConfigError(
            f"ASSET_WORKER_LISTEN={settings.listen} would open the job API to the network without a "
            "token: set ASSET_WORKER_API_TOKEN, listen on loopback (127.0.0.1:PORT), or use run --no-http"
        )
    return HttpBinding(host, port)
