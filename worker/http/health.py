"""Probes, metrics and the API document: none needs the token.

- ``/healthz``: the process and its event loop are alive (answering at all proves the loop runs).
  It stays 200 while draining, so a liveness probe never kills a drain.
- ``/readyz``: the worker is not draining, its destination is usable (``destination_ready``) and
  the store answers a ping within ``ping_timeout_s``; otherwise 503 with the reason's code
  (``draining``, ``destination_unavailable``, ``store_unavailable``), checked in that order.
- ``/metrics``: Prometheus text; the queue gauges are read from the store first (bounded).
- ``/openapi.json``: the OpenAPI 3 document shipped in this package, with the providers and
  destination forms of the registries filled in.
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

from worker.errors import StoreUnavailable
from worker.http.errors import ApiError
from worker.http.state import SERVICE
from worker.metrics import CONTENT_TYPE
from worker.providers import PROVIDERS
from worker.sinks import SINKS


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if service.draining():
        raise ApiError("draining", "the worker is draining: it claims no new work and will stop")
    # Before the ping: a local answer, so a probe learns it without a store round trip (up to
    # ping_timeout_s when the store hangs).
    if not service.destination_ready():
        raise ApiError("destination_unavailable", "the worker's destination cannot be written to now")
    try:
        async with asyncio.timeout(service.ping_timeout_s):
            await service.store.ping()
    except (StoreUnavailable, TimeoutError):
        raise ApiError("store_unavailable", "the job store does not answer") from None
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    await service.metrics.refresh(service.store, now=service.clock.now(), timeout_s=service.stats_timeout_s)
    response = web.Response(body=service.metrics.render())
    # Set as a header: aiohttp's content_type argument refuses the parameters ("; version=...").
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def openapi(_request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


@cache
def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3 document (``worker/http/openapi.json``, package data).

    A submitted key's pattern is each registered provider's name with its ids (``{registered_keys}``),
    a job's own destination the registered destinations' forms (``{destination_forms}``): the
    document says what this worker accepts, whatever providers and destinations it was built with.
    """
    text = resources.files("worker.http").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    _fill_registries(document)
    return document


def _fill_registries(node: object) -> None:
    # Provider names are [a-z][a-z0-9_-]* (JobKey.parse) and schemes plain words: nothing to escape.
    names = sorted(PROVIDERS)
    keys = "|".join(f"{name}:(?:{PROVIDERS[name].id_pattern})" for name in names)
    forms = [
        *(["/"] if any(spec.takes_paths for spec in SINKS.values()) else []),
        *(
            "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in scheme) + "://"
            for spec in SINKS.values()
            for scheme in spec.schemes
        ),
    ]
    if isinstance(node, list):
        for item in node:
            _fill_registries(item)
    elif isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and "{registered_keys}" in pattern:
            node["pattern"] = pattern.replace("{registered_keys}", keys)
            node["maxLength"] = max(len(name) for name in names) + 1 + 256
        elif isinstance(pattern, str) and "{destination_forms}" in pattern:
            node["pattern"] = pattern.replace("{destination_forms}", "|".join(forms))
        for value in node.values():
            _fill_registries(value)
