"""The OpenAPI document and the service agree: same routes and methods, same error codes, every
reference resolves, and it is what /openapi.json serves. (The API tests check each answer against
the document too: tests/http_support.py.)"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from importlib import resources
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.conftest import SettingsFactory
from tests.http_support import api_client, serving
from worker.errors import InvalidJob
from worker.http.errors import ERROR_CODES
from worker.http.health import openapi_document
from worker.http.jobs import decode_cursor, encode_cursor
from worker.http.server import build_app
from worker.http.state import MAX_DEST_CHARS, MAX_JOBS_PER_REQUEST, MAX_PAGE
from worker.models import Job, JobKey, JobState
from worker.providers import PROVIDERS, parse_key
from worker.store.base import Cursor

_METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def _routes() -> set[tuple[str, str]]:
    app = build_app(None, api_token=None)  # type: ignore[arg-type]  # routes only, never served
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str)
        routes.add((route.method.lower(), path))
    return routes


def _documented() -> set[tuple[str, str]]:
    doc = openapi_document()
    return {(method, path) for path, item in doc["paths"].items() for method in item if method in _METHODS}


def test_routes_and_document_agree() -> None:
    assert _routes() == _documented()


def test_error_codes_agree() -> None:
    """The ErrorCode enum is exactly the codes the service can answer, and each code's status is
    one the document lists for some operation."""
    doc = openapi_document()
    assert set(doc["components"]["schemas"]["ErrorCode"]["enum"]) == set(ERROR_CODES)
    listed = {
        int(status)
        for item in doc["paths"].values()
        for method, operation in item.items()
        if method in _METHODS
        for status in operation["responses"]
    }
    # These answer requests before (or instead of) an operation: routes the document has not got, an
    # unmet Expect, a request head over aiohttp's limits. The document's description names them.
    before_routing = ("not_found", "method_not_allowed", "expectation_failed", "header_too_large")
    assert {s for c, s in ERROR_CODES.items() if c not in before_routing} <= listed
    assert all(f"`{code}`" in doc["info"]["description"] for code in before_routing)


def test_every_reference_resolves() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    found = refs(doc)
    assert found
    for ref in found:
        assert re.fullmatch(r"#/components/(schemas|responses)/\w+", ref), ref
        _, _, section, name = ref.split("/")
        assert name in doc["components"][section], ref


def test_limits_and_enums_match_the_code() -> None:
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    assert schemas["JobState"]["enum"] == [s.value for s in JobState]
    assert schemas["SubmitRequest"]["properties"]["jobs"]["maxItems"] == MAX_JOBS_PER_REQUEST
    (limit,) = [p for p in doc["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "limit"]
    assert limit["schema"]["maximum"] == MAX_PAGE
    item = schemas["SubmitRequest"]["properties"]["jobs"]["items"]["properties"]
    assert item["dest"]["maxLength"] == MAX_DEST_CHARS


def _accepted(key: str, parse: Callable[[str], JobKey] = JobKey.parse) -> bool:
    try:
        return str(parse(key)) == key
    except InvalidJob:
        return False


def _key_schemas() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The path parameter's schemas (a job that exists) and the submitted key's."""
    doc = openapi_document()
    params = [doc["paths"][path]["parameters"][0]["schema"] for path in doc["paths"] if "{key}" in path]
    submitted = doc["components"]["schemas"]["SubmitRequest"]["properties"]["jobs"]["items"]["properties"]
    return params, submitted["key"]


def test_the_key_pattern_is_what_the_code_accepts() -> None:
    """The path's key pattern accepts exactly the canonical keys JobKey.parse accepts, for every
    code point in the id but lone surrogates, so a schema-driven client and the API agree.
    Surrogates, which the code refuses, are left out of the pattern: JSON Schema regex engines (and
    schemathesis) have no strings that hold them, and schemathesis ignores a pattern naming them."""
    params, _ = _key_schemas()
    assert len({(s["pattern"], s["maxLength"]) for s in params}) == 1 and len(params) == 3
    pattern, max_length = re.compile(params[0]["pattern"]), params[0]["maxLength"]
    surrogates = range(0xD800, 0xE000)
    for codepoint in range(sys.maxunicode + 1):
        # Inside the id: Python's "$" also matches before a final newline, which parse strips anyway.
        key = f"cloudlayer:x{chr(codepoint)}y"
        if codepoint in surrogates:
            assert not _accepted(key), hex(codepoint)
        else:
            assert bool(pattern.search(key)) == _accepted(key), hex(codepoint)
    longest = "p" * 40 + ":" + "x" * 256
    assert _accepted(longest) and pattern.search(longest) and len(longest) <= max_length
    assert not _accepted(longest + "x") and not pattern.search(longest + "x")
    assert not _accepted("p" * 41 + ":x") and not pattern.search("p" * 41 + ":x")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_submitted_keys_pattern_is_what_submit_accepts(data: st.DataObject) -> None:
    """The submitted key's pattern is each registered provider's ids: a key built from it is one
    parse_key accepts, and a key parse_key accepts fits it (and its maxLength)."""
    _, submitted = _key_schemas()
    pattern = re.compile(submitted["pattern"])
    name = data.draw(st.sampled_from(sorted(PROVIDERS)))
    upstream_id = data.draw(st.from_regex(f"^(?:{PROVIDERS[name].id_pattern})$", fullmatch=True))
    key = f"{name}:{upstream_id}"
    # The pattern's "$" also matches before a final newline, which parse strips anyway.
    assume(not key.endswith("\n"))
    assert _accepted(key, parse_key) and pattern.search(key) and len(key) <= submitted["maxLength"]
    other = data.draw(st.text(min_size=1, max_size=40).map(lambda text: f"{name}:{text}"))
    if _accepted(other, parse_key):
        assert pattern.search(other), other


def test_a_submitted_keys_pattern_refuses_what_submit_refuses() -> None:
    _, submitted = _key_schemas()
    pattern = re.compile(submitted["pattern"])
    for refused in ("other:x", "layers:foo", "cloudlayer:" + "x" * 257, "layers:job_" + "x" * 253):
        assert not _accepted(refused, parse_key) and not pattern.search(refused), refused
    assert max(len(name) for name in PROVIDERS) + 257 == submitted["maxLength"]


def test_the_cursor_schema_admits_every_cursor_the_api_makes() -> None:
    """The longest cursor encode_cursor can make (a 256-character id of 4-byte characters) fits
    the documented pattern and length, and decodes back."""
    doc = openapi_document()
    (cursor,) = [p for p in doc["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "cursor"]
    key = JobKey.parse("layers:" + "\U0001f600" * 256)
    job = Job(key=key, state=JobState.QUEUED, submitted_at=1.7e9 + 0.123456, updated_at=0, due_at=0)
    text = encode_cursor(job)
    assert re.fullmatch(cursor["schema"]["pattern"], text) and len(text) <= cursor["schema"]["maxLength"]
    assert decode_cursor(text) == Cursor(submitted_at=job.submitted_at, key=str(key))


def test_the_document_ships_in_the_package() -> None:
    """Read as package data (what an installed wheel has), not from the source tree."""
    assert resources.files("worker.http").joinpath("openapi.json").is_file()


async def test_the_service_serves_the_document(make_settings: SettingsFactory) -> None:
    async with serving(make_settings()) as served, api_client(served.url, token=None) as anonymous:
        answer = await anonymous.request("GET", "/openapi.json")
        assert answer.status == 200 and answer.body == openapi_document()
