"""How requests arrive, against a real bare gunicorn (``make run``'s): the worker gathers a
request in its event loop before a thread sees it (service/runtime/intake.py).

- Slow clients: with 32 half-sent bodies and 32 half-sent heads open on a worker of two
  threads, every health probe and every fast request is answered (counted, not timed), and
  the half-sent bodies get their 408 at the body deadline.
- Body bytes in flight: concurrent bodies are reserved against
  ``GRADSERVE_BODY_BYTES_IN_FLIGHT`` before they are read; those that do not fit are a 503
  with Retry-After at once, and no error path (a bad body, a timeout, a client that leaves)
  leaks a reservation.
- Numeric headers are ASCII digits: a '²' in a length is a 400, never a 500.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import assert_clean_logs
from tests.e2e.server import GunicornServer
from tests.lecture import EX1, assert_lecture

pytestmark = pytest.mark.e2e

LECTURE_REQ = {"expression": EX1["expression"], "values": EX1["values"]}
MIB = 1 << 20


def head(length: int, path: str = "/v1/gradients", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {length}\r\n\r\n").encode()


def big_body(mib: float) -> bytes:
    """A legal /v1 body of about ``mib`` MiB (a long vector, summed)."""
    n = int(mib * MIB / 4)
    return json.dumps({"expression": "sum(x)", "values": {"x": [0.5] * n}}).encode()


def read_response(sock: socket.socket, timeout: float = 15.0) -> tuple[int, dict[str, str],
                                                                        bytes]:
    """One response to EOF or its Content-Length: (status, headers, body); 0 if none."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return 0, {}, data
        if not chunk:
            return 0, {}, data
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    return int(lines[0].split(" ")[1]), headers, body


def answered(sock: socket.socket, wait: float) -> bool:
    """Whether the server has written something to ``sock`` within ``wait`` seconds."""
    return bool(select.select([sock], [], [], wait)[0])


@pytest.fixture
def two_threads() -> Iterator[GunicornServer]:
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_BODY_TIMEOUT_S": "4"}
    with GunicornServer(env, workers=1, threads=2) as srv:
        yield srv


def test_slow_clients_hold_no_thread(two_threads):
    srv = two_threads
    slow_bodies = []
    for _ in range(32):
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(head(100_000) + b'{"expression": "x')
        slow_bodies.append(s)
    slow_heads = []
    for _ in range(32):
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Le")
        slow_heads.append(s)
    time.sleep(0.3)  # every one of them is in the worker now
    # Two threads, 64 slow clients: before gathering, 32 half-sent bodies held both threads
    # and everything else queued behind them until their 408s.
    health = Counter(srv.get("/healthz", timeout=10)[0] for _ in range(30))
    fast = Counter()
    for _ in range(10):
        status, _, body = srv.post("/v1/gradients", LECTURE_REQ, timeout=10)
        fast[status] += 1
        if status == 200:
            assert_lecture(json.loads(body), "neuron_sum")
    assert health == Counter({200: 30}), health
    assert fast == Counter({200: 10}), fast
    # The half-sent bodies are answered 408 at the body deadline; the half-sent heads
    # (no request to answer yet) are closed.
    statuses = Counter(read_response(s)[0] for s in slow_bodies)
    assert statuses == Counter({408: 32}), statuses
    closed = Counter(read_response(s)[0] for s in slow_heads)
    assert closed == Counter({0: 32}), closed
    for s in slow_bodies + slow_heads:
        s.close()
    status, _, body = srv.post("/v1/gradients", LECTURE_REQ)
    assert status == 200
    assert_clean_logs(srv)


def budget_server() -> GunicornServer:
    # Bodies of ~1.5 MiB against a 4 MiB budget: two fit at once, a third does not.
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_MAX_BODY_BYTES": str(2 * MIB),
           "GRADSERVE_BODY_BYTES_IN_FLIGHT": str(4 * MIB), "GRADSERVE_BODY_TIMEOUT_S": "3"}
    return GunicornServer(env, workers=1, threads=4)


def hold(srv: GunicornServer, body: bytes, n: int) -> tuple[list[socket.socket],
                                                             list[socket.socket]]:
    """``n`` connections that sent their head and half their body: (held, refused 503)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(head(len(body)) + body[:len(body) // 2])
        socks.append(s)
    time.sleep(0.3)
    held, refused = [], []
    for s in socks:
        if answered(s, 0.05):
            status, headers, text = read_response(s)
            assert status == 503, text
            assert headers.get("retry-after") and b"GRADSERVE_BODY_BYTES_IN_FLIGHT" in text
            refused.append(s)
        else:
            held.append(s)
    return held, refused


def test_body_bytes_in_flight_are_bounded_and_every_reservation_released():
    body = big_body(1.5)
    assert 1.4 * MIB < len(body) < 2 * MIB
    with budget_server() as srv:
        held, refused = hold(srv, body, 16)
        assert len(held) == 2 and len(refused) == 14, (len(held), len(refused))
        for s in held:
            s.sendall(body[len(body) // 2:])
            status, _, text = read_response(s)
            assert status == 200, text
            assert json.loads(text)["output"] == 0.5 * len(json.loads(body)["values"]["x"])
        for s in held + refused:
            s.close()

        # Every way a reserved body can end, then the whole budget is free again.
        bad = body.replace(b'"expression"', b"expression", 1)  # not JSON: a 400, read
        for ending in ("bad", "timeout", "leave", "ok"):
            s = socket.create_connection((srv.host, srv.port), timeout=30)
            if ending == "bad":
                s.sendall(head(len(bad)) + bad)
                assert read_response(s)[0] == 400
            elif ending == "timeout":
                s.sendall(head(len(body)) + body[:1000])
                assert read_response(s)[0] == 408
            elif ending == "leave":
                s.sendall(head(len(body)) + body[:1000])
                time.sleep(0.2)
            else:
                s.sendall(head(len(body)) + body)
                assert read_response(s)[0] == 200
            s.close()
        time.sleep(0.3)
        held, refused = hold(srv, body, 3)
        assert len(held) == 2 and len(refused) == 1, (len(held), len(refused))
        for s in held + refused:
            s.close()
        status, _, text = srv.post("/v1/gradients", LECTURE_REQ)
        assert status == 200
        assert_clean_logs(srv)


def test_a_budget_below_the_body_limit_is_a_configuration_error():
    from service.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="BODY_BYTES_IN_FLIGHT"):
        load_settings(env={"GRADSERVE_BODY_BYTES_IN_FLIGHT": "1000"})


@pytest.fixture(scope="module")
def model_m() -> Iterator[GunicornServer]:
    with GunicornServer({"GRADSERVE_LOG_LEVEL": "warning"}, workers=1, threads=2) as srv:
        status, _, text = srv.post("/v1/graphs", {"expression": "x * y", "name": "m"})
        assert status in (200, 201), text
        yield srv


@pytest.mark.parametrize("name, value", [
    ("Content-Length", b"\xb2"), ("Content-Length", b"1\xb2"), ("Content-Length", b"+5"),
    ("Inference-Header-Content-Length", b"\xb2"),
    ("Inference-Header-Content-Length", b"\xd9\xa3"),  # U+0663 in UTF-8
])
def test_a_length_that_is_not_ascii_digits_is_a_400(model_m, name, value):
    srv = model_m
    payload = b'{"inputs": []}'
    lines = [b"POST /v2/models/m/infer HTTP/1.1", b"Host: t",
             b"Content-Type: application/octet-stream"]
    if name == "Content-Length":
        lines.append(b"Content-Length: " + value)
    else:
        lines += [f"Content-Length: {len(payload)}".encode(), name.encode() + b": " + value]
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    s.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
    status, _, text = read_response(s)
    s.close()
    assert status == 400, text
    status, _, _ = srv.post("/v1/gradients", LECTURE_REQ)
    assert status == 200
    assert_clean_logs(srv)


def test_expect_continue_pipelining_and_keep_alive_through_the_gathering(two_threads):
    """What a gathering event loop could get wrong: a client that waits for 100 Continue
    before its body (curl does past 1 MiB), two requests sent in one write, and a
    keep-alive connection's next request."""
    srv = two_threads
    body = json.dumps(LECTURE_REQ).encode()
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    s.sendall(head(len(body), extra="Expect: 100-continue\r\n"))
    assert answered(s, 5.0)
    assert s.recv(25).startswith(b"HTTP/1.1 100 Continue")
    s.sendall(body)
    # gunicorn may send one more 100 (1xx may repeat, RFC 9110 §15.2), then the answer.
    data = b""
    while True:
        final = data.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")
        head_, sep, rest = final.partition(b"\r\n\r\n")
        if sep and b"content-length: " in head_.lower():
            length = int(head_.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                break
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    assert head_.startswith(b"HTTP/1.1 200"), head_
    assert_lecture(json.loads(rest[:length]), "neuron_sum")
    s.close()

    s = socket.create_connection((srv.host, srv.port), timeout=10)
    s.sendall((head(len(body)) + body) * 2)  # pipelined: the second in the same write
    for _ in range(2):
        status, _, text = read_response(s)
        assert status == 200, text
        assert_lecture(json.loads(text), "neuron_sum")
    s.sendall(head(len(body)) + body)  # and the connection is still good
    status, _, text = read_response(s)
    assert status == 200, text
    s.close()
    assert_clean_logs(srv)
