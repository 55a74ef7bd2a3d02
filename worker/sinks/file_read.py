"""Reading stored files back for ``asset-worker verify`` (``file://`` URIs): stat, then read and
hash on a thread, so the event loop and the other files go on meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.errors import describe
from worker.sinks.readback import PIECE, Absent, Found, Observation, Reader, Unreadable


class FileReader:
    """``file://`` URIs (file reads and hashlib both release the GIL)."""

    async def observe(self, uri: str, expected_size: int) -> Observation:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            return Unreadable(f"file URI on another host {parts.netloc!r}")
        return await asyncio.to_thread(hash_file, Path(unquote(parts.path)), expected_size)


def hash_file(path: Path, expected_size: int) -> Observation:
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return Unreadable("not a regular file")
            if info.st_size != expected_size:
                return Found(info.st_size, None, 0)
            digest = hashlib.sha256()
            read = 0
            while piece := handle.read(PIECE):
                digest.update(piece)
                read += len(piece)
    except FileNotFoundError:
        return Absent()
    except IsADirectoryError:
        return Unreadable("not a regular file")
    except OSError as exc:
        return Unreadable(describe(exc))
    # The size is what was read: a file cut short while we read it shows as such.
    return Found(read, digest.hexdigest(), read)


@contextlib.asynccontextmanager
async def open_file_reader(_settings: Any, _uri: str) -> AsyncIterator[Reader]:
    yield FileReader()
