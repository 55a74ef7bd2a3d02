"""Settings of the S3 destination and the parsing of ``s3://bucket/prefix`` (pure).

Kept free of botocore and of ``os.environ`` so that ``worker.config`` can build (or absorb) these
settings without importing the S3 client: config.py stays the only reader of the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from worker.errors import ConfigError
from worker.sinks.s3_parts import MAX_PART_BYTES, MIB, MIN_PART_BYTES

# "auto": send per-part and whole-object SHA256 checksums, and stop sending them (once, logged)
# if the store rejects them; "require": send them and fail if rejected; "off": never send them.
ChecksumMode = Literal["auto", "require", "off"]
CHECKSUM_MODES: tuple[ChecksumMode, ...] = ("auto", "require", "off")

# S3's rules for new bucket names (no upper case, no underscores): refusing anything else at start
# up beats a SignatureDoesNotMatch or InvalidBucketName on the first upload.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Settings:
    """Where and how assets are published to S3 or an S3-compatible store.

    Credentials are deliberately absent: botocore's standard chain finds them (environment, shared
    config and profile, web identity, container and instance metadata).
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None  # None: AWS, or AWS_ENDPOINT_URL_S3 read by botocore itself
    region: str | None = None  # None: botocore's own resolution (AWS_REGION, profile)
    path_style: bool = False
    storage_class: str | None = None  # None: the bucket's default (STANDARD on AWS)
    part_size_min_bytes: int = 8 * MIB
    max_parts_in_flight: int = 4
    janitor_age_s: float = 24 * 3600.0
    overwrite: bool = False
    checksum_mode: ChecksumMode = "auto"
    # One client serves every concurrent transfer, each with up to max_parts_in_flight requests.
    max_connections: int = 32

    def __post_init__(self) -> None:
        if not _BUCKET.match(self.bucket) or ".." in self.bucket:
            raise ConfigError(f"S3 bucket name {self.bucket!r} is not a valid bucket name")
        prefix = self.prefix.strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ConfigError(f"S3 prefix {self.prefix!r} has an empty, '.' or '..' segment")
        object.__setattr__(self, "prefix", prefix)
        if not MIN_PART_BYTES <= self.part_size_min_bytes <= MAX_PART_BYTES:
            raise ConfigError(
                f"S3 part size {self.part_size_min_bytes} must be between {MIN_PART_BYTES} (5 MiB, "
                f"S3's minimum) and {MAX_PART_BYTES} (5 GiB)"
            )
        if self.max_parts_in_flight < 1:
            raise ConfigError(f"S3 parts in flight must be at least 1, not {self.max_parts_in_flight}")
        if self.janitor_age_s <= 0:
            raise ConfigError(f"S3 janitor age must be positive, not {self.janitor_age_s}")
        if self.checksum_mode not in CHECKSUM_MODES:
            raise ConfigError(
                f"S3 checksum mode {self.checksum_mode!r} is not one of {', '.join(CHECKSUM_MODES)}"
            )
        if self.max_connections < 1:
            raise ConfigError(f"S3 max connections must be at least 1, not {self.max_connections}")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` → ``("bucket", "some/prefix")``; raises ``ConfigError``."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # a property that raises ValueError for "s3://bucket:x"
    except ValueError as exc:
        raise ConfigError(f"destination {url!r} is not a URL") from exc
    if parts.scheme.lower() != "s3":
        raise ConfigError(f"destination {url!r} is not an s3:// URL")
    if parts.query or parts.fragment or parts.username or parts.password or port:
        raise ConfigError(f"destination {url!r}: an s3:// URL is only s3://bucket/prefix")
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"destination {url!r}: {bucket!r} is not a valid bucket name")
    prefix = parts.path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"destination {url!r}: the prefix has an empty, '.' or '..' segment")
    return bucket, prefix
