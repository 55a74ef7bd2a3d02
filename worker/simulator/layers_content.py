"""Simulated Layers content containers and their assets: specs and state over time (pure).

A container's status is a function of the state clock: ``queued`` for ``queued_s``, then ``processing``
(shown as ``generating`` in the old style) for ``processing_s`` (forever when None), then its outcome. Its
assets (ids, seeds, sizes) are decided at creation so tests can aim faults at them; regenerating replaces
them with a new ``Generation``. Every variation the contract says the worker must accept (status alias,
legacy fields, unpublished size, wrong checksum, URL lifetime) is a switch on the container.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from worker.simulator.content import content_sha256
from worker.simulator.specs import SpecError, SpecReader

__all__ = [
    "FORMATS",
    "OUTCOMES",
    "THUMBNAIL_SIZE",
    "ErrorInfo",
    "Generation",
    "LayersAsset",
    "LayersContainer",
    "asset_sha256",
    "parse_container_ref",
    "parse_container_spec",
    "read_error",
    "regenerated",
    "wrong_sha256",
]

FORMATS = ("video", "slideshow")
OUTCOMES = ("completed", "failed", "canceled")
STATUS_STYLES = ("processing", "generating")
CREATIVE_TYPES = ("generated", "uploaded")
DEFAULT_URL_TTL_S = 3600.0
DEFAULT_SIZE = 100_000
DEFAULT_SLIDES = 3
THUMBNAIL_SIZE = 4096
VIDEO_DURATION_MS = 15_000
_THUMBNAIL_SEED_SALT = 0x7B0B
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A ``{code, message}`` pair, as failed jobs and containers carry it."""

    code: str
    message: str

    def to_json(self) -> dict[str, object]:
        """The pair as the API shows it."""
        return {"code": self.code, "message": self.message}


DEFAULT_CONTAINER_ERROR = ErrorInfo("GENERATION_FAILED", "The renderer could not produce this content")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Shape:
    kind: str
    mime_type: str
    ext: str
    width: int
    height: int


_SHAPES = {
    "video": _Shape(kind="video", mime_type="video/mp4", ext="mp4", width=1080, height=1920),
    "slideshow": _Shape(kind="image", mime_type="image/jpeg", ext="jpg", width=1080, height=1350),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LayersAsset:
    """One asset of one generation of a container; its bytes are ``content.iter_content(seed, size)``."""

    asset_id: str
    container_id: str  # "cnt_<uuid>"
    kind: str  # "video" | "image"
    position: int  # 0-based slide order
    seed: int
    size: int
    mime_type: str
    ext: str
    width: int
    height: int
    duration_ms: int | None

    @property
    def file_name(self) -> str:
        """The asset's name on the media (file) host; holds the asset id so fault rules can match it."""
        return f"{self.container_id}.{self.asset_id}.{self.ext}"

    @property
    def thumbnail_name(self) -> str | None:
        """The thumbnail's name on the media host; only videos have one."""
        return f"{self.container_id}.{self.asset_id}.thumb.jpg" if self.kind == "video" else None

    @property
    def thumbnail_seed(self) -> int:
        """Seed of the thumbnail bytes (distinct from the asset's, so a mix-up shows in the hash)."""
        return self.seed ^ _THUMBNAIL_SEED_SALT


@dataclass(frozen=True, slots=True, kw_only=True)
class Generation:
    """The assets a container has between two regenerations, and when they are ready."""

    number: int  # 0 at creation, +1 per regeneration
    assets: tuple[LayersAsset, ...]
    processing_from: float  # state-clock end of "queued"
    ready_at: float | None  # state-clock time of the outcome; None: processing forever
    outcome: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LayersContainer:
    """One content container; immutable, a regeneration yields a new object with a new ``generation``."""

    uuid: str
    project_id: str
    format: str
    base_seed: int
    sizes: tuple[int, ...]
    status_style: str
    legacy: bool
    publish_size: bool
    wrong_checksum: bool
    url_ttl_s: float | None
    last_error: ErrorInfo
    hook: str
    caption: str
    creative_type: str
    created_at: float
    generation: Generation

    @property
    def id(self) -> str:
        """The id the API echoes: ``cnt_<uuid>``."""
        return f"cnt_{self.uuid}"

    def state_at(self, now: float) -> str:
        """The state at ``now``: "queued", "processing" or the outcome, before any status styling."""
        gen = self.generation
        if now < gen.processing_from:
            return "queued"
        if gen.ready_at is None or now < gen.ready_at:
            return "processing"
        return gen.outcome

    def asset(self, asset_id: str) -> LayersAsset | None:
        """The current generation's asset with that id, if any."""
        return next((a for a in self.generation.assets if a.asset_id == asset_id), None)


def parse_container_ref(raw: str) -> str | None:
    """The container's uuid (lowercase) from ``cnt_<uuid>`` or a bare uuid; None when it is neither."""
    text = raw.removeprefix("cnt_").lower()
    return text if _UUID.fullmatch(text) else None


@lru_cache(maxsize=4096)
def asset_sha256(seed: int, size: int) -> str:
    """The real sha256 of an asset's bytes, cached: it costs about 3 s per GiB."""
    return content_sha256(seed, size)


def wrong_sha256(asset: LayersAsset) -> str:
    """A well-formed checksum that does not match the asset's bytes (the ``wrong_checksum`` knob)."""
    return hashlib.sha256(f"wrong:{asset.seed}:{asset.size}".encode()).hexdigest()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _assets(
    container_uuid: str, fmt: str, base_seed: int, sizes: tuple[int, ...], number: int
) -> tuple[LayersAsset, ...]:
    """A generation's assets. Ids derive from (container, generation, position), so a container re-created
    with the same id after a reset has the same asset ids; generation 0 uses ``base_seed + position``."""
    shape = _SHAPES[fmt]
    assets = []
    for position, size in enumerate(sizes):
        tag = uuid.UUID(bytes=_digest(f"{container_uuid}:{number}:{position}")[:16], version=4)
        asset_id = f"video-{tag}" if fmt == "video" else f"slide-{position + 1}-{tag}"
        seed = base_seed + position
        if number > 0:
            seed = int.from_bytes(_digest(f"{base_seed}:{number}:{position}")[:8], "big")
        assets.append(
            LayersAsset(
                asset_id=asset_id,
                container_id=f"cnt_{container_uuid}",
                kind=shape.kind,
                position=position,
                seed=seed,
                size=size,
                mime_type=shape.mime_type,
                ext=shape.ext,
                width=shape.width,
                height=shape.height,
                duration_ms=VIDEO_DURATION_MS if fmt == "video" else None,
            )
        )
    return tuple(assets)


def read_error(reader: SpecReader, key: str, default: ErrorInfo) -> ErrorInfo:
    """An optional ``{code?, message?}`` field; missing parts (or the whole) come from ``default``."""
    raw = reader.opt_object(key)
    if raw is None:
        return default
    sub = SpecReader(raw, f"layers {key}")
    info = ErrorInfo(sub.text("code", default.code), sub.text("message", default.message))
    sub.finish()
    return info


def _read_sizes(reader: SpecReader, fmt: str) -> tuple[int, ...]:
    """``size`` (the same for every asset) or ``sizes`` (one per asset); ``slides`` counts a slideshow's."""
    slides = reader.opt_integer("slides", minimum=1)
    if fmt == "video" and slides not in (None, 1):
        raise SpecError("layers container: 'slides' applies to slideshows only")
    raw_sizes = reader.opt_list("sizes")
    if raw_sizes is None:
        count = 1 if fmt == "video" else (slides or DEFAULT_SLIDES)
        return (reader.integer("size", DEFAULT_SIZE, minimum=0),) * count
    if reader.has("size"):
        raise SpecError("layers container: give either 'size' or 'sizes', not both")
    sizes = tuple(s for s in raw_sizes if isinstance(s, int) and not isinstance(s, bool) and s >= 0)
    if not sizes or len(sizes) != len(raw_sizes):
        raise SpecError(
            f"layers container: 'sizes' must be a non-empty list of integers >= 0, got {raw_sizes!r}"
        )
    expected = 1 if fmt == "video" else slides
    if expected is not None and len(sizes) != expected:
        raise SpecError(f"layers container: 'sizes' has {len(sizes)} entries for {expected} asset(s)")
    return sizes


def _generation(
    container_uuid: str,
    fmt: str,
    base_seed: int,
    sizes: tuple[int, ...],
    *,
    number: int,
    processing_from: float,
    processing_s: float | None,
    outcome: str,
) -> Generation:
    return Generation(
        number=number,
        assets=_assets(container_uuid, fmt, base_seed, sizes, number),
        processing_from=processing_from,
        ready_at=None if processing_s is None else processing_from + processing_s,
        outcome=outcome,
    )


def parse_container_spec(raw: Mapping[str, object], *, now: float, rng: random.Random) -> LayersContainer:
    """Validate a control-API container spec into a container created at ``now``; raises ``SpecError``."""
    reader = SpecReader(raw, "layers container")
    given_id = reader.opt_text("id")
    if given_id is None:
        container_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    elif (parsed := parse_container_ref(given_id)) is not None:
        container_uuid = parsed
    else:
        raise SpecError(f"layers container: 'id' must be a uuid or cnt_<uuid>, got {given_id!r}")
    fmt = reader.choice("format", FORMATS, "video")
    sizes = _read_sizes(reader, fmt)
    base_seed = reader.integer("seed", int.from_bytes(_digest(container_uuid)[:8], "big"))
    queued_s = reader.number("queued_s", 0.1)
    processing_s = reader.opt_number("processing_s", 0.2)
    outcome = reader.choice("outcome", OUTCOMES, "completed")
    container = LayersContainer(
        uuid=container_uuid,
        project_id=reader.text("project_id", "prj_sim"),
        format=fmt,
        base_seed=base_seed,
        sizes=sizes,
        status_style=reader.choice("status_style", STATUS_STYLES, "processing"),
        legacy=reader.flag("legacy", False),
        publish_size=reader.flag("publish_size", True),
        wrong_checksum=reader.flag("wrong_checksum", False),
        url_ttl_s=reader.opt_number("url_ttl_s", DEFAULT_URL_TTL_S),
        last_error=read_error(reader, "last_error", DEFAULT_CONTAINER_ERROR),
        hook=reader.text("hook", "Three things nobody tells you about simulators"),
        caption=reader.text("caption", "Made by the asset-worker simulator."),
        creative_type=reader.choice("creative_type", CREATIVE_TYPES, "generated"),
        created_at=now,
        generation=_generation(
            container_uuid,
            fmt,
            base_seed,
            sizes,
            number=0,
            processing_from=now + queued_s,
            processing_s=processing_s,
            outcome=outcome,
        ),
    )
    reader.finish()
    return container


def regenerated(
    container: LayersContainer, raw: Mapping[str, object], *, now: float
) -> tuple[LayersContainer, float | None]:
    """The container after a regeneration at ``now`` (new asset ids and seeds, same sizes, then completed),
    and when the old assets' files disappear (None: never). Raises ``SpecError``."""
    reader = SpecReader(raw, "layers regenerate")
    processing_s = reader.opt_number("processing_s", 0.0)
    keep_s = reader.opt_number("keep_old_assets_s", 0.0)
    reader.finish()
    generation = _generation(
        container.uuid,
        container.format,
        container.base_seed,
        container.sizes,
        number=container.generation.number + 1,
        processing_from=now,
        processing_s=processing_s,
        outcome="completed",
    )
    return dataclasses.replace(container, generation=generation), None if keep_s is None else now + keep_s
