"""Strict reading of JSON-ish specs sent to the control API (job specs, fault rules).

Specs come from tests over HTTP or as keyword arguments, so every mistake must become a clear ``SpecError``
(answered as 400) rather than a ``KeyError`` or a silently ignored typo.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["SpecConflict", "SpecError", "SpecNotFound", "SpecReader"]

_ABSENT = object()


class SpecError(ValueError):
    """A control-API spec is malformed; the message names the offending field."""


class SpecConflict(SpecError):
    """A spec is well formed but collides with existing state (e.g. a job id already taken): 409."""


class SpecNotFound(SpecError):
    """A spec names something that does not exist (e.g. the container to regenerate): 404."""


class SpecReader:
    """Takes typed fields out of a mapping; ``finish()`` rejects any field left unread."""

    def __init__(self, raw: Mapping[str, object], what: str) -> None:
        if not isinstance(raw, Mapping):
            raise SpecError(f"{what} must be a JSON object")
        self._raw = dict(raw)
        self._what = what

    def _take(self, key: str) -> object:
        return self._raw.pop(key, _ABSENT)

    def _fail(self, key: str, expected: str, value: object) -> SpecError:
        return SpecError(f"{self._what}: {key!r} must be {expected}, got {value!r}")

    def opt_raw(self, key: str) -> object:
        """The untyped value, or None when absent or null (for fields with a custom syntax)."""
        value = self._take(key)
        return None if value is _ABSENT else value

    def opt_text(self, key: str) -> str | None:
        """A string, or None when absent or null."""
        value = self._take(key)
        if value is _ABSENT or value is None:
            return None
        if not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def text(self, key: str, default: str) -> str:
        """A string, ``default`` when absent."""
        value = self.opt_text(key)
        return default if value is None else value

    def choice(self, key: str, options: Iterable[str], default: str) -> str:
        """One of ``options``, ``default`` when absent."""
        allowed = tuple(options)
        value = self.text(key, default)
        if value not in allowed:
            raise self._fail(key, f"one of {list(allowed)}", value)
        return value

    def opt_integer(self, key: str, minimum: int | None = None) -> int | None:
        """An integer (booleans refused), or None when absent or null."""
        value = self._take(key)
        if value is _ABSENT or value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer", value)
        if minimum is not None and value < minimum:
            raise self._fail(key, f">= {minimum}", value)
        return value

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        """An integer, ``default`` when absent."""
        value = self.opt_integer(key, minimum)
        return default if value is None else value

    def opt_number(self, key: str, default: float | None, minimum: float = 0.0) -> float | None:
        """A number >= ``minimum``; ``default`` when absent, None when explicitly null."""
        value = self._take(key)
        if value is _ABSENT:
            return default
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._fail(key, "a finite number", value)
        if value < minimum:
            raise self._fail(key, f">= {minimum}", value)
        return float(value)

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        """A number >= ``minimum``, ``default`` when absent; null is refused."""
        value = self.opt_number(key, default, minimum)
        if value is None:
            raise self._fail(key, "a number", None)
        return value

    def flag(self, key: str, default: bool) -> bool:
        """A JSON boolean, ``default`` when absent."""
        value = self._take(key)
        if value is _ABSENT or value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, "a boolean", value)
        return value

    def has(self, key: str) -> bool:
        """Whether the field was given at all (even as null) and is not yet read."""
        return key in self._raw

    def opt_object(self, key: str) -> dict[str, object] | None:
        """A nested JSON object, or None when absent or null."""
        value = self._take(key)
        if value is _ABSENT or value is None:
            return None
        if not isinstance(value, Mapping):
            raise self._fail(key, "an object", value)
        return dict(value)

    def opt_list(self, key: str) -> list[object] | None:
        """A JSON array, or None when absent or null; the caller checks the items."""
        value = self._take(key)
        if value is _ABSENT or value is None:
            return None
        if not isinstance(value, list | tuple):
            raise self._fail(key, "a list", value)
        return list(value)

    def finish(self) -> None:
        """Refuse unknown fields: a typo in a test's spec must not silently fall back to a default."""
        if self._raw:
            raise SpecError(f"{self._what}: unknown field(s) {sorted(self._raw)}")
