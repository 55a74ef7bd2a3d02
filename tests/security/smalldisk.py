"""A real, small file system for disk-full tests: a tmpfs mounted for the test (needs root, as
the CI machine runs the suite; the PostgreSQL fixture relies on root for its install too)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_disk(mountpoint: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` at ``mountpoint`` for the block; unmounted after."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mountpoint)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"disk-full tests mount a small tmpfs and need root (uid {os.getuid()}): {result.stderr.strip()}"
        )
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Write a filler file until only about ``leave_bytes`` are free on ``disk`` (or none: others
    may be writing to the disk meanwhile, and a full disk is what the caller wants anyway)."""
    filler = disk / f"filler-{os.getpid()}-{time.monotonic_ns()}"
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with filler.open("wb") as handle:
        remaining = max(free - leave_bytes, 0)
        block = b"\0" * (1 << 20)
        try:
            while remaining > 0:
                remaining -= handle.write(block[: min(len(block), remaining)])
            handle.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def free_bytes(disk: Path) -> int:
    stats = os.statvfs(disk)
    return stats.f_bavail * stats.f_frsize


def empty(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
