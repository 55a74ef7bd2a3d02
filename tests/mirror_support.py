"""What the mirror tests share: settings that mirror a source, and the key of an asset's job."""

from __future__ import annotations

import dataclasses

from worker.config import MirrorSettings, Settings
from worker.mirror_plan import parse_sources
from worker.models import JobKey

SOURCE = parse_sources("cloudlayer")


def mirroring(
    settings: Settings, text: str = "cloudlayer", *, retention_days: float | None = None
) -> Settings:
    """``settings`` mirroring ``text`` (``ASSET_WORKER_MIRROR``'s form)."""
    return dataclasses.replace(
        settings, mirror=MirrorSettings(sources=parse_sources(text), retention_days=retention_days)
    )


def asset_key(asset_id: str) -> JobKey:
    """The job that copies a cloudlayer asset by its id."""
    return JobKey("cloudlayer", f"asset/{asset_id}")
