"""An API answer's body, bounded: decompressed by us with a byte budget, parsed with a depth limit (pure).

A vendor answer (or one forged on the way) must not be able to exhaust memory: a 522 KB gzip body
can inflate to 512 MiB, and a body of nested brackets makes a recursive parser crash. So the
session never decompresses API answers itself; the bytes go through ``BoundedBody``, which stops
the moment the decoded size passes the budget (``ASSET_WORKER_MAX_RESPONSE_BYTES``), and
``parse_json`` refuses more than ``MAX_JSON_DEPTH`` levels of nesting. Both raise ``BodyRefused``,
which the HTTP client reports as ``malformed_response``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from typing import Any

# The vendors' documents are a few levels deep; 64 leaves room for any honest extension.
MAX_JSON_DEPTH = 64
# Encodings we ask for and can decode with a budget.
ACCEPT_ENCODING = "gzip, deflate"


class BodyRefused(ValueError):
    """The body is too large, too deep, or in an encoding or form we cannot read."""


class BoundedBody:
    """Collects a response body (as sent on the wire, ``Content-Encoding`` applied by us), at most
    ``max_bytes`` of it after decoding."""

    def __init__(self, content_encoding: str | None, max_bytes: int) -> None:
        encoding = (content_encoding or "identity").strip().lower()
        if encoding in ("", "identity"):
            self._inflater = None
        elif encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._inflater = zlib.decompressobj()
        else:
            raise BodyRefused(f"the answer is encoded as {encoding!r}, which was not asked for")
        self._max = max_bytes
        self._parts: list[bytes] = []
        self.size = 0
        self._wire = 0

    def feed(self, data: bytes) -> None:
        # The wire bytes count too: whatever follows a compressed stream's end would otherwise pile
        # up unread (and unbounded) inside the decompressor.
        self._wire += len(data)
        if self._wire > self._max:
            self._over()
        if self._inflater is not None:
            try:
                # One byte more than the budget tells "exactly full" from "over".
                data = self._inflater.decompress(data, self._max - self.size + 1)
            except zlib.error as exc:
                raise BodyRefused(f"the answer's compressed body is corrupt ({exc})") from None
            if self._inflater.unconsumed_tail:
                self._over()
        self.size += len(data)
        if self.size > self._max:
            self._over()
        self._parts.append(data)

    def finish(self) -> bytes:
        if self._inflater is not None:
            try:
                rest = self._inflater.flush()
            except zlib.error as exc:
                raise BodyRefused(f"the answer's compressed body is corrupt ({exc})") from None
            self.size += len(rest)
            if self.size > self._max:
                self._over()
            self._parts.append(rest)
        return b"".join(self._parts)

    def _over(self) -> None:
        raise BodyRefused(f"the answer is larger than {self._max} bytes (ASSET_WORKER_MAX_RESPONSE_BYTES)")


def parse_json(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``raw`` parsed as JSON, refusing invalid text and nesting deeper than ``max_depth``."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise BodyRefused("the answer's JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BodyRefused(f"the answer is not JSON ({exc})") from None
    if json_depth(value) > max_depth:
        raise BodyRefused(f"the answer's JSON is nested more than {max_depth} levels deep")
    return value


def try_parse_json(raw: bytes) -> Any:
    """``raw`` as JSON, or None when it is not (usable) JSON: for error bodies, which may be text."""
    try:
        return parse_json(raw)
    except BodyRefused:
        return None


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar is 0, ``[]`` is 1), computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest
