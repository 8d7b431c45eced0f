"""Issue 9 against a real gunicorn: every class of resource attack, slow clients, overload.

- Every variant of ``tests/e2e/resource_cases.py`` (shape attrs, oversized responses,
  degenerate shapes and headers, invented methods) is a 4xx problem+json or a correct 200
  within 2 s, while a sampler reads every worker's ``VmRSS`` (never over 1 GiB); afterwards
  the worker pids are unchanged, ``VmHWM`` is under 1 GiB, and the lecture still answers.
- Half-sent bodies get a 408 after ``GRADSERVE_BODY_TIMEOUT_S`` and never hold a compute slot;
  health answers meanwhile (from the worker's probe threads).
- 64 parallel heavy requests: each a 200 or a 503 with Retry-After within the deadline + 1 s,
  every ``/healthz`` probe answered meanwhile, its p99 below the heavy requests' median (a
  same-run comparison: the absolute goal, p99 < 200 ms, is ``bench/overload.py``'s), and
  full service afterwards. Health is answered while the one thread computes (an ordering,
  not a clock).
- Recycled workers' metric files are folded into one archive, with the totals kept.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.runtime.worker import PROBE_THREADS
from tests.e2e.conftest import assert_clean_logs
from tests.e2e.resource_cases import rss_mb, send, variants
from tests.e2e.server import GunicornServer
from tests.lecture import EX1, assert_lecture

pytestmark = pytest.mark.e2e

GIB_MB = 1024.0
PROBLEM = b"application/problem+json"
# About 0.3-1 s of CPU each on the CI machine: a gradient check of a 60 x 60 layer.
LECTURE_REQ = {"expression": EX1["expression"], "values": EX1["values"]}
HEAVY = {"expression": "sum(tanh(W @ x))", "check": True,
         "values": {"W": [[0.01] * 60] * 60, "x": [0.2] * 60}}


class RssSampler:
    """Reads every worker's VmRSS every 10 ms while the block runs."""

    def __init__(self, server: GunicornServer) -> None:
        self.server = server
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.server.worker_pids():
                self.peak = max(self.peak, rss_mb(pid)[0])
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class HealthProbe:
    """GET /healthz on a fresh connection every 20 ms until stopped; latencies kept."""

    def __init__(self, server: GunicornServer) -> None:
        self.server = server
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                status, _, _ = self.server.get("/healthz", timeout=5)
                if status != 200:
                    self.failures.append(str(status))
            except OSError as exc:
                self.failures.append(repr(exc))
            self.latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def assert_served(self) -> None:
        """Every probe answered 200 (within its 5 s timeout). No absolute latency here: on a
        machine other processes load, a fixed bound flakes (0.83 s once against 0.2 s);
        that health does not queue behind compute is tested by its mechanism and against
        the same run's compute latency, and its p99 goal is bench/overload.py's."""
        assert not self.failures, self.failures[:5]
        assert len(self.latencies) >= 10, self.latencies

    def assert_faster_than(self, others: list[float]) -> None:
        """Health's p99 below the median of ``others``, measured in the same run (requests
        that computed or waited for a slot): health did not wait where they did."""
        self.assert_served()
        assert percentile(self.latencies, 0.99) < percentile(others, 0.5), (
            sorted(self.latencies)[-5:], percentile(others, 0.5))


# --- every class ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[GunicornServer]:
    # The defaults except the worker count (2, as CI's cores); threads as the default (8).
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_MAX_REQUESTS": "0"}
    with GunicornServer(env, workers=2, threads=8) as srv:
        yield srv


def test_every_class_is_refused_fast_within_a_gib(server):
    pids = server.worker_pids()
    cases = variants()
    assert len({v.cls for v in cases}) >= 4
    failures = []
    with RssSampler(server) as rss:
        for v in cases:
            status, body, secs = send(server.host, server.port, v.raw)
            if status not in v.ok or secs > 2.0:
                failures.append((v.cls, v.name, status, round(secs, 2), body[:200]))
                continue
            if status >= 400:
                problem = json.loads(body)
                if problem.get("status") != status or len(body) > 8192:
                    failures.append((v.cls, v.name, "bad problem", body[:200]))
            elif status == 200 and v.check is not None:
                v.check(json.loads(body))
    assert not failures, failures
    assert rss.peak < GIB_MB, f"a worker reached {rss.peak:.0f} MiB"
    assert all(rss_mb(pid)[1] < GIB_MB for pid in pids)
    assert server.worker_pids() == pids, "a worker was replaced"
    status, _, body = server.post("/v1/gradients", LECTURE_REQ)
    assert status == 200
    assert_lecture(json.loads(body), "neuron_sum")
    status, _, text = server.get("/metrics")
    assert status == 200 and b"X0001FOO" not in text and b'method="other"' in text
    assert_clean_logs(server)


# --- slow bodies ----------------------------------------------------------------------------


def half_sent(server: GunicornServer, declared: int = 100_000) -> socket.socket:
    """A connection that sent its headers and the first 10 bytes of its body, then stops."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(f"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {declared}\r\n\r\n".encode() + b'{"express')
    return sock


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return (int(head.split(b" ")[1]) if head else 0), body


def test_half_sent_bodies_get_a_408_and_hold_no_compute_slot():
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_BODY_TIMEOUT_S": "1.5",
           "GRADSERVE_MAX_INFLIGHT": "1"}
    with GunicornServer(env, workers=1, threads=8) as srv:
        t0 = time.monotonic()
        held = [half_sent(srv) for _ in range(4)]
        time.sleep(0.2)  # the app is reading their bodies now
        with HealthProbe(srv) as probe:
            # One compute slot, four threads reading bodies: a normal request still computes.
            for k in range(5):
                status, _, body = srv.post("/v1/gradients", LECTURE_REQ, timeout=10)
                assert status == 200, body
            results = [read_status(s) for s in held]
        elapsed = time.monotonic() - t0
        probe.assert_served()
        for status, body in results:
            assert status == 408, body
            assert b"GRADSERVE_BODY_TIMEOUT_S" in body
        assert elapsed < 1.5 + 2.0
        for s in held:
            s.close()
        # A body that trickles a byte at a time is cut at the same deadline.
        sock = half_sent(srv)
        t1 = time.monotonic()
        for _ in range(40):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            time.sleep(0.1)
        status, _ = read_status(sock)
        sock.close()
        assert status == 408 and time.monotonic() - t1 < 1.5 + 2.0
        assert_clean_logs(srv)


def test_time_before_a_thread_counts_toward_the_deadline():
    """A half-sent head holds no thread (the worker's event loop gathers a request before a
    thread sees it): with one thread, the request behind it is served at once. And time
    spent arriving counts toward the request deadline: a body completed after the 1 s
    deadline is answered 503 naming it as soon as a thread takes it, not computed."""
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_REQUEST_DEADLINE_S": "1"}
    with GunicornServer(env, workers=1, threads=1) as srv:
        held = socket.create_connection((srv.host, srv.port), timeout=10)
        held.sendall(b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.1)
        status, _, body = srv.post("/v1/gradients", LECTURE_REQ, timeout=10)
        assert status == 200, body
        held.close()

        late = json.dumps(LECTURE_REQ).encode()
        sock = socket.create_connection((srv.host, srv.port), timeout=10)
        sock.sendall(f"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(late)}\r\n\r\n".encode()
                     + late[:10])
        time.sleep(1.3)
        sock.sendall(late[10:])
        status, body = read_status(sock)
        sock.close()
        assert status == 503, body
        assert b"GRADSERVE_REQUEST_DEADLINE_S" in body
        # Health never queued behind it (probe threads), and the worker serves again.
        assert srv.get("/healthz", timeout=2)[0] == 200
        status, _, body = srv.post("/v1/gradients", LECTURE_REQ)
        assert status == 200
        assert_lecture(json.loads(body), "neuron_sum")


# --- overload -------------------------------------------------------------------------------


def test_64_parallel_heavy_requests_are_answered_or_refused_in_time():
    deadline_s = 10.0
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_REQUEST_DEADLINE_S": str(deadline_s),
           "GRADSERVE_MAX_REQUESTS": "0"}
    with GunicornServer(env, workers=2, threads=8) as srv:
        pids = srv.worker_pids()
        results: list[tuple[int, str | None, float]] = []
        lock = threading.Lock()
        go = threading.Event()

        def heavy() -> None:
            go.wait()
            t0 = time.perf_counter()
            try:
                status, headers, _ = srv.post("/v1/gradients", HEAVY, timeout=60)
                retry = headers.get("Retry-After")
            except OSError as exc:
                status, retry = 0, repr(exc)
            with lock:
                results.append((status, retry, time.perf_counter() - t0))

        threads = [threading.Thread(target=heavy) for _ in range(64)]
        for t in threads:
            t.start()
        with HealthProbe(srv) as probe:
            time.sleep(0.1)
            go.set()
            for t in threads:
                t.join()
        statuses = Counter(s for s, _, _ in results)
        slowest = max(secs for _, _, secs in results)
        print(f"overload: {dict(statuses)}, slowest {slowest:.2f} s, health p50 "
              f"{percentile(probe.latencies, 0.5) * 1000:.1f} ms, p99 "
              f"{percentile(probe.latencies, 0.99) * 1000:.1f} ms over "
              f"{len(probe.latencies)} probes")
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= 4, statuses
        assert all(retry for s, retry, _ in results if s == 503)
        assert slowest < deadline_s + 1.0
        probe.assert_faster_than([secs for _, _, secs in results])
        # Full recovery: served at once, by the same workers.
        for _ in range(4):
            status, _, body = srv.post("/v1/gradients", LECTURE_REQ)
            assert status == 200
            assert_lecture(json.loads(body), "neuron_sum")
        assert srv.worker_pids() == pids
        assert_clean_logs(srv)


def test_probes_have_threads_of_their_own():
    assert PROBE_THREADS >= 1


def test_health_is_answered_while_the_only_thread_computes():
    """One worker thread, busy with a gradient check of ~20,000 perturbations through 16
    layers (~3 s of CPU here; the check runs its perturbations vectorized, so one layer took
    only 0.2 s): a /healthz sent once it computes comes back 200 while it still computes. An
    ordering, not a clock: a loaded machine slows both sides alike."""
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_MAX_CHECK_ELEMENTS": "20000",
           "GRADSERVE_REQUEST_DEADLINE_S": "60"}
    deep = "x"
    for _ in range(16):
        deep = f"tanh(W @ {deep})"
    slow = {"expression": f"sum({deep})", "check": True,
            "values": {"W": [[0.01] * 140] * 140, "x": [0.2] * 140}}
    with GunicornServer(env, workers=1, threads=1, request_timeout=90) as srv:
        done: dict[str, float] = {}

        def compute() -> None:
            status, _, _ = srv.post("/v1/gradients", slow, timeout=90)
            done["slow"] = time.monotonic()
            done["status"] = status

        t = threading.Thread(target=compute)
        t.start()
        time.sleep(0.3)  # sent, read, computing
        assert "slow" not in done, "the slow request was not slow"
        status, _, body = srv.get("/healthz", timeout=30)
        answered = time.monotonic()
        t.join()
        assert status == 200 and body.strip() == b"ok"
        assert done["status"] == 200
        assert answered < done["slow"], "health waited for the computing thread"


# --- metric files of recycled workers ---------------------------------------------------------


def test_recycled_workers_metric_files_are_folded_with_totals_kept():
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_MAX_REQUESTS": "15",
           "GRADSERVE_MAX_REQUESTS_JITTER": "0"}
    with GunicornServer(env, workers=1, threads=2) as srv:
        n = 90
        for _ in range(n):
            srv.get("/v1/ops")
        time.sleep(1.0)  # the last recycle's child_exit
        assert srv.tmpdir is not None
        files = sorted(p.name for p in Path(srv.tmpdir, "metrics").glob("*.db"))
        # The live worker's and the archives: not one set per recycled worker (6 of them).
        assert len(files) <= 8, files
        assert "counter_archive.db" in files, files
        status, _, text = srv.get("/metrics")
        from prometheus_client.parser import text_string_to_metric_families

        total = sum(s.value for f in text_string_to_metric_families(text.decode())
                    for s in f.samples if s.name == "gradserve_requests_total"
                    and s.labels.get("route") == "/v1/ops")
        assert total == n
