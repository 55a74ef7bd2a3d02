"""Keeping secrets and unbounded vendor text out of everything the worker says (pure).

Three tools, applied wherever text leaves the process (logs, error messages, the store, API
answers, the CLI):

- ``mask``: every configured secret (API keys, the API token, the store's password, AWS
  credentials), registered once at start, is replaced by ``***`` by value, whatever field or
  message it arrives in. A vendor that echoes our API key in its error text does not get it into
  the job's status.
- ``strip_query`` / ``strip_queries``: a URL loses its query string (where pre-signed URLs carry
  their signature) and its ``user:password@``.
- ``clip``: vendor text is cut to a few KiB, so a 20 MB error message costs nothing.

The registry is process-wide on purpose: structlog's processors are too, and a secret must be
masked in code that never saw the settings (an exception message built deep in a library).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

MASK = "***"
# Long enough for any real message, short enough that storing or logging it costs nothing.
MAX_MESSAGE_CHARS = 4096
# Shorter "secrets" (a test key "x") would mask ordinary words; real keys are far longer.
MIN_SECRET_CHARS = 6

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str | None]) -> None:
    """Add secrets to mask from now on (also their URL-encoded forms). Idempotent."""
    global _secrets
    new: set[str] = set()
    for value in values:
        if value and len(value) >= MIN_SECRET_CHARS:
            new.add(value)
            new.add(quote(value, safe=""))
    with _lock:
        # Longest first, so a secret that contains another is masked whole.
        _secrets = tuple(sorted(set(_secrets) | new, key=len, reverse=True))


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters cut]"


def safe_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Text from anywhere (a vendor, an exception) made fit to store and show: clipped, URL
    credentials and queries removed, secrets masked."""
    # Clip first (with a margin) so the regular expressions never walk megabytes.
    return clip(mask(strip_queries(clip(text, limit * 2))), limit)


def strip_query(url: str) -> str:
    """``url`` without its query string, fragment and ``user:password@``.

    Pre-signed asset URLs carry their credentials in the query, and a URL may carry a password in
    its userinfo: no URL is ever logged or stored in an error message with either.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    except ValueError:
        return "<unparseable url>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def strip_queries(text: str) -> str:
    """``text`` with every URL in it passed through ``strip_query``."""
    return _URL.sub(_strip_match, text)


def _strip_match(match: re.Match[str]) -> str:
    url = match.group(0)
    if "?" not in url and "#" not in url and "@" not in url:
        return url
    return strip_query(url)


def url_password(url: str) -> str | None:
    """The password of a URL (a store's), from its userinfo or a ``password=`` query parameter."""
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if name.lower() == "password" and value:
            return value
    return None


def redact_url(url: str) -> str:
    """``url`` with any password (in the userinfo or a ``password=`` parameter) replaced by
    ``***``: safe for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if parts.query:
        query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
        parts = parts._replace(query=query)
    return parts.geturl()
