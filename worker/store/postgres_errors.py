"""What a PostgreSQL failure means for the store: an outage to wait out, or a bug to report.

Told apart by exception class and SQLSTATE, never by message text. The store retries a transient
failure before COMMIT, turns any other error about the database's state into ``StoreUnavailable``,
and raises an error about the statement itself as the driver reported it.
"""

from __future__ import annotations

import asyncpg

# Errors that mean "the database cannot serve us right now", retried before COMMIT: connection
# failures (SQLSTATE class 08), shutdowns and restarts (class 57: admin shutdown, crash shutdown,
# cannot connect now), serialization failures and deadlocks (class 40), exhausted resources (class
# 53: too many connections, disk full), a read-only server (25006, a standby after a failover), a
# connection that went away, and timeouts.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.OperatorInterventionError,
    asyncpg.TransactionRollbackError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
)


def is_a_bug(exc: asyncpg.PostgresError) -> bool:
    """Whether the server refused the statement itself: a constraint (SQLSTATE class 23), a value
    (class 22) or the SQL (class 42), except a missing privilege or table, which are an operator's
    change to the database (a REVOKE, a dropped schema) that another change undoes."""
    code = str(getattr(exc, "sqlstate", "") or "")
    if code in ("42501", "42P01"):
        return False
    return code[:2] in ("22", "23", "42")


def describe(exc: BaseException) -> str:
    code = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' [{code}]' if code else ''}: {exc}"
