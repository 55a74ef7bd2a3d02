"""The OpenAPI document and the service agree: same routes and methods, same error codes, every
reference resolves, and it is what /openapi.json serves. (The API tests check each answer against
the document too: tests/http_support.py.)"""

from __future__ import annotations

import re
import sys
from importlib import resources
from typing import Any

from tests.conftest import SettingsFactory
from tests.http_support import api_client, serving
from worker.errors import InvalidJob
from worker.http.errors import ERROR_CODES
from worker.http.health import openapi_document
from worker.http.jobs import decode_cursor, encode_cursor
from worker.http.server import build_app
from worker.http.state import MAX_DEST_CHARS, MAX_JOBS_PER_REQUEST, MAX_PAGE
from worker.models import Job, JobKey, JobState
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


def _accepted(key: str) -> bool:
    try:
        return str(JobKey.parse(key)) == key
    except InvalidJob:
        return False


def test_the_key_pattern_is_what_the_code_accepts() -> None:
    """Every key schema's pattern accepts exactly the canonical keys JobKey.parse accepts, for
    every code point in the id but lone surrogates, so a schema-driven client and the API agree.
    Surrogates, which the code refuses, are left out of the pattern: JSON Schema regex engines (and
    schemathesis) have no strings that hold them, and schemathesis ignores a pattern naming them."""
    doc = openapi_document()
    params = [doc["paths"][path]["parameters"][0]["schema"] for path in doc["paths"] if "{key}" in path]
    submitted = doc["components"]["schemas"]["SubmitRequest"]["properties"]["jobs"]["items"]["properties"]
    schemas = [*params, submitted["key"]]
    assert len({(s["pattern"], s["maxLength"]) for s in schemas}) == 1 and len(schemas) == 4
    pattern, max_length = re.compile(schemas[0]["pattern"]), schemas[0]["maxLength"]
    surrogates = range(0xD800, 0xE000)
    for codepoint in range(sys.maxunicode + 1):
        # Inside the id: Python's "$" also matches before a final newline, which parse strips anyway.
        key = f"cloudlayer:x{chr(codepoint)}y"
        if codepoint in surrogates:
            assert not _accepted(key), hex(codepoint)
        else:
            assert bool(pattern.search(key)) == _accepted(key), hex(codepoint)
    longest = "cloudlayer:" + "x" * 256
    assert _accepted(longest) and pattern.search(longest) and len(longest) <= max_length
    assert not _accepted(longest + "x") and not pattern.search(longest + "x")
    assert not pattern.search("other:x") and not _accepted("other:x")


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
