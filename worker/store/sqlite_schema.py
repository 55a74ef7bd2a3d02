"""The SQLite store's tables, their migrations, and how rows map to the models.

Kept apart from the queries in ``sqlite.py`` so the schema's history reads in one place.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from worker.models import AssetRecord, AssetRef, AssetState, Job, JobError, JobKey, JobState, Receipt

# One entry per schema version, applied in order inside one transaction and recorded in
# ``PRAGMA user_version``. Released entries are never edited: a change is a new entry
# (``ALTER TABLE jobs ADD COLUMN ...``), so every existing file can be brought forward.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            key              TEXT PRIMARY KEY,
            provider         TEXT NOT NULL,
            upstream_id      TEXT NOT NULL,
            state            TEXT NOT NULL,
            submitted_at     REAL NOT NULL,
            updated_at       REAL NOT NULL,
            finished_at      REAL,
            due_at           REAL NOT NULL,
            polling_since    REAL,
            polls            INTEGER NOT NULL DEFAULT 0,
            attempts         INTEGER NOT NULL DEFAULT 0,
            error_code       TEXT,
            error_message    TEXT,
            lease_owner      TEXT,
            lease_expires_at REAL,
            provider_state   TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX jobs_claim ON jobs (state, due_at)",
        "CREATE INDEX jobs_submitted ON jobs (submitted_at)",
        """CREATE TABLE assets (
            job_key           TEXT NOT NULL REFERENCES jobs (key) ON DELETE CASCADE,
            position          INTEGER NOT NULL,
            asset_id          TEXT NOT NULL,
            url               TEXT NOT NULL,
            expected_size     INTEGER,
            expected_sha256   TEXT,
            content_type      TEXT,
            ext               TEXT,
            expires_at        REAL,
            state             TEXT NOT NULL DEFAULT 'pending',
            uri               TEXT,
            size              INTEGER,
            sha256            TEXT,
            upstream_verified INTEGER,
            stored_at         REAL,
            error_code        TEXT,
            error_message     TEXT,
            PRIMARY KEY (job_key, asset_id)
        )""",
    ),
    (
        "ALTER TABLE assets ADD COLUMN etag TEXT",
        "ALTER TABLE assets ADD COLUMN version_id TEXT",
        "ALTER TABLE assets ADD COLUMN origin TEXT",
        # Finding a stored copy by content (dedupe) must not scan every receipt.
        "CREATE INDEX assets_stored_sha256 ON assets (sha256, size) WHERE state = 'stored'",
    ),
    (
        # A job may name its own destination (API submit); NULL means the worker's default.
        "ALTER TABLE jobs ADD COLUMN dest TEXT",
        # Keyset pagination walks (submitted_at, key).
        "DROP INDEX jobs_submitted",
        "CREATE INDEX jobs_submitted ON jobs (submitted_at, key)",
    ),
)


def job_from_row(row: sqlite3.Row, assets: tuple[AssetRecord, ...]) -> Job:
    """A ``jobs`` row as a :class:`Job` carrying ``assets``."""
    return Job(
        key=JobKey(str(row["provider"]), str(row["upstream_id"])),
        state=JobState(row["state"]),
        submitted_at=float(row["submitted_at"]),
        updated_at=float(row["updated_at"]),
        due_at=float(row["due_at"]),
        finished_at=opt_float(row["finished_at"]),
        polling_since=opt_float(row["polling_since"]),
        polls=int(row["polls"]),
        attempts=int(row["attempts"]),
        error=_error(row["error_code"], row["error_message"]),
        lease_owner=_opt_str(row["lease_owner"]),
        lease_expires_at=opt_float(row["lease_expires_at"]),
        provider_state=_provider_state(row["provider_state"]),
        assets=assets,
        dest=_opt_str(row["dest"]),
    )


def asset_from_row(row: sqlite3.Row) -> AssetRecord:
    """An ``assets`` row; the receipt only when stored, the error only when failed."""
    state = AssetState(row["state"])
    ref = AssetRef(
        asset_id=str(row["asset_id"]),
        url=str(row["url"]),
        expected_size=_opt_int(row["expected_size"]),
        expected_sha256=_opt_str(row["expected_sha256"]),
        content_type=_opt_str(row["content_type"]),
        ext=_opt_str(row["ext"]),
        expires_at=opt_float(row["expires_at"]),
    )
    receipt = None
    if state is AssetState.STORED:
        receipt = Receipt(
            asset_id=ref.asset_id,
            uri=str(row["uri"]),
            size=int(row["size"]),
            sha256=str(row["sha256"]),
            upstream_verified=bool(row["upstream_verified"]),
            stored_at=float(row["stored_at"]),
            etag=_opt_str(row["etag"]),
            version_id=_opt_str(row["version_id"]),
            origin=_opt_str(row["origin"]) or "downloaded",
        )
    error = _error(row["error_code"], row["error_message"]) if state is AssetState.FAILED else None
    return AssetRecord(ref=ref, state=state, receipt=receipt, error=error)


def ref_columns(ref: AssetRef) -> tuple[object, ...]:
    """An asset's source columns in table order, starting with ``asset_id``."""
    return (
        ref.asset_id,
        ref.url,
        ref.expected_size,
        ref.expected_sha256,
        ref.content_type,
        ref.ext,
        ref.expires_at,
    )


def error_columns(error: JobError | None) -> tuple[str | None, str | None]:
    """``(error_code, error_message)``, both NULL for no error."""
    return (None, None) if error is None else (error.code, error.message)


def _error(code: str | None, message: str | None) -> JobError | None:
    return None if code is None else JobError(code=code, message=message or "")


def _provider_state(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"provider_state must be a JSON object, found {type(value).__name__}")
    return value


def opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: int | None) -> int | None:
    return None if value is None else int(value)


def _opt_str(value: str | None) -> str | None:
    return None if value is None else str(value)
