"""/readyz tells a load balancer to stop sending work to a worker that cannot store it."""

from __future__ import annotations

import dataclasses

from tests.conftest import SettingsFactory
from tests.http_support import api_client
from worker.app import http_service, open_worker
from worker.http.server import serve


async def test_readyz_is_503_while_the_destination_is_unavailable(make_settings: SettingsFactory) -> None:
    """With destination_ready() False, /readyz is 503 destination_unavailable, 200 once it is True
    again, and draining still takes precedence; /healthz stays 200."""
    ready, draining = [False], [False]
    async with open_worker(make_settings()) as worker:
        service = dataclasses.replace(
            http_service(worker, draining=lambda: draining[0]), destination_ready=lambda: ready[0]
        )
        async with (
            serve(service, host="127.0.0.1", port=0, api_token=None) as (host, port),
            api_client(f"http://{host}:{port}", token=None) as anonymous,
        ):
            answer = await anonymous.request("GET", "/readyz", template="/readyz")
            assert (answer.status, answer.code) == (503, "destination_unavailable")
            healthz = await anonymous.request("GET", "/healthz", template="/healthz")
            assert healthz.status == 200
            ready[0] = True
            assert (await anonymous.request("GET", "/readyz", template="/readyz")).status == 200
            ready[0], draining[0] = False, True
            answer = await anonymous.request("GET", "/readyz", template="/readyz")
            assert (answer.status, answer.code) == (503, "draining")
