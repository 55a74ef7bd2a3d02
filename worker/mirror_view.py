"""``asset-worker mirror --status``: each source's walks and copies, as a table or JSON (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.models import JobState
from worker.statusview import human_duration, iso
from worker.store.base import SourceCounts, WalkRecord

_PENDING = (JobState.QUEUED, JobState.POLLING, JobState.DOWNLOADING)


def source_to_json(
    name: str, record: WalkRecord | None, counts: SourceCounts | None, *, now: float
) -> dict[str, Any]:
    by_state = counts.by_state if counts is not None else {}
    oldest = counts.oldest_uncopied_created_at if counts is not None else None
    walk = None
    if record is not None and record.kind is not None:
        walk = {
            "kind": record.kind,
            "pages": record.pages,
            "started_at": iso(record.started_at),
            "held": record.lease_owner is not None and (record.lease_expires_at or 0.0) > now,
        }
    error = record.error if record is not None else None
    return {
        "source": name,
        "last_full_walk_at": iso(record.last_full_walk_at) if record else None,
        "last_walk_at": iso(record.last_walk_at) if record else None,
        "newest_created_at": iso(record.newest_created_at) if record else None,
        "walk": walk,
        "error": None if error is None else {"code": error.code, "message": error.message},
        "copied": by_state.get(JobState.DONE, 0),
        "pending": sum(by_state.get(state, 0) for state in _PENDING),
        "failed": by_state.get(JobState.FAILED, 0),
        "oldest_uncopied_created_at": iso(oldest),
        "oldest_uncopied_age_s": None if oldest is None else round(max(now - oldest, 0.0), 1),
    }


def render_sources(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per source, from :func:`source_to_json` objects."""
    header = (
        "SOURCE",
        "LAST FULL WALK",
        "LAST WALK",
        "NEWEST ITEM",
        "COPIED",
        "PENDING",
        "FAILED",
        "OLDEST UNCOPIED",
    )
    lines: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for row in rows:
        age = row["oldest_uncopied_age_s"]
        lines.append(
            (
                row["source"],
                _when(row["last_full_walk_at"]),
                _when(row["last_walk_at"]),
                _when(row["newest_created_at"]),
                f"{row['copied']:,}",
                f"{row['pending']:,}",
                f"{row['failed']:,}",
                "-" if age is None else f"{human_duration(age)} old",
            )
        )
        walk = row["walk"]
        if walk is not None:
            state = "walking" if walk["held"] else "interrupted, resumes at the next walk"
            notes.append(f"{row['source']}: {walk['kind']} walk {state}, {walk['pages']} pages so far")
        if row["error"] is not None:
            notes.append(
                f"{row['source']}: last walk failed: {row['error']['code']}: {row['error']['message']}"
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines]
    return "\n".join([*table, *notes])


def _when(stamp: str | None) -> str:
    # Minutes are enough to read at a glance; the JSON keeps milliseconds.
    return "-" if stamp is None else stamp[:16].replace("T", " ") + "Z"
