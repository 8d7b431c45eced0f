"""The request tally (service/runtime/metrics.py): per-process counts folded into the Prometheus
metrics off the request path, with nothing lost and nothing counted twice."""

from __future__ import annotations

import threading
import time

from service.runtime import metrics
from service.runtime.metrics import CACHE, INFLIGHT, LATENCY, REQUESTS, RequestTally

ROUTE = "/test/metrics-tally"


def _requests(status: str) -> float:
    return REQUESTS.labels(ROUTE, "POST", status)._value.get()


def _bucket_counts() -> list[float]:
    child = LATENCY.labels(ROUTE)
    return [b.get() for b in child._buckets]


def _manual(interval_s: float = 3600.0) -> RequestTally:
    tally = RequestTally(interval_s=interval_s)
    tally._thread = object()  # type: ignore[assignment]  # flushed by hand, no thread
    return tally


def test_counts_and_latencies_reach_the_metrics_at_a_flush() -> None:
    tally = _manual()
    ok, bad, buckets = _requests("200"), _requests("422"), _bucket_counts()
    total = LATENCY.labels(ROUTE)._sum.get()
    latencies = [0.0004, 0.0005, 0.003, 0.7, 45.0]  # a bound itself is in its bucket (<=)
    for s in latencies:
        tally.record(ROUTE, "POST", "200", s)
    tally.record(ROUTE, "POST", "422", 0.001)
    assert _requests("200") == ok  # not yet: off the request path
    tally.flush()
    assert _requests("200") == ok + 5 and _requests("422") == bad + 1
    got = [a - b for a, b in zip(_bucket_counts(), buckets)]
    bounds = list(LATENCY._upper_bounds)
    want = [0] * len(bounds)
    for s in [*latencies, 0.001]:
        want[next(i for i, b in enumerate(bounds) if s <= b)] += 1
    assert got == want
    assert abs(LATENCY.labels(ROUTE)._sum.get() - total - sum(latencies) - 0.001) < 1e-9
    tally.flush()  # a second flush adds nothing
    assert _requests("200") == ok + 5


def test_added_counters_and_the_inflight_gauge() -> None:
    tally = _manual()
    hits = CACHE.labels("l1", "hit")._value.get()
    for _ in range(3):
        tally.add(CACHE, ("l1", "hit"))
    tally.add(CACHE, ("l1", "hit"), n=4)
    tally.inflight(1)
    tally.inflight(1)
    tally.flush()
    assert CACHE.labels("l1", "hit")._value.get() == hits + 7
    assert INFLIGHT._value.get() == 2
    tally.inflight(-1)
    tally.inflight(-1)
    tally.flush()
    assert INFLIGHT._value.get() == 0
    assert CACHE.labels("l1", "hit")._value.get() == hits + 7


def test_a_fork_starts_from_nothing() -> None:
    tally = _manual()
    ok = _requests("200")
    tally.record(ROUTE, "POST", "200", 0.001)
    tally.inflight(1)
    tally._after_fork()
    tally._thread = object()  # type: ignore[assignment]
    tally.flush()
    assert _requests("200") == ok  # the parent's tally is the parent's to flush


def test_the_background_thread_flushes_within_its_interval() -> None:
    tally = RequestTally(interval_s=0.02)
    ok = _requests("204")
    tally.record(ROUTE, "POST", "204", 0.001)
    deadline = time.monotonic() + 10
    while _requests("204") == ok and time.monotonic() < deadline:
        time.sleep(0.01)
    tally._wake.set()
    assert _requests("204") == ok + 1


def test_concurrent_records_are_all_counted() -> None:
    tally = RequestTally(interval_s=0.001)  # flushes race the records
    ok = _requests("201")

    def many() -> None:
        for _ in range(2000):
            tally.record(ROUTE, "POST", "201", 0.0001)

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally._wake.set()
    tally.flush()
    assert _requests("201") == ok + 8000


def test_render_flushes_the_process_tally_first() -> None:
    ok = _requests("202")
    metrics.TALLY.record(ROUTE, "POST", "202", 0.001)
    text, _ = metrics.render()
    line = next(x for x in text.decode().splitlines()
                if x.startswith("gradserve_requests_total") and ROUTE in x and '"202"' in x)
    assert float(line.rsplit(" ", 1)[1]) == ok + 1
