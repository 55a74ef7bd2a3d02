"""Local-disk destination: temp file beside the target, fsync, atomic rename, fsync the directory.

A reader of the destination sees either no file or the whole verified file, never a partial one:
bytes go to ``.<name>.<token>.part`` in the same directory (same file system, so ``os.replace``
is atomic), and the rename happens only after the transfer verified size and sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import os
import re
import secrets
from pathlib import Path
from typing import Any

import aiofiles
import structlog

from worker.errors import StorageError, StorageRejected, StorageUnavailable
from worker.sinks.base import Committed

log = structlog.get_logger("worker.sinks.file")

TEMP_SUFFIX = ".part"

# Errors that may go away by themselves (space freed, device back); everything else is a
# configuration problem an operator must fix. ENOENT is here because a temp file removed under us
# (by a worker that took the job over) is a reason to try again, not a broken destination.
_TRANSIENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EMFILE, errno.ENOENT}
)
_TEMP_TOKEN_HEX = 12


def translate_os_error(exc: OSError, key: str) -> StorageError:
    """Map an ``OSError`` to the exception tree (one boundary for every file operation)."""
    detail = f"{key}: {exc.strerror or exc}"
    if exc.errno in _TRANSIENT_ERRNOS:
        return StorageUnavailable(f"cannot write {detail}", key=key, code="storage_unavailable")
    return StorageRejected(f"cannot write {detail}", key=key, code="storage_rejected")


class FileUpload:
    """One asset being written to a temp file; see the module docstring."""

    def __init__(self, key: str, final: Path, temp: Path, handle: Any) -> None:
        self.key = key
        self._final = final
        self._temp = temp
        self._handle = handle
        self._closed = False
        self._committed = False

    async def write(self, chunk: bytes) -> None:
        try:
            await self._handle.write(chunk)
        except OSError as exc:
            raise translate_os_error(exc, self.key) from exc

    async def restart(self) -> None:
        try:
            await self._handle.seek(0)
            await self._handle.truncate()
        except OSError as exc:
            raise translate_os_error(exc, self.key) from exc

    async def commit(self, *, size: int, sha256: str) -> Committed:
        try:
            await self._handle.flush()
            # fsync before the rename: otherwise a crash can leave a renamed but empty file.
            await asyncio.to_thread(os.fsync, self._handle.fileno())
            await self._close()
            await asyncio.to_thread(_replace_durably, self._temp, self._final)
        except OSError as exc:
            raise translate_os_error(exc, self.key) from exc
        self._committed = True
        return Committed(uri=self._final.as_uri())

    async def abort(self) -> None:
        if self._committed:
            return
        with contextlib.suppress(OSError):
            await self._close()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._temp.unlink)

    async def _close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._handle.close()


def _replace_durably(temp: Path, final: Path) -> None:
    os.replace(temp, final)
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSink:
    """Publishes assets under ``root``; keys are relative POSIX paths from ``worker.naming``.

    When an upload starts, other temp files of the same target are removed. The caller holds the
    job's lease, so any such file belongs to a worker that died or lost the lease mid-transfer and
    can never be completed. (An age threshold instead would race with the dead worker's last
    writes.)
    """

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def uri_for(self, key: str) -> str:
        return self._final_path(key).as_uri()

    def owns(self, uri: str) -> bool:
        return uri.startswith(self.root.as_uri().rstrip("/") + "/")

    async def open(
        self,
        key: str,
        *,
        content_type: str | None,
        expected_size: int | None,
        expected_sha256: str | None,
    ) -> FileUpload:
        final = self._final_path(key)
        temp = final.with_name(f".{final.name}.{secrets.token_hex(_TEMP_TOKEN_HEX // 2)}{TEMP_SUFFIX}")
        try:
            await asyncio.to_thread(self._prepare_dir, final)
            handle = await aiofiles.open(temp, "xb")
        except OSError as exc:
            raise translate_os_error(exc, key) from exc
        return FileUpload(key, final, temp, handle)

    async def close(self) -> None:
        return None

    def _final_path(self, key: str) -> Path:
        final = (self.root / key).absolute()
        # Keys are sanitised by naming.render_key; this is the last line of defence.
        if os.path.commonpath([self.root, final]) != str(self.root) or final == self.root:
            raise StorageRejected(f"key {key!r} escapes the destination {self.root}", key=key)
        return final

    def _prepare_dir(self, final: Path) -> None:
        # A symlinked directory inside the root could point elsewhere: check the deepest existing
        # ancestor before creating anything, and the result after.
        existing = final.parent
        while not existing.exists() and existing != self.root:
            existing = existing.parent
        self._check_inside(existing)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._check_inside(final.parent)
        self._remove_orphaned_temps(final)

    def _check_inside(self, directory: Path) -> None:
        real_root = os.path.realpath(self.root)
        if os.path.commonpath([real_root, os.path.realpath(directory)]) != real_root:
            raise PermissionError(errno.EACCES, "destination directory resolves outside the root")

    def _remove_orphaned_temps(self, final: Path) -> None:
        pattern = re.compile(
            rf"^\.{re.escape(final.name)}\.[0-9a-f]{{{_TEMP_TOKEN_HEX}}}{re.escape(TEMP_SUFFIX)}$"
        )
        for temp in final.parent.glob(f".{glob.escape(final.name)}.*{TEMP_SUFFIX}"):
            if not pattern.match(temp.name):
                continue  # the temp file of another target whose name merely starts alike
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                log.info("orphaned_temp_removed", path=str(temp))
