"""Environment variables as typed values: the parsers and the table form every settings section uses.

Pure: nothing here reads ``os.environ``. ``worker.config`` hands each section (the core's, each
provider's, each destination's) the one environment mapping it read, so a provider or a sink
declares its own variables next to its code and config still checks every name in one place.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker.errors import ConfigError

PREFIX = "ASSET_WORKER_"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Var:
    """One variable: its full name, the settings field it fills, and how its text becomes a value.

    A parser raises ``ValueError`` with a short reason ("must be a positive number"); the name and
    the offending text are added to the ``ConfigError`` here.
    """

    name: str
    field: str
    parse: Callable[[str], Any]


def section(
    env: Mapping[str, str], variables: tuple[Var, ...], labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``{field: value}`` for the variables of ``variables`` that ``env`` sets; raises ``ConfigError``
    naming the variable, or what ``labels`` calls it (the command-line flag that set it)."""
    values: dict[str, Any] = {}
    for var in variables:
        if var.name in env:
            try:
                values[var.field] = var.parse(env[var.name])
            except ValueError as exc:
                label = (labels or {}).get(var.name)
                where = f"{label} {env[var.name]!r}" if label else f"{var.name}={env[var.name]!r}"
                raise ConfigError(f"{where}: {exc}") from exc
    return values


# -- parsers ----------------------------------------------------------------------------------


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("must be a number") from None


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None


def positive_float(text: str) -> float:
    value = number(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    value = number(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a number >= 0")
    return value


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise ValueError("must be a whole number >= 0")
    return value


def byte_count(text: str) -> int:
    value = positive_int(text)
    if value < 1024:
        raise ValueError("must be at least 1024 bytes")
    return value


def multiplier(text: str) -> float:
    value = number(text)
    if not math.isfinite(value) or value < 1:
        raise ValueError("must be a number >= 1")
    return value


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def text(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be empty")
    return stripped


def optional_text(value: str) -> str | None:
    """Empty means unset: ``FOO_API_KEY=`` in an environment file is the same as no line."""
    return value.strip() or None


def token(value: str) -> str:
    # Sent in an Authorization header: anything but visible ASCII could never match.
    stripped = text(value)
    if not all("!" <= c <= "~" for c in stripped):
        raise ValueError("must be visible ASCII characters without spaces")
    return stripped


def flag(value: str) -> bool:
    normal = value.strip().lower()
    if normal in ("1", "true", "yes", "on"):
        return True
    if normal in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def http_url(example: str) -> Callable[[str], str]:
    """An http(s) base URL without its trailing slash."""

    def parse(value: str) -> str:
        url = value.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL such as {example}")
        return url

    return parse


def networks(value: str) -> tuple[IpNetwork, ...]:
    """Comma-separated CIDRs (``10.20.0.0/16,127.0.0.1/32``; a bare address is a /32 or /128)."""
    found: list[IpNetwork] = []
    for part in value.split(","):
        item = part.strip()
        if not item:
            continue
        try:
            found.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a network in CIDR form such as 10.20.0.0/16 ({exc})") from None
    return tuple(found)
