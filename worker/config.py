"""Settings, read and validated once at start: the only place that looks at ``os.environ``.

The core's variables are listed here; each provider, destination and store declares its own in its
module (``SPEC``), and the registries bring them together. Every ``ASSET_WORKER_*`` variable must be
one of these: a typo such as ``ASSET_WORKER_CONCURENCY`` is an error, not a silently ignored knob.
Command-line flags override the environment (the CLI passes them as ``overrides``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.envvars import (
    PREFIX,
    IpNetwork,
    Var,
    byte_count,
    choice,
    networks,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    section,
    text,
    token,
    whole_number,
)
from worker.errors import ConfigError
from worker.http.binding import normal_listen
from worker.httpbase import HttpSettings
from worker.mirror_plan import MirrorSource, parse_sources
from worker.naming import DEFAULT_TEMPLATE, validate_template
from worker.providers import PROVIDERS
from worker.providers.base import SHARED_SCHEDULE_VARIABLES, ProviderConfig, load_schedule
from worker.redaction import url_password
from worker.sinks import SINKS, sink_for
from worker.store import store_for

__all__ = [
    "HttpSettings",
    "LimitSettings",
    "MirrorSettings",
    "Settings",
    "SystemdSettings",
    "all_variables",
    "from_env",
    "known_variables",
    "secret_values",
]

DEFAULT_DEST = "file://./assets"
DEFAULT_STORE = "sqlite:///./asset-worker.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSettings:
    """What an upstream answer may cost and where it may lead: a hostile or broken vendor (or file
    host) must not reach internal addresses, fill a disk, exhaust memory or hold a slot forever."""

    # Networks a file host may be in although they are internal (a vendor mirror inside the VPC).
    allow_networks: tuple[IpNetwork, ...] = ()
    max_asset_bytes: int = 5 << 30
    # An API answer, counted after decompression.
    max_response_bytes: int = 8 << 20
    # A transfer slower than this over a whole window is aborted (0 turns the check off).
    min_speed_bps: int = 1024
    min_speed_window_s: float = 60.0
    # Longest wait before a job whose destination was full or unreachable is tried again.
    dest_retry_max_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorSettings:
    """Mirror mode (``run`` keeps these sources copied): what to walk and how often."""

    sources: tuple[MirrorSource, ...] = ()
    # An incremental walk (what is new) this often; a full walk (everything) this often.
    interval_s: float = 300.0
    full_interval_s: float = 86400.0
    # The vendor's retention, when the user knows it: items near it are fetched first.
    retention_days: float | None = None
    # How long a walk's lease lasts without a page saved (a crashed walker's source is free again).
    lease_s: float = 120.0

    @property
    def retention_s(self) -> float | None:
        return None if self.retention_days is None else self.retention_days * 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemdSettings:
    """What systemd passes a ``Type=notify`` service (sd_notify(3)); all None outside systemd."""

    notify_socket: str | None = None  # NOTIFY_SOCKET: a path, or "@name" for an abstract socket
    watchdog_s: float | None = None  # WATCHDOG_USEC in seconds, when the watchdog is meant for us


def default_providers() -> dict[str, ProviderConfig]:
    """Every registered provider with its defaults (no API key: its jobs fail ``unauthenticated``)."""
    return {name: ProviderConfig(spec.load({}), spec.schedule) for name, spec in PROVIDERS.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    store_url: str = DEFAULT_STORE
    dest_url: str = DEFAULT_DEST
    path_template: str = DEFAULT_TEMPLATE
    concurrency: int = 8
    poll_concurrency: int = 32
    max_attempts: int = 5
    lease_s: float = 60.0
    claim_interval_s: float = 1.0
    grace_s: float = 25.0
    # How often a download's progress is written to the store (so status and the API of every
    # replica see it), and how often it is logged (transfer_progress; 0: never).
    progress_interval_s: float = 2.0
    progress_log_interval_s: float = 30.0
    chunk_bytes: int = 1 << 20
    log_level: str = "info"
    log_format: str = "auto"
    worker_id: str = field(default_factory=lambda: default_worker_id())
    # Connections per process for a store that pools them (claims, heartbeats and receipts share them).
    pg_pool_size: int = 10
    # The HTTP service (API, health, metrics): "host:port"; None when ASSET_WORKER_LISTEN is not
    # set, which http_binding() resolves by whether a token is configured.
    listen: str | None = None
    api_token: str | None = field(default=None, repr=False)
    # A connection must send a whole request head within this (slow-header floods), and the
    # service holds at most this many connections at once.
    http_header_timeout_s: float = 10.0
    http_max_connections: int = 512
    # Secrets the worker does not use itself but must never print (credentials a destination's
    # client reads from the environment); see secret_values().
    extra_secrets: tuple[str, ...] = field(default=(), repr=False)
    limits: LimitSettings = field(default_factory=LimitSettings)
    mirror: MirrorSettings = field(default_factory=MirrorSettings)
    systemd: SystemdSettings = field(default_factory=SystemdSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    # Provider name -> its own settings and its schedule; every registered provider is here.
    providers: Mapping[str, ProviderConfig] = field(default_factory=default_providers)
    # The destination's own settings (an S3Settings for s3://...); None: read from dest_url alone.
    dest_settings: Any = None

    def unconfigured_providers(self) -> dict[str, str]:
        """Each provider that cannot work yet, with the variable to set (its API key)."""
        missing = {}
        for name, config in self.providers.items():
            spec = PROVIDERS.get(name)
            variable = spec.missing(config.options) if spec is not None else None
            if variable is not None:
                missing[name] = variable
        return missing

    def sink_settings(self) -> Any:
        """The destination's settings: ``dest_settings``, or what ``dest_url`` alone says."""
        if self.dest_settings is not None:
            return self.dest_settings
        return sink_for(self.dest_url).load(self.dest_url, {})

    def with_schedule(self, provider: str | None = None, **changes: float) -> Settings:
        """A copy with ``changes`` made to one provider's schedule (every provider's when None)."""
        updated = {
            name: dataclasses.replace(
                config, schedule=dataclasses.replace(config.schedule, **changes)
            )
            if provider in (None, name)
            else config
            for name, config in self.providers.items()
        }
        return dataclasses.replace(self, providers=updated)

    def with_options(self, provider: str, options: Any) -> Settings:
        """A copy with one provider's own settings replaced (its schedule kept)."""
        config = self.providers[provider]
        return dataclasses.replace(
            self, providers={**self.providers, provider: dataclasses.replace(config, options=options)}
        )


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every configured secret, to be masked wherever text leaves the process (logs, errors, the
    store, API answers): API keys, the API token, the store's password, a destination's credentials."""
    values: list[str | None] = [settings.api_token, url_password(settings.store_url), *settings.extra_secrets]
    for name, config in settings.providers.items():
        spec = PROVIDERS.get(name)
        if spec is not None:
            values.extend(spec.secrets(config.options))
    return tuple(v for v in values if v)


def default_worker_id() -> str:
    """Host, pid and a random suffix: unique per process, readable in lease columns and logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _chunk(value: str) -> int:
    parsed = whole_number(value)
    if not 4096 <= parsed <= 64 << 20:
        raise ValueError("must be between 4096 and 67108864 bytes")
    return parsed


def _vars(table: Mapping[str, tuple[str, Any]]) -> tuple[Var, ...]:
    return tuple(Var(PREFIX + suffix, attr, parse) for suffix, (attr, parse) in table.items())


_CORE = _vars(
    {
        "STORE": ("store_url", text),
        "DEST": ("dest_url", text),
        "PATH_TEMPLATE": ("path_template", validate_template),
        "CONCURRENCY": ("concurrency", positive_int),
        "POLL_CONCURRENCY": ("poll_concurrency", positive_int),
        "MAX_ATTEMPTS": ("max_attempts", positive_int),
        "LEASE_S": ("lease_s", positive_float),
        "CLAIM_INTERVAL_S": ("claim_interval_s", positive_float),
        "GRACE_S": ("grace_s", positive_float),
        "PROGRESS_INTERVAL_S": ("progress_interval_s", positive_float),
        "PROGRESS_LOG_INTERVAL_S": ("progress_log_interval_s", non_negative_float),
        "CHUNK_BYTES": ("chunk_bytes", _chunk),
        "LOG_LEVEL": ("log_level", choice("debug", "info", "warning", "error")),
        "LOG_FORMAT": ("log_format", choice("auto", "json", "console")),
        "WORKER_ID": ("worker_id", text),
        "PG_POOL_SIZE": ("pg_pool_size", positive_int),
        "LISTEN": ("listen", normal_listen),
        "API_TOKEN": ("api_token", token),
        "HTTP_HEADER_TIMEOUT_S": ("http_header_timeout_s", positive_float),
        "HTTP_MAX_CONNECTIONS": ("http_max_connections", positive_int),
    }
)
_LIMITS = _vars(
    {
        "ALLOW_NETWORKS": ("allow_networks", networks),
        "MAX_ASSET_BYTES": ("max_asset_bytes", byte_count),
        "MAX_RESPONSE_BYTES": ("max_response_bytes", byte_count),
        "MIN_SPEED_BPS": ("min_speed_bps", non_negative_int),
        "MIN_SPEED_WINDOW_S": ("min_speed_window_s", positive_float),
        "DEST_RETRY_MAX_S": ("dest_retry_max_s", positive_float),
    }
)
def _mirror_sources(text: str) -> tuple[MirrorSource, ...]:
    try:
        return parse_sources(text)
    except ConfigError as exc:
        raise ValueError(exc.message.removeprefix("mirror source ")) from None


_MIRROR = _vars(
    {
        "MIRROR": ("sources", _mirror_sources),
        "MIRROR_INTERVAL_S": ("interval_s", positive_float),
        "MIRROR_FULL_INTERVAL_S": ("full_interval_s", positive_float),
        "MIRROR_RETENTION_DAYS": ("retention_days", positive_float),
        "MIRROR_LEASE_S": ("lease_s", positive_float),
    }
)
_HTTP = _vars(
    {
        "REQUEST_ATTEMPTS": ("request_attempts", positive_int),
        "RETRY_INITIAL_S": ("backoff_initial_s", positive_float),
        "RETRY_MAX_S": ("backoff_max_s", positive_float),
        "RETRY_AFTER_MAX_S": ("retry_after_max_s", positive_float),
        "CONNECT_TIMEOUT_S": ("connect_timeout_s", positive_float),
        "READ_TIMEOUT_S": ("read_timeout_s", positive_float),
    }
)
def all_variables() -> frozenset[str]:
    """Every variable the worker reads, the vendors' own (``CLOUDLAYER_API_KEY``...) included.

    Read from the registries at call time: a provider registered later (a plugin, a test) counts.
    """
    return frozenset(
        var.name
        for var in (
            *_CORE,
            *_LIMITS,
            *_MIRROR,
            *_HTTP,
            *SHARED_SCHEDULE_VARIABLES,
            *(v for spec in PROVIDERS.values() for v in spec.all_variables),
            *(v for spec in SINKS.values() for v in spec.variables),
        )
    )


def known_variables() -> frozenset[str]:
    """The ``ASSET_WORKER_*`` variables: any other name with that prefix is refused."""
    return frozenset(name for name in all_variables() if name.startswith(PREFIX))


def from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (default ``os.environ``) and CLI ``overrides``.

    ``overrides`` use the ``ASSET_WORKER_*`` suffix in lower case (``concurrency=4``,
    ``poll_initial_s=0.1``) and take the same text-or-value forms. Raises ``ConfigError``.
    """
    env = dict(os.environ if environ is None else environ)
    known = known_variables()
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise ConfigError(
            "; ".join(f"unknown setting {name}{_did_you_mean(name, known)}" for name in unknown)
            + " (every variable is listed in docs/configuration.md)"
        )
    # A value given on the command line is named by its flag when it is refused.
    flags: dict[str, str] = {}
    for name, value in overrides.items():
        if value is not None:
            var = PREFIX + name.upper()
            if var not in known:
                raise ConfigError(f"unknown override {name!r}")
            env[var] = str(value)
            flags[var] = "--" + name.replace("_", "-")

    top = section(env, _CORE, flags)
    http = HttpSettings(**section(env, _HTTP))
    if http.backoff_max_s < http.backoff_initial_s:
        raise ConfigError("ASSET_WORKER_RETRY_MAX_S must be >= ASSET_WORKER_RETRY_INITIAL_S")
    providers = {
        name: ProviderConfig(spec.load(env), load_schedule(name, spec.schedule, env))
        for name, spec in PROVIDERS.items()
    }
    dest_url = str(top.get("dest_url", DEFAULT_DEST))
    try:
        store_for(str(top.get("store_url", DEFAULT_STORE)))
        dest_settings = sink_for(dest_url).load(dest_url, env)
    except ConfigError as exc:
        raise ConfigError(_name_flags(exc.message, flags)) from None
    return Settings(
        **top,
        limits=LimitSettings(**section(env, _LIMITS)),
        mirror=MirrorSettings(**section(env, _MIRROR)),
        extra_secrets=tuple(v for spec in SINKS.values() for v in spec.secrets(env) if v),
        http=http,
        providers=providers,
        dest_settings=dest_settings,
        systemd=_systemd(env),
    )


def _name_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each variable a command-line flag set named by that flag instead."""
    for var, flag_name in flags.items():
        message = message.replace(f"{var}=", f"{flag_name} ").replace(var, flag_name)
    return message


def _did_you_mean(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def _systemd(env: Mapping[str, str]) -> SystemdSettings:
    """NOTIFY_SOCKET and the watchdog, as sd_notify(3) and sd_watchdog_enabled(3) read them."""
    socket_name = env.get("NOTIFY_SOCKET") or None
    usec_text = env.get("WATCHDOG_USEC")
    if not usec_text:
        return SystemdSettings(notify_socket=socket_name)
    if not usec_text.isdigit() or int(usec_text) == 0:
        raise ConfigError(f"WATCHDOG_USEC={usec_text!r}: must be a positive number of microseconds")
    # A watchdog set up for another process (WATCHDOG_PID names it) is not ours to feed.
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return SystemdSettings(notify_socket=socket_name)
    return SystemdSettings(notify_socket=socket_name, watchdog_s=int(usec_text) / 1e6)
