"""The Layers API's JSON bodies for jobs, containers and asset descriptors, and job ETags (pure).

Media URLs are minted by the caller (``UrlMinter``: fresh signature per read, bound to the host the client
called); a job body holds no URL, so its ETag changes exactly when its visible state does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote

from worker.simulator.layers_content import LayersAsset, LayersContainer
from worker.simulator.layers_jobs import LayersJob

__all__ = [
    "API_ROOT",
    "UrlMinter",
    "asset_descriptor",
    "container_json",
    "etag",
    "iso",
    "job_json",
]

# The API's path on the Layers host, as at api.layers.com (locationUrl is relative to the host).
API_ROOT = "/v1"

# Mints a fresh signed URL for (file name, TTL); the caller binds the request's base URL and the clock.
UrlMinter = Callable[[str, float | None], str]


def iso(t: float) -> str:
    """``t`` (unix seconds) as ISO 8601 UTC with milliseconds, e.g. ``2023-11-14T22:13:20.000Z``."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _optional_fields(container: LayersContainer, asset: LayersAsset, now: float) -> dict[str, object]:
    """Fields absent on legacy containers (and sizeBytes when the size is not published)."""
    if container.legacy:
        return {}
    fields: dict[str, object] = {"mimeType": asset.mime_type}
    if container.publish_size:
        fields["sizeBytes"] = asset.size
    if container.url_ttl_s is not None:
        fields["expiresAt"] = iso(now + container.url_ttl_s)
    return fields


def _summary(
    container: LayersContainer, asset: LayersAsset, now: float, mint: UrlMinter
) -> dict[str, object]:
    """An asset as the container lists it: enough to fetch it; the descriptor is authoritative."""
    thumbnail = asset.thumbnail_name
    return {
        "assetId": asset.asset_id,
        "kind": asset.kind,
        "url": mint(asset.file_name, container.url_ttl_s),
        "thumbnailUrl": None if thumbnail is None else mint(thumbnail, container.url_ttl_s),
        **_optional_fields(container, asset, now),
    }


def container_json(container: LayersContainer, now: float, mint: UrlMinter) -> dict[str, object]:
    """The body of ``GET /v1/content/:containerId`` at ``now``."""
    state = container.state_at(now)
    done = state == "completed"
    assets = [_summary(container, a, now, mint) for a in container.generation.assets] if done else []
    ready_at = container.generation.ready_at
    preview = None
    if assets:
        first = assets[0]
        preview = {"kind": "image", "url": first["thumbnailUrl"] or first["url"]}
    return {
        "id": container.id,
        "projectId": container.project_id,
        "status": container.status_style if state == "processing" else state,
        "format": container.format,
        "creativeType": container.creative_type,
        "hook": container.hook,
        "caption": container.caption,
        "approvalStatus": "pending",
        "preview": preview,
        "assets": assets,
        "primaryAsset": assets[0] if assets else None,
        "lastError": container.last_error.to_json() if state == "failed" else None,
        "createdAt": iso(container.created_at),
        "completedAt": iso(ready_at) if done and ready_at is not None else None,
    }


def asset_descriptor(
    container: LayersContainer, asset: LayersAsset, now: float, mint: UrlMinter, checksum: str | None
) -> dict[str, object]:
    """The body of ``GET /v1/content/:containerId/assets/:assetId``; ``checksum`` is what to publish."""
    body = _summary(container, asset, now, mint)
    body = {"containerId": container.id, **body}
    if container.legacy:
        return body
    if asset.duration_ms is not None:
        body["durationMs"] = asset.duration_ms
    body["width"], body["height"] = asset.width, asset.height
    if checksum is not None:
        body["checksumSha256"] = checksum
    return body


def job_json(job: LayersJob, container: LayersContainer, now: float) -> dict[str, object]:
    """The body of ``GET /v1/jobs/:jobId`` at ``now``; the result lists the container's current assets."""
    state = job.state_at(now)
    body: dict[str, object] = {
        "jobId": job.id,
        "kind": "content_generate",
        "status": state,
        "stage": job.stage_at(now),
        "projectId": job.project_id,
        "containerIds": [container.id],
        "locationUrl": f"{API_ROOT}/jobs/{quote(job.id, safe='')}",
        "startedAt": iso(job.started_at),
    }
    if state != "running" and job.finished_at is not None:
        body["finishedAt"] = iso(job.finished_at)
    if state == "completed":
        ready = container.state_at(now) == "completed"
        assets = (
            [{"assetId": a.asset_id, "kind": a.kind} for a in container.generation.assets] if ready else []
        )
        body["result"] = {"containerId": container.id, "assets": assets}
    elif state == "failed":
        body["error"] = job.error.to_json()
    return body


def etag(body: dict[str, object]) -> str:
    """A strong ETag of the body's content (key order and whitespace do not count)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"'
