"""The provider contract: how one vendor's job is polled and its files resolved."""

from __future__ import annotations

from typing import Protocol

from worker.models import AssetRef, Job, PollOutcome
from worker.policy import Backoff


class Provider(Protocol):
    name: str
    poll_backoff: Backoff

    async def poll(self, job: Job) -> PollOutcome:
        """Ask the vendor once where the job stands; resolve its assets when it is finished.

        Raises ``UpstreamRejected`` (permanent, the job fails with its code) or
        ``UpstreamUnavailable`` (already retried at request level; the job is polled again later).
        """
        ...

    async def refresh(self, job: Job, ref: AssetRef) -> AssetRef:
        """A fresh source for an asset whose URL stopped working or is about to expire.

        Raises ``AssetSetChanged`` when the asset is no longer part of the job's file set.
        """
        ...

    def folder(self, job: Job) -> str:
        """The ``{job}`` part of destination keys: the upstream id files are grouped under."""
        ...
