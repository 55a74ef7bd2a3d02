"""``python -m worker.simulator --port N``: serve the simulator until SIGINT or SIGTERM (for benchmarks)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from worker.simulator import command


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.simulator", description=__doc__)
    command.add_arguments(parser, port=0, layers_port=0)
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await command.run(args, stop=stop)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 after a signal-initiated stop)."""
    asyncio.run(_run(_parse(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
