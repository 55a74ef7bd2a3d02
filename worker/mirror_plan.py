"""Mirror mode's decisions, pure: which sources, which kind of walk, when an incremental walk may
stop, and how soon a discovered item must be fetched.

A *source* names what to mirror: ``cloudlayer`` (the whole account) or ``layers:prj_...`` (one
Layers project); the providers' registry says which provider can list and which scopes it takes
(``ProviderSpec.mirror_scope``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.errors import ConfigError
from worker.providers import PROVIDERS
from worker.providers.base import Listed
from worker.store.base import WalkRecord

FULL = "full"
INCREMENTAL = "incremental"
# Items whose remaining life (before the vendor's retention deletes them) is under this share of
# the retention are fetched before anything else, the nearest to deletion first.
URGENT_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class MirrorSource:
    """``name`` as the user wrote it (normalised): the store's key for the source."""

    name: str
    provider: str
    scope: str


def source_examples() -> str:
    """The sources this build can mirror, as a user writes them (``cloudlayer, layers:PROJECT_ID``)."""
    return ", ".join(spec.mirror_example for spec in PROVIDERS.values() if spec.mirror_scope is not None)


def parse_source(text: str) -> MirrorSource:
    """``cloudlayer`` or ``layers:prj_...``; ``ConfigError`` (one line) for anything else."""
    provider, _, scope = text.strip().partition(":")
    provider = provider.strip().lower()
    scope = scope.strip()
    spec = PROVIDERS.get(provider)
    if spec is None:
        raise ConfigError(
            f"mirror source {text.strip()!r}: no provider {provider!r} (sources: {source_examples()})"
        )
    if spec.mirror_scope is None:
        raise ConfigError(f"mirror source {text.strip()!r}: {provider} cannot list an account")
    spec.mirror_scope(scope)
    return MirrorSource(f"{provider}:{scope}" if scope else provider, provider, scope)


def parse_sources(text: str) -> tuple[MirrorSource, ...]:
    """A comma-separated list of sources (``ASSET_WORKER_MIRROR``), each once."""
    sources: dict[str, MirrorSource] = {}
    for part in text.split(","):
        if part.strip():
            source = parse_source(part)
            sources.setdefault(source.name, source)
    return tuple(sources.values())


def walk_kind(record: WalkRecord, *, now: float, full_interval_s: float) -> str:
    """An interrupted walk is resumed as what it was; otherwise a full walk when none completed
    within ``full_interval_s`` (or ever), an incremental one in between."""
    if record.kind is not None:
        return record.kind
    if record.last_full_walk_at is None or now - record.last_full_walk_at >= full_interval_s:
        return FULL
    return INCREMENTAL


def may_stop(items: Sequence[Listed], created: Sequence[bool], newest_known: float | None) -> bool:
    """An incremental walk stops after a page whose items were all known already and no newer than
    the newest item an earlier walk saw: past it lies only what earlier walks covered. Items
    without a date (the vendor may leave it out) cannot be compared: a page of them all known is
    the sign, as the list is newest first and anything new would stand before them."""
    if not items or any(created):
        return False
    dated = [item.created_at for item in items if item.created_at is not None]
    if not dated:
        return True
    return newest_known is not None and all(when <= newest_known for when in dated)


def due_at(created_at: float | None, *, now: float, retention_s: float | None) -> float:
    """When a discovered item's job is due: now, unless the item is in the last ``URGENT_SHARE``
    of its life before the vendor deletes it; then since its creation, which puts it before the
    jobs due now (claims take the earliest due first) and the oldest, nearest to deletion, first.
    (Such a job also shows in ``asset_worker_oldest_due_job_age_seconds``: as it should.)"""
    if retention_s is None or created_at is None:
        return now
    if created_at + retention_s - now > URGENT_SHARE * retention_s:
        return now
    return min(created_at, now)
