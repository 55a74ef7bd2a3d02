"""A provider, a destination and a store are each one module plus one registry entry.

Each is defined here, in this test module, and registered the way a module in the package would be
(one entry in ``PROVIDERS``, ``SINKS`` or ``STORES``). Nothing else is touched, yet its variables
are known to the configuration, its keys are checked at submit, and a whole worker runs jobs
through it. A last test keeps the vendors' names inside their own modules.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from aiohttp import web

import worker
from tests.conftest import SettingsFactory, run_jobs
from worker.app import open_worker
from worker.config import from_env, known_variables, secret_values
from worker.destinations import parse_dest
from worker.envvars import Var, http_url, optional_text, section
from worker.errors import ConfigError, InvalidJob, UpstreamRejected
from worker.httpclient import HttpClient
from worker.models import AssetRef, Failed, Job, JobKey, JobState, Pending, PollOutcome, Ready
from worker.providers import PROVIDERS, parse_key
from worker.providers.base import ProviderSpec, Schedule
from worker.simulator.app import Simulator
from worker.sinks import SINKS
from worker.sinks.base import JobDest, OpenedSink, SinkSpec, Upload
from worker.sinks.file import FileSink
from worker.store import STORES, open_store
from worker.store.base import Store, StoreSpec
from worker.store.sqlite import SqliteStore

WORKER = Path(__file__).resolve().parent.parent / "worker"

# -- a provider: "acme", a plain JSON job API ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AcmeSettings:
    api_key: str | None = field(default=None, repr=False)
    base_url: str = "https://api.acme.example"


ACME_VARIABLES = (
    Var("ACME_API_KEY", "api_key", optional_text),
    Var("ACME_BASE_URL", "base_url", http_url("https://api.acme.example")),
)


class AcmeProvider:
    """``GET /v1/jobs/<id>`` answers ``{"state": "running"}`` or ``{"state": "done", "files": [...]}``."""

    name = "acme"

    def __init__(self, http: HttpClient, settings: AcmeSettings, schedule: Schedule) -> None:
        self._http = http
        self._settings = settings
        self.schedule = schedule

    async def poll(self, job: Job) -> PollOutcome:
        url = f"{self._settings.base_url}/v1/jobs/{quote(job.key.upstream_id, safe='')}"
        response = await self._http.get_json(url, headers={"X-Acme-Key": self._settings.api_key or ""})
        body = response.body
        if not isinstance(body, dict):
            raise UpstreamRejected(f"{url}: not a JSON object", code="malformed_response")
        if body.get("state") == "failed":
            return Failed("upstream_error", str(body.get("reason", "failed")))
        if body.get("state") != "done":
            return Pending(str(body.get("state")))
        return Ready(
            tuple(
                AssetRef(
                    asset_id=f["name"], url=f["url"], expected_size=f["size"], expected_sha256=f["sha256"]
                )
                for f in body["files"]
            )
        )

    async def refresh(self, job: Job, ref: AssetRef) -> AssetRef:
        outcome = await self.poll(job)
        assert isinstance(outcome, Ready)
        return next(a for a in outcome.assets if a.asset_id == ref.asset_id)

    def folder(self, job: Job) -> str:
        return job.key.upstream_id


def _acme_id(upstream_id: str) -> None:
    if not upstream_id.startswith("acme-job-"):
        raise InvalidJob(f"an acme job id starts with acme-job-, not {upstream_id!r}")


ACME = ProviderSpec(
    name="acme",
    key_example="acme:acme-job-<n>",
    variables=ACME_VARIABLES,
    load=lambda env: AcmeSettings(**section(env, ACME_VARIABLES)),
    schedule=Schedule(initial_s=0.05, max_s=0.1),
    check_id=_acme_id,
    build=lambda context, settings, schedule: AcmeProvider(context.http, settings, schedule),
    secrets=lambda settings: (settings.api_key,),
)

REPORT = b"%PDF-1.7 acme quarterly report\n" * 2000


@dataclass
class AcmeVendor:
    url: str
    polls: list[str]
    keys_seen: set[str]


@asynccontextmanager
async def acme_vendor() -> AsyncIterator[AcmeVendor]:
    """The vendor on loopback: each job runs for one poll, then offers one file."""
    vendor = AcmeVendor(url="", polls=[], keys_seen=set())

    async def job(request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        vendor.keys_seen.add(request.headers.get("X-Acme-Key", ""))
        vendor.polls.append(job_id)
        if vendor.polls.count(job_id) == 1:
            return web.json_response({"state": "running"})
        files = [
            {
                "name": "report",
                "url": f"{vendor.url}/files/report.pdf",
                "size": len(REPORT),
                "sha256": hashlib.sha256(REPORT).hexdigest(),
            }
        ]
        return web.json_response({"state": "done", "files": files})

    async def report(_request: web.Request) -> web.Response:
        return web.Response(body=REPORT, content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/v1/jobs/{id}", job)
    app.router.add_get("/files/report.pdf", report)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    vendor.url = f"http://127.0.0.1:{port}"
    try:
        yield vendor
    finally:
        await runner.cleanup()


async def test_a_provider_defined_here_runs_end_to_end_through_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered by one entry, "acme" gets its variables (its own and the generic schedule ones),
    its id rule at submit, its key masked, and a worker that polls it and stores its file."""
    with pytest.raises(ConfigError, match="unknown setting"):
        from_env({"ASSET_WORKER_ACME_POLL_MAX_S": "1"})
    with pytest.raises(InvalidJob, match="unknown provider 'acme'"):
        parse_key("acme:acme-job-1")

    monkeypatch.setitem(PROVIDERS, ACME.name, ACME)
    assert "ASSET_WORKER_ACME_POLL_MAX_S" in known_variables()
    with pytest.raises(InvalidJob, match="starts with acme-job-"):
        parse_key("acme:report-1")
    async with acme_vendor() as vendor:
        store_url = f"sqlite:///{tmp_path / 'store.db'}"
        env = {
            "ACME_API_KEY": "acme-secret-key",
            "ACME_BASE_URL": vendor.url,
            "ASSET_WORKER_ACME_POLL_INITIAL_S": "0.05",
            "ASSET_WORKER_ACME_POLL_MAX_S": "0.1",
            "ASSET_WORKER_ALLOW_NETWORKS": "127.0.0.1/32",
            "ASSET_WORKER_STORE": store_url,
            "ASSET_WORKER_DEST": str(tmp_path / "assets"),
            "ASSET_WORKER_CLAIM_INTERVAL_S": "0.05",
        }
        settings = from_env(env)
        assert settings.providers["acme"].schedule == Schedule(initial_s=0.05, max_s=0.1)
        assert "acme-secret-key" in secret_values(settings)
        (submitted,) = await worker.submit_async(["acme:acme-job-1"], store=store_url)
        assert submitted.created
        async with open_worker(settings) as running:
            await asyncio.wait_for(running.runner.run(stop=asyncio.Event(), until_idle=True), 30)
            (job,) = await running.store.get([JobKey("acme", "acme-job-1")])
    assert job.state is JobState.DONE, job.error
    (asset,) = job.assets
    assert asset.receipt is not None and asset.receipt.upstream_verified
    stored = Path(unquote(urlsplit(asset.receipt.uri).path))
    assert stored == tmp_path / "assets" / "acme" / "acme-job-1" / "report.pdf"
    assert await asyncio.to_thread(stored.read_bytes) == REPORT
    assert vendor.polls == ["acme-job-1", "acme-job-1"] and vendor.keys_seen == {"acme-secret-key"}


# -- a destination: "flat://DIR", every file in one directory -------------------------------------


class FlatSink:
    """Files on disk in one directory: ``cloudlayer/job/asset.pdf`` becomes ``cloudlayer__job__asset.pdf``."""

    def __init__(self, root: Path) -> None:
        self._files = FileSink(root)

    def uri_for(self, key: str) -> str:
        return self._files.uri_for(key.replace("/", "__"))

    def owns(self, uri: str) -> bool:
        return self._files.owns(uri)

    async def open(
        self, key: str, *, content_type: str | None, expected_size: int | None, expected_sha256: str | None
    ) -> Upload:
        return await self._files.open(
            key.replace("/", "__"),
            content_type=content_type,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
        )

    async def still_has(self, receipt: Any) -> bool:
        return await self._files.still_has(receipt)

    async def close(self) -> None:
        await self._files.close()


def _flat_root(url: str, _env: Mapping[str, str]) -> Path:
    return Path(unquote(urlsplit(url).path))


def _no_job_dest(text: str, base_url: str) -> JobDest:
    raise ConfigError(f"destination {text!r}: {base_url} keeps every file in one directory")


@asynccontextmanager
async def _open_flat(root: Path) -> AsyncIterator[OpenedSink]:
    yield OpenedSink(FlatSink(root))


FLAT = SinkSpec(
    name="flat",
    schemes=("flat",),
    example="flat:///DIR",
    load=_flat_root,
    job_dest=_no_job_dest,
    open=_open_flat,
)


async def test_a_destination_defined_here_is_chosen_by_its_scheme(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered by one entry, flat:// is a destination ASSET_WORKER_DEST accepts, its rule for
    per-job destinations applies, and a worker publishes verified files through it."""
    flat_url = f"flat://{tmp_path / 'flat'}"
    with pytest.raises(ConfigError, match="unsupported scheme 'flat'"):
        from_env({"ASSET_WORKER_DEST": flat_url})
    monkeypatch.setitem(SINKS, FLAT.name, FLAT)
    assert from_env({"ASSET_WORKER_DEST": flat_url}).dest_settings == tmp_path / "flat"
    with pytest.raises(ConfigError, match="one directory"):
        parse_dest(str(tmp_path / "flat" / "tenant"), base_url=flat_url)
    sim.add_cloudlayer_job(id="flat-1", pending_s=0, size=30_000)
    (job,) = await run_jobs(make_settings(dest_url=flat_url), ["cloudlayer:flat-1"])
    assert job.state is JobState.DONE, job.error
    (asset,) = job.assets
    assert asset.receipt is not None
    (stored,) = (tmp_path / "flat").iterdir()
    assert stored.name.startswith("cloudlayer__flat-1__") and stored.stat().st_size == 30_000
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == asset.receipt.sha256


# -- a store: "keep:///PATH", the SQLite store under a scheme of its own ---------------------------


def _keep_path(url: str) -> Path:
    path = unquote(urlsplit(url).path)
    if not path:
        raise ConfigError(f"ASSET_WORKER_STORE={url!r}: no path given")
    return Path(path)


async def _open_keep(url: str, _pool_size: int) -> Store:
    return await SqliteStore.open(_keep_path(url))


KEEP = StoreSpec(name="keep", schemes=("keep",), example="keep:///PATH", check=_keep_path, open=_open_keep)


async def test_a_store_defined_here_is_chosen_by_its_scheme(
    sim: Simulator, make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered by one entry, keep:/// is a store ASSET_WORKER_STORE accepts (its URL checked at
    start), and a worker keeps its queue and receipts in it."""
    keep_url = f"keep://{tmp_path / 'queue.db'}"
    with pytest.raises(ConfigError, match="unsupported store"):
        from_env({"ASSET_WORKER_STORE": keep_url})
    monkeypatch.setitem(STORES, KEEP.name, KEEP)
    with pytest.raises(ConfigError, match="no path given"):
        from_env({"ASSET_WORKER_STORE": "keep://"})
    assert from_env({"ASSET_WORKER_STORE": keep_url}).store_url == keep_url
    sim.add_cloudlayer_job(id="kept-1", pending_s=0, size=20_000)
    (job,) = await run_jobs(make_settings(store_url=keep_url), ["cloudlayer:kept-1"])
    assert job.state is JobState.DONE, job.error
    reopened = await open_store(keep_url)
    try:
        (again,) = await reopened.get([JobKey("cloudlayer", "kept-1")])
    finally:
        await reopened.close()
    assert again.state is JobState.DONE and again.assets[0].receipt == job.assets[0].receipt
    assert (tmp_path / "queue.db").is_file()


# -- names stay home ---------------------------------------------------------------------------


def _home(path: Path, name: str, kind: str) -> bool:
    """Whether ``path`` (relative to worker/) may name provider or sink ``name``."""
    rel = path.as_posix()
    return rel in (f"{kind}/{name}.py", f"{kind}/__init__.py") or rel.startswith(f"{kind}/{name}_")


def test_no_provider_or_destination_is_named_outside_its_module_and_the_registry() -> None:
    """String literals naming a provider or a destination scheme (docstrings and comments aside)
    appear only in that one's modules and its registry. The simulator and the demo imitate the two
    vendors and are exempt; so is the first PostgreSQL migration, released before the registry
    existed (the second one drops its provider list)."""
    names = {**{n: "providers" for n in PROVIDERS}, **{s: "sinks" for s in ("s3",)}}
    exempt = ("simulator/", "demo.py", "store/postgres_schema.py")
    found: list[str] = []
    for path in sorted(WORKER.rglob("*.py")):
        rel = path.relative_to(WORKER)
        if rel.as_posix().startswith(exempt):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if id(node) in docstrings or not isinstance(node, ast.Constant):
                continue
            if not isinstance(node.value, str):
                continue
            words = set(re.findall(r"[a-z0-9]+", node.value.lower()))
            for name, kind in names.items():
                if name in words and not _home(rel, name, kind):
                    found.append(f"worker/{rel}:{node.lineno}: {node.value[:60]!r}")
    assert found == []
