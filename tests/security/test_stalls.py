"""Time caps: a file host that trickles bytes cannot hold a transfer slot forever, and a stall is
resumed where it stopped rather than started over."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from aiohttp import web

from tests.conftest import run_jobs
from tests.security.hostile import Hostile, allowing, hostile_settings
from worker.models import JobState
from worker.policy import SpeedFloor

KIB = 1 << 10


def trickle(hostile: Hostile, path: str, *, size: int, piece: int, every_s: float) -> list[str | None]:
    """Serve ``size`` bytes at ``path`` in ``piece``-byte pieces every ``every_s``, honouring Range;
    returns the list the Range header of each request is appended to."""
    ranges: list[str | None] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        asked = request.headers.get("Range")
        ranges.append(asked)
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        start = int(match.group(1)) if match else 0
        status = 206 if match else 200
        response = web.StreamResponse(status=status, headers={"Accept-Ranges": "bytes"})
        response.content_length = size - start
        if match:
            response.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        await response.prepare(request)
        sent = start
        try:
            while sent < size:
                chunk = min(piece, size - sent)
                await response.write(b"s" * chunk)
                sent += chunk
                await asyncio.sleep(every_s)
        except (ConnectionError, RuntimeError):
            pass
        return response

    hostile.routes[path] = answer
    return ranges


async def test_a_trickling_host_is_broken_off_and_resumed_not_restarted(
    hostile: Hostile, tmp_path: Path
) -> None:
    """1 KiB every 0.1 s against a floor of 64 KiB/s over 0.5 s: each stall is broken off within
    about a window, resumed with Range from where it stopped, and after the resumes the asset fails
    with transfer_stalled instead of holding its slot."""
    ranges = trickle(hostile, "/slow", size=10 * 1024 * KIB, piece=KIB, every_s=0.1)
    hostile.job("j1", assetUrl=f"{hostile.url}/slow")
    settings = hostile_settings(
        tmp_path,
        hostile,
        max_attempts=1,
        limits=allowing("127.0.0.1/32", min_speed_bps=64 * KIB, min_speed_window_s=0.5),
    )
    started = time.monotonic()
    (job,) = await run_jobs(settings, ["cloudlayer:j1"])
    elapsed = time.monotonic() - started
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code == "transfer_stalled", job.error
    assert elapsed < 10, f"took {elapsed:.1f} s"
    # The first request and three resumes, each from further on (never from byte 0 again).
    assert ranges[0] is None and len(ranges) == 4
    offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:] if r is not None]
    assert len(offsets) == 3 and 0 < offsets[0] < offsets[1] < offsets[2]
    assert not [p for p in (tmp_path / "assets").rglob("*") if p.is_file()]


async def test_a_slow_host_above_the_floor_finishes(hostile: Hostile, tmp_path: Path) -> None:
    """A host well above the floor (about 640 KiB/s against 64 KiB/s) is never broken off."""
    ranges = trickle(hostile, "/steady", size=512 * KIB, piece=32 * KIB, every_s=0.05)
    hostile.job("j1", assetUrl=f"{hostile.url}/steady", size=512 * KIB)
    settings = hostile_settings(
        tmp_path, hostile, limits=allowing("127.0.0.1/32", min_speed_bps=64 * KIB, min_speed_window_s=0.5)
    )
    (job,) = await run_jobs(settings, ["cloudlayer:j1"])
    assert job.state is JobState.DONE, job.error
    assert ranges == [None]


def test_the_floor_checks_a_quota_per_window() -> None:
    """Each window must bring min_bps x window_s bytes; a window short of it is a stall; time
    paused (waiting on the destination) moves the window on; 0 bytes/s is no floor at all."""
    floor = SpeedFloor(min_bps=100, window_s=10, now=0)
    assert floor.deadline() == 10
    floor.add(999)
    assert not floor.check(now=9)  # before the window ends nothing is decided
    floor.add(1)
    assert not floor.check(now=10)  # 1000 of 1000: a new window from 10
    assert floor.deadline() == 20 and floor.next_check(now=10) == 20
    floor.add(500)
    floor.pause(now=12)
    assert not floor.check(now=21) and floor.next_check(now=21) == 31  # paused: look again later
    floor.resume(now=17)  # five seconds on the destination's account
    assert floor.deadline() == 25
    assert not floor.check(now=24)
    assert floor.check(now=25)  # the window ended with 500 of 1000
    off = SpeedFloor(min_bps=0, window_s=10, now=0)
    off.add(0)
    assert off.deadline() is None and not off.check(now=1e9)
