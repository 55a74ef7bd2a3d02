"""How store rows map to the models, shared by every backend.

A row is anything indexable by column name: ``sqlite3.Row`` and ``asyncpg.Record`` both are. The
backends agree on column names and on what a value means (times are UNIX seconds, the provider
state is a JSON object in text), so one mapping serves both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from worker.models import (
    AssetRecord,
    AssetRef,
    AssetState,
    Job,
    JobError,
    JobKey,
    JobState,
    Receipt,
    TransferProgress,
)
from worker.store.base import SourceCounts, WalkRecord


class Row(Protocol):
    def __getitem__(self, column: str, /) -> Any: ...


def job_from_row(row: Row, assets: tuple[AssetRecord, ...]) -> Job:
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
        progress=progress_from_text(row["progress"]),
    )


def progress_to_text(progress: TransferProgress) -> str:
    """The ``progress`` column: a small JSON object (text in SQLite, jsonb in PostgreSQL)."""
    return json.dumps(
        {
            "asset_id": progress.asset_id,
            "bytes": progress.bytes,
            "total": progress.total,
            "rate_bps": round(progress.rate_bps, 1),
            "started_at": progress.started_at,
            "updated_at": progress.updated_at,
        },
        separators=(",", ":"),
    )


def progress_from_text(text: str | None) -> TransferProgress | None:
    """The ``progress`` column back; a value of another shape (written by hand, or by a later
    version) reads as no report rather than breaking every read of the job."""
    if text is None:
        return None
    try:
        value = json.loads(text)
        return TransferProgress(
            asset_id=str(value["asset_id"]),
            bytes=int(value["bytes"]),
            total=None if value["total"] is None else int(value["total"]),
            rate_bps=float(value["rate_bps"]),
            started_at=float(value["started_at"]),
            updated_at=float(value["updated_at"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


def asset_from_row(row: Row) -> AssetRecord:
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
    """``(error_code, error_message)``, both NULL for no error; a NUL in upstream text (which
    PostgreSQL cannot store) becomes U+FFFD on every backend alike."""
    return (None, None) if error is None else (without_nul(error.code), without_nul(error.message))


def without_nul(value: Any) -> Any:
    """``value`` (str, or JSON-like lists and dicts of them) with every NUL replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


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


def walk_from_row(row: Row) -> WalkRecord:
    """A ``mirror_sources`` row."""
    return WalkRecord(
        source=str(row["source"]),
        kind=_opt_str(row["walk_kind"]),
        position=_opt_str(row["walk_position"]),
        started_at=opt_float(row["walk_started_at"]),
        pages=int(row["walk_pages"]),
        last_full_walk_at=opt_float(row["last_full_walk_at"]),
        last_walk_at=opt_float(row["last_walk_at"]),
        newest_created_at=opt_float(row["newest_created_at"]),
        error=_error(row["error_code"], row["error_message"]),
        lease_owner=_opt_str(row["lease_owner"]),
        lease_expires_at=opt_float(row["lease_expires_at"]),
    )


def source_counts_from_rows(rows: Iterable[Row]) -> dict[str, SourceCounts]:
    """Rows of ``(source, state, n, oldest)`` (oldest: the earliest ``origin_created_at`` of that
    state's jobs) as counts per source; the oldest uncopied item is over the unfinished states and
    ``failed`` (a failed copy is not a copy)."""
    counts: dict[str, dict[JobState, int]] = {}
    oldest: dict[str, float | None] = {}
    for row in rows:
        source = str(row["source"])
        state = JobState(row["state"])
        counts.setdefault(source, dict.fromkeys(JobState, 0))[state] = int(row["n"])
        oldest.setdefault(source, None)
        if state is not JobState.DONE and state is not JobState.CANCELED and row["oldest"] is not None:
            seen = oldest[source]
            oldest[source] = float(row["oldest"]) if seen is None else min(seen, float(row["oldest"]))
    return {source: SourceCounts(by_state, oldest[source]) for source, by_state in counts.items()}
