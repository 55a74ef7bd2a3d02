"""Settings, read and validated once at start: the only place that looks at ``os.environ``.

Every ``ASSET_WORKER_*`` variable must be one this module knows: a typo such as
``ASSET_WORKER_CONCURENCY`` is an error, not a silently ignored knob. Command-line flags override
the environment (the CLI passes them as ``overrides``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from worker.errors import ConfigError
from worker.naming import DEFAULT_TEMPLATE, validate_template

# Pure (no botocore), so reading the S3 settings does not load the S3 client.
from worker.sinks.s3_settings import S3Settings, parse_s3_url

PREFIX = "ASSET_WORKER_"
DEFAULT_DEST = "file://./assets"
# Where `run` serves HTTP when ASSET_WORKER_LISTEN is not set: every interface with an API token,
# loopback without one (see http_binding).
DEFAULT_LISTEN = ("0.0.0.0", 8080)


@dataclass(frozen=True, slots=True, kw_only=True)
class PollSettings:
    """The job-level poll schedule (cloudlayer defaults; Layers has its own)."""

    initial_s: float = 2.0
    max_s: float = 30.0
    multiplier: float = 2.0
    deadline_s: float = 1800.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """Request-level behaviour shared by every upstream call."""

    request_attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudlayerSettings:
    api_key: str | None = field(default=None, repr=False)
    base_url: str = "https://api.cloudlayer.io"
    api_version: str = "v2"


@dataclass(frozen=True, slots=True, kw_only=True)
class LayersSettings:
    """The Layers partner API: key, base URL, its own poll schedule and the read budget."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str = "https://api.layers.com"
    poll: PollSettings = field(
        default_factory=lambda: PollSettings(initial_s=2.0, max_s=10.0, multiplier=1.3)
    )
    reads_per_min: float = 120.0
    # Refresh a signed media URL this long before its published expiresAt.
    expiry_margin_s: float = 60.0


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
class SystemdSettings:
    """What systemd passes a ``Type=notify`` service (sd_notify(3)); all None outside systemd."""

    notify_socket: str | None = None  # NOTIFY_SOCKET: a path, or "@name" for an abstract socket
    watchdog_s: float | None = None  # WATCHDOG_USEC in seconds, when the watchdog is meant for us


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    store_url: str = "sqlite:///./asset-worker.db"
    dest_url: str = DEFAULT_DEST
    path_template: str = DEFAULT_TEMPLATE
    concurrency: int = 8
    poll_concurrency: int = 32
    max_attempts: int = 5
    lease_s: float = 60.0
    claim_interval_s: float = 1.0
    grace_s: float = 25.0
    chunk_bytes: int = 1 << 20
    log_level: str = "info"
    log_format: str = "auto"
    worker_id: str = field(default_factory=lambda: default_worker_id())
    # PostgreSQL connections per process (claims, heartbeats and receipts share them).
    pg_pool_size: int = 10
    # The HTTP service (API, health, metrics): "host:port"; None when ASSET_WORKER_LISTEN is not
    # set, which http_binding() resolves by whether a token is configured.
    listen: str | None = None
    api_token: str | None = field(default=None, repr=False)
    # A connection must send a whole request head within this (slow-header floods), and the
    # service holds at most this many connections at once.
    http_header_timeout_s: float = 10.0
    http_max_connections: int = 512
    # Secrets the worker does not use itself but must never print (the AWS secret key and session
    # token botocore reads from the environment); see secret_values().
    extra_secrets: tuple[str, ...] = field(default=(), repr=False)
    limits: LimitSettings = field(default_factory=LimitSettings)
    systemd: SystemdSettings = field(default_factory=SystemdSettings)
    poll: PollSettings = field(default_factory=PollSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    cloudlayer: CloudlayerSettings = field(default_factory=CloudlayerSettings)
    layers: LayersSettings = field(default_factory=LayersSettings)
    s3: S3Settings | None = None  # set when dest_url is s3://bucket/prefix


def secret_values(settings: Settings) -> tuple[str, ...]:
    """Every configured secret, to be masked wherever text leaves the process (logs, errors, the
    store, API answers): API keys, the API token, the store's password, AWS credentials."""
    values = [
        settings.cloudlayer.api_key,
        settings.layers.api_key,
        settings.api_token,
        store_password(settings.store_url),
        *settings.extra_secrets,
    ]
    return tuple(v for v in values if v)


def store_password(url: str) -> str | None:
    """The password of a store URL, from its userinfo or a ``password=`` query parameter."""
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if name.lower() == "password" and value:
            return value
    return None


def default_worker_id() -> str:
    """Host, pid and a random suffix: unique per process, readable in lease columns and logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


# name -> (section, field, parser). The README's configuration table lists the same variables.
def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _multiplier(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 1:
        raise ValueError("must be a number >= 1")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def _text(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _token(text: str) -> str:
    # Sent in an Authorization header: anything but visible ASCII could never match.
    value = _text(text)
    if not all("!" <= c <= "~" for c in value):
        raise ValueError("must be visible ASCII characters without spaces")
    return value


def _listen_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a (host, port) pair; port 0 picks a free port
    (the worker logs the one it got in ``http_listening``)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:8080 or 127.0.0.1:8080")
    return host.strip("[]"), int(port_text)


def _format_listen(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_address(settings: Settings) -> tuple[str, int]:
    """The validated (host, port) ASSET_WORKER_LISTEN names (0.0.0.0:8080 when it is not set)."""
    return DEFAULT_LISTEN if settings.listen is None else _listen_address(settings.listen)


@dataclass(frozen=True, slots=True)
class HttpBinding:
    """Where ``run`` serves HTTP, and the token its job API requires (None: no token, loopback only)."""

    host: str
    port: int
    api_token: str | None = field(default=None, repr=False)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it is not trusted as loopback


def http_binding(settings: Settings) -> HttpBinding:
    """The HTTP service's address under the auth rule: the job API is never open by accident.

    With ``ASSET_WORKER_API_TOKEN`` the service binds ``ASSET_WORKER_LISTEN`` (default
    0.0.0.0:8080) and the job API requires the token. Without a token it binds loopback only:
    127.0.0.1 on the default port when ASSET_WORKER_LISTEN is not set, the given address when it is
    a loopback one; a non-loopback ASSET_WORKER_LISTEN without a token is a ``ConfigError``
    (asking for the network and getting loopback instead would look like a broken port).
    """
    host, port = listen_address(settings)
    if settings.api_token is not None:
        return HttpBinding(host, port, settings.api_token)
    if settings.listen is None:
        return HttpBinding("127.0.0.1", port)
    if not is_loopback(host):
        raise ConfigError(
            f"ASSET_WORKER_LISTEN={settings.listen} would open the job API to the network without a "
            "token: set ASSET_WORKER_API_TOKEN, listen on loopback (127.0.0.1:PORT), or use run --no-http"
        )
    return HttpBinding(host, port)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number >= 0")
    return value


def _byte_count(text: str) -> int:
    value = _positive_int(text)
    if value < 1024:
        raise ValueError("must be at least 1024 bytes")
    return value


def _networks(text: str) -> tuple[IpNetwork, ...]:
    """Comma-separated CIDRs (``10.20.0.0/16,127.0.0.1/32``; a bare address is a /32 or /128)."""
    networks: list[IpNetwork] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a network in CIDR form such as 10.20.0.0/16 ({exc})") from None
    return tuple(networks)


def _chunk(text: str) -> int:
    value = int(text)
    if not 4096 <= value <= 64 << 20:
        raise ValueError("must be between 4096 and 67108864 bytes")
    return value


_TOP: dict[str, tuple[str, Callable[[str], Any]]] = {
    "STORE": ("store_url", _text),
    "DEST": ("dest_url", _text),
    "PATH_TEMPLATE": ("path_template", validate_template),
    "CONCURRENCY": ("concurrency", _positive_int),
    "POLL_CONCURRENCY": ("poll_concurrency", _positive_int),
    "MAX_ATTEMPTS": ("max_attempts", _positive_int),
    "LEASE_S": ("lease_s", _positive_float),
    "CLAIM_INTERVAL_S": ("claim_interval_s", _positive_float),
    "GRACE_S": ("grace_s", _positive_float),
    "CHUNK_BYTES": ("chunk_bytes", _chunk),
    "LOG_LEVEL": ("log_level", _choice("debug", "info", "warning", "error")),
    "LOG_FORMAT": ("log_format", _choice("auto", "json", "console")),
    "WORKER_ID": ("worker_id", _text),
    "PG_POOL_SIZE": ("pg_pool_size", _positive_int),
    "LISTEN": ("listen", lambda text: _format_listen(_listen_address(text))),
    "API_TOKEN": ("api_token", _token),
    "HTTP_HEADER_TIMEOUT_S": ("http_header_timeout_s", _positive_float),
    "HTTP_MAX_CONNECTIONS": ("http_max_connections", _positive_int),
}
_LIMITS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "ALLOW_NETWORKS": ("allow_networks", _networks),
    "MAX_ASSET_BYTES": ("max_asset_bytes", _byte_count),
    "MAX_RESPONSE_BYTES": ("max_response_bytes", _byte_count),
    "MIN_SPEED_BPS": ("min_speed_bps", _non_negative_int),
    "MIN_SPEED_WINDOW_S": ("min_speed_window_s", _positive_float),
    "DEST_RETRY_MAX_S": ("dest_retry_max_s", _positive_float),
}
_POLL: dict[str, tuple[str, Callable[[str], Any]]] = {
    "POLL_INITIAL_S": ("initial_s", _positive_float),
    "POLL_MAX_S": ("max_s", _positive_float),
    "POLL_MULTIPLIER": ("multiplier", _multiplier),
    "POLL_DEADLINE_S": ("deadline_s", _positive_float),
}
_HTTP: dict[str, tuple[str, Callable[[str], Any]]] = {
    "REQUEST_ATTEMPTS": ("request_attempts", _positive_int),
    "RETRY_INITIAL_S": ("backoff_initial_s", _positive_float),
    "RETRY_MAX_S": ("backoff_max_s", _positive_float),
    "RETRY_AFTER_MAX_S": ("retry_after_max_s", _positive_float),
    "CONNECT_TIMEOUT_S": ("connect_timeout_s", _positive_float),
    "READ_TIMEOUT_S": ("read_timeout_s", _positive_float),
}
_LAYERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "LAYERS_READS_PER_MIN": ("reads_per_min", _positive_float),
    "LAYERS_EXPIRY_MARGIN_S": ("expiry_margin_s", _positive_float),
}
_LAYERS_POLL: dict[str, tuple[str, Callable[[str], Any]]] = {
    "LAYERS_POLL_INITIAL_S": ("initial_s", _positive_float),
    "LAYERS_POLL_MAX_S": ("max_s", _positive_float),
    "LAYERS_POLL_MULTIPLIER": ("multiplier", _multiplier),
}


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


_S3: dict[str, tuple[str, Callable[[str], Any]]] = {
    "S3_ENDPOINT_URL": ("endpoint_url", _text),
    "S3_REGION": ("region", _text),
    "S3_PATH_STYLE": ("path_style", _flag),
    "S3_STORAGE_CLASS": ("storage_class", _text),
    "S3_PART_SIZE_BYTES": ("part_size_min_bytes", int),
    "S3_PARTS_IN_FLIGHT": ("max_parts_in_flight", _positive_int),
    "S3_JANITOR_AGE_S": ("janitor_age_s", _positive_float),
    "S3_OVERWRITE": ("overwrite", _flag),
    "S3_CHECKSUM_MODE": ("checksum_mode", _choice("auto", "require", "off")),
    "S3_MAX_CONNECTIONS": ("max_connections", _positive_int),
}
KNOWN_VARIABLES: frozenset[str] = frozenset(
    PREFIX + name for name in (*_TOP, *_LIMITS, *_POLL, *_HTTP, *_LAYERS, *_LAYERS_POLL, *_S3)
)


def from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment (default ``os.environ``) and CLI ``overrides``.

    ``overrides`` use the ``ASSET_WORKER_*`` suffix in lower case (``concurrency=4``,
    ``poll_initial_s=0.1``) and take the same text-or-value forms. Raises ``ConfigError``.
    """
    env = dict(os.environ if environ is None else environ)
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in KNOWN_VARIABLES)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known ASSET_WORKER_* variables: "
            + ", ".join(sorted(KNOWN_VARIABLES))
        )
    for name, value in overrides.items():
        if value is not None:
            var = PREFIX + name.upper()
            if var not in KNOWN_VARIABLES:
                raise ConfigError(f"unknown override {name!r}")
            env[var] = str(value)

    top = _section(env, _TOP)
    poll = PollSettings(**_section(env, _POLL))
    http = HttpSettings(**_section(env, _HTTP))
    cloudlayer = CloudlayerSettings(
        api_key=env.get("CLOUDLAYER_API_KEY") or None,
        base_url=_base_url(env, "CLOUDLAYER_BASE_URL", "https://api.cloudlayer.io"),
        api_version=_api_version(env.get("CLOUDLAYER_API_VERSION", "v2")),
    )
    default_layers = LayersSettings()
    layers = LayersSettings(
        api_key=env.get("LAYERS_API_KEY") or None,
        base_url=_base_url(env, "LAYERS_BASE_URL", default_layers.base_url),
        poll=dataclasses.replace(
            default_layers.poll, deadline_s=poll.deadline_s, **_section(env, _LAYERS_POLL)
        ),
        **_section(env, _LAYERS),
    )
    s3 = None
    dest_url = str(top.get("dest_url", DEFAULT_DEST))
    if dest_url.lower().startswith("s3://"):
        bucket, prefix = parse_s3_url(dest_url)
        s3 = S3Settings(bucket=bucket, prefix=prefix, **_section(env, _S3))
    settings = Settings(
        **top,
        limits=LimitSettings(**_section(env, _LIMITS)),
        extra_secrets=tuple(v for v in (env.get(n) for n in _AWS_SECRETS) if v),
        poll=poll,
        http=http,
        cloudlayer=cloudlayer,
        layers=layers,
        s3=s3,
        systemd=_systemd(env),
    )
    _check(settings)
    return settings


# botocore reads these itself; they are read here only so that they are masked like our own secrets.
_AWS_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


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


def _section(env: Mapping[str, str], table: Mapping[str, tuple[str, Callable[[str], Any]]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for suffix, (attr, parse) in table.items():
        var = PREFIX + suffix
        if var in env:
            try:
                values[attr] = parse(env[var])
            except ValueError as exc:
                raise ConfigError(f"{var}={env[var]!r}: {exc}") from exc
    return values


def _base_url(env: Mapping[str, str], var: str, default: str) -> str:
    value = env.get(var, default).strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{var}={value!r}: must be an http(s) URL such as {default}")
    return value


def _api_version(text: str) -> str:
    value = text.strip().lower()
    if value not in ("v1", "v2"):
        raise ConfigError(f"CLOUDLAYER_API_VERSION={text!r}: must be v1 or v2")
    return value


def _check(settings: Settings) -> None:
    if settings.poll.max_s < settings.poll.initial_s:
        raise ConfigError(
            f"ASSET_WORKER_POLL_MAX_S ({settings.poll.max_s}) must be >= "
            f"ASSET_WORKER_POLL_INITIAL_S ({settings.poll.initial_s})"
        )
    if settings.layers.poll.max_s < settings.layers.poll.initial_s:
        raise ConfigError("ASSET_WORKER_LAYERS_POLL_MAX_S must be >= ASSET_WORKER_LAYERS_POLL_INITIAL_S")
    if settings.http.backoff_max_s < settings.http.backoff_initial_s:
        raise ConfigError("ASSET_WORKER_RETRY_MAX_S must be >= ASSET_WORKER_RETRY_INITIAL_S")
    if settings.s3 is None:
        dest_path(settings.dest_url)
    store_kind(settings.store_url)


def store_kind(url: str) -> str:
    """``sqlite`` or ``postgresql`` for a valid store URL; ``ConfigError`` otherwise."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        if not urlsplit(url).hostname and "host=" not in url:
            raise ConfigError(
                "ASSET_WORKER_STORE: a PostgreSQL URL needs a host, "
                "e.g. postgresql://USER:PASSWORD@HOST:5432/DATABASE"
            )
        return "postgresql"
    sqlite_path(url)
    return "sqlite"


def dest_path(url: str) -> Path:
    """The local directory of a ``file://`` destination (or a plain path), made absolute."""
    if "://" not in url:
        return Path(url).expanduser().absolute()
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ConfigError(
            f"ASSET_WORKER_DEST={url!r}: unsupported scheme {parts.scheme!r} "
            "(use file://PATH, a path, or s3://BUCKET/PREFIX)"
        )
    # file://./assets (relative, netloc ".") and file:///abs/path are both accepted.
    raw = unquote(parts.netloc + parts.path)
    if not raw:
        raise ConfigError(f"ASSET_WORKER_DEST={url!r}: no path given")
    return Path(raw).expanduser().absolute()


# A per-job destination's own segments below the worker's destination: plain names, none hidden
# (so none can be "..", S3's staging directory or a temp file's dot name).
_DEST_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
MAX_DEST_DEPTH = 8


@dataclass(frozen=True, slots=True)
class JobDest:
    """A job's own destination: ``url`` as the store keeps it (``file:///abs/dir`` or
    ``s3://bucket/prefix``), ``subpath`` where that is below the worker's destination ("" for itself)."""

    url: str
    subpath: str


def parse_dest(text: str, *, base_url: str) -> JobDest:
    """Validate a per-job destination against the worker's own (``ASSET_WORKER_DEST``).

    The policy: a token holder may choose a directory or prefix *inside* the worker's destination,
    nothing else. ``/srv/assets/tenant-a`` (or ``file:///srv/assets/tenant-a``) under a file
    destination ``/srv/assets``, ``s3://bucket/prefix/tenant-a`` under ``s3://bucket/prefix``; the
    extra segments are plain names (``[A-Za-z0-9._-]``, not starting with a dot, at most
    ``MAX_DEST_DEPTH``). So the API can never write where the operator did not point the worker
    (its store, its home, another bucket), and the S3 janitor, which watches the prefix, still
    covers every upload. Raises ``ConfigError``.
    """
    raw = text.strip()
    if raw.lower().startswith("s3://") != base_url.strip().lower().startswith("s3://"):
        raise ConfigError(f"destination {text!r} is not inside the worker's destination {base_url}")
    if base_url.strip().lower().startswith("s3://"):
        bucket, prefix = parse_s3_url(raw)
        base_bucket, base_prefix = parse_s3_url(base_url)
        if bucket != base_bucket:
            raise ConfigError(f"destination {text!r} is not inside the worker's destination {base_url}")
        if base_prefix and prefix != base_prefix and not prefix.startswith(base_prefix + "/"):
            raise ConfigError(f"destination {text!r} is not inside the worker's destination {base_url}")
        subpath = prefix[len(base_prefix) :].strip("/")
        _check_subpath(text, subpath)
        return JobDest(f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}", subpath)
    root = dest_path(base_url)
    if "://" in raw:
        try:
            parts = urlsplit(raw)
        except ValueError:
            raise ConfigError(f"destination {text!r} is not a URL") from None
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"destination {text!r}: use an absolute path, file:///PATH or s3://BUCKET/PREFIX"
            )
        if parts.query or parts.fragment:
            raise ConfigError(f"destination {text!r}: a file URL has no query or fragment")
        raw = unquote(parts.path)
    if not raw.startswith("/") or "\x00" in raw:
        raise ConfigError(f"destination {text!r}: must be an absolute path inside {root}")
    try:
        relative = PurePosixPath(raw).relative_to(PurePosixPath(root))
    except ValueError:
        raise ConfigError(f"destination {text!r} is not inside the worker's destination {root}") from None
    subpath = "" if str(relative) == "." else str(relative)
    _check_subpath(text, subpath)
    return JobDest((root / subpath).as_uri() if subpath else root.as_uri(), subpath)


def _check_subpath(text: str, subpath: str) -> None:
    segments = subpath.split("/") if subpath else []
    if len(segments) > MAX_DEST_DEPTH or not all(_DEST_SEGMENT.match(s) for s in segments):
        raise ConfigError(
            f"destination {text!r}: below the worker's destination, use at most {MAX_DEST_DEPTH} plain "
            "names of letters, digits, '.', '_' and '-', none starting with a dot"
        )


def sqlite_path(url: str) -> Path:
    """The database file of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` store URL."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(
            f"ASSET_WORKER_STORE={redact_url(url)!r}: unsupported store (use sqlite:///PATH, e.g. "
            "sqlite:///./asset-worker.db, or postgresql://USER:PASSWORD@HOST:5432/DATABASE)"
        )
    if parts.netloc:
        raise ConfigError(f"ASSET_WORKER_STORE={url!r}: use three slashes, sqlite:///PATH")
    raw = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not raw:
        raise ConfigError(f"ASSET_WORKER_STORE={url!r}: no database path given")
    return Path(raw).expanduser().absolute()


def redact_url(url: str) -> str:
    """``url`` with any password (in the userinfo or a ``password=`` parameter) replaced by
    ``***``: safe for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if parts.query:
        query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
        parts = parts._replace(query=query)
    return parts.geturl()
