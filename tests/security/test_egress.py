"""The egress policy against a hostile upstream: URLs handed to the worker never reach internal
addresses, whether given directly, by name, or through a redirect, and refusals cost no retries.

Every refused address is a real listener on loopback (127.0.0.2, ::1, 127.0.0.1) that must see no
connection; nothing ever leaves loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from structlog.testing import capture_logs

from tests.conftest import RecordingSleep, run_jobs
from tests.security.hostile import Hostile, allowing, hostile_settings, listening
from worker.config import HttpSettings
from worker.egress import EgressPolicy
from worker.egress_session import EgressRefused, GuardedResolver, new_upstream_session, refusal_of
from worker.models import Job, JobState


def failed_with(job: Job, code: str) -> str:
    """The job's error message, after checking it failed with ``code`` on its one asset."""
    assert job.state is JobState.FAILED, (job.state, job.error)
    assert job.error is not None and job.error.code == code, job.error
    return job.error.message


@pytest.mark.parametrize("host", ["127.0.0.2", "::1"])
async def test_an_asset_url_on_an_internal_address_is_refused_before_connecting(
    hostile: Hostile, tmp_path: Path, host: str
) -> None:
    """assetUrl http://127.0.0.2:<port>/ or http://[::1]:<port>/: the listener there sees no
    connection, the job fails with destination_blocked naming host and address, without a retry."""
    retry_sleep = RecordingSleep()
    async with listening(host) as listener:
        hostile.job("j1", assetUrl=f"{listener.origin}/file.pdf?sig=secret-signature", size=10)
        (job,) = await run_jobs(hostile_settings(tmp_path, hostile), ["cloudlayer:j1"], retry_sleep)
    message = failed_with(job, "destination_blocked")
    assert listener.connections == 0
    assert "loopback" in message and host in message and "secret-signature" not in message
    assert retry_sleep.delays == []  # not retried: the same URL would be refused again
    assert job.assets[0].state.value == "failed"


async def test_localhost_by_name_is_refused_at_resolution(hostile: Hostile, tmp_path: Path) -> None:
    """http://localhost:<port>/ resolves only to loopback addresses: refused, the listener on
    127.0.0.1 at that port sees nothing."""
    async with listening("127.0.0.1") as listener:
        hostile.job("j1", assetUrl=f"http://localhost:{listener.port}/a.pdf")
        (job,) = await run_jobs(hostile_settings(tmp_path, hostile), ["cloudlayer:j1"])
    message = failed_with(job, "destination_blocked")
    assert listener.connections == 0
    assert "localhost" in message and "loopback" in message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "unique-local"),
        ("http://100.100.100.200/latest/meta-data/", "shared address space"),
        ("http://10.0.0.1/x.pdf", "private"),
        ("http://[::ffff:127.0.0.2]/x.pdf", "loopback"),
        ("http://0.0.0.0:1/x.pdf", "unspecified"),
        ("http://224.0.0.1/x.pdf", "multicast"),
    ],
)
async def test_metadata_and_private_addresses_are_refused(
    hostile: Hostile, tmp_path: Path, url: str, reason: str
) -> None:
    """Cloud metadata addresses (AWS, Alibaba), private, mapped, unspecified and multicast
    addresses are refused before any socket exists: no packet can leave."""
    hostile.job("j1", assetUrl=url)
    (job,) = await run_jobs(hostile_settings(tmp_path, hostile), ["cloudlayer:j1"])
    assert reason in failed_with(job, "destination_blocked")


@pytest.mark.parametrize("scheme_url", ["file:///etc/passwd", "ftp://127.0.0.2/x", "gopher://x/y", "x"])
async def test_other_schemes_are_refused_without_retries(
    hostile: Hostile, tmp_path: Path, scheme_url: str
) -> None:
    """file://, ftp:// and the like are refused at once (not retried as network errors)."""
    retry_sleep = RecordingSleep()
    hostile.job("j1", assetUrl=scheme_url)
    (job,) = await run_jobs(hostile_settings(tmp_path, hostile), ["cloudlayer:j1"], retry_sleep)
    message = failed_with(job, "destination_blocked")
    assert "not allowed" in message or "no host" in message
    assert retry_sleep.delays == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_to_an_internal_address_is_refused(
    hostile: Hostile, tmp_path: Path, status: int
) -> None:
    """An allowed file host (127.0.0.1 here) answering 3xx to 127.0.0.2: the target is checked
    like the first hop and never connected to."""
    async with listening("127.0.0.2") as listener:

        async def redirect(_request: web.Request) -> web.StreamResponse:
            return web.Response(status=status, headers={"Location": f"{listener.origin}/stolen"})

        hostile.routes["/files/a.pdf"] = redirect
        hostile.job("j1", assetUrl=f"{hostile.url}/files/a.pdf")
        settings = hostile_settings(tmp_path, hostile, limits=allowing("127.0.0.1/32"))
        (job,) = await run_jobs(settings, ["cloudlayer:j1"])
    assert "127.0.0.2" in failed_with(job, "destination_blocked")
    assert listener.connections == 0


async def test_redirects_are_followed_up_to_five_hops(hostile: Hostile, tmp_path: Path) -> None:
    """Five redirects on an allowed host are followed to the file; a sixth is refused
    (too_many_redirects) without requesting its target."""

    async def file(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"%PDF-1.7 hello", content_type="application/pdf")

    for n in range(5):
        hostile.redirect(f"/ok/{n}", f"/ok/{n + 1}")
    hostile.routes["/ok/5"] = file
    for n in range(6):
        hostile.redirect(f"/long/{n}", f"/long/{n + 1}")
    hostile.routes["/long/6"] = file
    hostile.job("ok", assetUrl=f"{hostile.url}/ok/0")
    hostile.job("long", assetUrl=f"{hostile.url}/long/0")
    settings = hostile_settings(tmp_path, hostile, limits=allowing("127.0.0.1/32"))
    ok, long = await run_jobs(settings, ["cloudlayer:ok", "cloudlayer:long"])
    assert ok.state is JobState.DONE, ok.error
    failed_with(long, "too_many_redirects")
    assert hostile.count("/long/5") == 1 and hostile.count("/long/6") == 0


async def test_allow_networks_lets_an_internal_mirror_through(hostile: Hostile, tmp_path: Path) -> None:
    """ASSET_WORKER_ALLOW_NETWORKS with the mirror's network: the file is fetched and stored."""

    async def file(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"mirror bytes", content_type="application/pdf")

    hostile.routes["/mirror/a.pdf"] = file
    hostile.job("j1", assetUrl=f"{hostile.url}/mirror/a.pdf")
    denied, allowed = tmp_path / "denied", tmp_path / "allowed"
    denied.mkdir()
    allowed.mkdir()
    (refused,) = await run_jobs(hostile_settings(denied, hostile), ["cloudlayer:j1"])
    failed_with(refused, "destination_blocked")
    settings = hostile_settings(allowed, hostile, limits=allowing("127.0.0.0/8"))
    (job,) = await run_jobs(settings, ["cloudlayer:j1"])
    assert job.state is JobState.DONE and job.assets[0].receipt is not None


class ScriptedDns(AbstractResolver):
    """A name server whose answers the test sets: what a rebinding attacker's DNS would say."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        return None


async def test_only_allowed_addresses_of_a_name_are_connected_to() -> None:
    """A name resolving to a refused and an allowed address is connected only at the allowed one;
    one resolving only to refused addresses (rebound to 127.0.0.2) is refused with EgressRefused."""
    policy = EgressPolicy(allowing("127.0.0.1/32").allow_networks)
    async with listening("127.0.0.2") as internal, listening("127.0.0.1") as allowed:
        dns = ScriptedDns(
            {"mixed.example": ["127.0.0.2", "127.0.0.1"], "rebound.example": ["127.0.0.2"]}
        )
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy, dns), use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            # The allowed listener closes at once: the request fails (aiohttp tries an idempotent
            # request twice on a dropped connection), but only after connecting there.
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://mixed.example:{allowed.port}/")
            for _ in range(2):  # asked twice: a rebinding name gets no second chance either
                with pytest.raises(aiohttp.ClientConnectorError) as caught:
                    await session.get(f"http://rebound.example:{internal.port}/")
                refusal = refusal_of(caught.value)
                assert isinstance(refusal, EgressRefused) and refusal.address == "127.0.0.2"
    assert allowed.connections >= 1 and internal.connections == 0
    assert dns.asked.count("rebound.example") == 2


async def test_the_socket_check_refuses_ip_literals_the_resolver_never_sees() -> None:
    """aiohttp does not resolve IP literals: the socket factory refuses them before a socket exists."""
    async with (
        listening("127.0.0.2") as internal,
        new_upstream_session(HttpSettings(), EgressPolicy()) as session,
    ):
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(f"{internal.origin}/x")
    assert isinstance(refusal_of(caught.value), EgressRefused)
    assert internal.connections == 0


async def test_refusals_are_logged_without_the_query(hostile: Hostile, tmp_path: Path) -> None:
    """The asset_failed log line names the host and address but never the signed query."""
    hostile.job("j1", assetUrl="http://127.0.0.2:9/x.pdf?X-Amz-Signature=abcdef0123456789")
    with capture_logs() as logs:
        (job,) = await run_jobs(hostile_settings(tmp_path, hostile), ["cloudlayer:j1"])
    failed_with(job, "destination_blocked")
    failures = [e for e in logs if e["event"] == "asset_failed"]
    assert failures and all("abcdef0123456789" not in str(e) for e in logs)
