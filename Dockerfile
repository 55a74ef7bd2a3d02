# syntax=docker/dockerfile:1
# Build stage: compile wheels for the project and its dependencies (compilers stay here).
FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN python -m venv /opt/asset-worker \
 && /opt/asset-worker/bin/pip install --no-compile . \
 && /opt/asset-worker/bin/python -m compileall -q /opt/asset-worker

# Runtime stage: the virtual environment only, a numeric non-root user, state under /var/lib/asset-worker.
FROM python:3.12-slim-bookworm
ENV PATH=/opt/asset-worker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ASSET_WORKER_STORE=sqlite:////var/lib/asset-worker/asset-worker.db \
    ASSET_WORKER_DEST=file:///var/lib/asset-worker/assets
COPY --from=build /opt/asset-worker /opt/asset-worker
RUN mkdir -p /var/lib/asset-worker && chown 10001:10001 /var/lib/asset-worker
USER 10001:10001
WORKDIR /var/lib/asset-worker
VOLUME ["/var/lib/asset-worker"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["asset-worker"]
CMD ["run"]
