# syntax=docker/dockerfile:1
# gradserve: build wheels in one stage, install them into a clean one.
#   docker build -t gradserve .
#   docker run --rm -p 127.0.0.1:8000:8000 gradserve
# Settings are GRADSERVE_* environment variables (see service/config.py).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- stage 1: wheels of the project and of every runtime dependency --------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY schemas ./schemas
COPY gradserve ./gradserve
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- stage 2: runtime --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# GRADSERVE_HOST: inside a container the port is reachable only through a public bind;
# outside one the default stays 127.0.0.1 (see README).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    GRADSERVE_HOST=0.0.0.0 \
    GRADSERVE_PORT=8000 \
    GRADSERVE_DATA_DIR=/app/var

RUN groupadd --system --gid 10001 gradserve \
    && useradd --system --uid 10001 --gid gradserve --home-dir /app --shell /usr/sbin/nologin gradserve

# The same install as the Makefile's `pip install .`: the project with its runtime
# dependencies, no extras, not editable; here from the wheels built above, offline.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/gradserve-*.whl

WORKDIR /app
COPY gunicorn.conf.py ./
RUN mkdir -p /app/var && chown gradserve:gradserve /app/var

# Numeric, so that a runtime policy (runAsNonRoot) can verify it is not root.
USER 10001:10001
EXPOSE 8000

# slim has no curl; urlopen raises (exit 1) on a refused connection or a non-2xx status.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GRADSERVE_PORT', '8000'), timeout=2)"]

# gunicorn drains in-flight requests on SIGTERM (docker stop) for GRADSERVE_GRACEFUL_TIMEOUT.
CMD ["gunicorn", "-c", "/app/gunicorn.conf.py", "service.wsgi:app"]
