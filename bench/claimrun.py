"""One run of ``bench/run.py``'s claim-latency row, as a child process: ``python bench/claimrun.py URL N``.

Makes N claims of up to 8 jobs each on the store at URL with the worker's own store code, as a
worker's transfer pool does, and releases what each claim took (so the queue keeps its length and
the next claim walks the same queue). Each claim is timed alone, from the call to its answer; the
releases are not. Prints one JSON object: the claims made, and their p50, p99 and slowest, in
seconds. Exits 1 if a claim came back empty (the queue cannot have run dry: nothing leaves it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from worker.store import open_store
from worker.store.base import Phase

CLAIM_LIMIT = 8  # the transfer pool's default size: what one claim of a worker takes at most
LEASE_S = 60.0


async def claim_latencies(url: str, claims: int) -> list[float]:
    store = await open_store(url, pool_size=2)
    latencies: list[float] = []
    try:
        for number in range(claims):
            owner = f"bench-claims-{number}"
            started = time.perf_counter()
            jobs = await store.claim(
                owner=owner, phase=Phase.POLL, now=time.time(), lease_s=LEASE_S, limit=CLAIM_LIMIT
            )
            latencies.append(time.perf_counter() - started)
            if not jobs:
                raise SystemExit(f"claim {number + 1} found no job due")
            for job in jobs:
                await store.release(job.key, owner=owner, now=time.time())
    finally:
        await store.close()
    return latencies


def percentile(ordered: list[float], fraction: float) -> float:
    """The value at ``fraction`` of an ascending list (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def main(argv: list[str]) -> int:
    url, claims = argv[1], int(argv[2])
    ordered = sorted(asyncio.run(claim_latencies(url, claims)))
    summary = {
        "claims": len(ordered),
        "p50_s": percentile(ordered, 0.50),
        "p99_s": percentile(ordered, 0.99),
        "max_s": ordered[-1],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
