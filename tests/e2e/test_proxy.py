"""deploy/nginx.conf for real: Debian's nginx binary in front of a real gunicorn.

The config file of the repository runs as it is, except the lines marked ``# test:`` (the
listen port, the upstream address, the pid and temporary paths) and the client timeouts,
shortened so the test does not wait 10 s. Skipped only where there is no nginx binary and CI
is not set (CI installs it: .ci/run).

- 32 connections that sent headers and half a body are held open at nginx while normal
  requests flow: every normal request is a 200 and /healthz p99 stays under 200 ms; gunicorn
  never sees the half-sent bodies (nginx buffers), and nginx answers them 408.
- nginx's own refusals (body over the limit, upstream down) are problem+json, never a 502.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import assert_clean_logs
from tests.e2e.server import ROOT, GunicornServer, free_port
from tests.lecture import EX1, assert_lecture

pytestmark = pytest.mark.e2e

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
if NGINX is None:
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no nginx binary (.ci/run installs Debian's)",
                    pytrace=False)
    pytest.skip("no nginx binary (apt-get install nginx)", allow_module_level=True)

BODY_TIMEOUT_S = 2
LECTURE_REQ = {"expression": EX1["expression"], "values": EX1["values"]}


def render_config(listen: int, upstream: int, prefix: Path) -> str:
    """deploy/nginx.conf with the ``# test:`` lines pointed at this test's ports and paths."""
    text = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines():
        if "# test: listen" in line:
            line = re.sub(r"listen \S+;", f"listen 127.0.0.1:{listen};", line)
        elif "# test: upstream" in line:
            line = re.sub(r"server \S+;", f"server 127.0.0.1:{upstream};", line)
        elif "# test: pid" in line or "# test: temp" in line:
            line = line.replace("/tmp/", f"{prefix}/")
        lines.append(line)
    out = "\n".join(lines)
    out = re.sub(r"client_(header|body)_timeout \d+s;",
                 lambda m: f"client_{m.group(1)}_timeout {BODY_TIMEOUT_S}s;", out)
    assert f"127.0.0.1:{listen}" in out and f"127.0.0.1:{upstream}" in out
    return out


class Nginx:
    def __init__(self, upstream_port: int) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="gradserve-nginx-"))
        # Workers of a root master run as nobody: they must reach the temp paths.
        self.prefix.chmod(0o777)
        self.port = free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(render_config(self.port, upstream_port, self.prefix))
        self.log = open(self.prefix / "stderr.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(conf), "-p", str(self.prefix), "-g", "daemon off;"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.prefix / "stderr.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0):
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def post(self, path: str, obj, timeout: float = 10.0):
        return self.request("POST", path, json.dumps(obj).encode(),
                            {"Content-Type": "application/json"}, timeout)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Nginx, GunicornServer]]:
    env = {"GRADSERVE_LOG_LEVEL": "warning"}
    with GunicornServer(env, workers=2, threads=8) as srv:
        proxy = Nginx(srv.port)
        try:
            yield proxy, srv
        finally:
            proxy.stop()


def half_sent(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                 b"\r\nContent-Length: 100000\r\n\r\n" + b'{"expression": "x", "val')
    return sock


def test_32_half_sent_bodies_do_not_slow_normal_traffic(stack):
    proxy, srv = stack
    pids = srv.worker_pids()
    held = [half_sent(proxy.port) for _ in range(32)]
    t0 = time.monotonic()
    try:
        health, statuses = [], []
        while time.monotonic() - t0 < BODY_TIMEOUT_S * 0.8:
            start = time.perf_counter()
            status, _, _ = proxy.request("GET", "/healthz", timeout=5)
            health.append(time.perf_counter() - start)
            assert status == 200
            status, _, body = proxy.post("/v1/gradients", LECTURE_REQ)
            statuses.append(status)
            assert status == 200, body
            assert_lecture(json.loads(body), "neuron_sum")
        health.sort()
        assert len(health) >= 10
        assert health[min(len(health) - 1, int(0.99 * len(health)))] < 0.2, health[-5:]
        # nginx, not gradserve, times the held bodies out: a problem+json 408 (or a close).
        for sock in held:
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError:
                pass
            if data:
                assert data.startswith(b"HTTP/1.1 408"), data[:200]
                assert b"application/problem+json" in data
    finally:
        for sock in held:
            sock.close()
    assert time.monotonic() - t0 < BODY_TIMEOUT_S + 3
    assert srv.worker_pids() == pids
    # gunicorn never saw the half-sent requests: no 408 of its own in its access log.
    assert '"status":408' not in srv.logs("stdout")
    assert_clean_logs(srv)


def test_a_body_over_the_limit_is_refused_by_the_proxy_as_problem_json(stack):
    proxy, _ = stack
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                 b"\r\nContent-Length: 70000000\r\n\r\n{")
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data[:300]
    assert b"application/problem+json" in head
    assert json.loads(body)["status"] == 413
    assert b"GRADSERVE_MAX_BODY_BYTES" in body


def test_the_proxy_passes_gradserve_errors_and_answers_503_when_it_is_down():
    env = {"GRADSERVE_LOG_LEVEL": "warning"}
    srv = GunicornServer(env, workers=1, threads=2).start()
    proxy = Nginx(srv.port)
    try:
        status, headers, body = proxy.post("/v1/gradients", {"expression": "x +"})
        assert status == 422 and headers["Content-Type"] == "application/problem+json"
        srv.stop()
        status, headers, body = proxy.request("GET", "/readyz")
        assert status == 503, body
        assert headers["Retry-After"] and headers["Content-Type"] == "application/problem+json"
    finally:
        proxy.stop()
        srv.stop()
