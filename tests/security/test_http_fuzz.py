"""Schema-driven fuzzing of the live service with schemathesis: requests built from openapi.json,
both fitting it (positive) and violating it (negative), sent with the token. The service must
never answer 5xx, every answer must be one the document describes (status, content type, headers,
body schema), and a request that fits the document is never refused for what the document decides
(the key's pattern, the limit's range): the document and the code agree.

The service runs in a thread with its own event loop because schemathesis calls it with the
blocking ``requests`` library.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.http_support import TOKEN
from worker.app import http_service, open_worker
from worker.config import Settings
from worker.http.health import openapi_document
from worker.http.server import serve

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Per operation and mode: about 15 s in all on loopback.
EXAMPLES = 100
# Refusals the document decides alone: a request that fits it never gets one. (A dest or cursor can
# fit the schema and still be refused: whether it lies inside the worker's destination, or is a
# cursor the API made, is not something a schema can say; likewise a key repeated in one submit.)
SCHEMA_DECIDES = {"invalid_json", "invalid_request", "invalid_job_key", "invalid_limit", "invalid_state"}

Started = tuple[str, asyncio.AbstractEventLoop, asyncio.Event] | BaseException
Operation = APIOperation[Any, Any, Any, Any]


@contextmanager
def live_service(root: Path) -> Iterator[str]:
    """A worker (its queue not running) serving HTTP on 127.0.0.1 from a thread; yields its URL."""
    started: queue.Queue[Started] = queue.Queue()

    async def main() -> None:
        stop = asyncio.Event()
        settings = Settings(store_url=f"sqlite:///{root / 'store.db'}", dest_url=str(root / "assets"))
        try:
            async with (
                open_worker(settings) as worker,
                serve(
                    http_service(worker, draining=lambda: False), host="127.0.0.1", port=0, api_token=TOKEN
                ) as (host, port),
            ):
                started.put((f"http://{host}:{port}", asyncio.get_running_loop(), stop))
                await stop.wait()
        except BaseException as exc:
            started.put(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready = started.get(timeout=60)
    if isinstance(ready, BaseException):
        raise ready
    url, loop, stop = ready
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)


def error_code(content: bytes) -> str | None:
    try:
        body = json.loads(content)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def fuzz(url: str, operation: Operation, mode: GenerationMode) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Case[Operation]) -> None:
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        case.validate_response(response, checks=CHECKS)
        if mode is GenerationMode.POSITIVE:
            code = error_code(response.content)
            sent = f"{case.method} {case.path} {case.path_parameters} {case.query} {case.body!r}"
            assert code not in SCHEMA_DECIDES, f"{sent} fits the schema, refused {code}"

    one()


def test_schema_driven_requests_get_documented_answers(tmp_path: Path) -> None:
    """Requests generated from openapi.json, valid and invalid, never get a 5xx, every answer
    conforms to the document, and none that fits it is refused for what it decides."""
    with live_service(tmp_path) as url:
        # from_dict: from_url would leave out the operation that serves the document itself (and
        # tests/test_http_openapi.py checks that the service serves exactly this one).
        schema = schemathesis.openapi.from_dict(openapi_document())
        document = openapi_document()
        operations = [
            schema[path][method.upper()]
            for path, item in document["paths"].items()
            for method in item
            if method in ("get", "post")
        ]
        assert len(operations) == 9
        for operation in operations:
            takes_input = any((operation.path_parameters, operation.query, operation.body))
            # Nothing to violate in an operation without parameters or a body (/healthz).
            for mode in GenerationMode if takes_input else [GenerationMode.POSITIVE]:
                fuzz(url, operation, mode)
