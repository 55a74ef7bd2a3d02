"""Fixtures for the simulator's own tests: a simulator on a hand-moved clock, a plain HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from worker.simulator.app import Simulator, SimulatorState, start_simulator

T0 = 1_700_000_000.0


class FakeClock:
    """A hand-moved clock for the simulator's state."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    async with start_simulator(state=SimulatorState(clock=clock)) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
