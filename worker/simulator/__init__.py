"""Fake cloudlayer.io and Layers upstreams (APIs + signed-URL file host) on loopback, with fault knobs.

It is independent of the rest of ``worker``: tests, the demo and the benchmarks talk to it over real HTTP.
Entry points: ``start_simulator`` (async context manager for tests), ``serve`` (CLI), ``python -m
worker.simulator``.
"""

from worker.simulator.app import Simulator, build_app, build_layers_app, serve, start_simulator
from worker.simulator.cloudlayer_jobs import SimJob
from worker.simulator.content import content_bytes, content_sha256, iter_content
from worker.simulator.faults import FaultRule
from worker.simulator.layers_content import LayersAsset, LayersContainer
from worker.simulator.layers_jobs import LayersJob
from worker.simulator.requestlog import RequestRecord
from worker.simulator.specs import SpecConflict, SpecError, SpecNotFound
from worker.simulator.state import DEFAULT_CLOUDLAYER_KEY, DEFAULT_LAYERS_KEY, SimulatorState

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
