"""Fixtures of the hostile-upstream suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.security.hostile import Hostile, run_hostile


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    """A scripted, hostile cloudlayer API and file host on 127.0.0.1."""
    async with run_hostile() as server:
        yield server
