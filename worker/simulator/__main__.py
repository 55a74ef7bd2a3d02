"""``python -m worker.simulator --port N``: serve the simulator until SIGINT or SIGTERM (for benchmarks)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from worker.simulator.app import serve
from worker.simulator.state import DEFAULT_CLOUDLAYER_KEY, DEFAULT_LAYERS_KEY


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--api-key", default=DEFAULT_CLOUDLAYER_KEY, help="accepted cloudlayer X-API-Key")
    parser.add_argument(
        "--layers-port", type=int, default=0, help="port for the Layers API; 0 picks a free one"
    )
    parser.add_argument(
        "--layers-api-key",
        default=DEFAULT_LAYERS_KEY,
        help="accepted Layers bearer key (content:read, jobs:read)",
    )
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(
        args.host,
        args.port,
        args.api_key,
        layers_api_key=args.layers_api_key,
        layers_port=args.layers_port,
        stop=stop,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 after a signal-initiated stop)."""
    asyncio.run(_run(_parse(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
