"""What a SQLite failure means for the caller, from its result code (never its message text).

A lock held too long or a full disk may pass (``StoreUnavailable``: the caller waits and tries
again); a damaged, foreign, read-only or unopenable file, or an I/O error, will not
(``StoreUnusable``: the command stops with one line saying which file and what to do). Anything
else SQLite reports about a statement (a constraint, a malformed statement) is a bug and is not
classified here.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from worker.errors import StoreUnavailable, StoreUnusable

# SQLite primary result codes (the low byte of the extended code) that a retry cannot fix, with
# what they mean for the file and what the operator should do. An I/O error counts here: on a local
# file (the only kind WAL supports) it comes from a failing disk, or a file system that went
# read-only after errors; retrying every few seconds would only hide that behind a busy-looking
# worker, while stopping with this message lets the supervisor's restart policy and alerting act.
_UNUSABLE: dict[int, tuple[str, str]] = {
    sqlite3.SQLITE_CORRUPT: (
        "is damaged",
        "restore it from a backup, or move it aside to start with an empty store",
    ),
    sqlite3.SQLITE_NOTADB: (
        "is not a SQLite database, or is damaged beyond recognition",
        "check that ASSET_WORKER_STORE (or --store) names the right file; restore it from a backup, "
        "or move it aside to start with an empty store",
    ),
    sqlite3.SQLITE_READONLY: (
        "is read-only",
        "make the file, its -wal and -shm files and its directory writable by this user, on a file "
        "system mounted read-write",
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "cannot be opened",
        "check that its directory exists and that this user may create and write the file and its "
        "-wal and -shm files there, on a file system mounted read-write",
    ),
    sqlite3.SQLITE_PERM: ("may not be accessed", "check the permissions of the file and its directory"),
    sqlite3.SQLITE_AUTH: ("may not be accessed", "check the permissions of the file and its directory"),
    sqlite3.SQLITE_IOERR: (
        "hit an I/O error",
        "the disk or file system under it is failing or went read-only: check the system log, "
        "then restore or move the file",
    ),
}
# Codes that may pass by themselves. A full disk does not damage the file (SQLite rolls the
# transaction back) and heals when space is freed, often by the operator cleaning up a destination
# on the same disk: the worker waits for it as it waits for a full destination.
_TRANSIENT: dict[int, tuple[str, str]] = {
    sqlite3.SQLITE_BUSY: ("is locked by another process", "try again once it lets go"),
    sqlite3.SQLITE_LOCKED: ("is locked by another connection", "try again once it lets go"),
    sqlite3.SQLITE_FULL: ("cannot grow: the disk holding it is full", "free space on that disk"),
    sqlite3.SQLITE_NOMEM: ("ran out of memory", "try again"),
    sqlite3.SQLITE_PROTOCOL: ("lost a locking race", "try again"),
}
# OS errors creating the store's directory or file that no retry fixes.
_OS_UNUSABLE = frozenset(
    {
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.EIO,
    }
)


def store_error(exc: sqlite3.Error, path: Path) -> StoreUnusable | StoreUnavailable | None:
    """What a SQLite failure on the store at ``path`` means for the caller, from its result code:
    ``StoreUnusable`` (waiting cannot help), ``StoreUnavailable`` (it may pass), or None when SQLite
    gives no reason to think it is the file's fault (a constraint, a statement's own error)."""
    # Errors the sqlite3 module raises itself (a closed connection) carry no SQLite code.
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    name: str | None = getattr(exc, "sqlite_errorname", None)
    detail = f"{name}: {exc}" if name else str(exc)
    primary = None if code is None else code & 0xFF  # the extended code's family
    if code == sqlite3.SQLITE_IOERR_NOMEM:
        primary = sqlite3.SQLITE_NOMEM  # out of memory doing I/O: the process's trouble, not the file's
    elif code == sqlite3.SQLITE_IOERR_SHMSIZE:
        # The -shm file could not grow: a full disk, which is how opening a store on one fails
        # (SQLite reports a full disk as SQLITE_FULL only for the database and -wal files).
        primary = sqlite3.SQLITE_FULL
    if primary in _UNUSABLE:
        what, todo = _UNUSABLE[primary]
        return StoreUnusable(f"the SQLite store {path} {what} ({detail}); {todo}")
    if primary in _TRANSIENT:
        what, todo = _TRANSIENT[primary]
        return StoreUnavailable(f"the SQLite store {path} {what} ({detail}); {todo}")
    if isinstance(exc, sqlite3.OperationalError):
        # As before this classification: an operational error nobody recognised is waited out.
        return StoreUnavailable(f"the SQLite store {path}: {detail}")
    return None


def open_error(exc: OSError | sqlite3.Error, path: Path) -> StoreUnusable | StoreUnavailable:
    """A failure to create, open or migrate the store at ``path``, classified as in ``store_error``."""
    if isinstance(exc, OSError):
        if exc.errno in _OS_UNUSABLE:
            return StoreUnusable(
                f"cannot create the SQLite store {path} ({exc.strerror}); check that this user may "
                "create its directory and the file in it, on a file system mounted read-write"
            )
        return StoreUnavailable(f"cannot create the SQLite store {path} ({exc.strerror})")
    return store_error(exc, path) or StoreUnavailable(f"cannot open the SQLite store {path}: {exc}")
