"""Layers ids and times (pure): what a key names upstream, and the API's ISO 8601 times.

Apart from ``layers`` so that its listing (``layers_listing``) reads them without importing the
provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from worker.errors import InvalidJob

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True, slots=True)
class Target:
    """What a job key names upstream: a generation job or a content container (``cnt_<uuid>``)."""

    kind: Literal["job", "container"]
    id: str


def parse_target(upstream_id: str) -> Target:
    """``job_...`` is a job; ``cnt_<uuid>`` or a bare uuid a container (normalised to ``cnt_``)."""
    if upstream_id.startswith("job_") and len(upstream_id) > len("job_"):
        return Target("job", upstream_id)
    uuid = upstream_id.removeprefix("cnt_").lower()
    if _UUID.match(uuid):
        return Target("container", f"cnt_{uuid}")
    raise InvalidJob(
        f"Layers id {upstream_id!r} is neither a generation job (job_<id>) nor a content container "
        "(cnt_<uuid> or a bare uuid)"
    )


def parse_time(value: object) -> float | None:
    """An ISO 8601 time (``...Z``) as UNIX seconds; None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def format_time(seconds: float) -> str:
    """UNIX seconds as the API writes times: ISO 8601 UTC with a ``Z``."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
