"""Local-disk destination: temp file beside the target, fsync, atomic rename, fsync the directory.

A reader of the destination sees either no file or the whole verified file, never a partial one:
bytes go to ``.<name>.<token>.part`` in the same directory (same file system, so ``os.replace``
is atomic), and the rename happens only after the transfer verified size and sha256.

A download the file host can resume goes to ``.<name>.resume.part`` instead, which a drained or
killed process leaves for the next holder of the job to continue (``file_resume`` says how and why
it is safe).

Longer than most modules on purpose: an upload's three endings (published, removed, kept for a
later process) and the sink's checks before the first byte (inside the root, room, orphans) guard
the same temp files, and each must be read with the others; the part's own rules live in
``file_resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import os
import re
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import aiofiles
import structlog

from worker.aio import shielded
from worker.errors import ConfigError, StorageError, StorageInterrupted, StorageRejected, StorageUnavailable
from worker.models import Receipt
from worker.sinks import file_resume
from worker.sinks.base import (
    Committed,
    JobDest,
    OpenedSink,
    SinkSpec,
    SourceEntity,
    check_subpath,
    not_inside,
)
from worker.sinks.file_read import open_file_reader

log = structlog.get_logger("worker.sinks.file")

TEMP_SUFFIX = ".part"

# The destination is full or down: it may come back by itself (space freed, device back, a
# read-only remount undone), so the job waits for it instead of failing.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DOWN_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.EMFILE, errno.ENFILE, errno.EROFS})
# The worker's user may not write there: an operator's fix (ownership, mode, a mount option) is
# waited for, as a full disk is, rather than failing every job that meets it before anyone looks.
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM})
# This one write went wrong: a temp file removed under us (by a worker that took the job over) is
# a reason to try the asset again, not a broken destination.
_INTERRUPTED_ERRNOS = frozenset({errno.ENOENT})
_TEMP_TOKEN_HEX = 12
# Kept free beyond an asset's announced size (the file system's own metadata, and room for the
# store and logs that often share the disk): 1 % of the file system, at most this.
FREE_SPACE_MARGIN_MAX_BYTES = 64 << 20


class OutsideRoot(PermissionError):
    """A directory of the destination resolves outside its root (a symlink): refused for good,
    never waited for like a permission an operator may still fix."""


def translate_os_error(exc: OSError, key: str) -> StorageError:
    """Map an ``OSError`` to the exception tree (one boundary for every file operation); anything
    not known to heal is a configuration problem an operator must fix (permissions, a file where a
    directory should be)."""
    detail = f"{key}: {exc.strerror or exc}"
    if isinstance(exc, OutsideRoot):
        return StorageRejected(f"cannot write {detail}", key=key, code="storage_rejected")
    if exc.errno in _DENIED_ERRNOS:
        return StorageUnavailable(
            f"cannot write {detail} (the worker's user lacks permission; jobs wait until that is fixed)",
            key=key,
            code="dest_not_writable",
        )
    if exc.errno in _FULL_ERRNOS:
        return StorageUnavailable(f"cannot write {detail}", key=key, code="disk_full")
    if exc.errno in _DOWN_ERRNOS:
        return StorageUnavailable(f"cannot write {detail}", key=key, code="storage_unavailable")
    if exc.errno in _INTERRUPTED_ERRNOS:
        return StorageInterrupted(f"cannot write {detail}", key=key, code="storage_interrupted")
    return StorageRejected(f"cannot write {detail}", key=key, code="storage_rejected")


class FileUpload:
    """One asset being written to a temp file; see the module docstring.

    ``file`` is the temp file, open for binary writing; its writes go through aiofiles, its
    publication (flush, fsync, rename, directory fsync, close) is one hand-off to a thread.

    It starts on a random temp file; ``resume`` moves it to the target's resumable part when it can
    lock that part (the random temp, still empty, is removed), and from then on it holds the part's
    lock until it ends: published, removed (``abort``) or kept (``suspend``).
    """

    def __init__(
        self,
        key: str,
        final: Path,
        temp: Path,
        file: Any,
        space: SpaceBook,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        self.key = key
        self._final = final
        self._temp = temp
        self._file = file
        self._handle = aiofiles.threadpool.wrap(file)
        self._space = space
        self._fsync = fsync
        self._closed = False
        self._committed = False
        # Set once this upload holds the target's resumable part (and its lock).
        self._resumable = False
        # The entity the part's record names; None while it names none (after restart).
        self._entity: SourceEntity | None = None
        self._held = 0

    async def write(self, chunk: bytes) -> None:
        try:
            await self._handle.write(chunk)
        except OSError as exc:
            raise translate_os_error(exc, self.key) from exc
        self._space.wrote(self, len(chunk))

    async def restart(self) -> None:
        try:
            await self._handle.seek(0)
            await self._handle.truncate()
            if self._resumable:
                # The source changed: the part must not stay described as the old file's.
                await asyncio.to_thread(file_resume.forget_record, self._final)
        except OSError as exc:
            raise translate_os_error(exc, self.key) from exc
        self._entity = None
        self._held = 0

    async def resume(self, entity: SourceEntity) -> int:
        """See ``ResumableUpload.resume``. Shielded: once the part is locked, this upload must own
        it (so ``abort`` or ``suspend`` releases it) even if the transfer is cancelled meanwhile."""
        try:
            return await shielded(self._resume(entity))
        except OSError as exc:
            raise translate_os_error(exc, self.key) from exc

    async def replay(self, feed: Callable[[bytes], None]) -> None:
        """See ``ResumableUpload.replay``. A cancellation stops the reading thread after its block
        (a few ms) rather than hashing gigabytes on, and waits for it, so the descriptor it reads
        is never closed under it."""
        stop = threading.Event()
        fd = self._file.fileno()
        task = asyncio.ensure_future(asyncio.to_thread(file_resume.replay, fd, self._held, feed, stop))
        try:
            done = await asyncio.shield(task)
        except asyncio.CancelledError:
            stop.set()
            with contextlib.suppress(Exception):
                await shielded(task)
            raise
        except OSError as exc:
            raise translate_os_error(exc, self.key) from exc
        if done != self._held:
            raise StorageInterrupted(
                f"{self.key}: the kept part ended at byte {done} of {self._held} while read again",
                key=self.key,
                code="storage_interrupted",
            )

    async def suspend(self) -> None:
        """See ``ResumableUpload.suspend``: the part is flushed (to the page cache, not fsynced: see
        ``file_resume``) and closed, which releases its lock."""
        if not self._resumable or self._entity is None or self._committed:
            await self.abort()
            return
        with contextlib.suppress(OSError):
            await self._close()
        log.info("resume_part_kept", key=self.key, path=str(self._temp))

    async def commit(self, *, size: int, sha256: str) -> Committed:
        self._space.release(self)
        self._closed = True
        try:
            # One hand-off to the file thread for the whole publication.
            await asyncio.to_thread(
                _publish, self._file, self._temp, self._final, self._fsync, resumable=self._resumable
            )
        except OSError as exc:
            raise translate_os_error(exc, self.key) from exc
        self._committed = True
        return Committed(uri=self._final.as_uri())

    async def abort(self) -> None:
        self._space.release(self)
        if self._committed:
            return
        # Removed before it is closed: a resumable part's lock must cover its removal, or a
        # newcomer could lock it in between and lose it under its feet.
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._temp.unlink)
        if self._resumable:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(file_resume.forget_record, self._final)
        with contextlib.suppress(OSError):
            await self._close()

    async def _resume(self, entity: SourceEntity) -> int:
        if self._resumable:
            # Already ours, and empty since restart(): it now holds the new entity.
            await asyncio.to_thread(file_resume.write_record, self._final, entity)
            self._entity = entity
            return 0
        claimed = await asyncio.to_thread(file_resume.claim, self._final, entity)
        if claimed is None:
            log.info("resume_part_busy", key=self.key, path=str(file_resume.part_path(self._final)))
            return 0
        if claimed.discarded is not None:
            log.info("resume_part_discarded", key=self.key, reason=claimed.discarded)
        old_file, old_temp = self._file, self._temp
        self._file, self._handle = claimed.file, aiofiles.threadpool.wrap(claimed.file)
        self._temp = file_resume.part_path(self._final)
        self._resumable, self._entity, self._held = True, entity, claimed.held
        # Bytes already on disk need no room reserved for them.
        self._space.wrote(self, claimed.held)
        await asyncio.to_thread(_close_and_remove, old_file, old_temp)
        return claimed.held

    async def _close(self) -> None:
        self._space.release(self)
        if not self._closed:
            self._closed = True
            await self._handle.close()


def _close_and_remove(file: Any, path: Path) -> None:
    file.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class SpaceBook:
    """Free space promised to uploads in progress, so that eight transfers starting together on a
    nearly full disk do not each see room for themselves and all run into ENOSPC halfway.

    Each upload reserves its announced size when it opens; what it has written since no longer
    needs reserving (the file system counts it), and it releases the rest when it ends.
    """

    def __init__(self) -> None:
        self._outstanding: dict[object, int] = {}

    def reserved(self) -> int:
        return sum(self._outstanding.values())

    def reserve(self, upload: object, size: int) -> None:
        self._outstanding[upload] = size

    def wrote(self, upload: object, count: int) -> None:
        left = self._outstanding.get(upload)
        if left is not None:
            self._outstanding[upload] = max(left - count, 0)

    def release(self, upload: object) -> None:
        self._outstanding.pop(upload, None)


def _publish(file: Any, temp: Path, final: Path, fsync: Callable[[int], None], *, resumable: bool) -> None:
    """Flush and fsync the temp file, rename it durably over ``final``, then close it.

    Closed last: a resumable part's lock (released by the close) must cover its rename, so no
    newcomer takes over a part that is being published. Whatever part of the target is left (our
    record, or a stale part nobody holds) goes, so nothing stays behind a published file.
    """
    try:
        file.flush()
        # fsync before the rename: otherwise a crash can leave a renamed but empty file.
        fsync(file.fileno())
        _replace_durably(temp, final, fsync)
        if resumable:
            file_resume.forget_record(final)
        else:
            file_resume.remove_if_free(final)
    finally:
        file.close()


def _replace_durably(temp: Path, final: Path, fsync: Callable[[int], None]) -> None:
    os.replace(temp, final)
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


class FileSink:
    """Publishes assets under ``root``; keys are relative POSIX paths from ``worker.naming``.

    When an upload starts, other temp files of the same target are removed. The caller holds the
    job's lease, so any such file belongs to a worker that died or lost the lease mid-transfer and
    can never be completed. (An age threshold instead would race with the dead worker's last
    writes.) The target's resumable part is not swept here: it may be continued, and the upload
    decides once it knows the entity (``FileUpload.resume``) or when it publishes.

    ``fsync`` is ``os.fsync`` unless a test needs to see when the file and its directory are synced
    (its effect shows only after a power loss).
    """

    def __init__(self, root: Path, *, fsync: Callable[[int], None] = os.fsync) -> None:
        self.root = root.absolute()
        self._space = SpaceBook()
        self._fsync = fsync

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
            # One hand-off to a thread for everything before the first byte.
            raw = await asyncio.to_thread(self._start, key, final, temp, expected_size)
        except OSError as exc:
            raise translate_os_error(exc, key) from exc
        upload = FileUpload(key, final, temp, raw, self._space, self._fsync)
        if expected_size is not None:
            self._space.reserve(upload, expected_size)
        return upload

    async def still_has(self, receipt: Receipt) -> bool:
        """Whether the file a receipt names is still there with its size (someone may have deleted
        or replaced it since; its content is not read again)."""
        path = Path(unquote(urlsplit(receipt.uri).path))
        try:
            return await asyncio.to_thread(os.path.getsize, path) == receipt.size
        except OSError:
            return False

    async def close(self) -> None:
        return None

    def _final_path(self, key: str) -> Path:
        final = (self.root / key).absolute()
        # Keys are sanitised by naming.render_key; this is the last line of defence. commonpath
        # compares components as written ("root/../x" shares all of root's), so the check is on
        # the lexically normalised paths: otherwise mkdir could create directories outside the
        # root before the symlink check refuses the key.
        root, normal = os.path.normpath(self.root), os.path.normpath(final)
        if os.path.commonpath([root, normal]) != root or normal == root:
            raise StorageRejected(f"key {key!r} escapes the destination {self.root}", key=key)
        return final

    def _start(self, key: str, final: Path, temp: Path, expected_size: int | None) -> Any:
        """The directory made, room checked, the temp file created: an open binary file."""
        self._prepare_dir(final)
        if expected_size is not None:
            # Before a byte is fetched: a download that cannot fit would only fill the disk. A
            # resumable part of the target is either continued or emptied, so its bytes count as
            # room.
            self._check_room(key, final.parent, expected_size - _size_or_zero(file_resume.part_path(final)))
        return open(temp, "xb")

    def _prepare_dir(self, final: Path) -> None:
        parent = final.parent
        if parent.is_dir():
            self._check_inside(parent)
            self._remove_orphaned_temps(final)
            return
        # A symlinked directory inside the root could point elsewhere: check the deepest existing
        # ancestor before creating anything, and the result after. A directory created here holds
        # no temp file of an earlier attempt, so there is nothing to sweep.
        existing = parent
        while not existing.exists() and existing != self.root:
            existing = existing.parent
        self._check_inside(existing)
        parent.mkdir(parents=True, exist_ok=True)
        self._check_inside(parent)

    def _check_room(self, key: str, directory: Path, size: int) -> None:
        size = max(size, 0)
        stats = os.statvfs(directory)
        free = stats.f_bavail * stats.f_frsize - self._space.reserved()
        margin = min(FREE_SPACE_MARGIN_MAX_BYTES, stats.f_blocks * stats.f_frsize // 100)
        if free < size + margin:
            raise StorageUnavailable(
                f"cannot write {key}: {size} bytes do not fit in the {max(free, 0)} bytes free on "
                f"{self.root} (keeping {margin} bytes spare)",
                key=key,
                code="disk_full",
            )

    def _check_inside(self, directory: Path) -> None:
        """Refuse a directory that resolves outside the root. Its components below the root are
        looked at one by one (an ``lstat`` each): with no symlink among them it is inside, and only
        a symlink costs the full resolution."""
        if directory != self.root and self.root in directory.parents:
            current = self.root
            for part in directory.relative_to(self.root).parts:
                current = current / part
                if stat.S_ISLNK(os.lstat(current).st_mode):
                    break
            else:
                return
        real_root = os.path.realpath(self.root)
        if os.path.commonpath([real_root, os.path.realpath(directory)]) != real_root:
            raise OutsideRoot(errno.EACCES, "destination directory resolves outside the root")

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


def _size_or_zero(path: Path) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return 0


# -- the destination as the registry sees it ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileDestSettings:
    root: Path


def dest_path(url: str) -> Path:
    """The local directory of a ``file://`` destination (or a plain path), made absolute."""
    if "://" not in url:
        return Path(url).expanduser().absolute()
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        raise ConfigError(f"destination {url!r} is not a file:// URL or a path")
    # file://./assets (relative, netloc ".") and file:///abs/path are both accepted.
    raw = unquote(parts.netloc + parts.path)
    if not raw:
        raise ConfigError(f"ASSET_WORKER_DEST={url!r}: no path given")
    return Path(raw).expanduser().absolute()


def job_dest(text: str, base_url: str) -> JobDest:
    """A job's own directory inside the worker's: ``/srv/assets/tenant-a`` or
    ``file:///srv/assets/tenant-a`` under ``/srv/assets`` (see ``worker.destinations.parse_dest``)."""
    raw = text.strip()
    root = dest_path(base_url)
    if "://" in raw:
        try:
            parts = urlsplit(raw)
        except ValueError:
            raise ConfigError(f"destination {text!r} is not a URL") from None
        if parts.scheme.lower() != "file":
            raise not_inside(text, str(root))
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"destination {text!r}: use an absolute path or file:///PATH")
        if parts.query or parts.fragment:
            raise ConfigError(f"destination {text!r}: a file URL has no query or fragment")
        raw = unquote(parts.path)
    if not raw.startswith("/") or "\x00" in raw:
        raise ConfigError(f"destination {text!r}: must be an absolute path inside {root}")
    try:
        relative = PurePosixPath(raw).relative_to(PurePosixPath(root))
    except ValueError:
        raise not_inside(text, str(root)) from None
    subpath = "" if str(relative) == "." else str(relative)
    check_subpath(text, subpath)
    return JobDest((root / subpath).as_uri() if subpath else root.as_uri(), subpath)


def _load(url: str, _env: Mapping[str, str]) -> FileDestSettings:
    return FileDestSettings(dest_path(url))


@asynccontextmanager
async def _open(settings: FileDestSettings) -> AsyncIterator[OpenedSink]:
    sink = FileSink(settings.root)
    yield OpenedSink(sink, check=lambda: asyncio.to_thread(writable_problem, sink.root))


def writable_problem(root: Path) -> str | None:
    """Why this process could not write under ``root`` (None when it can): the root is not a
    directory, or the directory that would hold it (the root itself, or its nearest existing
    ancestor, where it would be created) does not let this user create files. A look, not a write:
    checked once at start so that an operator hears of it before jobs pile up waiting."""
    existing = root
    while not existing.exists():
        if existing.parent == existing:
            return f"{root} cannot be created: no part of its path exists"
        existing = existing.parent
    if existing == root and not root.is_dir():
        return f"{root} is not a directory"
    if not existing.is_dir():
        return f"{root} cannot be created: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == root else f"would be created in {existing}, which is"
        return f"{root} {what} not writable by this user (uid {os.geteuid()})"
    return None


SPEC: SinkSpec[FileDestSettings] = SinkSpec(
    name="file",
    schemes=("file",),
    takes_paths=True,
    example="file://PATH or a path",
    load=_load,
    job_dest=job_dest,
    open=_open,
    open_reader=open_file_reader,
)
