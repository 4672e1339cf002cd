# syntax=docker/dockerfile:1
# The hub: `lanner sidekick` (HTTP ingest/API/UI/metrics on 2801, gRPC ingest on 5060).
# Slim, non-root (uid 10001), no compiler: every dependency comes as a wheel.
# Build from the repository root:
#   docker build -f docker/hub.Dockerfile -t lanner/hub:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml ./
COPY detector/ detector/
COPY sidekick/ sidekick/
COPY outputs/ outputs/
# Lanner's wheel and the wheels of its pinned dependencies (pyproject.toml).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/lanner-*.whl \
 && groupadd --system --gid 10001 lanner \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/lanner \
            --shell /usr/sbin/nologin lanner \
 && mkdir -p /var/lib/lanner \
 && chown 10001:10001 /var/lib/lanner
# The UI's static files, where sidekick/ui.py looks for them (next to the package).
COPY web/ /usr/local/lib/python3.11/site-packages/web/
WORKDIR /var/lib/lanner
USER 10001:10001
EXPOSE 2801 5060
ENTRYPOINT ["lanner"]
CMD ["sidekick", "--datadir", "/var/lib/lanner"]
