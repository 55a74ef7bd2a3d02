"""The vendors' answers fuzzed: whatever JSON (or bytes) comes back, parsing ends in a poll
outcome or one of our own errors, never a crash; and the pure guards hold for any input."""

from __future__ import annotations

import ipaddress
import json
import zlib
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tests.security.hostile import API_KEY, Hostile
from worker.config import HttpSettings
from worker.egress import EgressPolicy, refusal_reason
from worker.errors import UpstreamRejected, UpstreamUnavailable
from worker.httpclient import HttpClient, default_error_reader, new_api_session
from worker.jsonbody import BodyRefused, BoundedBody, parse_json
from worker.models import AssetRef, Failed, Job, JobKey, JobState, Pending, Ready
from worker.providers import layers
from worker.providers.base import Schedule
from worker.providers.cloudlayer import CloudlayerProvider, CloudlayerSettings
from worker.providers.layers import LayersProvider, LayersSettings
from worker.ratelimit import RateLimiter
from worker.redaction import register_secrets, safe_text

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
statuses = st.sampled_from(
    ["pending", "success", "error", "completed", "failed", "processing", "queued", "running", "canceled"]
) | st.text(max_size=12)
SIGNED = "https://files.example/a.pdf?sig=1"
urls = st.one_of(
    st.just(SIGNED), st.sampled_from([SIGNED, "", "ftp://x/y", "not a url"]) | st.text(max_size=30)
)


def field_or_noise(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes any JSON at all."""
    return st.one_of(values, values, values, json_values)


known_statuses = st.sampled_from(
    ["pending", "success", "error", "completed", "failed", "processing", "queued", "running", "canceled"]
)


def job_like(value: Any) -> st.SearchStrategy[Any]:
    """A plausible vendor answer twice as often as a noisy one, and sometimes any JSON at all."""
    return st.one_of(value(plausible=True), value(plausible=True), value(plausible=False), json_values)


def cloudlayer_job(*, plausible: bool) -> st.SearchStrategy[Any]:
    pick = (lambda v: v) if plausible else field_or_noise
    return st.fixed_dictionaries(
        {"status": pick(known_statuses if plausible else statuses)},
        optional={
            "id": pick(st.text(max_size=10)),
            "assetUrl": pick(urls),
            "assetId": pick(st.text(min_size=1, max_size=10)),
            "size": pick(st.integers(min_value=-5, max_value=1 << 40)),
            "type": pick(st.sampled_from(["html-pdf", "url-image", "pdf"])),
            "error": pick(st.text(max_size=30)),
        },
    )


def layers_container(*, plausible: bool) -> st.SearchStrategy[Any]:
    pick = (lambda v: v) if plausible else field_or_noise
    asset = st.fixed_dictionaries({"assetId": pick(st.text(min_size=1, max_size=8))})
    error = st.fixed_dictionaries({}, optional={"code": pick(st.text(max_size=8)), "message": json_values})
    return st.fixed_dictionaries(
        {
            "status": pick(known_statuses if plausible else statuses),
            "assets": pick(st.lists(asset, max_size=3)),
        },
        optional={
            "id": pick(st.text(max_size=10)),
            "lastError": pick(error),
            "result": pick(st.fixed_dictionaries({}, optional={"containerId": json_values})),
            "containerIds": json_values,
            "error": json_values,
        },
    )


def layers_descriptor(*, plausible: bool) -> st.SearchStrategy[Any]:
    pick = (lambda v: v) if plausible else field_or_noise
    return st.fixed_dictionaries(
        {"assetId": pick(st.text(min_size=1, max_size=8)), "url": pick(urls)},
        optional={
            "sizeBytes": pick(st.integers(min_value=-1, max_value=1 << 40)) if plausible else json_values,
            "checksumSha256": pick(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)),
            "mimeType": pick(st.sampled_from(["video/mp4", "image/png", "x/y"])),
            "expiresAt": pick(st.sampled_from(["2026-01-01T00:00:00Z", "soon"])),
        },
    )


cloudlayer_jobs = job_like(cloudlayer_job)
layers_bodies = job_like(layers_container)
descriptors = job_like(layers_descriptor)

HTTP = HttpSettings(request_attempts=1, backoff_initial_s=0.01, backoff_max_s=0.01)
FAST = Schedule(initial_s=0.05, max_s=0.1)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def job(key: str) -> Job:
    return Job(key=JobKey.parse(key), state=JobState.POLLING, submitted_at=0, updated_at=0, due_at=0)


def check_outcome(outcome: object) -> None:
    assert isinstance(outcome, Pending | Ready | Failed)
    event(type(outcome).__name__)
    if isinstance(outcome, Ready):
        assert all(isinstance(ref, AssetRef) and ref.url for ref in outcome.assets)
    if isinstance(outcome, Failed):
        assert isinstance(outcome.code, str) and isinstance(outcome.message, str)


def serve_json(hostile: Hostile, path: str, body: Any) -> None:
    """Answer ``path`` with ``body`` as JSON (whatever it is)."""

    async def answer(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

    hostile.routes[path] = answer


@FUZZ
@given(body=cloudlayer_jobs, asset=json_values)
async def test_cloudlayer_answers_never_crash_a_poll(hostile: Hostile, body: Any, asset: Any) -> None:
    """Any JSON as a cloudlayer job (and as its asset) polls to an outcome or UpstreamRejected."""
    hostile.routes.clear()
    serve_json(hostile, "/v2/jobs/fz", body)
    if isinstance(body, dict) and isinstance(body.get("assetId"), str):
        serve_json(hostile, f"/v2/assets/{body['assetId']}", asset)
    async with new_api_session(HTTP) as session:
        provider = CloudlayerProvider(
            HttpClient(session, HTTP), CloudlayerSettings(api_key=API_KEY, base_url=hostile.url), FAST
        )
        try:
            check_outcome(await provider.poll(job("cloudlayer:fz")))
        except (UpstreamRejected, UpstreamUnavailable) as exc:
            event(exc.code)


@FUZZ
@given(container=layers_bodies, descriptor=descriptors)
async def test_layers_answers_never_crash_a_poll(hostile: Hostile, container: Any, descriptor: Any) -> None:
    """Any JSON as a Layers container and its asset descriptors polls to an outcome or our error."""
    container_id = "cnt_11111111-2222-3333-4444-555555555555"
    hostile.routes.clear()
    serve_json(hostile, f"/v1/content/{container_id}", container)
    assets = container.get("assets") if isinstance(container, dict) else None
    for asset in assets if isinstance(assets, list) else []:
        if isinstance(asset, dict) and isinstance(asset.get("assetId"), str):
            serve_json(hostile, f"/v1/content/{container_id}/assets/{asset['assetId']}", descriptor)
    async with new_api_session(HTTP) as session:
        provider = LayersProvider(
            HttpClient(session, HTTP),
            LayersSettings(api_key="lp_fuzz_key_123", base_url=hostile.url),
            FAST,
            limiter=RateLimiter(per_minute=1e9),
        )
        try:
            check_outcome(await provider.poll(job(f"layers:{container_id}")))
        except (UpstreamRejected, UpstreamUnavailable) as exc:
            event(exc.code)


@given(
    raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
    status=st.integers(400, 599),
)
def test_error_bodies_always_read(raw: bytes, status: int) -> None:
    """Any error body yields a (code, message) pair from both vendors' readers."""
    for reader in (default_error_reader, layers.read_error):
        code, message = reader(status, raw)
        assert isinstance(code, str) and code and isinstance(message, str)


@given(descriptor=descriptors)
def test_layers_descriptors_parse_or_refuse(descriptor: Any) -> None:
    """A descriptor is an AssetRef with sane fields, or malformed_response."""
    if not isinstance(descriptor, dict):
        return
    try:
        ref = layers.asset_ref(descriptor, where="fuzz")
    except UpstreamRejected as exc:
        assert exc.code == "malformed_response"
        return
    assert ref.expected_size is None or (isinstance(ref.expected_size, int) and ref.expected_size >= 0)
    assert ref.expected_sha256 is None or len(ref.expected_sha256) == 64


@given(raw=st.binary(max_size=300), encoding=st.sampled_from(["gzip", "deflate", "identity", None, "br"]))
def test_bounded_bodies_never_exceed_their_budget(raw: bytes, encoding: str | None) -> None:
    """Random bytes in any encoding decode within the budget or are refused (BodyRefused only)."""
    try:
        body = BoundedBody(encoding, 64)
        body.feed(raw)
        assert len(body.finish()) <= 64
    except BodyRefused:
        pass


@given(value=json_values, wrap=st.integers(0, 200))
def test_json_depth_limit(value: Any, wrap: int) -> None:
    """Nesting within 64 levels parses back to the value; deeper is refused, never a crash."""
    for _ in range(wrap):
        value = [value]
    raw = json.dumps(value).encode()
    try:
        parsed = parse_json(raw)
    except BodyRefused:
        assert wrap >= 60
        return
    assert json.dumps(parsed) == json.dumps(value)


@given(packed=st.binary(min_size=1, max_size=50_000).map(lambda b: zlib.compress(b * 50)))
def test_inflated_bodies_stay_within_budget(packed: bytes) -> None:
    """Compressed bodies that inflate past the budget are refused at the budget."""
    body = BoundedBody("deflate", 100_000)
    try:
        body.feed(packed)
        assert len(body.finish()) <= 100_000
    except BodyRefused:
        assert body.size <= 100_001


@given(text=st.text(max_size=300), secret=st.text(min_size=8, max_size=20))
def test_safe_text_never_shows_a_registered_secret(text: str, secret: str) -> None:
    """Whatever text surrounds a registered secret, it comes out masked and bounded."""
    assume("*" not in secret)
    register_secrets([secret])
    shown = safe_text(f"{text}{secret}{text}")
    assert secret not in shown and len(shown) < 4200


blocked_networks = [
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "224.0.0.0/4", "0.0.0.0/8", "240.0.0.0/4", "::1/128", "fe80::/10", "fc00::/7", "ff00::/8",
]


@given(network=st.sampled_from(blocked_networks), offset=st.integers(min_value=0))
def test_every_internal_address_is_refused(network: str, offset: int) -> None:
    """Any address inside a refused network is refused, also written as IPv4-mapped IPv6."""
    net = ipaddress.ip_network(network)
    address = net[offset % net.num_addresses]
    assert refusal_reason(address) is not None
    if isinstance(address, ipaddress.IPv4Address):
        assert refusal_reason(ipaddress.IPv6Address(f"::ffff:{address}")) is not None
    assert EgressPolicy([net]).refusal(str(address)) is None  # unless the operator allows it


def test_public_addresses_are_allowed() -> None:
    """Ordinary public addresses (a CDN, a cloud storage front) pass the policy."""
    for address in ("8.8.8.8", "151.101.1.69", "52.216.0.1", "2606:4700::6810:84e5"):
        assert refusal_reason(ipaddress.ip_address(address)) is None

