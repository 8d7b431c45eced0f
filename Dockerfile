# syntax=docker/dockerfile:1
# gradserve: build wheels in one stage, install them into a clean one.
#   docker build -t gradserve .
#   docker run --rm -p 127.0.0.1:8000:8000 gradserve
# The GPU image (CuPy on an NVIDIA CUDA runtime base; the NVIDIA Container Toolkit on the host):
#   docker build --target gpu -t gradserve:gpu .
#   docker run --rm --gpus all -p 127.0.0.1:8000:8000 gradserve:gpu
# Settings are GRADSERVE_* environment variables (see service/config.py). The last stage is
# the CPU image, so a build without --target is the CPU image.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# Any CUDA 12 runtime image (cupy-cuda12x brings its own CUDA libraries but needs the driver's).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04

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

# --- gpu target: `pip install .[gpu]` (CuPy) on a CUDA runtime base, GRADSERVE_BACKEND=cupy ------
FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH \
    GRADSERVE_BACKEND=cupy \
    GRADSERVE_HOST=0.0.0.0 \
    GRADSERVE_PORT=8000 \
    GRADSERVE_DATA_DIR=/app/var
# The distribution's Python 3 (3.12 on Ubuntu 24.04) in a virtual environment.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 gradserve \
    && useradd --system --uid 10001 --gid gradserve --home-dir /app --shell /usr/sbin/nologin gradserve
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY schemas ./schemas
COPY gradserve ./gradserve
# The project itself (its dependencies bounded in pyproject.toml), not a registry name to pin.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]"
WORKDIR /app
COPY gunicorn.conf.py ./
RUN rm -rf /src && mkdir -p /app/var && chown gradserve:gradserve /app/var
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GRADSERVE_PORT', '8000'), timeout=2)"]
# One worker per GPU (GRADSERVE_GPUS, default every GPU visible), each pinned to its own.
CMD ["gunicorn", "-c", "/app/gunicorn.conf.py", "service.wsgi:app"]

# --- stage 2: runtime (the CPU image; the default target) ---------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
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
