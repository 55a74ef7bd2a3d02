"""Redirects never downgrade: a file host on https that redirects to http is refused before the
http address is contacted, while an https-to-https redirect is followed. The file hosts are real
TLS servers on loopback with a test CA (trustme) that the worker process trusts through
SSL_CERT_FILE, as an operator's own CA would be trusted."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trustme
from aiohttp import web

from tests.cli_support import cli
from tests.security.hostile import Hostile, hostile_environment, listening


@asynccontextmanager
async def tls_file_host(ca: trustme.CA, routes: dict[str, web.Response]) -> AsyncIterator[str]:
    """An https server on 127.0.0.1 answering ``routes``; yields its origin."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def answer(request: web.Request) -> web.StreamResponse:
        return routes.get(request.path) or web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_an_https_to_http_redirect_is_refused(hostile: Hostile, tmp_path: Path) -> None:
    """https -> https is followed and stored; https -> http fails destination_blocked, and the
    http listener the redirect names sees no connection."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    final = {"/final.pdf": web.Response(body=b"%PDF-1.7 tls", content_type="application/pdf")}
    async with listening("127.0.0.1") as plain, tls_file_host(ca, final) as second:
        redirects = {
            "/up.pdf": web.Response(status=302, headers={"Location": f"{second}/final.pdf"}),
            "/down.pdf": web.Response(status=302, headers={"Location": f"{plain.origin}/final.pdf"}),
        }
        async with tls_file_host(ca, redirects) as first:
            hostile.job("up", assetUrl=f"{first}/up.pdf")
            hostile.job("down", assetUrl=f"{first}/down.pdf")
            env = hostile_environment(
                tmp_path, hostile, ASSET_WORKER_ALLOW_NETWORKS="127.0.0.1/32", SSL_CERT_FILE=str(ca_file)
            )
            assert (await cli(env, "submit", "cloudlayer:up", "cloudlayer:down")).code == 0
            ran = await cli(env, "run", "--until-idle", "--no-http")
            assert ran.code == 0, ran.err
            status = await cli(env, "status", "--json")
    jobs = {job["key"]: job for job in json.loads(status.out)}
    assert jobs["cloudlayer:up"]["state"] == "done", jobs["cloudlayer:up"]
    down = jobs["cloudlayer:down"]
    assert down["state"] == "failed" and down["error"]["code"] == "destination_blocked"
    assert "https to http" in down["error"]["message"]
    assert plain.connections == 0
    assert await asyncio.to_thread((tmp_path / "assets/cloudlayer/up/up.pdf").read_bytes) == b"%PDF-1.7 tls"
