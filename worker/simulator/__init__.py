"""Fake cloudlayer.io and Layers upstreams (APIs + signed-URL file host) on loopback, with fault knobs.

It is independent of the rest of ``worker``: tests, the demo and the benchmarks talk to it over real HTTP.
Entry points: ``start_simulator`` (async context manager for tests), ``serve`` (CLI), ``python -m
worker.simulator``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.simulator.app import Simulator, build_app, build_layers_app, serve, start_simulator
    from worker.simulator.cloudlayer_jobs import SimJob
    from worker.simulator.content import content_bytes, content_sha256, iter_content
    from worker.simulator.defaults import DEFAULT_CLOUDLAYER_KEY, DEFAULT_LAYERS_KEY
    from worker.simulator.faults import FaultRule
    from worker.simulator.layers_content import LayersAsset, LayersContainer
    from worker.simulator.layers_jobs import LayersJob
    from worker.simulator.requestlog import RequestRecord
    from worker.simulator.specs import SpecConflict, SpecError, SpecNotFound
    from worker.simulator.state import SimulatorState

# Loaded on first use (PEP 562): the CLI reads the simulator's options without loading its server.
_HOMES = {
    "Simulator": "app",
    "build_app": "app",
    "build_layers_app": "app",
    "serve": "app",
    "start_simulator": "app",
    "SimJob": "cloudlayer_jobs",
    "content_bytes": "content",
    "content_sha256": "content",
    "iter_content": "content",
    "DEFAULT_CLOUDLAYER_KEY": "defaults",
    "DEFAULT_LAYERS_KEY": "defaults",
    "FaultRule": "faults",
    "LayersAsset": "layers_content",
    "LayersContainer": "layers_content",
    "LayersJob": "layers_jobs",
    "RequestRecord": "requestlog",
    "SpecConflict": "specs",
    "SpecError": "specs",
    "SpecNotFound": "specs",
    "SimulatorState": "state",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'worker.simulator' has no attribute {name!r}")
    return getattr(importlib.import_module(f"worker.simulator.{home}"), name)


__all__ = [
    "DEFAULT_CLOUDLAYER_KEY",
    "DEFAULT_LAYERS_KEY",
    "FaultRule",
    "LayersAsset",
    "LayersContainer",
    "LayersJob",
    "RequestRecord",
    "SimJob",
    "Simulator",
    "SimulatorState",
    "SpecConflict",
    "SpecError",
    "SpecNotFound",
    "build_app",
    "build_layers_app",
    "content_bytes",
    "content_sha256",
    "iter_content",
    "serve",
    "start_simulator",
]
