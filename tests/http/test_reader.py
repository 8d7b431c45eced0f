"""The body reader's direct path: gunicorn's own request parser over a real socket pair, the
body read with ``recv_into`` straight into the caller's buffer (not through gunicorn's two
buffers), with what gunicorn read past the headers kept, a pipelined next request left to
gunicorn, and the same deadline as the stream path."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from service.errors import BadRequest, RequestTimeout
from service.http import reader
from service.http.reader import read_environ_body


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def parsed(server: socket.socket) -> tuple[Any, dict[str, Any]]:
    """gunicorn's parser on ``server``: (the parser, an environ with its body and socket)."""
    parser = RequestParser(Config(), server, ("127.0.0.1", 1))
    req = next(parser)
    return parser, {"wsgi.input": req.body, "gunicorn.socket": server,
                    "CONTENT_LENGTH": dict(req.headers)["CONTENT-LENGTH"],
                    "CONTENT_TYPE": "application/octet-stream"}


def head(length: int) -> bytes:
    return (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def into(length: int) -> memoryview:
    return memoryview(np.empty(length, dtype=np.uint8))


def send_later(sock: socket.socket, data: bytes, pause: float = 0.05) -> threading.Thread:
    """Send ``data`` in 1 MiB pieces with pauses, so the reader waits on the socket."""
    def run() -> None:
        for i in range(0, len(data), 1 << 20):
            time.sleep(pause)
            sock.sendall(data[i:i + (1 << 20)])
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_large_body_goes_straight_into_the_buffer(pair, monkeypatch):
    client, server = pair
    body = np.random.default_rng(0).integers(0, 256, 5 * (1 << 20) + 7, dtype=np.uint8)
    # The head and the first bytes of the body arrive together (gunicorn reads them with
    # the head); the rest later, while the reader waits.
    client.sendall(head(body.nbytes) + body[:1000].tobytes())
    parser, environ = parsed(server)
    sender = send_later(client, body[1000:].tobytes() + head(3) + b"abc")
    stream_reads = []
    monkeypatch.setattr(reader, "_read_with_deadline",
                        lambda *a, **k: stream_reads.append(a) or 0)
    view = read_environ_body(environ, 1 << 30, 10.0, into=into)
    sender.join()
    assert bytes(view) == body.tobytes()
    assert stream_reads == []  # the direct path, not gunicorn's stream
    # gunicorn sees the body consumed: the next request on the connection parses whole.
    assert environ["wsgi.input"].read() == b""
    nxt = next(parser)
    assert nxt.path == "/v2/models/m/infer" and nxt.body.read() == b"abc"


def test_a_body_that_stops_is_a_408_at_its_deadline(pair):
    client, server = pair
    client.sendall(head(1 << 20) + b"x" * 100)
    _, environ = parsed(server)
    t0 = time.monotonic()
    with pytest.raises(RequestTimeout):
        read_environ_body(environ, 1 << 30, 0.3, into=into)
    assert time.monotonic() - t0 < 2.0


def test_a_body_the_client_cuts_short_is_a_400(pair):
    client, server = pair
    client.sendall(head(5000) + b"x" * 100)
    client.shutdown(socket.SHUT_WR)
    _, environ = parsed(server)
    with pytest.raises(BadRequest, match="after 100 of the 5,000 bytes"):
        read_environ_body(environ, 1 << 30, 5.0, into=into)


def test_a_read_already_begun_goes_through_the_stream(pair):
    client, server = pair
    client.sendall(head(10) + b"0123456789")
    _, environ = parsed(server)
    assert environ["wsgi.input"].read(2) == b"01"
    assert reader._direct_source(environ, 10) is None  # the length no longer matches
    assert reader._direct_source({"wsgi.input": object()}, 10) is None
