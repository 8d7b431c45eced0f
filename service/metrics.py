"""Prometheus metrics, shared by every gunicorn worker.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn.conf.py does it) and every
worker writes its samples there; ``/metrics`` aggregates them, so any worker answers for
the whole process group.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

from service.metric_files import archive_dead_worker, metric_files  # noqa: F401 - re-exported

REQUESTS = Counter("gradserve_requests_total", "HTTP requests by route, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("gradserve_request_duration_seconds", "HTTP request latency by route",
                    ["route"], buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                        1, 2.5, 5, 10, 30))
CACHE = Counter("gradserve_cache_total", "compiled-graph cache lookups by level and result "
                "(level l1|store; result hit|miss|eviction|error|corrupt)", ["level", "result"])
PLAN_EVICTIONS = Counter("gradserve_plan_cache_evictions_total", "compiled plans (or shape "
                         "specializations of one) dropped from a worker's plan cache, by "
                         "reason (count|bytes|specializations)", ["reason"])
PLAN_CACHE_BYTES = Gauge("gradserve_plan_cache_bytes", "estimated bytes of the compiled plans "
                         "held by the workers' plan caches", multiprocess_mode="livesum")
COMPILE = Histogram("gradserve_compile_seconds", "graph compilation time",
                    buckets=(.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5))
LIMITS = Counter("gradserve_limit_exceeded_total", "requests refused by a limit", ["limit"])
AUTH_FAILURES = Counter("gradserve_auth_failures_total", "requests refused for a missing or "
                        "wrong API key")
DEADLINES = Counter("gradserve_deadline_exceeded_total", "requests that ran past the deadline")
REJECTED = Counter("gradserve_overload_rejected_total", "requests refused because the worker "
                   "was saturated")
INFLIGHT = Gauge("gradserve_inflight_requests", "requests being served",
                 multiprocess_mode="livesum")
BREAKER = Gauge("gradserve_store_breaker_open", "1 while the store circuit breaker is open",
                multiprocess_mode="livemax")


# Label values come from this fixed set: a client's invented method is one value ("other"),
# not a new time series per request.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    """The ``method`` label value of a request: the method itself, or ``other``."""
    return method if method in METHODS else "other"


def render() -> tuple[bytes, str]:
    """The exposition text of every worker (multiprocess) or of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
