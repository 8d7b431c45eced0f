"""Two gradserve replicas behind nginx, sharing one Redis, under load while they fail.

Real processes, no Docker: two gunicorns (tests/e2e/server.py, 2 workers each), one
``redis-server`` (tests/redis_server.py) and Debian's nginx running deploy/nginx-replicas.conf
with only its ``# test:`` lines rewritten (ports and temporary paths). Eight client threads
(``gradserve.client.Client`` through nginx: inline expressions, registered graphs by id, new
registrations) run for about 30 s while:

1. a graph registered through replica A is used through replica B, directly (the store is
   shared), before the load starts;
2. A is killed with SIGKILL, master and workers at once (a crashed container), and restarted on
   its port;
3. B gets SIGTERM and drains: a slow request sent to it directly just before finishes, 200
   and correct, and B exits; then B is restarted;
4. Redis is restarted (empty: it keeps nothing);
5. a graph registered through B is used through A, directly.

No client call may fail (the client retries a 503 after its Retry-After and re-registers a
graph the store lost, as the API allows) and every answer is checked against the gradient
computed here by hand. Requests, failures and p50/p99 latency per phase are printed and are in
every assertion's message. Under ``CI=true`` a missing nginx or redis-server fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradserve.client import Client
from tests.e2e.conftest import (
    SIGMOID_EXPRESSION,
    SIGMOID_GRADIENTS,
    SIGMOID_OUTPUT,
    SIGMOID_VALUES,
    product_graph,
)
from tests.e2e.server import ROOT, GunicornServer, free_port
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
if NGINX is None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but no nginx binary (.ci/run installs Debian's)", pytrace=False)
    pytest.skip("no nginx binary (apt-get install nginx)", allow_module_level=True)

CONF = ROOT / "deploy" / "nginx-replicas.conf"
CLIENTS = 8
MAX_CALLS_PER_CLIENT = 20_000  # a bound; the phases below end the load long before
SERVER_ENV = {
    "GRADSERVE_LOG_LEVEL": "warning",
    # Short waits, so that the test's Redis outage lasts seconds, not the defaults' 5 s each.
    "GRADSERVE_STORE_RETRY_AFTER_S": "1",
    "GRADSERVE_BREAKER_COOLDOWN_S": "1",
}
XY = {"x": 3.0, "y": -2.0}


# --- nginx ------------------------------------------------------------------------------------


def render_config(listen: int, upstreams: list[int], prefix: Path) -> str:
    """deploy/nginx-replicas.conf with its ``# test:`` lines pointed at this test's ports."""
    ports = iter(upstreams)
    lines = []
    for line in CONF.read_text(encoding="utf-8").splitlines():
        if "# test: listen" in line:
            line = re.sub(r"listen \S+;", f"listen 127.0.0.1:{listen};", line)
        elif "# test: upstream" in line:
            line = re.sub(r"server \S+", f"server 127.0.0.1:{next(ports)}", line)
        elif "# test: pid" in line or "# test: temp" in line:
            line = line.replace("/tmp/", f"{prefix}/")
        lines.append(line)
    assert next(ports, None) is None, "the config has fewer upstream servers than replicas"
    return "\n".join(lines) + "\n"


class Nginx:
    def __init__(self, upstreams: list[int]) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="gradserve-nginx-replicas-"))
        self.prefix.chmod(0o777)  # workers of a root master run as nobody
        self.port = free_port()
        conf = self.prefix / "nginx.conf"
        text = render_config(self.port, upstreams, self.prefix)
        assert all(f"server 127.0.0.1:{p} max_fails=" in text for p in upstreams), text
        conf.write_text(text)
        self.log_path = self.prefix / "stderr.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [NGINX, "-c", str(conf), "-p", str(self.prefix), "-g", "daemon off;"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


# --- replicas ---------------------------------------------------------------------------------


class Replica(GunicornServer):
    """A gunicorn that comes back on the same port after a restart (nginx's upstream names
    it). Keeps the logs of every past run."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        super().__init__(env, workers=2, threads=4, stop_timeout=20)
        self.name = name
        self.fixed_port = free_port()
        self.past_logs: list[str] = []

    def _spawn(self, attempt: int) -> None:
        self.port = self.fixed_port
        super()._spawn(attempt)

    def kill9(self) -> None:
        """SIGKILL to the master and its workers together, as a crashed container's."""
        os.killpg(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)
        self.stop()  # reaps the group, keeps the logs, removes the temp dir
        self.past_logs.append(self.logs())

    def drain(self) -> float:
        """SIGTERM and wait for the exit; the seconds it took."""
        start = time.monotonic()
        code = self.stop()
        took = time.monotonic() - start
        assert code == 0, f"{self.name} exited {code} after SIGTERM\n{self.logs()[-3000:]}"
        self.past_logs.append(self.logs())
        return took

    def served(self) -> int:
        """Requests this run of the replica answered (its JSON access lines)."""
        return self.logs("stdout").count('"route":"/v1/')

    def all_logs(self) -> str:
        return "".join(self.past_logs) + (self.logs() if self.tmpdir else "")


# --- the expected answers ---------------------------------------------------------------------


def check_sigmoid(r: Any) -> None:
    assert r.output == pytest.approx(SIGMOID_OUTPUT, rel=1e-12, abs=0), r.raw
    assert set(r.gradients) == set(SIGMOID_GRADIENTS), r.raw
    for name, want in SIGMOID_GRADIENTS.items():
        assert r.gradients[name] == pytest.approx(want, rel=1e-12, abs=0), (name, r.raw)


def check_product(r: Any, k: float) -> None:
    x, y = XY["x"], XY["y"]
    assert r.output == pytest.approx(k * x * y, rel=1e-12), (k, r.raw)
    assert r.gradients["x"] == pytest.approx(k * y, rel=1e-12), (k, r.raw)
    assert r.gradients["y"] == pytest.approx(k * x, rel=1e-12), (k, r.raw)


SLOW_N = 450


def slow_request() -> tuple[str, dict[str, Any]]:
    """A gradient check over 3 x SLOW_N inputs (6 x SLOW_N forward passes of SLOW_N^2 work),
    about a second on a quiet machine: in flight when SIGTERM comes."""
    n = SLOW_N
    return ("m = u * v; y = tanh(m @ x); sum(y * y)",
            {"u": np.array([[0.01 * (i % 7 - 3)] for i in range(n)]),
             "v": np.array([[0.01 * (i % 5 + 1) for i in range(n)]]),
             "x": np.array([0.01 * (i % 3 + 1) for i in range(n)])})


def check_slow(r: Any, values: dict[str, Any]) -> None:
    """Against the gradient by hand, in NumPy (not the engine)."""
    u, v, x = values["u"], values["v"], values["x"]
    m = u * v
    yv = np.tanh(m @ x)
    dz = 2 * yv * (1 - yv * yv)
    dm = np.outer(dz, x)
    want = {"u": (dm * v).sum(axis=1, keepdims=True), "v": (dm * u).sum(axis=0, keepdims=True),
            "x": m.T @ dz}
    assert float(r.output) == pytest.approx(float(np.sum(yv * yv)), rel=1e-10)
    for name, grad in want.items():
        np.testing.assert_allclose(np.asarray(r.gradients[name]), grad, rtol=1e-9, atol=1e-15)
    assert r.check is not None and set(r.check) == set(want), r.check


# --- load -------------------------------------------------------------------------------------


@dataclass
class Call:
    phase: str
    kind: str
    latency: float
    error: str | None = None


@dataclass
class Load:
    """CLIENTS threads calling through ``url`` until :meth:`stop`; every call recorded."""

    url: str
    phase: str = "steady"
    calls: list[Call] = field(default_factory=list)
    retried: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(CLIENTS):
            t = threading.Thread(target=self._run, args=(i,), name=f"client-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        assert not any(t.is_alive() for t in self._threads), "a client thread hung"

    def _client(self) -> Client:
        client = Client(self.url, retries=8, backoff=0.05, max_retry_after=2.0, timeout=15.0)
        request = client._pool.request

        def counted(*args: Any, **kwargs: Any) -> Any:
            # What the client's retries hid: each earlier attempt's status or error.
            resp = request(*args, **kwargs)
            history = resp.retries.history if resp.retries is not None else ()
            if history:
                with self._lock:
                    self.retried.update(f"{self.phase}: {h.status or type(h.error).__name__}"
                                        for h in history)
            return resp

        client._pool.request = counted  # type: ignore[method-assign]
        return client

    def _run(self, i: int) -> None:
        client = self._client()
        k = float(i + 1)
        graph_id = None
        for n in range(MAX_CALLS_PER_CLIENT):
            if self._stop.is_set():
                break
            phase = self.phase
            kind = ("register" if graph_id is None or n % 10 == 9
                    else "inline" if n % 2 else "by_id")
            start = time.perf_counter()
            error = None
            try:
                if kind == "inline":
                    check_sigmoid(client.gradients(SIGMOID_EXPRESSION, SIGMOID_VALUES))
                elif kind == "by_id":
                    check_product(client.gradients(graph_id, XY), k)
                else:  # a graph never seen before: registered, then used by its id
                    k_new = k if graph_id is None else 1000.0 * (i + 1) + n
                    new_id = client.register(product_graph(k_new))
                    check_product(client.gradients(new_id, XY), k_new)
                    if graph_id is None:
                        graph_id = new_id
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, then asserted
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            call = Call(phase, kind, time.perf_counter() - start, error)
            with self._lock:
                self.calls.append(call)
        client.close()

    def summary(self) -> str:
        with self._lock:
            calls = list(self.calls)
        rows = ["| phase | requests | failures | p50 ms | p99 ms | max ms |",
                "|---|---:|---:|---:|---:|---:|"]
        for phase in dict.fromkeys(c.phase for c in calls):
            lat = sorted(c.latency for c in calls if c.phase == phase)
            fails = sum(1 for c in calls if c.phase == phase and c.error)
            rows.append(f"| {phase} | {len(lat)} | {fails} | {pct(lat, 0.5):.1f} | "
                        f"{pct(lat, 0.99):.1f} | {lat[-1] * 1000:.1f} |")
        lat = sorted(c.latency for c in calls)
        fails = [c for c in calls if c.error]
        rows.append(f"| all | {len(lat)} | {len(fails)} | {pct(lat, 0.5):.1f} | "
                    f"{pct(lat, 0.99):.1f} | {lat[-1] * 1000:.1f} |")
        text = "\n".join(rows)
        text += f"\nattempts the client retried (phase: status or error): {dict(self.retried)}"
        for c in fails[:10]:
            text += f"\nFAILED [{c.phase}/{c.kind}] {c.error}"
        return text


def pct(sorted_latencies: list[float], q: float) -> float:
    if not sorted_latencies:
        return float("nan")
    return sorted_latencies[min(len(sorted_latencies) - 1,
                                int(q * (len(sorted_latencies) - 1) + 0.5))] * 1000


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[RedisServer, Replica, Replica, Nginx]]:
    (tmp_path / "redis").mkdir()
    redis = RedisServer(workdir=tmp_path / "redis")
    redis.start()
    env = {**SERVER_ENV, "GRADSERVE_REDIS_URL": redis.url}
    a, b = Replica("A", env), Replica("B", env)
    proxy = None
    try:
        a.start()
        b.start()
        proxy = Nginx([a.fixed_port, b.fixed_port])
        yield redis, a, b, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for replica in (a, b):
            replica.stop()
        redis.close()


def direct(replica: Replica) -> Client:
    """A client of one replica, bypassing nginx, that retries nothing."""
    return Client(replica.url, retries=0, timeout=30.0)


def shared_store_check(register_at: Replica, use_at: Replica, k: float) -> None:
    with direct(register_at) as c1, direct(use_at) as c2:
        graph_id = c1.register(product_graph(k))
        assert c2.graph(graph_id)["graph_id"] == graph_id
        check_product(c2.gradients(graph_id, XY), k)


@pytest.mark.timeout(150)
def test_replicas_behind_nginx_lose_no_request_through_kill_drain_and_redis_restart(
        stack, capsys):
    redis, a, b, proxy = stack
    t0 = time.monotonic()
    # The store is shared: registered through A, known to B (which never saw it).
    shared_store_check(a, b, k=0.25)

    load = Load(proxy.url)
    events: dict[str, float] = {}
    slow: dict[str, Any] = {}
    load.start()
    try:
        time.sleep(4)

        load.phase = "kill -9 A"
        a.kill9()
        time.sleep(2)
        a.start()
        events["A restarted after (s)"] = round(time.monotonic() - t0, 1)
        load.phase = "A back"
        time.sleep(4)

        # A slow request in flight on B when SIGTERM comes: the drain lets it finish.
        expression, values = slow_request()

        def run_slow() -> None:
            start = time.perf_counter()
            try:
                with direct(b) as c:
                    slow["reply"] = c.gradients(expression, values, check=True)
            except Exception as exc:  # noqa: BLE001
                slow["error"] = repr(exc)
            slow["latency"] = time.perf_counter() - start
            slow["done_at"] = time.monotonic()

        slow_thread = threading.Thread(target=run_slow)
        slow_thread.start()
        time.sleep(0.15)  # its small body is at B's worker by then
        load.phase = "SIGTERM drain B"
        sigterm_at = time.monotonic()
        events["B drained in (s)"] = round(b.drain(), 2)
        slow_thread.join(30)
        time.sleep(1)
        b.start()
        load.phase = "B back"
        time.sleep(4)

        load.phase = "Redis restart"
        redis.restart()
        time.sleep(3)
        load.phase = "after"
        time.sleep(3)
    finally:
        load.stop()
    events["load (s)"] = round(time.monotonic() - t0, 1)
    events["request in flight at SIGTERM took (s)"] = round(slow.get("latency", -1), 2)
    # Through nginx only: counted before the direct requests below.
    events["A served after its restart"] = a.served()
    events["B served after its restart"] = b.served()

    # The store is shared again after Redis lost everything: registered through B, used at A.
    shared_store_check(b, a, k=0.75)
    nginx_log = proxy.log()
    upstream_errors = Counter(
        m.group(1) for m in re.finditer(
            r"(connect\(\) failed|upstream prematurely closed|recv\(\) failed|"
            r"no live upstreams|upstream timed out)", nginx_log))
    events["nginx upstream errors (retried)"] = dict(upstream_errors)
    summary = load.summary() + "\n" + "\n".join(f"{k}: {v}" for k, v in events.items())
    with capsys.disabled():
        print("\n--- replicas behind nginx ---\n" + summary, flush=True)

    failures = [c for c in load.calls if c.error]
    assert not failures, summary
    phases = Counter(c.phase for c in load.calls)
    for phase in ("steady", "kill -9 A", "A back", "SIGTERM drain B", "B back",
                  "Redis restart", "after"):
        assert phases[phase] >= 20, f"too little load in {phase!r}\n{summary}"
    assert "error" not in slow, f"the request in flight at SIGTERM failed: {slow}\n{summary}"
    check_slow(slow["reply"], values)
    # It was still computing when SIGTERM came, and the drain let it finish.
    assert slow["done_at"] > sigterm_at, f"the slow request was not slow: {slow['latency']}"
    assert events["B drained in (s)"] < 10, summary  # GRADSERVE_GRACEFUL_TIMEOUT here
    # nginx met the dead replica and retried past it; both restarted replicas took traffic.
    assert upstream_errors, f"nginx never saw a failed replica\n{nginx_log[-2000:]}"
    assert events["A served after its restart"] > 0, summary
    assert events["B served after its restart"] > 0, summary
    for replica in (a, b):
        replica.assert_clean_logs(replica.all_logs())
