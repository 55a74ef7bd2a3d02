"""What aiohttp refuses before any handler or middleware runs (a request line or header it cannot
parse, one over its limits, an Expect it does not meet) is answered with the service's JSON error
shape and a documented code, never aiohttp's plain text, which echoes the client's bytes.

Raw bytes over a real socket to a real worker on loopback: no HTTP client would send these.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import jsonschema  # type: ignore[import-untyped]

from tests.conftest import SettingsFactory
from tests.http_support import TOKEN, serving
from worker.http.errors import ERROR_CODES
from worker.http.health import openapi_document


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: Any


async def exchange(host: str, port: int, data: bytes, timeout_s: float = 10) -> RawAnswer:
    """Send ``data`` on a new connection; the answer read until the server closes it (each of these
    errors closes the connection, which a timeout here would show it did not)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return RawAnswer(int(status_line.split()[1]), headers, json.loads(body))


def assert_json_error(answer: RawAnswer, code: str) -> None:
    """``answer`` is the Error schema of openapi.json with ``code``, and that code's status."""
    doc = openapi_document()
    schema = {**doc["components"]["schemas"]["Error"], "components": doc["components"]}
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    jsonschema.Draft202012Validator(schema).validate(answer.body)
    assert answer.body["error"]["code"] == code, answer.body
    assert answer.status == ERROR_CODES[code]


@asynccontextmanager
async def address(make_settings: SettingsFactory) -> AsyncIterator[tuple[str, int]]:
    async with serving(make_settings()) as served:
        host, port = served.url.removeprefix("http://").split(":")
        yield host, int(port)


async def test_an_oversized_header_is_a_json_431(make_settings: SettingsFactory) -> None:
    """A header over aiohttp's 8190-byte limit, a request line over it, and more than 128 headers
    are 431 header_too_large as JSON."""
    huge_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    huge_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    many = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"
    )
    async with address(make_settings) as (host, port):
        for request in (huge_header, huge_line, many):
            assert_json_error(await exchange(host, port, request), "header_too_large")


async def test_a_garbage_request_is_a_json_400(make_settings: SettingsFactory) -> None:
    """A request line that is not HTTP, TLS on the plain port, raw non-UTF-8 bytes in the path, a
    broken header and broken chunking are 400 bad_request as JSON, without the client's bytes."""
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    requests = [
        b"garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
        b"GET /v1/jobs/cloudlayer:\xed\xa0\x80 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ]
    async with address(make_settings) as (host, port):
        for request in requests:
            answer = await exchange(host, port, request)
            assert_json_error(answer, "bad_request")
            assert "garbage" not in answer.body["error"]["message"], request[:20]


async def test_an_unmet_expect_is_a_json_417(make_settings: SettingsFactory) -> None:
    """An Expect other than 100-continue (refused by aiohttp before the middlewares run) is 417
    expectation_failed as JSON."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: nonsense\r\nConnection: close\r\n\r\n"
    async with address(make_settings) as (host, port):
        assert_json_error(await exchange(host, port, request), "expectation_failed")


async def test_the_service_still_answers_after_garbage(make_settings: SettingsFactory) -> None:
    """A refused request closes only its own connection: the next one is served."""
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with address(make_settings) as (host, port):
        assert (await exchange(host, port, b"garbage\r\n\r\n")).status == 400
        answer = await exchange(host, port, healthz)
        assert (answer.status, answer.body) == (200, {"status": "ok"})
