"""Settings from the environment: defaults, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import all_variables, from_env, known_variables
from worker.errors import ConfigError
from worker.providers.base import Schedule
from worker.providers.cloudlayer import CloudlayerSettings
from worker.providers.layers import LayersSettings
from worker.sinks.file import dest_path
from worker.store.sqlite import sqlite_path


def test_defaults_match_the_documented_contract() -> None:
    """With an empty environment the worker uses the documented defaults."""
    settings = from_env({})
    assert settings.store_url == "sqlite:///./asset-worker.db"
    assert settings.dest_url == "file://./assets"
    cloudlayer, layers = settings.providers["cloudlayer"], settings.providers["layers"]
    assert cloudlayer.schedule == Schedule(initial_s=2.0, max_s=30.0, multiplier=2.0, deadline_s=1800.0)
    assert layers.schedule == Schedule(initial_s=2.0, max_s=10.0, multiplier=1.3, deadline_s=1800.0)
    assert cloudlayer.options == CloudlayerSettings(
        api_key=None, base_url="https://api.cloudlayer.io", api_version="v2"
    )
    assert layers.options == LayersSettings(
        api_key=None, base_url="https://api.layers.com", reads_per_min=120
    )


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
    cloudlayer = settings.providers["cloudlayer"]
    assert cloudlayer.schedule.initial_s == 0.5 and cloudlayer.schedule.deadline_s == 60
    assert cloudlayer.options.base_url == "http://127.0.0.1:9"
    assert cloudlayer.options.api_key == "cl-secret"
    assert "cl-secret" not in repr(settings)


def test_a_providers_own_schedule_variables_win_over_the_shared_ones() -> None:
    """ASSET_WORKER_POLL_* set every provider's schedule, ASSET_WORKER_<PROVIDER>_POLL_* one
    provider's; what neither sets keeps the provider's own default."""
    settings = from_env(
        {
            "ASSET_WORKER_POLL_MAX_S": "20",
            "ASSET_WORKER_POLL_DEADLINE_S": "600",
            "ASSET_WORKER_LAYERS_POLL_DEADLINE_S": "90",
            "ASSET_WORKER_LAYERS_EXPIRY_MARGIN_S": "15",
            "ASSET_WORKER_CLOUDLAYER_POLL_MULTIPLIER": "3",
        }
    )
    cloudlayer, layers = settings.providers["cloudlayer"].schedule, settings.providers["layers"].schedule
    assert cloudlayer == Schedule(initial_s=2.0, max_s=20.0, multiplier=3.0, deadline_s=600.0)
    assert layers == Schedule(
        initial_s=2.0, max_s=20.0, multiplier=1.3, deadline_s=90.0, expiry_margin_s=15.0
    )


def test_the_registries_variables_are_all_known() -> None:
    """Every provider's and destination's variables are accepted, and appear in the known list."""
    known = known_variables()
    for name in (
        "ASSET_WORKER_S3_REGION",
        "ASSET_WORKER_LAYERS_READS_PER_MIN",
        "ASSET_WORKER_CLOUDLAYER_POLL_MAX_S",
    ):
        assert name in known
    assert {"CLOUDLAYER_API_KEY", "LAYERS_BASE_URL"} <= all_variables() and not {"CLOUDLAYER_API_KEY"} & known


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ASSET_WORKER_CONCURENCY": "3"}, "unknown setting"),
        ({"ASSET_WORKER_CONCURRENCY": "0"}, "ASSET_WORKER_CONCURRENCY"),
        ({"ASSET_WORKER_CONCURRENCY": "many"}, "ASSET_WORKER_CONCURRENCY"),
        ({"ASSET_WORKER_POLL_INITIAL_S": "-1"}, "POLL_INITIAL_S"),
        ({"ASSET_WORKER_POLL_INITIAL_S": "5", "ASSET_WORKER_POLL_MAX_S": "1"}, "POLL_MAX_S"),
        ({"ASSET_WORKER_LAYERS_POLL_MAX_S": "1"}, "layers: .*LAYERS_POLL_MAX_S"),
        ({"ASSET_WORKER_STORE": "mysql://x"}, "unsupported store"),
        ({"ASSET_WORKER_STORE": "postgresql:///db"}, "needs a host"),
        ({"ASSET_WORKER_DEST": "ftp://x/y"}, "unsupported scheme"),
        ({"ASSET_WORKER_DEST": "s3://Not_A_Bucket/x"}, "bucket"),
        (
            {"ASSET_WORKER_DEST": "s3://bucket/x", "ASSET_WORKER_S3_PARTS_IN_FLIGHT": "0"},
            "S3_PARTS_IN_FLIGHT",
        ),
        ({"ASSET_WORKER_PATH_TEMPLATE": "{job}.{ext}"}, "asset"),
        ({"CLOUDLAYER_API_VERSION": "v3"}, "v1, v2"),
        ({"CLOUDLAYER_BASE_URL": "api.cloudlayer.io"}, "http"),
        ({"LAYERS_BASE_URL": "ftp://layers"}, "LAYERS_BASE_URL"),
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
