"""The auth binding rule: the job API is never open to the network by accident."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.cli_support import cli, cli_environment
from tests.conftest import SettingsFactory
from tests.http_support import api_client, serving
from worker.config import from_env
from worker.errors import ConfigError
from worker.http.binding import HttpBinding, http_binding
from worker.simulator.app import Simulator


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # With a token: ASSET_WORKER_LISTEN as given (default every interface), the token required.
        ({"ASSET_WORKER_API_TOKEN": "t"}, HttpBinding("0.0.0.0", 8080, "t")),
        (
            {"ASSET_WORKER_API_TOKEN": "t", "ASSET_WORKER_LISTEN": "10.1.2.3:9000"},
            HttpBinding("10.1.2.3", 9000, "t"),
        ),
        # Without: loopback only, by default or as asked.
        ({}, HttpBinding("127.0.0.1", 8080)),
        ({"ASSET_WORKER_LISTEN": "127.0.0.1:9000"}, HttpBinding("127.0.0.1", 9000)),
        ({"ASSET_WORKER_LISTEN": "127.0.0.2:0"}, HttpBinding("127.0.0.2", 0)),
        ({"ASSET_WORKER_LISTEN": "[::1]:9000"}, HttpBinding("::1", 9000)),
        ({"ASSET_WORKER_LISTEN": "localhost:9000"}, HttpBinding("localhost", 9000)),
    ],
)
def test_where_the_service_listens(env: dict[str, str], expected: HttpBinding) -> None:
    binding = http_binding(from_env(env))
    assert binding == expected and binding.api_token == expected.api_token


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:80", "example.com:80"])
def test_a_network_address_without_a_token_is_refused(listen: str) -> None:
    """Asking for the network without a token is an error, not a silent move to loopback."""
    with pytest.raises(ConfigError, match="ASSET_WORKER_API_TOKEN"):
        http_binding(from_env({"ASSET_WORKER_LISTEN": listen}))


@pytest.mark.parametrize("listen", ["8080", ":8080", "host:", "host:65536", "host:-1", "host:http"])
def test_malformed_listen_addresses_are_refused(listen: str) -> None:
    with pytest.raises(ConfigError, match="ASSET_WORKER_LISTEN"):
        from_env({"ASSET_WORKER_LISTEN": listen})


@pytest.mark.parametrize("token", ["two words", "caf\u00e9-token", " "])
def test_a_token_that_no_header_could_carry_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="ASSET_WORKER_API_TOKEN"):
        from_env({"ASSET_WORKER_API_TOKEN": token})


def test_the_token_never_shows_in_settings() -> None:
    settings = from_env({"ASSET_WORKER_API_TOKEN": "s3cr3t-token"})
    assert "s3cr3t-token" not in repr(settings) and "s3cr3t-token" not in repr(http_binding(settings))


async def test_without_a_token_the_loopback_api_is_open(make_settings: SettingsFactory) -> None:
    async with serving(make_settings(), token=None) as served, api_client(served.url, token=None) as api:
        answer = await api.submit({"key": "cloudlayer:local"})
        assert answer.status == 200 and answer.body["results"][0]["created"]


async def test_no_http_serves_nothing_and_needs_no_token(sim: Simulator, tmp_path: Path) -> None:
    """run --no-http opens no port, so a network address without a token is no reason to refuse."""
    env = {**cli_environment(tmp_path, sim), "ASSET_WORKER_LISTEN": "0.0.0.0:0"}
    refused = await cli(env, "run", "--until-idle")
    assert refused.code == 2 and "ASSET_WORKER_API_TOKEN" in refused.err
    result = await cli(env, "run", "--until-idle", "--no-http")
    assert result.code == 0, result.err
    events = [json.loads(line)["event"] for line in result.out.splitlines()]
    assert "runner_idle" in events and "http_listening" not in events


async def test_a_port_in_use_is_a_runtime_failure(sim: Simulator, tmp_path: Path) -> None:
    """Exit 1 (systemd restarts it: the port may be free again soon), not 2, with a clear message."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**cli_environment(tmp_path, sim), "ASSET_WORKER_LISTEN": f"127.0.0.1:{port}"}
        result = await cli(env, "run", "--until-idle")
    assert result.code == 1
    assert f"listen_failed: cannot listen on 127.0.0.1:{port}" in result.err
    assert "Traceback" not in result.err
