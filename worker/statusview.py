"""The status JSON contract and the human table (pure).

``asset-worker status --json`` prints a JSON array of :func:`job_to_json` objects; other tools
parse it, so its shape is stable: see docs/status.md.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.models import AssetRecord, Job


def iso(ts: float | None) -> str | None:
    """UNIX seconds as ISO 8601 UTC with a ``Z`` (millisecond precision)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def asset_to_json(record: AssetRecord) -> dict[str, Any]:
    receipt = record.receipt
    return {
        "asset_id": record.ref.asset_id,
        "state": record.state.value,
        "uri": receipt.uri if receipt else None,
        "size": receipt.size if receipt else None,
        "sha256": receipt.sha256 if receipt else None,
        "upstream_verified": receipt.upstream_verified if receipt else False,
        "error": {"code": record.error.code, "message": record.error.message} if record.error else None,
    }


def job_to_json(job: Job) -> dict[str, Any]:
    return {
        "key": str(job.key),
        "provider": job.key.provider,
        "upstream_id": job.key.upstream_id,
        "state": job.state.value,
        "submitted_at": iso(job.submitted_at),
        "finished_at": iso(job.finished_at),
        "attempts": job.attempts,
        "error": {"code": job.error.code, "message": job.error.message} if job.error else None,
        "assets": [asset_to_json(a) for a in job.assets],
    }


def render_table(jobs: Sequence[Job], *, extra: dict[str, str] | None = None) -> str:
    """One line per asset (or per job without assets): key, state, file, size, sha256, note.

    ``extra`` maps a job key to a note printed in the last column (the demo's verification).
    """
    header = ("JOB", "STATE", "FILE", "SIZE", "SHA256", "NOTE")
    rows: list[tuple[str, ...]] = []
    for job in jobs:
        note = (extra or {}).get(str(job.key), "")
        error = f"{job.error.code}: {job.error.message}" if job.error else ""
        if not job.assets:
            rows.append((str(job.key), job.state.value, "-", "-", "-", " ".join(filter(None, [note, error]))))
            continue
        for record in job.assets:
            receipt = record.receipt
            rows.append(
                (
                    str(job.key),
                    job.state.value,
                    _short_uri(receipt.uri) if receipt else f"({record.state.value})",
                    f"{receipt.size:,}" if receipt else "-",
                    receipt.sha256 if receipt else "-",
                    " ".join(filter(None, [note, error])),
                )
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)


def _short_uri(uri: str) -> str:
    """Paths relative to the working directory read better in a terminal than file:// URIs."""
    if uri.startswith("file://"):
        path = unquote(urlsplit(uri).path)
        relative = os.path.relpath(path)
        return relative if not relative.startswith("..") else path
    return uri
