"""The API reads a mirror walk of a cloudlayer account costs, against the simulator.

    .venv/bin/python bench/mirror_reads.py [--assets 3000] [--new 150]

Builds an account of ``--assets`` assets in the project's simulator, then mirrors it three times
with a real worker (SQLite and files in a temp dir): a full walk, an incremental walk with
nothing new, and an incremental walk after ``--new`` assets appeared. For each it prints the
list reads (``GET /v2/assets?limit=100&offset=N``) and the per-asset reads it made. Reads, not
time: they are what the vendor's rate budget is spent on.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from tests.conftest import simulator_providers
from worker.app import open_worker
from worker.config import MirrorSettings, Settings
from worker.mirror_plan import parse_sources
from worker.simulator.app import Simulator, start_simulator


def reads(sim: Simulator, route: str) -> int:
    return len(sim.requests(route))


async def measure(assets: int, new: int) -> None:
    async with start_simulator() as sim:
        sim.add_cloudlayer_assets(assets, size=64)
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                store_url=f"sqlite:///{tmp}/store.db",
                dest_url=str(Path(tmp) / "assets"),
                providers=simulator_providers(sim),
                mirror=MirrorSettings(sources=parse_sources("cloudlayer")),
            )
            async with open_worker(settings) as worker:
                for label, adding in (
                    ("full", 0),
                    ("incremental, nothing new", 0),
                    (f"incremental, {new} new", new),
                ):
                    if adding:
                        sim.add_cloudlayer_assets(adding, size=64, start_age_s=5, spacing_s=0.01)
                    lists, singles = reads(sim, "cloudlayer.assets"), reads(sim, "cloudlayer.asset")
                    (walk,) = await worker.mirror.walk_all(settings.mirror.sources)
                    print(
                        f"{label:26} {walk.kind:11} listed {walk.items:5}, jobs created {walk.created:5},"
                        f" list reads {reads(sim, 'cloudlayer.assets') - lists:3},"
                        f" asset reads {reads(sim, 'cloudlayer.asset') - singles}"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=3000)
    parser.add_argument("--new", type=int, default=150)
    args = parser.parse_args()
    print(
        f"a cloudlayer account of {args.assets} assets, walked by asset-worker mirror (simulator on loopback)"
    )
    asyncio.run(measure(args.assets, args.new))


if __name__ == "__main__":
    main()
