"""Prometheus metrics, shared by every gunicorn worker.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn.conf.py does it) and every
worker writes its samples there; ``/metrics`` aggregates them, so any worker answers for
the whole process group.
"""

from __future__ import annotations

import atexit
import os
import threading
from bisect import bisect_left

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

from service.runtime.metric_files import archive_dead_worker, metric_files  # noqa: F401 - re-exported

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
BATCH_SIZE = Histogram("gradserve_batch_size", "requests per merged execution (dynamic "
                       "batching; 1: ran alone)", buckets=(1, 2, 4, 8, 16, 32, 64))
BATCH_WAIT = Histogram("gradserve_batch_queue_wait_seconds", "how long a request waited for "
                       "its merged batch to start", buckets=(.0001, .0005, .001, .002, .005,
                                                             .01, .025, .05, .1))
BREAKER = Gauge("gradserve_store_breaker_open", "1 while the store circuit breaker is open",
                multiprocess_mode="livemax")


# Label values come from this fixed set: a client's invented method is one value ("other"),
# not a new time series per request.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    """The ``method`` label value of a request: the method itself, or ``other``."""
    return method if method in METHODS else "other"


# --- request counts and latencies, tallied in memory -----------------------------------------

# How often a worker folds its tally into the shared metric files. A scrape answered by one
# worker shows the others' requests up to this much later (its own at once).
FLUSH_INTERVAL_S = 0.25


class RequestTally:
    """Per-process request counts and latency buckets, folded into ``REQUESTS`` and ``LATENCY``
    off the request path.

    Under gunicorn every ``inc``/``observe`` of a multiprocess metric takes a global lock and
    writes an mmapped file (~27 µs a request for a counter and a histogram with their label
    lookups). Here a request adds to two dicts under one lock; a background thread per process
    adds the deltas to the real metrics every ``FLUSH_INTERVAL_S`` (one write per series, not
    per request), and so do a scrape (:func:`render`) and the worker's exit. Same metrics, same
    labels, same buckets. The other per-request metrics go the same way: the L1's hit and
    miss counts (:meth:`add`) and the in-flight gauge (:meth:`inflight`, set to this worker's
    count at each flush).
    """

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._latency: dict[str, list[float]] = {}  # route -> bucket counts..., sum
        self._adds: dict[tuple[Counter, tuple[str, ...]], int] = {}  # other hot counters
        self._inflight = self._inflight_flushed = 0
        self._bounds = list(LATENCY._upper_bounds)
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def record(self, route: str, method: str, status: str, seconds: float) -> None:
        """Count one request (``method``: a bounded label value, see :func:`method_label`)."""
        bucket = bisect_left(self._bounds, seconds)  # Prometheus buckets are `<=`
        with self._lock:
            key = (route, method, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            row = self._latency.get(route)
            if row is None:
                row = self._latency[route] = [0] * (len(self._bounds) + 1)
            row[bucket] += 1
            row[-1] += seconds
        if self._thread is None:
            self._start()

    def add(self, counter: Counter, labels: tuple[str, ...], n: int = 1) -> None:
        """``counter.labels(*labels).inc(n)``, folded in at the next flush (hot-path counters:
        the L1's hits and misses)."""
        key = (counter, labels)
        with self._lock:
            self._adds[key] = self._adds.get(key, 0) + n
        if self._thread is None:
            self._start()

    def inflight(self, delta: int) -> None:
        """This worker's requests in flight, set on ``INFLIGHT`` at the next flush."""
        with self._lock:
            self._inflight += delta
        if self._thread is None:
            self._start()

    def flush(self) -> None:
        """Add what was tallied since the last flush to the Prometheus metrics."""
        with self._flush_lock:  # two flushers must not interleave one delta's series
            with self._lock:
                counts, latency, adds = self._counts, self._latency, self._adds
                inflight = self._inflight
                if not counts and not adds and inflight == self._inflight_flushed:
                    return
                self._counts, self._latency, self._adds = {}, {}, {}
            if inflight != self._inflight_flushed:
                INFLIGHT.set(inflight)
                self._inflight_flushed = inflight
            for (counter, labels), n in adds.items():
                counter.labels(*labels).inc(n)
            for (route, method, status), n in counts.items():
                REQUESTS.labels(route, method, status).inc(n)
            for route, row in latency.items():
                child = LATENCY.labels(route)
                for value, n in zip(child._buckets, row[:-1]):
                    if n:
                        value.inc(n)
                child._sum.inc(row[-1])

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="metrics-flush",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._wake.wait(self.interval_s):
            self.flush()

    def _after_fork(self) -> None:
        # A forked child has no flusher thread and must not re-count the parent's tally.
        self._lock, self._flush_lock = threading.Lock(), threading.Lock()
        self._counts, self._latency, self._adds = {}, {}, {}
        self._inflight = self._inflight_flushed = 0
        self._thread, self._wake = None, threading.Event()


TALLY = RequestTally()
os.register_at_fork(after_in_child=TALLY._after_fork)
atexit.register(TALLY.flush)


def render() -> tuple[bytes, str]:
    """The exposition text of every worker (multiprocess) or of this process."""
    TALLY.flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
