"""What every call to a vendor's API shares and needs no HTTP library for: the request settings,
and how a plain error answer becomes a code and a message (pure).

Kept apart from ``httpclient`` so that reading settings and the provider registry (every command,
``--help`` included) does not load aiohttp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from worker.jsonbody import try_parse_json

# (status, body bytes) -> (code, message): how a vendor spells its errors.
ErrorReader = Callable[[int, bytes], tuple[str, str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """Request-level behaviour shared by every upstream call."""

    request_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0


def default_error_reader(status: int, body: bytes) -> tuple[str, str]:
    """Codes for a plain HTTP API: the status's meaning, and the body's ``message`` if any."""
    code = {401: "unauthenticated", 403: "forbidden", 404: "not_found"}.get(status, "upstream_rejected")
    message = body[:500].decode("utf-8", "replace").strip()
    parsed = try_parse_json(body)
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        message = parsed["message"]
    return code, message or f"HTTP {status}"
