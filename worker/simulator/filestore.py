"""The files the simulated storage host can serve, and its pre-signed URLs (pure: no I/O).

Each vendor module registers a ``FileEntry`` under a file name when it creates an asset; the file host
(``files.py``) serves it from ``ready_at`` on (until ``gone_at`` when the asset was replaced). URLs look
like S3 pre-signed URLs: a random signature (never checked, as the worker must treat it as opaque) and an
expiry that is enforced only when the entry has a TTL.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlencode

__all__ = ["CONTENT_TYPES", "FileEntry", "FileStore", "signed_url"]

CONTENT_TYPES = {
    "pdf": "application/pdf",
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
}

# What X-Amz-Expires says when a URL never expires in the simulator (S3's maximum, seven days).
_UNLIMITED_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry:
    """A servable file: its bytes are ``content.iter_content(seed, size)``."""

    seed: int
    size: int
    content_type: str
    ready_at: float | None  # state-clock time from which the file exists; None: never (e.g. a failed job)
    url_ttl_s: float | None = None  # None: URLs never expire
    gone_at: float | None = None  # state-clock time from which the file is deleted (a replaced asset)

    def exists(self, now: float) -> bool:
        """Whether the storage host has the file at ``now``."""
        if self.gone_at is not None and now >= self.gone_at:
            return False
        return self.ready_at is not None and now >= self.ready_at


class FileStore:
    """File name → entry. Names are the decoded last path segment, e.g. ``"../../etc/passwd.pdf"``."""

    def __init__(self) -> None:
        self._entries: dict[str, FileEntry] = {}

    def add(self, name: str, entry: FileEntry) -> None:
        """Register a file; a name already taken is a spec error of the caller."""
        if name in self._entries:
            raise KeyError(name)
        self._entries[name] = entry

    def get(self, name: str) -> FileEntry | None:
        """The entry for ``name``, if registered."""
        return self._entries.get(name)

    def retire(self, name: str, at: float) -> None:
        """Delete the file from ``at`` on (state clock): its URLs answer 404 then, like a replaced object."""
        entry = self._entries[name]
        if entry.gone_at is None or at < entry.gone_at:
            self._entries[name] = dataclasses.replace(entry, gone_at=at)

    def set_gone(self, name: str, at: float | None) -> None:
        """Delete the file from ``at`` on, or never (None), whatever was set before: an expiry that is
        recomputed (a retention period changed) must be able to move later as well as earlier."""
        self._entries[name] = dataclasses.replace(self._entries[name], gone_at=at)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def clear(self) -> None:
        """Forget every file."""
        self._entries.clear()


def signed_url(base_url: str, name: str, now: float, ttl_s: float | None) -> str:
    """A fresh pre-signed URL for ``name``; each call differs (new signature), as each upstream read does.

    The name is quoted with no safe characters, so ids holding ``/``, ``\\`` or ``?`` stay one path segment.
    ``exp`` is unix seconds with millisecond precision: sub-second TTLs must not expire at once by rounding.
    """
    ttl = _UNLIMITED_TTL_S if ttl_s is None else ttl_s
    query = urlencode(
        {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Expires": str(max(1, round(ttl))),
            "X-Amz-Signature": secrets.token_hex(32),
            "exp": f"{now + ttl:.3f}",
        }
    )
    return f"{base_url}/files/{quote(name, safe='')}?{query}"
