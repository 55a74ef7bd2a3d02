"""Hostile input to the job API, with a valid token: each is refused with 400 and a stable code,
never a 500 (which logs a traceback and tells the attacker where the parser broke).

A real worker serves real HTTP on loopback; every JSON answer is also checked against openapi.json
(tests/http_support.py).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import json

from tests.conftest import SettingsFactory
from tests.http_support import TOKEN, api_client, serving
from worker.app import http_service, open_worker
from worker.http.server import serve


def cursor_of(raw: str) -> str:
    """A cursor as the API encodes one (urlsafe base64 of JSON, unpadded), holding ``raw``."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


async def test_a_lone_surrogate_in_a_key_is_an_invalid_key(make_settings: SettingsFactory) -> None:
    """A key whose id is JSON's "\\ud800" escape (not encodable as UTF-8) is 400 invalid_job_key,
    and nothing is written."""
    async with serving(make_settings()) as served, api_client(served.url) as api:
        raw = b'{"jobs": [{"key": "cloudlayer:\\ud800"}]}'  # the escape itself, as a client sends it
        answer = await api.request("POST", "/v1/jobs", template="/v1/jobs", data=raw)
        assert (answer.status, answer.code) == (400, "invalid_job_key")
        mixed = b'{"jobs": [{"key": "layers:ok\\udfffok"}]}'
        answer = await api.request("POST", "/v1/jobs", template="/v1/jobs", data=mixed)
        assert (answer.status, answer.code) == (400, "invalid_job_key")
        assert await served.worker.store.list_jobs() == []


async def test_keys_in_the_path_never_fail_the_server(make_settings: SettingsFactory) -> None:
    """In the path, a percent-encoded surrogate stays literal text (yarl does not decode invalid
    UTF-8), so it is a key that does not exist; NUL and C0/C1 control characters are invalid keys."""
    async with serving(make_settings()) as served, api_client(served.url) as api:
        template = "/v1/jobs/{key}"
        for path in ("/v1/jobs/cloudlayer:%ED%A0%80", "/v1/jobs/cloudlayer:%F4%90%80%80"):
            answer = await api.request("GET", path, template=template)
            assert (answer.status, answer.code) == (404, "job_not_found"), path
        for path in ("/v1/jobs/cloudlayer:%00", "/v1/jobs/cloudlayer:a%C2%80b", "/v1/jobs/cloudlayer:"):
            answer = await api.request("GET", path, template=template)
            assert (answer.status, answer.code) == (400, "invalid_job_key"), path


async def test_a_limit_that_is_not_ascii_digits_is_an_invalid_limit(make_settings: SettingsFactory) -> None:
    """limit=² (a digit to str.isdigit, not to int) and a 5000-digit limit are 400 invalid_limit."""
    async with serving(make_settings()) as served, api_client(served.url) as api:
        for limit in ("²", "١٢", "1" * 5000, "0" * 4999 + "1", "+5", " 5"):
            answer = await api.list_jobs(limit=limit)
            assert (answer.status, answer.code) == (400, "invalid_limit"), limit[:10]


async def test_a_cursor_with_an_out_of_range_time_or_bad_key_is_invalid(
    make_settings: SettingsFactory,
) -> None:
    """A cursor holding a 400-digit number, NaN, a negative time, or something that is not a key
    (NUL, lone surrogate, no provider), or characters outside urlsafe base64, is 400 invalid_cursor."""
    cursors = [
        cursor_of('{"submitted_at": ' + "1234567890" * 40 + ', "key": "cloudlayer:x"}'),
        cursor_of('{"submitted_at": -' + "9" * 400 + ', "key": "cloudlayer:x"}'),
        cursor_of('{"submitted_at": NaN, "key": "cloudlayer:x"}'),
        cursor_of('{"submitted_at": 1e400, "key": "cloudlayer:x"}'),
        cursor_of('{"submitted_at": -1, "key": "cloudlayer:x"}'),
        cursor_of('{"submitted_at": 1, "key": "cloudlayer:\\u0000"}'),
        cursor_of('{"submitted_at": 1, "key": "cloudlayer:\\ud800"}'),
        cursor_of('{"submitted_at": 1, "key": "no key"}'),
        cursor_of('{"submitted_at": 1, "key": "Not A Provider:x"}'),
        cursor_of("[" * 1500),
        cursor_of('{"submitted_at": 1, "key": "cloudlayer:x"}') + "!!",  # base64 would skip "!"
        "A" * 2049,
    ]
    async with serving(make_settings()) as served, api_client(served.url) as api:
        for cursor in cursors:
            answer = await api.list_jobs(cursor=cursor)
            assert (answer.status, answer.code) == (400, "invalid_cursor"), cursor[:40]


async def test_the_longest_cursor_the_api_makes_is_accepted(make_settings: SettingsFactory) -> None:
    """Paging past a job whose id is 256 four-byte characters works: its cursor is within the
    documented bound and accepted back."""
    async with serving(make_settings()) as served, api_client(served.url) as api:
        wide = "cloudlayer:" + "\U0001f600" * 256
        # Submitted together, pages go by key: the wide one ("\U0001f600" sorts after ASCII) is the
        # last of the first page, so its cursor is the one handed out.
        await api.submit({"key": "cloudlayer:a"}, {"key": wide}, {"key": "layers:job_z"})
        first = await api.list_jobs(limit="2")
        assert first.status == 200 and [j["key"] for j in first.body["jobs"]] == ["cloudlayer:a", wide]
        assert len(first.body["next_cursor"]) > 1024
        rest = await api.list_jobs(limit="2", cursor=first.body["next_cursor"])
        assert rest.status == 200, rest.body
        assert [j["key"] for j in rest.body["jobs"]] == ["layers:job_z"]


async def test_a_dest_that_urlsplit_refuses_is_an_invalid_dest(make_settings: SettingsFactory) -> None:
    """A dest urlsplit itself refuses (a bracketed host, a non-numeric port) or an over-long one
    is 400 invalid_dest; nothing is written."""
    async with serving(make_settings()) as served, api_client(served.url) as api:
        for dest in ("file://]", "file://[x/y", "file://h:port/x", "/" + "a" * 1024):
            answer = await api.submit({"key": "cloudlayer:x", "dest": dest})
            assert (answer.status, answer.code) == (400, "invalid_dest"), dest[:20]
        assert await served.worker.store.list_jobs() == []


async def test_an_s3_dest_with_a_bad_port_is_an_invalid_dest(make_settings: SettingsFactory) -> None:
    """Below an S3 destination, s3://bucket:port/... (urlsplit refuses the port) is 400
    invalid_dest. Only the service's dest_url is S3: validation never reaches the bucket."""
    async with open_worker(make_settings()) as worker:
        service = dataclasses.replace(
            http_service(worker, draining=lambda: False), dest_url="s3://bucket/prefix"
        )
        async with (
            serve(service, host="127.0.0.1", port=0, api_token=TOKEN) as (host, port),
            api_client(f"http://{host}:{port}") as api,
        ):
            for dest in ("s3://bucket:port/prefix/a", "s3://bucket:-1/prefix/a"):
                answer = await api.submit({"key": "cloudlayer:x", "dest": dest})
                assert (answer.status, answer.code) == (400, "invalid_dest"), dest
            assert await worker.store.list_jobs() == []


async def test_a_body_that_cannot_be_decoded_is_a_bad_request(make_settings: SettingsFactory) -> None:
    """A body declared gzip or deflate that is not is 400 bad_request (not 500), and the next
    request on a new connection is served."""
    async with serving(make_settings()) as served, api_client(served.url) as api:
        for encoding, body in (("gzip", b"\x1f\x8b not gzip"), ("deflate", b"xx"), ("gzip", b"\x00" * 10)):
            headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
            answer = await api.request("POST", "/v1/jobs", template="/v1/jobs", data=body, headers=headers)
            assert (answer.status, answer.code) == (400, "bad_request"), encoding
        good = gzip.compress(json.dumps({"jobs": [{"key": "cloudlayer:zipped"}]}).encode())
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        answer = await api.request("POST", "/v1/jobs", template="/v1/jobs", data=good, headers=headers)
        assert answer.status == 200 and answer.body["results"][0]["created"] is True


async def test_a_token_that_is_not_utf8_is_unauthorized(make_settings: SettingsFactory) -> None:
    """An Authorization header with bytes that are not UTF-8 is 401 unauthorized, not 500."""
    async with serving(make_settings()) as served:
        host, port = served.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff"
        try:
            writer.write(request + TOKEN.encode() + b"\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), timeout=10)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), head
        assert json.loads(body)["error"]["code"] == "unauthorized"
