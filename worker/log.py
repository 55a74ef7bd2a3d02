"""structlog, configured once by the CLI: JSON lines for machines, a console renderer for people.

Secrets never reach the output: values of secret-looking keys are replaced, every configured
secret is masked by value in every field (nested ones too), any URL loses its query string (where
pre-signed URLs keep their signature) and its ``user:password@``, and text is cut to a bounded
length so a vendor's 20 MB message is not written to the log whole.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from worker.redaction import safe_text

_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|token|secret|password|signature)", re.IGNORECASE)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# A traceback is worth more room than a message, but still not megabytes.
_MAX_LOG_VALUE_CHARS = 16384


def redact(_logger: object, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Remove secrets from an event dict (a structlog processor)."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key):
            event[key] = "[redacted]"
        else:
            event[key] = _clean(value, depth=0)
    return event


def _clean(value: Any, *, depth: int) -> Any:
    if isinstance(value, str):
        return safe_text(value, _MAX_LOG_VALUE_CHARS)
    if depth >= 8 and isinstance(value, dict | list | tuple):
        # Deeper structures are not ours to log field by field.
        return safe_text(repr(value), _MAX_LOG_VALUE_CHARS)
    if isinstance(value, dict):
        return {k: _clean(v, depth=depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, depth=depth + 1) for v in value]
    return value


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is at the moment of writing, not at configuration: a live
    progress display (``worker.live``) swaps it while it runs so log lines scroll above it."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


def configure(*, level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process. ``fmt``: ``auto`` (console on a TTY), ``json``, ``console``."""
    out: Any = stream or _CurrentStdout()
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks become text before redaction, so URLs in exception messages are cleaned too.
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
