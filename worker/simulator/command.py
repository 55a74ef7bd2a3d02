"""The simulator's command-line options, and serving the simulated APIs from them: shared by
``asset-worker simulate`` (fixed ports) and ``python -m worker.simulator`` (free ports)."""

from __future__ import annotations

import argparse
import asyncio

from worker.simulator.defaults import DEFAULT_CLOUDLAYER_KEY, DEFAULT_LAYERS_KEY


def add_arguments(parser: argparse.ArgumentParser, *, port: int, layers_port: int) -> None:
    """The options, with ``port`` and ``layers_port`` as defaults (0 picks a free port)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=port, help="port of the cloudlayer API and the control API"
    )
    parser.add_argument("--api-key", default=DEFAULT_CLOUDLAYER_KEY, help="the cloudlayer API key it accepts")
    parser.add_argument(
        "--layers-port", type=int, default=layers_port, help="port of the Layers API (/v1/...)"
    )
    parser.add_argument(
        "--layers-api-key",
        default=DEFAULT_LAYERS_KEY,
        help="the Layers bearer key it accepts (content:read, jobs:read)",
    )


async def run(args: argparse.Namespace, *, stop: asyncio.Event | None = None) -> None:
    """Serve until cancelled (Ctrl-C), or until ``stop`` is set."""
    from worker.simulator.app import serve

    await serve(
        args.host,
        args.port,
        args.api_key,
        layers_api_key=args.layers_api_key,
        layers_port=args.layers_port,
        stop=stop,
    )
