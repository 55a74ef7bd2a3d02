"""Settings from the environment: defaults, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import dest_path, from_env, sqlite_path
from worker.errors import ConfigError


def test_defaults_match_the_documented_contract() -> None:
    """With an empty environment the worker uses the documented defaults."""
    settings = from_env({})
    assert settings.store_url == "sqlite:///./asset-worker.db"
    assert settings.dest_url == "file://./assets"
    assert settings.poll.initial_s == 2.0
    assert settings.poll.max_s == 30.0
    assert settings.poll.deadline_s == 1800.0
    assert settings.cloudlayer.base_url == "https://api.cloudlayer.io"
    assert settings.cloudlayer.api_version == "v2"
    assert settings.cloudlayer.api_key is None


def test_environment_and_overrides() -> None:
    """Variables set the knobs; command-line overrides win over variables."""
    env = {
        "ASSET_WORKER_CONCURRENCY": "3",
        "ASSET_WORKER_POLL_INITIAL_S": "0.5",
        "ASSET_WORKER_POLL_DEADLINE_S": "60",
        "CLOUDLAYER_API_KEY": "cl-secret",
        "CLOUDLAYER_BASE_URL": "http://127.0.0.1:9/",
    }
    settings = from_env(env, concurrency=7)
    assert settings.concurrency == 7
    assert settings.poll.initial_s == 0.5
    assert settings.poll.deadline_s == 60
    assert settings.cloudlayer.base_url == "http://127.0.0.1:9"
    assert "cl-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ASSET_WORKER_CONCURENCY": "3"}, "unknown setting"),
        ({"ASSET_WORKER_CONCURRENCY": "0"}, "ASSET_WORKER_CONCURRENCY"),
        ({"ASSET_WORKER_CONCURRENCY": "many"}, "ASSET_WORKER_CONCURRENCY"),
        ({"ASSET_WORKER_POLL_INITIAL_S": "-1"}, "POLL_INITIAL_S"),
        ({"ASSET_WORKER_POLL_INITIAL_S": "5", "ASSET_WORKER_POLL_MAX_S": "1"}, "POLL_MAX_S"),
        ({"ASSET_WORKER_STORE": "mysql://x"}, "unsupported store"),
        ({"ASSET_WORKER_DEST": "ftp://x/y"}, "unsupported scheme"),
        ({"ASSET_WORKER_PATH_TEMPLATE": "{job}.{ext}"}, "asset"),
        ({"CLOUDLAYER_API_VERSION": "v3"}, "v1 or v2"),
        ({"CLOUDLAYER_BASE_URL": "api.cloudlayer.io"}, "http"),
        ({"ASSET_WORKER_LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], fragment: str) -> None:
    """Every bad or unknown setting raises ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=fragment):
        from_env(env)


def test_destination_and_store_paths(tmp_path: Path) -> None:
    """file:// URLs and plain paths give absolute directories; sqlite URLs absolute files."""
    assert dest_path("file://./assets") == Path("assets").absolute()
    assert dest_path(f"file://{tmp_path}/a") == tmp_path / "a"
    assert dest_path(str(tmp_path / "b")) == tmp_path / "b"
    assert sqlite_path("sqlite:///./x.db") == Path("x.db").absolute()
    assert sqlite_path(f"sqlite:///{tmp_path}/y.db") == tmp_path / "y.db"
