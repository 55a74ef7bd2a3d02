"""The file destination's resumable part: bytes of a download that a later process may continue.

Why: a worker killed (SIGKILL, OOM) or drained (SIGTERM) 5 GB into a 6 GB file would otherwise
download all 6 GB again. So a download whose file host can resume it (``Accept-Ranges: bytes`` and
a validator) is written to ``.<name>.resume.part``, a name fixed per target, so that the next holder
of the job finds it, beside ``.<name>.resume.json``, which records which entity the bytes are of
(``SourceEntity``: validator and total size; the key is the path itself). The record is replaced
atomically (temp file, rename) and always before a byte of its entity is written, and the part is
emptied before its record changes, so the record never describes bytes of another file.

Who may touch a part: the process holding an exclusive ``flock`` on it, for the whole life of its
upload. A newcomer takes the lock without waiting; if it cannot, a live process (one that lost its
lease but still runs: a zombie) is writing it, and the newcomer leaves it alone and writes a fresh
random temp file instead. The kernel releases the lock of a killed process, so its part is free at
once. Every removal or rename of a part happens while holding its lock, and a newcomer checks after
locking that the name still leads to the inode it locked, so nobody takes over a part that was
published or deleted in between. The protection is exactly as good as ``flock`` on that file system:
complete on local ones; on NFS, Linux maps it to byte-range locks, which hold if the server's lock
manager works.

What is trusted: only bytes of the same entity (a validator and a total that match the record),
never more than its total, written since the machine last booted (``boot_id`` in the record: bytes
the page cache had not yet written back may be missing after a power loss, and a part is never
fsynced before it is complete, which would cost a drain seconds per GiB). Even then the transfer
reads the kept bytes again to hash them, and the file host confirms with ``If-Range`` that the file
has not changed; the published sha256, when there is one, checks the whole.

The functions here block (file system calls); ``FileUpload`` runs them in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from worker.sinks.base import SourceEntity

RESUME_PART_SUFFIX = ".resume.part"
RECORD_SUFFIX = ".resume.json"
_RECORD_FORMAT = 1
# A record is a few hundred bytes; anything much larger is not one of ours.
_RECORD_MAX_BYTES = 16 << 10
_REPLAY_BLOCK_BYTES = 1 << 20
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def part_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{RESUME_PART_SUFFIX}")


def record_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{RECORD_SUFFIX}")


@functools.cache
def boot_id() -> str | None:
    """This boot of the kernel (shared by its containers); None where the system does not say,
    and then only bytes of this very process are trusted."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


@dataclass(slots=True)
class Claimed:
    """A part this process now holds: open for reading and writing, locked, positioned after the
    ``held`` bytes it keeps; ``discarded`` says why earlier bytes were thrown away, if any were."""

    file: BinaryIO
    held: int
    discarded: str | None


def claim(final: Path, entity: SourceEntity) -> Claimed | None:
    """Lock the target's part (created if absent) and keep of it exactly the bytes of ``entity``;
    None when another live process holds it."""
    fd = _open_locked(part_path(final), create=True)
    if fd is None:
        return None
    try:
        held, discarded = _usable_bytes(fd, record_path(final), entity)
        if not held:
            # Emptied before the record changes: a crash in between leaves an empty part, never
            # bytes of one file described as another.
            os.ftruncate(fd, 0)
            write_record(final, entity)
        file = os.fdopen(fd, "r+b")
    except BaseException:
        os.close(fd)
        raise
    file.seek(held)
    return Claimed(file, held, discarded)


def write_record(final: Path, entity: SourceEntity) -> None:
    """Record which entity the part holds, atomically (the caller holds the part's lock, so the
    fixed temp name is never shared)."""
    record = record_path(final)
    temp = record.with_name(record.name + ".tmp")  # forget_record knows this name too
    text = json.dumps(
        {"format": _RECORD_FORMAT, "validator": entity.validator, "total": entity.total, "boot_id": boot_id()}
    )
    temp.write_text(text)
    os.replace(temp, record)


def forget_record(final: Path) -> None:
    """Remove the record (and the temp of one a killed process was writing)."""
    record = record_path(final)
    for path in (record, record.with_name(record.name + ".tmp")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def discard(final: Path) -> None:
    """Remove the part and its record; the caller holds the part's lock (or it is published)."""
    with contextlib.suppress(FileNotFoundError):
        part_path(final).unlink()
    forget_record(final)


def remove_if_free(final: Path) -> bool:
    """Remove a part nobody holds (left by an earlier attempt of the target, now published or
    written without it); a part another live process writes is left alone. True if removed."""
    fd = _open_locked(part_path(final), create=False)
    if fd is None:
        return False
    try:
        discard(final)
    finally:
        os.close(fd)
    return True


def replay(fd: int, size: int, feed: Callable[[bytes], None], stop: threading.Event) -> int:
    """Pass the first ``size`` bytes of ``fd`` to ``feed`` in blocks (``pread``: the position of
    the writes that follow is untouched); returns how many it passed, fewer if the file ended early
    or ``stop`` was set."""
    position = 0
    while position < size and not stop.is_set():
        block = os.pread(fd, min(_REPLAY_BLOCK_BYTES, size - position), position)
        if not block:
            break  # the lock keeps workers away: only someone outside the worker shortens a part
        feed(block)
        position += len(block)
    return position


def _open_locked(path: Path, *, create: bool) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock, or None: held by another process,
    absent (when not creating), or not a plain file."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    # Twice at most: a part replaced between open and lock is someone else's brand-new one.
    for _ in range(2):
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR):
                return None  # a symlink or a directory under our dot-name: not ours to use
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return None
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _still_named(path, fd):
            return fd
        os.close(fd)
    return None


def _still_named(path: Path, fd: int) -> bool:
    """Whether ``path`` still leads to the locked inode: its holder may have published (renamed)
    or discarded it between our open and our lock."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _usable_bytes(fd: int, record: Path, entity: SourceEntity) -> tuple[int, str | None]:
    """How many of the part's bytes are ``entity``'s, and why none are when there were some."""
    size = os.fstat(fd).st_size
    if not size:
        return 0, None
    recorded = _read_record(record)
    if recorded is None:
        return 0, "no_record"
    if recorded[2] is None or recorded[2] != boot_id():
        return 0, "written_before_reboot"
    if recorded[:2] != (entity.validator, entity.total):
        return 0, "other_entity"
    if size > entity.total:
        return 0, "longer_than_file"
    return size, None


def _read_record(record: Path) -> tuple[str, int, str | None] | None:
    """(validator, total, boot id) from a record, or None when it is missing or not one of ours."""
    try:
        with record.open("rb") as handle:
            raw = handle.read(_RECORD_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > _RECORD_MAX_BYTES:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("format") != _RECORD_FORMAT:
        return None
    validator, total, boot = data.get("validator"), data.get("total"), data.get("boot_id")
    if not isinstance(validator, str) or not validator:
        return None
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        return None
    if boot is not None and not isinstance(boot, str):
        return None
    return validator, total, boot
