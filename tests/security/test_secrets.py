"""Secrets masked by value: a vendor that echoes our API key (or any configured secret) in its
error text does not get it into logs, the job's status, the HTTP API or the database, and URLs
lose their ``user:password@`` wherever they are quoted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.cli_support import cli, start, worker_command
from tests.http_support import listening_port
from tests.security.hostile import API_KEY, Hostile, hostile_environment

API_TOKEN = "api-token-for-the-secrets-test-0123"
AWS_SECRET = "aws-secret-access-key-9f8e7d6c5b4a"
URL_PASSWORD = "hunter2-url-password"
PG_PASSWORD = "pg-query-password-31337"
SECRETS = (API_KEY, API_TOKEN, AWS_SECRET)


def worker_env(tmp_path: Path, hostile: Hostile) -> dict[str, str]:
    return hostile_environment(
        tmp_path,
        hostile,
        ASSET_WORKER_REQUEST_ATTEMPTS="2",
        ASSET_WORKER_MAX_ATTEMPTS="2",
        ASSET_WORKER_LISTEN="127.0.0.1:0",
        ASSET_WORKER_API_TOKEN=API_TOKEN,
        ASSET_WORKER_ALLOW_NETWORKS="127.0.0.1/32",
        ASSET_WORKER_LOG_FORMAT="json",
        ASSET_WORKER_LOG_LEVEL="debug",
        AWS_SECRET_ACCESS_KEY=AWS_SECRET,
    )


async def test_echoed_secrets_never_leave_the_process(hostile: Hostile, tmp_path: Path) -> None:
    """The vendor's error texts quote the API key, the API token and the AWS secret, and the file
    host's URL carries user:password@: the log, `status --json`, the API's answers and the SQLite
    files contain none of them, and the job errors show *** instead."""
    echo = f"invalid key {API_KEY}; Authorization: Bearer {API_TOKEN}; aws {AWS_SECRET}"
    hostile.job("echo", status="error", error=echo)

    async def gone(_request: web.Request) -> web.Response:
        return web.Response(status=404, text=f"no such object (key {API_KEY})")

    hostile.routes["/files/x.pdf"] = gone
    port = hostile.url.rsplit(":", 1)[1]
    hostile.job("userinfo", assetUrl=f"http://reader:{URL_PASSWORD}@127.0.0.1:{port}/files/x.pdf?sig=1")
    env = worker_env(tmp_path, hostile)
    assert (await cli(env, "submit", "cloudlayer:echo", "cloudlayer:userinfo")).code == 0
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *worker_command("run"), env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        port_number = await listening_port(log_path)
        status_out = ""

        async def both_failed() -> bool:
            nonlocal status_out
            result = await cli(env, "status", "--json")
            status_out = result.out
            return [job["state"] for job in json.loads(result.out)] == ["failed", "failed"]

        for _attempt in range(300):
            if await both_failed():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{status_out}\n{log_path.read_text()[-3000:]}")
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as client:
            base = f"http://127.0.0.1:{port_number}/v1/jobs"
            api_answers = [await (await client.get(url)).text() for url in (base, f"{base}/cloudlayer:echo")]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    logs = log_path.read_text()
    database = await asyncio.to_thread(lambda: b"".join(p.read_bytes() for p in tmp_path.glob("store.db*")))
    for secret in SECRETS:
        assert secret not in logs and secret not in status_out
        assert all(secret not in answer for answer in api_answers)
        assert secret.encode() not in database
    assert URL_PASSWORD not in logs and URL_PASSWORD not in status_out
    assert "invalid key ***; Authorization: Bearer ***; aws ***" in status_out
    assert "***@127.0.0.1" in status_out  # the userinfo, masked where the URL is quoted
    assert '"event": "job_finished"' in logs


async def test_a_store_password_in_the_query_is_masked(tmp_path: Path) -> None:
    """A PostgreSQL URL with ?password= that cannot be reached: the one error line masks it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_WORKER_")}
    env["ASSET_WORKER_STORE"] = f"postgresql://asset@127.0.0.1:1/assets?password={PG_PASSWORD}"
    proc = await start(env, "status")
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert PG_PASSWORD not in out.decode() + err.decode()
    assert "postgresql://***@127.0.0.1:1/assets" in err.decode()
    assert len(err.decode().strip().splitlines()) == 1


def test_userinfo_and_queries_are_stripped_from_any_url_in_text() -> None:
    """strip_queries masks user:password@ and drops the query of every URL in a message."""
    from worker.redaction import strip_queries

    text = "GET https://u:p4ss@files.example/a.pdf?X-Amz-Signature=s1 then postgresql://x:pw@db/q?sslmode=1"
    cleaned = strip_queries(text)
    assert "p4ss" not in cleaned and "s1" not in cleaned and "pw@" not in cleaned
    assert "https://***@files.example/a.pdf" in cleaned and "postgresql://***@db/q" in cleaned


def test_a_secret_is_masked_in_its_url_encoded_form_too() -> None:
    """A key with URL-special characters echoed percent-encoded (in a path, say) is masked too."""
    from worker.redaction import mask, register_secrets

    register_secrets(["tok+en/with=chars"])
    assert mask("GET /v1/keys/tok%2Ben%2Fwith%3Dchars/check and tok+en/with=chars") == (
        "GET /v1/keys/***/check and ***"
    )
