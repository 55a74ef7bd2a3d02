"""Shared fixtures: the simulator on loopback, settings pointed at it, an observable retry sleep."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiobotocore.session
import aiohttp
import pytest
from hypothesis import settings

from tests.cli_support import kill_leftover_processes
from tests.pgserver import PgServer, run_postgres
from tests.s3server import S3Server, external_server, run_seaweedfs
from tests.settling_loop import SettlingEventLoop
from worker.app import Worker, open_worker
from worker.config import HttpSettings, LimitSettings, Settings
from worker.egress import EgressPolicy
from worker.egress_session import new_upstream_session
from worker.lease import Lease, Progress
from worker.models import Job, JobKey, JobState
from worker.providers.base import ProviderConfig, Schedule
from worker.providers.cloudlayer import CloudlayerSettings
from worker.providers.layers import LayersSettings
from worker.simulator.app import Simulator, start_simulator
from worker.store.base import Phase

# The egress policy of tests whose servers (the simulator, raw handlers) listen on 127.0.0.1.
SIMULATOR_ONLY = EgressPolicy([ipaddress.ip_network("127.0.0.1/32")])


class RecordingSleep:
    """A retry sleep that records every delay asked for and waits only a token amount.

    The delays themselves are the behaviour under test (Retry-After honoured, backoff growing);
    actually waiting them would only make the suite slow.
    """

    def __init__(self, cap_s: float = 0.005) -> None:
        self.delays: list[float] = []
        self._cap_s = cap_s

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(min(seconds, self._cap_s))


# Property tests on a shared two-core machine: a per-example deadline only measures the neighbours'
# load. The mutation job (tools/mutation.py) also wants the same examples for every mutant, so a
# verdict does not depend on the luck of the draw, and no example database shared between mutants.
settings.register_profile("default", deadline=None)
settings.register_profile("mutation", deadline=None, derandomize=True, database=None)
settings.load_profile(os.environ.get("TEST_ASSET_WORKER_HYPOTHESIS_PROFILE", "default"))

def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test and fixture runs on a loop that finishes closing its connections before
    it closes (tests/settling_loop.py)."""
    return {"settling": SettlingEventLoop}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3-compatible server (SeaweedFS) on loopback for the whole session."""
    external = external_server()
    if external is not None:
        yield external
        return
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def aws_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials through the standard chain (environment variables), as in production."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def s3_client(s3_server: S3Server, aws_env: None) -> AsyncIterator[Any]:
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1"
    ) as client:
        yield client


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL for the session (tests/pgserver.py says where it comes from)."""
    with run_postgres() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database of the session's PostgreSQL."""
    return pg_server.create_database()


@pytest.fixture(autouse=True)
async def _no_cli_process_outlives_its_test() -> AsyncIterator[None]:
    yield
    await kill_leftover_processes()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with start_simulator() as simulator:
        yield simulator


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A session for URLs from upstream, as the worker makes it, allowing only 127.0.0.1."""
    async with new_upstream_session(
        HttpSettings(read_timeout_s=5.0), SIMULATOR_ONLY, read_bufsize=1 << 16
    ) as client:
        yield client


@pytest.fixture
def retry_sleep() -> RecordingSleep:
    return RecordingSleep()


SettingsFactory = Callable[..., Settings]


def simulator_providers(sim: Simulator, **layers: Any) -> dict[str, ProviderConfig]:
    """Both providers against ``sim``, polling fast; ``layers`` replaces Layers settings' fields."""
    return {
        "cloudlayer": ProviderConfig(
            CloudlayerSettings(api_key=sim.api_key, base_url=sim.url, api_version="v2"),
            Schedule(initial_s=0.05, max_s=0.2, multiplier=1.5, deadline_s=30.0),
        ),
        "layers": ProviderConfig(
            LayersSettings(
                **{"api_key": sim.layers_api_key, "base_url": sim.layers_url, "reads_per_min": 6000, **layers}
            ),
            Schedule(initial_s=0.05, max_s=0.2, multiplier=1.3, deadline_s=30.0),
        ),
    }


@pytest.fixture
def make_settings(tmp_path: Path, sim: Simulator) -> SettingsFactory:
    """Settings for a worker against ``sim`` with a store and destination under ``tmp_path``.

    Polling and retries are fast because the simulator is local; keyword arguments replace
    top-level fields, ``http=``/``providers=`` whole sections (``Settings.with_schedule`` changes
    the providers' schedules).
    """

    def make(**changes: object) -> Settings:
        base = Settings(
            store_url=f"sqlite:///{tmp_path / 'store.db'}",
            dest_url=str(tmp_path / "assets"),
            claim_interval_s=0.05,
            lease_s=5.0,
            grace_s=5.0,
            worker_id="test-worker",
            # The simulator's file host is on loopback: allow exactly its address, nothing more.
            limits=LimitSettings(allow_networks=(ipaddress.ip_network(sim.host_network),)),
            http=HttpSettings(
                request_attempts=4, backoff_initial_s=0.05, backoff_max_s=0.2, read_timeout_s=5.0
            ),
            providers=simulator_providers(sim),
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    return make


async def run_jobs(
    settings: Settings, keys: list[str], retry_sleep: RecordingSleep | None = None, timeout_s: float = 60
) -> list[Job]:
    """Submit ``keys``, run a whole worker until idle, and return the jobs as stored."""
    async with open_worker(settings, sleep=retry_sleep) as worker:
        parsed = [JobKey.parse(k) for k in keys]
        for key in parsed:
            await worker.store.submit(key, now=time.time())
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), timeout_s)
        return await worker.store.get(parsed)


async def _no_fence() -> None:
    return None


async def poll_until_ready(worker: Worker, key: JobKey, timeout_s: float = 20) -> None:
    """Drive only the poll phase until the job is resolved (``downloading``), downloading nothing,
    so a test can change the world between resolution and transfer."""
    async with asyncio.timeout(timeout_s):
        while (await worker.store.get([key]))[0].state is not JobState.DOWNLOADING:
            for job in await worker.store.claim(
                owner="t", phase=Phase.POLL, now=time.time(), lease_s=5, limit=1
            ):
                await worker.engine.poll(job, Lease("t", Progress(time.time), _no_fence))
            await asyncio.sleep(0.02)
