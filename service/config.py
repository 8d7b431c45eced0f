"""Settings, all from ``GRADSERVE_*`` environment variables, validated at start-up.

A bad value stops the process with a message naming the variable (Warehouse's pattern):
better a crash-looping deploy than a service running with a limit nobody asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from service.engine.limits import Limits

PREFIX = "GRADSERVE_"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 0  # 0: one per CPU core
    # Threads per worker: more than GRADSERVE_MAX_INFLIGHT, so that requests past the compute
    # slots reach the app (and its bounded admission wait) instead of gthread's hidden queue.
    threads: int = 8
    blas_threads: int = 0  # 0: cores // workers, at least 1
    timeout: int = 60  # gunicorn worker timeout (s)
    graceful_timeout: int = 30  # SIGTERM drain (s)
    # Recycling bounds a slow leak, and each recycle costs a boot (~0.2 s of CPU) and, before
    # the L1 warm-up, a cold cache. A 100,000-request soak: +15 MB in the first 25,000 (caches
    # filling), then +1 MB over the next 75,000; a worker at 4,000 req/s recycles every ~25 s.
    max_requests: int = 100_000
    max_requests_jitter: int = 10_000
    log_level: str = "info"
    # The two gradient routes through service/http/gateway.py (false: through Flask's dispatch,
    # same answers, ~100 µs more per request).
    gateway: bool = True

    # The array backend (service/engine/backend.py): numpy | cupy | array-api-strict (testing).
    backend: str = "numpy"
    # cupy: device bytes a request may hold (0: the free memory at start-up, less 10%); the
    # cost model refuses with 413 past min(this, GRADSERVE_MAX_MEMORY_BYTES).
    device_memory_bytes: int = 0
    # cupy: the GPU ids workers are pinned to, one worker per GPU by default (empty: every
    # GPU visible); each worker gets its own CUDA_VISIBLE_DEVICES.
    gpus: str = ""

    redis_url: str = ""
    data_dir: str = "var"  # the embedded (SQLite) store lives here
    store_timeout_ms: int = 200
    store_ttl_s: int = 0  # 0: registered graphs never expire
    store_retry_after_s: int = 5
    breaker_cooldown_s: float = 5.0
    l1_size: int = 256

    api_keys: tuple[str, ...] = ()
    api_keys_file: str = ""
    metrics_require_key: bool = False

    max_body_bytes: int = 64 * 1024 * 1024
    # Request-body bytes one worker holds at once (bodies arriving or waiting for a thread
    # or a compute slot); a body that would not fit is a 503 with Retry-After, unread.
    body_bytes_in_flight: int = 256 * 1024 * 1024
    max_expression_length: int = 20_000
    max_expression_depth: int = 64
    request_deadline_s: float = 30.0
    # /v1 requests computing at once per worker; one more waits up to admission_wait_s for a
    # slot, then gets a 503 with Retry-After.
    max_inflight: int = 2
    admission_wait_s: float = 1.0
    body_timeout_s: float = 10.0  # reading one request body (408 past it)
    max_response_bytes: int = 128 * 1024 * 1024  # estimated encoded response (413 past it)
    # Dynamic batching (service/flows/batcher.py): concurrent requests to one registered
    # graph merged into one batched run of at most this many. 1, off, by default: measured
    # (see README), it costs a small model ~4 % of its throughput and a wide one gains most
    # with more threads than the default (a waiting member holds a thread): turn it on with
    # GRADSERVE_THREADS=16 and 8 for a wide model with stored parameters. The first of a
    # batch waits at most batch_window_us for the others where none is computing.
    batch_max_size: int = 1
    batch_window_us: int = 2000

    limits: Limits = field(default_factory=Limits)

    @property
    def all_api_keys(self) -> tuple[str, ...]:
        keys = list(self.api_keys)
        if self.api_keys_file:
            try:
                text = Path(self.api_keys_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{PREFIX}API_KEYS_FILE: cannot read: {exc}") from None
            keys += [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]
        return tuple(keys)


def _coerce(name: str, raw: str, default: Any) -> Any:
    var = PREFIX + name.upper()
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError("expected true or false")
        if isinstance(default, int):
            value = int(raw.replace("_", ""))
            if value < 0:
                raise ValueError("must be >= 0")
            return value
        if isinstance(default, float):
            value = float(raw)
            if not value >= 0 or value == float("inf"):
                raise ValueError("must be a finite number >= 0")
            return value
        if isinstance(default, tuple):
            return tuple(k.strip() for k in raw.split(",") if k.strip())
        return raw
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r}: {exc}") from None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``env`` (default: os.environ); keyword overrides win (for tests)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    base = Settings()
    for f in fields(Settings):
        if f.name == "limits":
            continue
        raw = env.get(PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _coerce(f.name, raw, getattr(base, f.name))
    limit_values = {}
    for f in fields(Limits):
        raw = env.get(PREFIX + f.name.upper())
        if raw is not None:
            limit_values[f.name] = _coerce(f.name, raw, getattr(base.limits, f.name))
    limits = overrides.pop("limits", None) or replace(base.limits, **limit_values)
    settings = replace(base, limits=limits, **{**values, **overrides})
    if settings.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"{PREFIX}LOG_LEVEL={settings.log_level!r}: not a log level")
    if not 0 < settings.port < 65536:
        raise ConfigError(f"{PREFIX}PORT={settings.port}: not a port")
    if settings.redis_url and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(f"{PREFIX}REDIS_URL: must start with redis://, rediss:// or unix://")
    for name in ("max_inflight", "max_response_bytes", "body_timeout_s", "max_body_bytes"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{PREFIX}{name.upper()}: must be > 0")
    if settings.body_bytes_in_flight < settings.max_body_bytes:
        raise ConfigError(f"{PREFIX}BODY_BYTES_IN_FLIGHT={settings.body_bytes_in_flight}: must "
                          f"be >= {PREFIX}MAX_BODY_BYTES={settings.max_body_bytes} (else a "
                          "body within the limit could never be read)")
    for f in fields(Limits):
        if getattr(settings.limits, f.name) <= 0:
            raise ConfigError(f"{PREFIX}{f.name.upper()}: must be > 0")
    settings.all_api_keys  # noqa: B018 - fail at start-up on an unreadable key file
    _check_backend(settings)
    return settings


def _check_backend(settings: Settings) -> None:
    """The backend's name, and that its module imports (no device is opened here: gunicorn's
    master validates the settings and must not hold a CUDA context when it forks)."""
    from service.engine.backend import BACKENDS, BackendUnavailable, check_available

    name = settings.backend.strip().lower()
    if name not in BACKENDS:
        raise ConfigError(f"{PREFIX}BACKEND={settings.backend!r}: not one of "
                          f"{', '.join(BACKENDS)}")
    try:
        check_available(name)
    except BackendUnavailable as exc:
        raise ConfigError(str(exc)) from None
    gpus = [g.strip() for g in settings.gpus.split(",") if g.strip()]
    if any(not g.isdigit() and not g.startswith(("GPU-", "MIG-")) for g in gpus):
        raise ConfigError(f"{PREFIX}GPUS={settings.gpus!r}: expected GPU indices or UUIDs, "
                          "comma-separated")
