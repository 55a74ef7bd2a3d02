"""The status JSON contract and the human table (pure).

``asset-worker status --json`` prints a JSON array of :func:`job_to_json` objects; other tools
parse it, so its shape is stable: see docs/status.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.models import AssetRecord, AssetState, Job, JobState, TransferProgress


def iso(ts: float | None) -> str | None:
    """UNIX seconds as ISO 8601 UTC with a ``Z`` (millisecond precision)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def asset_to_json(record: AssetRecord, progress: TransferProgress | None = None) -> dict[str, Any]:
    receipt = record.receipt
    return {
        "asset_id": record.ref.asset_id,
        "state": record.state.value,
        "uri": receipt.uri if receipt else None,
        "size": receipt.size if receipt else None,
        "sha256": receipt.sha256 if receipt else None,
        "upstream_verified": receipt.upstream_verified if receipt else False,
        "error": {"code": record.error.code, "message": record.error.message} if record.error else None,
        "progress": None if progress is None else progress_to_json(progress),
    }


def progress_to_json(progress: TransferProgress) -> dict[str, Any]:
    eta = progress.eta_s
    return {
        "bytes": progress.bytes,
        "total": progress.total,
        "rate_bps": round(progress.rate_bps),
        "eta_s": None if eta is None else round(eta, 1),
        "updated_at": iso(progress.updated_at),
    }


def activity(job: Job, now: float) -> str | None:
    """What is happening to an unfinished job at ``now`` (None for a finished one):

    ``running`` a worker holds it (polling the vendor, or downloading); ``interrupted`` the worker
    that held it stopped without finishing or handing it back (a crash): the next claim takes it up
    again; ``waiting`` nothing to do before its due time (the next poll, a backoff after a failed
    attempt, a full destination); ``queued`` due now, waiting for a free worker.
    """
    if job.state.is_final:
        return None
    if job.lease_live(now):
        return "running"
    if job.interrupted(now):
        return "interrupted"
    return "waiting" if job.due_at > now else "queued"


def shown_state(job: Job, now: float) -> str:
    """The state as a person reads it: ``downloading`` only while a worker downloads; a job ready
    to download that waits for a slot reads ``queued``, and one whose earlier attempt failed or
    was interrupted (a crash) reads ``retrying``."""
    if job.state is not JobState.DOWNLOADING or job.lease_live(now):
        return job.state.value
    return "retrying" if job.attempts > 0 or job.interrupted(now) else "queued"


def live_progress(job: Job, now: float) -> TransferProgress | None:
    """The job's progress report while its download runs; a stale one (its worker gone, or the
    job moved on) is no report at all."""
    if job.progress is None or job.state is not JobState.DOWNLOADING or not job.lease_live(now):
        return None
    return job.progress


def job_to_json(job: Job, now: float | None = None) -> dict[str, Any]:
    """The status object; ``now`` (default: the clock) decides what a lease says about the job."""
    at = time.time() if now is None else now
    progress = live_progress(job, at)
    return {
        "key": str(job.key),
        "provider": job.key.provider,
        "upstream_id": job.key.upstream_id,
        "state": job.state.value,
        "activity": activity(job, at),
        "submitted_at": iso(job.submitted_at),
        "finished_at": iso(job.finished_at),
        "attempts": job.attempts,
        "error": {"code": job.error.code, "message": job.error.message} if job.error else None,
        "assets": [
            asset_to_json(
                a,
                progress
                if progress is not None
                and a.ref.asset_id == progress.asset_id
                and a.state is AssetState.PENDING
                else None,
            )
            for a in job.assets
        ],
    }


def render_table(
    jobs: Sequence[Job], *, extra: dict[str, str] | None = None, now: float | None = None
) -> str:
    """One line per asset (or per job without assets): key, state, file, size, sha256, note.

    An asset being downloaded shows its progress in the size column (``1.2 GiB/4.0 GiB 30%``) and
    its rate and time left in the note. ``extra`` maps a job key to a note printed in the last
    column (the demo's verification).
    """
    at = time.time() if now is None else now
    header = ("JOB", "STATE", "FILE", "SIZE", "SHA256", "NOTE")
    rows: list[tuple[str, ...]] = []
    for job in jobs:
        note = (extra or {}).get(str(job.key), "")
        error = f"{job.error.code}: {job.error.message}" if job.error else ""
        state = shown_state(job, at)
        progress = live_progress(job, at)
        if not job.assets:
            rows.append((str(job.key), state, "-", "-", "-", " ".join(filter(None, [note, error]))))
            continue
        for record in job.assets:
            receipt = record.receipt
            size, notes = (f"{receipt.size:,}" if receipt else "-"), [note, error]
            if (
                progress is not None
                and receipt is None
                and record.state is AssetState.PENDING
                and record.ref.asset_id == progress.asset_id
            ):
                size, doing = progress_cells(progress)
                notes.insert(0, doing)
            rows.append(
                (
                    str(job.key),
                    state,
                    _short_uri(receipt.uri) if receipt else f"({record.state.value})",
                    size,
                    receipt.sha256 if receipt else "-",
                    " ".join(filter(None, notes)),
                )
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)


def progress_cells(progress: TransferProgress) -> tuple[str, str]:
    """``("1.2 GiB/4.0 GiB 30%", "118 MB/s, 24 s left")`` for one download."""
    if progress.total:
        percent = 100 * progress.bytes // progress.total
        size = f"{human_bytes(progress.bytes)}/{human_bytes(progress.total)} {percent}%"
    else:
        size = f"{human_bytes(progress.bytes)}/?"
    eta = progress.eta_s
    rate = f"{human_rate(progress.rate_bps)}"
    return size, rate if eta is None else f"{rate}, {human_duration(eta)} left"


def human_bytes(count: float) -> str:
    """Binary units, three significant figures: ``812 B``, ``97.7 KiB``, ``1.23 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_rate(bps: float) -> str:
    """Decimal units per second, as download tools print them: ``118 MB/s``."""
    value = float(bps)
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if value < 1000 or unit == "GB/s":
            return f"{value:.3g} {unit}" if unit != "B/s" else f"{int(value)} B/s"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: float) -> str:
    """``42 s``, ``7 min 05 s``, ``2 h 03 min``."""
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _short_uri(uri: str) -> str:
    """Paths relative to the working directory read better in a terminal than file:// URIs."""
    if uri.startswith("file://"):
        path = unquote(urlsplit(uri).path)
        relative = os.path.relpath(path)
        return relative if not relative.startswith("..") else path
    return uri
