"""The SQLite store's connection: one file, one connection, one thread, one hop per transaction.

Every transaction is a plain function of a ``sqlite3.Connection`` that runs whole on the store's
own thread: ``BEGIN``, its statements, ``COMMIT``, in one hand-off from the event loop and back.
A job's store work is a handful of short transactions, and a hand-off per statement (what an
asynchronous wrapper around each call costs) made the store the slowest step of a small file.
One thread also means transactions never interleave on the connection, in the order they were
asked for.

Writers take the write lock up front (``BEGIN IMMEDIATE``), so a read-then-write can never race
another process's; readers get one consistent snapshot (``BEGIN DEFERRED``, never upgraded).

Cancellation: a transaction cannot be stopped halfway on its thread. A caller cancelled while its
transaction is queued or running has it abandoned (rolled back instead of committed if it has not
committed yet) and waits for the thread to be done with it, so nothing of a cancelled call outlives
it; then the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from worker.aio import shielded
from worker.errors import ConfigError
from worker.store.sqlite_errors import open_error, store_error

T = TypeVar("T")

# How long a statement waits for another process's write lock before SQLITE_BUSY.
BUSY_TIMEOUT_S = 10.0


class _Abandoned(Exception):
    """The caller was cancelled before this transaction committed: it was rolled back."""


class SqliteConnection:
    """The store's one connection and the thread it lives on; create it with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, thread: ThreadPoolExecutor) -> None:
        self._conn = conn
        self.path = path
        self._thread = thread
        # Transactions that reached COMMIT or ROLLBACK (counted on the store's one thread).
        self.transactions = 0

    @classmethod
    async def open(cls, path: Path) -> SqliteConnection:
        """Create (mode 0600, with its directories) or open the file and set it up for sharing.

        ``StoreUnusable`` when the file cannot serve as a store whatever we wait for, and
        ``StoreUnavailable`` when it may pass (locked); ``ConfigError`` when it cannot use WAL.
        """
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asset-worker-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(thread, _connect, path)
        except (OSError, sqlite3.Error) as exc:
            thread.shutdown(wait=False)
            raise open_error(exc, path) from exc
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(conn, path, thread)

    async def transaction(self, body: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run ``body`` in one transaction on the store's thread and return what it returns.

        Rolled back on any error; SQLite's own failures are classified (``sqlite_errors``).
        """
        abandon = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(
            self._thread, self._in_transaction, body, write, abandon
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            abandon.set()
            with contextlib.suppress(Exception):
                await shielded(future)
            raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self._conn.close)
        finally:
            self._thread.shutdown(wait=False)

    def _in_transaction(
        self, body: Callable[[sqlite3.Connection], T], write: bool, abandon: threading.Event
    ) -> T:
        if abandon.is_set():
            raise _Abandoned  # cancelled while queued: never begun
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
            result = body(conn)
            if abandon.is_set():
                raise _Abandoned
            conn.execute("COMMIT")
            self.transactions += 1
            return result
        except BaseException as exc:
            if conn.in_transaction:
                self.transactions += 1
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                # Locked past the busy timeout: the caller backs off and tries again. A damaged or
                # read-only file: it stops, since no retry would ever succeed. Anything else SQLite
                # reports (a constraint, a malformed statement) is a bug and stays as it is.
                mapped = store_error(exc, self.path)
                if mapped is not None:
                    raise mapped from exc
            raise


def _connect(path: Path) -> sqlite3.Connection:
    _create_private(path)
    # isolation_level=None: the sqlite3 module opens no transactions behind our back, so the BEGIN
    # of each transaction is the only one. The connection is only ever used on the store's thread.
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        _configure(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    """Create ``path``'s directories and, if it does not exist, the file itself with mode 0600.

    SQLite would create the file with 0644 (less the umask), readable by every local user; it gives
    the -wal and -shm files the mode of the database file, so creating this one first covers all
    three. An existing file keeps the mode its operator gave it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    if mode != "wal":
        # Without WAL (e.g. on a network file system) concurrent CLI and worker access is unsafe.
        raise ConfigError(f"cannot use {path} as a store: SQLite refused WAL mode (got {mode!r})")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
