"""The destination registry: one line per sink module; ``ASSET_WORKER_DEST`` picks one by scheme.

Settings and variables, per-job destinations, the secrets masked and the sink a worker opens all
come from the ``SPEC`` of the modules listed here. Adding a destination is a new module exporting
``SPEC`` and one line below (docs/architecture.md walks through it).
"""

from __future__ import annotations

from typing import Any

from worker.errors import ConfigError
from worker.sinks import file, s3
from worker.sinks.base import SinkSpec

SINKS: dict[str, SinkSpec[Any]] = {
    spec.name: spec
    for spec in (
        file.SPEC,
        s3.SPEC,
    )
}


def sink_for(url: str) -> SinkSpec[Any]:
    """The destination ``url`` names: by its scheme, or the one taking plain paths for a path."""
    scheme, sep, _ = url.strip().partition("://")
    for spec in SINKS.values():
        if (spec.takes_paths and not sep) or (sep and scheme.lower() in spec.schemes):
            return spec
    examples = ", ".join(spec.example for spec in SINKS.values())
    raise ConfigError(f"destination {url!r}: unsupported scheme {scheme.lower()!r} (use {examples})")
