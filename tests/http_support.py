"""Helpers for the HTTP service tests: a worker serving HTTP in this process, an API client that
checks every answer against the OpenAPI document, and tools for driving ``asset-worker run`` as a
real process (its HTTP port, a bounded probe)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jsonschema  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from worker.app import Worker, http_service, open_worker
from worker.config import Settings
from worker.http.errors import ERROR_CODES
from worker.http.health import openapi_document
from worker.http.server import serve

TOKEN = "test-token-4f1c"


def documented_response(method: str, template: str, status: int) -> dict[str, Any]:
    """The OpenAPI response object for ``method template`` answering ``status`` (its $ref resolved);
    fails the test when the document does not list that status for the operation."""
    doc = openapi_document()
    operation = doc["paths"][template][method.lower()]
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {template} answered {status}, which openapi.json does not list"
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    assert isinstance(response, dict)
    return response


def check_against_document(method: str, template: str, status: int, body: Any) -> None:
    """The answer is one the document describes: a listed status, a body valid against its schema,
    and for errors a code that belongs to that status."""
    response = documented_response(method, template, status)
    schema = response["content"]["application/json"]["schema"]
    doc = openapi_document()
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)
    if status >= 400:
        code = body["error"]["code"]
        assert ERROR_CODES[code] == status, (code, status)


@dataclass
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return error["code"] if isinstance(error, dict) else None


class ApiClient:
    """The job API over real HTTP; every JSON answer is checked against openapi.json."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None = TOKEN) -> None:
        self.session = session
        self.base_url = base_url
        self.token = token

    async def request(
        self,
        method: str,
        path: str,
        *,
        template: str | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        params: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if self.token is not None and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        url = URL(self.base_url + path, encoded=True)
        body = None if data is None else io.BytesIO(data)  # aiohttp warns about large raw bytes
        async with self.session.request(method, url, data=body, params=params, headers=sent) as resp:
            raw = await resp.read()
            assert resp.content_type == "application/json", (resp.status, raw[:200])
            answer = Answer(resp.status, json.loads(raw), dict(resp.headers))
        if template is not None:
            check_against_document(method, template, answer.status, answer.body)
        return answer

    async def submit(self, *jobs: Mapping[str, Any]) -> Answer:
        return await self.request("POST", "/v1/jobs", template="/v1/jobs", json_body={"jobs": list(jobs)})

    async def get(self, key: str) -> Answer:
        return await self.request("GET", f"/v1/jobs/{quote(key, safe=':')}", template="/v1/jobs/{key}")

    async def list_jobs(self, **params: str | list[str]) -> Answer:
        flat = [(k, v) for k, vs in params.items() for v in ([vs] if isinstance(vs, str) else vs)]
        return await self.request("GET", "/v1/jobs", template="/v1/jobs", params=flat)

    async def retry(self, key: str) -> Answer:
        path = f"/v1/jobs/{quote(key, safe=':')}/retry"
        return await self.request("POST", path, template="/v1/jobs/{key}/retry")

    async def cancel(self, key: str) -> Answer:
        path = f"/v1/jobs/{quote(key, safe=':')}/cancel"
        return await self.request("POST", path, template="/v1/jobs/{key}/cancel")


@dataclass
class Served:
    worker: Worker
    url: str
    stop: asyncio.Event


@asynccontextmanager
async def serving(settings: Settings, *, token: str | None = TOKEN) -> AsyncIterator[Served]:
    """A whole worker (not running its queue yet) with its HTTP service on a free loopback port."""
    stop = asyncio.Event()
    async with (
        open_worker(settings) as worker,
        serve(http_service(worker, draining=stop.is_set), host="127.0.0.1", port=0, api_token=token) as (
            host,
            port,
        ),
    ):
        yield Served(worker, f"http://{host}:{port}", stop)


@asynccontextmanager
async def api_client(base_url: str, token: str | None = TOKEN) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, base_url, token)


async def eventually(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    """Wait until ``condition()`` holds; a TimeoutError (a failed test) if it never does."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def run_until_idle(worker: Worker, timeout_s: float = 60) -> None:
    await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), timeout_s)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text as {(sample name, labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a KeyError (a failed test) when the series is absent."""
    return samples[(name, frozenset(labels.items()))]


# -- real processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def logged_events(log_path: Path) -> list[dict[str, Any]]:
    """The JSON log lines ``asset-worker run`` wrote to ``log_path`` so far."""
    if not log_path.exists():
        return []
    lines = log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]


async def listening_port(log_path: Path, timeout_s: float = 30) -> int:
    """The port ``asset-worker run`` logged in ``http_listening``."""
    async with asyncio.timeout(timeout_s):
        while True:
            for event in logged_events(log_path):
                if event.get("event") == "http_listening":
                    return int(event["port"])
            await asyncio.sleep(0.02)


def probe(url: str, timeout_s: float = 5) -> tuple[int, Any]:
    """A blocking GET (status, JSON body). Blocking on purpose: the drain tests call it while this
    process's event loop, which serves the simulator, must not run (see tests/test_drain.py)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback http)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
