"""The SQLite store's files on disk: who may read them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.models import JobKey
from worker.store import open_store


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The process umask most systems start with (0022), which lets SQLite's 0644 through."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def test_a_new_store_and_its_wal_and_shm_are_readable_by_the_owner_only(
    tmp_path: Path, usual_umask: None
) -> None:
    """A store created under umask 0022 is 0600, and so are its -wal and -shm files, not 0644:
    jobs hold pre-signed vendor URLs that no other local user should read."""
    directory = tmp_path / "store"
    store = await open_store(f"sqlite:///{directory}/s.db")
    try:
        await store.submit(JobKey("layers", "job-a"), now=1.0)  # the -wal file exists from the first write
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    finally:
        await store.close()
    assert modes == {"s.db": 0o600, "s.db-wal": 0o600, "s.db-shm": 0o600}
