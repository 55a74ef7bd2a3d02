"""The one HTTP session of a process, and request-level retries for upstream API calls.

This is the boundary where aiohttp's exceptions become ours: connection errors, timeouts and
retryable statuses turn into ``UpstreamUnavailable`` (retried here with tenacity, honouring
``Retry-After``), every other error status into ``UpstreamRejected`` with a code the provider
chose. Callers above this module never see an aiohttp exception from an API call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from worker.errors import UpstreamRejected, UpstreamUnavailable, describe, strip_query

# Re-exported: the settings and the plain error reader live where no HTTP library is needed.
from worker.httpbase import ErrorReader as ErrorReader
from worker.httpbase import HttpSettings as HttpSettings
from worker.httpbase import default_error_reader as default_error_reader
from worker.jsonbody import ACCEPT_ENCODING, BodyRefused, BoundedBody, parse_json
from worker.lease import Sleep, current_progress, deliberate_sleep
from worker.policy import Backoff, is_retryable_status, parse_retry_after
from worker.ratelimit import RateLimiter

log = structlog.get_logger("worker.http")

# Called once per retry with (reason, delay); metrics hook in here.
RetryObserver = Callable[[str, float], None]

USER_AGENT = "asset-worker/0.1 (+https://pypi.org/project/asset-worker/)"


def new_session(
    settings: HttpSettings, *, connector_options: Mapping[str, Any], **options: Any
) -> aiohttp.ClientSession:
    """What every session of the worker shares: no default headers but the User-Agent (API keys are
    per request, so they can never leak to another host), no proxy from the environment, statuses
    left to the caller, and bounded connect and read timeouts but no total timeout (a 1 GiB body
    may legitimately take minutes; the transfer's speed floor bounds a slow one)."""
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.connect_timeout_s,
        sock_connect=settings.connect_timeout_s,
        sock_read=settings.read_timeout_s,
    )
    connector = aiohttp.TCPConnector(limit=100, limit_per_host=32, ttl_dns_cache=300, **connector_options)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
        trust_env=False,
        **options,
    )


def new_api_session(settings: HttpSettings) -> aiohttp.ClientSession:
    """The session for the vendors' APIs, at the base URLs the operator configured (trusted as
    configured; URLs that come *from* upstream use ``egress_session.new_upstream_session``). No
    transparent decompression: ``get_json`` decodes bodies itself within ``max_response_bytes``."""
    return new_session(settings, connector_options={}, auto_decompress=False)


@dataclass(frozen=True, slots=True)
class JsonResponse:
    status: int
    body: Any  # parsed JSON, or None for 304
    headers: Mapping[str, str]



class HttpClient:
    """GET JSON from an upstream API with retries; sleeping and time are injected."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: HttpSettings,
        *,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        on_retry: RetryObserver | None = None,
        max_response_bytes: int = 8 << 20,
    ) -> None:
        self.session = session
        self._settings = settings
        self._max_response_bytes = max_response_bytes
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rand = rand
        self._on_retry = on_retry
        self._backoff = Backoff(
            initial_s=settings.backoff_initial_s, max_s=settings.backoff_max_s, multiplier=2.0, jitter=0.5
        )

    async def get_json(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        error_reader: ErrorReader = default_error_reader,
        attempts: int | None = None,
        limiter: RateLimiter | None = None,
    ) -> JsonResponse:
        """GET ``url`` and parse JSON, retrying transient failures.

        Returns 2xx and 304 answers (304 with ``body`` None); raises ``UpstreamRejected`` for
        other statuses or a body that is not JSON, and ``UpstreamUnavailable`` once the attempts
        are used up. With ``limiter``, every attempt (retries too) first takes a token from it.
        """
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts or self._settings.request_attempts),
            retry=retry_if_exception_type(UpstreamUnavailable),
            wait=self._wait,
            sleep=functools.partial(deliberate_sleep, self._sleep),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if limiter is not None:
                    # Waiting for the budget is a deliberate wait: the job's lease stays alive.
                    progress = current_progress.get()
                    with progress.waiting() if progress is not None else contextlib.nullcontext():
                        await limiter.acquire()
                return await self._get_once(url, headers, error_reader)
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, UpstreamUnavailable) and exc.retry_after_s is not None:
            # The server said how long; sleep exactly that (already clamped when parsed).
            return exc.retry_after_s
        return self._backoff.delay(state.attempt_number - 1, self._rand)

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
        reason = f"http_{exc.status}" if isinstance(exc, UpstreamUnavailable) and exc.status else "network"
        log.info(
            "request_retry",
            url=getattr(exc, "url", ""),
            reason=reason,
            attempt=state.attempt_number,
            delay_s=round(delay, 3),
            error=str(exc),
        )
        if self._on_retry is not None:
            self._on_retry(reason, delay)

    async def _get_once(
        self, url: str, headers: Mapping[str, str], error_reader: ErrorReader
    ) -> JsonResponse:
        safe_url = strip_query(url)
        refused: BodyRefused | None = None
        try:
            # No redirects: aiohttp would forward X-API-Key to whatever host a 3xx names.
            async with self.session.get(
                url,
                headers={**headers, "Accept-Encoding": ACCEPT_ENCODING},
                allow_redirects=False,
                auto_decompress=False,
            ) as resp:
                status = resp.status
                resp_headers = dict(resp.headers)
                try:
                    body = await self._read_bounded(resp)
                except BodyRefused as exc:
                    refused, body = exc, b""
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"GET {safe_url}: {describe(exc)}", url=url, code="network_error"
            ) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            # A malformed answer or an unusable URL: asking again will not help.
            raise UpstreamRejected(
                f"GET {safe_url}: {describe(exc)}", url=url, code="malformed_response"
            ) from exc
        progress = current_progress.get()
        if progress is not None:
            progress.touch()
        if status == 304:
            return JsonResponse(status, None, resp_headers)
        if is_retryable_status(status):
            retry_after = parse_retry_after(
                resp_headers.get("Retry-After"),
                now=self._wall_clock(),
                max_s=self._settings.retry_after_max_s,
            )
            code, message = error_reader(status, body)
            raise UpstreamUnavailable(
                f"GET {safe_url}: HTTP {status}: {message}",
                url=url,
                status=status,
                retry_after_s=retry_after,
                code=code,
            )
        if 300 <= status < 400:
            target = strip_query(resp_headers.get("Location", "?"))
            raise UpstreamRejected(
                f"GET {safe_url}: unexpected redirect ({status}) to {target}",
                url=url,
                status=status,
                code="unexpected_redirect",
            )
        if not 200 <= status < 300:
            code, message = error_reader(status, body)
            raise UpstreamRejected(
                f"GET {safe_url}: HTTP {status}: {message}", url=url, status=status, code=code
            )
        try:
            if refused is not None:
                raise refused
            parsed = parse_json(body)
        except BodyRefused as exc:
            raise UpstreamRejected(
                f"GET {safe_url}: HTTP {status}: {exc}", url=url, status=status, code="malformed_response"
            ) from None
        return JsonResponse(status, parsed, resp_headers)

    async def _read_bounded(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, decoded by us and refused the moment it passes ``max_response_bytes``
        (a ``Content-Length`` above it is refused before a byte is read)."""
        if resp.content_length is not None and resp.content_length > self._max_response_bytes:
            raise BodyRefused(
                f"the answer announces {resp.content_length} bytes, more than {self._max_response_bytes} "
                "(ASSET_WORKER_MAX_RESPONSE_BYTES)"
            )
        body = BoundedBody(resp.headers.get("Content-Encoding"), self._max_response_bytes)
        async for chunk in resp.content.iter_chunked(1 << 16):
            body.feed(chunk)
        return body.finish()
