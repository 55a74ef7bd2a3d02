"""The worker's HTTP service (aiohttp.web), served by ``asset-worker run`` on ``ASSET_WORKER_LISTEN``.

- ``errors``: the JSON error shape, its stable codes and the middleware that guarantees it
- ``auth``: the bearer token on ``/v1/``
- ``jobs``: the job API (submit, get, list, retry, cancel) and its opaque cursor
- ``health``: ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``
- ``state``: what the handlers share (store, clock, metrics, the runner's hooks) and the limits
- ``server``: the application (routes, middlewares) and serving it
- ``protocol``: below the application: aiohttp's own refusals as JSON, the header timeout and the
  connection cap
- ``openapi.json``: the API's OpenAPI 3 document (package data; the tests check it against the routes)
"""
