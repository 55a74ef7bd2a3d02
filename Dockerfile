# syntax=docker/dockerfile:1
# asset-worker image. Build: docker build -t asset-worker .
# Checked in CI by hadolint and tests/test_deploy.py; deploy/README.md explains the choices.
#
# Python 3.11 is the version CI tests on (.ci/run); both stages use the same Python on the same
# Debian release, so the virtual environment built in the first stage runs unchanged in the second.
ARG PYTHON_VERSION=3.11

# ---- build: the full image has compilers, for any dependency that ships no wheel for this platform.
FROM python:${PYTHON_VERSION}-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m venv /opt/asset-worker
# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when the dependency
# list changes, not on every code change.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && /opt/asset-worker/bin/pip install -r /tmp/requirements.txt
# hatchling reads README.md (the package's readme) when it builds the wheel.
COPY README.md ./
COPY worker ./worker
# unchecked-hash bytecode stays valid whatever mtimes COPY gives the sources, so the read-only
# runtime never tries (and fails) to rewrite it.
RUN /opt/asset-worker/bin/pip install --no-deps . \
 && /opt/asset-worker/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/asset-worker

# ---- runtime: slim (no compilers), the virtual environment only, a numeric non-root user.
FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="asset-worker" \
      org.opencontainers.image.description="Polls cloudlayer.io / Layers generation jobs and stores every asset verified" \
      org.opencontainers.image.licenses="Apache-2.0"
# Everything the process writes lives under /var/lib/asset-worker (the volume), so the root
# filesystem can be read-only: HOME (the uid has no passwd entry, and botocore looks under ~/.aws)
# and TMPDIR point there, and no bytecode is written at run time. TMPDIR is the volume itself, not
# a subdirectory, because a fresh emptyDir or bind mount would not contain one. The defaults keep
# a single container self-contained (SQLite store and files on the volume); Kubernetes and systemd
# override ASSET_WORKER_STORE / ASSET_WORKER_DEST (deploy/README.md).
ENV PATH=/opt/asset-worker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/asset-worker \
    TMPDIR=/var/lib/asset-worker \
    ASSET_WORKER_STORE=sqlite:////var/lib/asset-worker/asset-worker.db \
    ASSET_WORKER_DEST=file:///var/lib/asset-worker/assets
COPY --from=build /opt/asset-worker /opt/asset-worker
# 10001: outside the range of system and usual login users, so it owns nothing else on a host
# that bind-mounts the volume. Kubernetes' runAsUser and fsGroup use the same number.
RUN mkdir -p /var/lib/asset-worker \
 && chown 10001:10001 /var/lib/asset-worker \
 && chmod 0750 /var/lib/asset-worker
USER 10001:10001
WORKDIR /var/lib/asset-worker
VOLUME ["/var/lib/asset-worker"]
# HTTP service (ASSET_WORKER_LISTEN, default 0.0.0.0:8080; loopback only until ASSET_WORKER_API_TOKEN
# is set): /healthz, /readyz, /metrics and the API.
EXPOSE 8080
# SIGTERM starts the drain (ASSET_WORKER_GRACE_S); give `docker stop -t` more than the grace.
# No HEALTHCHECK: the same image runs `submit`, `status` and `run --no-http`, which serve no HTTP,
# and orchestrators probe /healthz and /readyz themselves.
STOPSIGNAL SIGTERM
ENTRYPOINT ["asset-worker"]
CMD ["run"]
