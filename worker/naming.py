"""Destination keys from a template, with every upstream-supplied part made safe (pure).

A key is a relative POSIX path such as ``cloudlayer/job_1/asset_9.pdf``. Ids come from the vendor
and may contain anything, so each substituted value is reduced to ``[A-Za-z0-9._-]``; whenever
that changes a value (or shortens a long one) a short hash of the original is appended, so two
different ids never collapse into the same name. No rendered key can be absolute, contain ``..``
or a separator inside a value, and so none can escape the destination root.
"""

from __future__ import annotations

import hashlib
import mimetypes
import posixpath
import re
import string
from urllib.parse import unquote, urlsplit

DEFAULT_TEMPLATE = "{provider}/{job}/{asset}.{ext}"
FIELDS: frozenset[str] = frozenset({"provider", "job", "asset", "ext"})

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_VALUE = 100
_EXT = re.compile(r"^[a-z0-9]{1,10}$")
_LITERAL_SEGMENT = re.compile(r"^[A-Za-z0-9._{}-]+$")

# Content types whose common extension mimetypes gets wrong or does not know.
_EXT_BY_TYPE = {
    "application/pdf": "pdf",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
}


def sanitise(value: str) -> str:
    """Reduce one upstream value to a safe single path segment, keeping distinct values distinct."""
    cleaned = _UNSAFE.sub("_", value)
    # A leading dot would make hidden files or "." / ".." segments.
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    if cleaned == value and 0 < len(cleaned) <= _MAX_VALUE:
        return cleaned
    tag = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned[:_MAX_VALUE]}~{tag}" if cleaned else f"_~{tag}"


def validate_template(template: str) -> str:
    """Check a key template; return it unchanged or raise ``ValueError`` saying what is wrong."""
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = fields - FIELDS
    if unknown:
        raise ValueError(
            f"path template {template!r} uses unknown field(s) {sorted(unknown)}; known: {sorted(FIELDS)}"
        )
    missing = {"job", "asset"} - fields
    if missing:
        # Asset ids are unique within a job only: both are needed so no two assets share a key.
        raise ValueError(
            f"path template {template!r} must contain {{job}} and {{asset}} (missing: {sorted(missing)})"
        )
    if template.startswith("/") or "\\" in template:
        raise ValueError(f"path template {template!r} must be relative and use '/' separators")
    for segment in template.split("/"):
        if segment in ("", ".", "..") or not _LITERAL_SEGMENT.match(segment):
            raise ValueError(
                f"path template {template!r} has an unsafe segment {segment!r} "
                "(only letters, digits, '.', '_', '-' and {fields} are allowed)"
            )
    return template


def render_key(template: str, *, provider: str, job: str, asset: str, ext: str) -> str:
    """Render a template into a relative key; every value is sanitised first."""
    values = {
        "provider": sanitise(provider),
        "job": sanitise(job),
        "asset": sanitise(asset),
        "ext": ext if _EXT.match(ext) else "bin",
    }
    key = template.format_map(values)
    # Belt and braces: the template was validated and values cannot hold separators, but a
    # rendered key that is not a plain relative path must never reach a sink.
    normal = posixpath.normpath(key)
    if normal != key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"rendered key {key!r} is not a safe relative path")
    return key


def choose_ext(*, hint: str | None, url: str | None, content_type: str | None) -> str:
    """Pick a file extension: the vendor's own, else the URL path's, else the content type's."""
    for candidate in (hint, _ext_from_url(url), _ext_from_type(content_type)):
        if candidate:
            normal = candidate.lower().lstrip(".")
            if normal == "jpeg":
                normal = "jpg"
            if _EXT.match(normal):
                return normal
    return "bin"


def _ext_from_url(url: str | None) -> str | None:
    if not url:
        return None
    try:
        path = unquote(urlsplit(url).path)
    except ValueError:
        return None
    _, dot, ext = posixpath.basename(path).rpartition(".")
    return ext if dot else None


def _ext_from_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _EXT_BY_TYPE:
        return _EXT_BY_TYPE[media]
    guessed = mimetypes.guess_extension(media)
    return guessed.lstrip(".") if guessed else None
