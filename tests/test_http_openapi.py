"""The OpenAPI document and the service agree: same routes and methods, same error codes, every
reference resolves, and it is what /openapi.json serves. (The API tests check each answer against
the document too: tests/http_support.py.)"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from tests.conftest import SettingsFactory
from tests.http_support import api_client, serving
from worker.http.errors import ERROR_CODES
from worker.http.health import openapi_document
from worker.http.server import build_app
from worker.http.state import MAX_JOBS_PER_REQUEST, MAX_PAGE
from worker.models import JobState

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
    # 404 not_found and 405 method_not_allowed answer requests for routes the document has not got.
    assert {s for c, s in ERROR_CODES.items() if c not in ("not_found", "method_not_allowed")} <= listed


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


def test_the_document_ships_in_the_package() -> None:
    """Read as package data (what an installed wheel has), not from the source tree."""
    assert resources.files("worker.http").joinpath("openapi.json").is_file()


async def test_the_service_serves_the_document(make_settings: SettingsFactory) -> None:
    async with serving(make_settings()) as served, api_client(served.url, token=None) as anonymous:
        answer = await anonymous.request("GET", "/openapi.json")
        assert answer.status == 200 and answer.body == openapi_document()
