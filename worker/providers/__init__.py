"""The provider registry: one line per provider module; everything else derives from it.

Job keys, the settings and variables each provider reads, the secrets masked, the providers a
worker builds, the checks ``submit`` and the HTTP API make: all come from the ``SPEC`` of the
modules listed here. Adding a provider is a new module exporting ``SPEC`` and one line below
(docs/architecture.md walks through it).
"""

from __future__ import annotations

from typing import Any

from worker.errors import InvalidJob
from worker.models import JobKey
from worker.providers import cloudlayer, layers
from worker.providers.base import ProviderSpec

PROVIDERS: dict[str, ProviderSpec[Any]] = {
    spec.name: spec
    for spec in (
        cloudlayer.SPEC,
        layers.SPEC,
    )
}


def parse_key(text: str) -> JobKey:
    """A job key as ``submit``, the HTTP API and ``worker.submit`` accept it: well formed, naming a
    registered provider, and an upstream id that provider can have. Raises ``InvalidJob``."""
    key = JobKey.parse(text)
    spec = PROVIDERS.get(key.provider)
    if spec is None:
        known = ", ".join(sorted(PROVIDERS))
        raise InvalidJob(f"job key {text!r} names unknown provider {key.provider!r} (known: {known})")
    try:
        spec.check_id(key.upstream_id)
    except InvalidJob as exc:
        raise InvalidJob(f"job key {text!r}: {exc.message}") from None
    return key
