"""Reading a request body: content type and declared size checked first, then the bytes,
each socket read bounded by what is left of the body deadline (408 past it), so that a slow
or stalled client never holds a thread for long, nor ever a compute slot (the app reads the
body before it takes one)."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import current_app, request
from werkzeug.http import parse_options_header
from werkzeug.wsgi import get_content_length

from service.errors import (
    BadRequest,
    ContentTooLarge,
    ProblemError,
    RequestTimeout,
    UnsupportedMediaType,
)


def read_body(timeout_s: float, *, into: Any = None) -> Any:
    """The current Flask request's body: :func:`read_environ_body` with the app's limit."""
    return read_environ_body(request.environ, current_app.config["MAX_CONTENT_LENGTH"],
                             timeout_s, into=into)


def read_environ_body(environ: dict[str, Any], limit: int, timeout_s: float, *,
                      into: Any = None, media: str | None = None,
                      setting: str = "GRADSERVE_MAX_BODY_BYTES") -> Any:
    """The whole body in memory, after the content type and declared size are checked.

    Under gunicorn every socket read gets what is left of ``timeout_s``: a client that
    stops half-way is answered 408 instead of holding the thread (and, since the app
    takes its compute slot only after this returns, never a slot).

    ``into`` (the Open Inference Protocol's binary bodies): a function that, given the
    declared length, returns a writable memoryview of that length to read into (an aligned
    buffer, so that binary tensors are views); the body may then be any content type, and
    a declared length over the limit is read and dropped (up to twice the limit) before the
    413, so a pooled client connection survives.

    ``media``: another content type taken as raw bytes (``application/onnx``), its limit
    the ``setting`` named in a 413.
    """
    length = get_content_length(environ)
    # The common exact header first: werkzeug's full header parse costs a few µs a request.
    if into is None and environ.get("CONTENT_TYPE") != "application/json":
        mimetype = parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()
        if mimetype != "application/json" and not mimetype.endswith("+json") \
                and (media is None or mimetype != media):
            raise UnsupportedMediaType(
                f"send the body as application/json (got {mimetype or 'no Content-Type'})")
    if length is not None and length > limit:
        if into is not None and length <= 2 * limit:
            _discard(environ, length, timeout_s)
        raise ContentTooLarge(f"body is {min(length, 1 << 64):,} bytes, over the limit "
                              f"{setting}={limit:,}")
    if into is not None and length is not None:
        view = into(length)
        got = read_into(environ, view, timeout_s)
        if got != length:
            raise BadRequest(f"body ended after {got:,} of the "
                             f"{length:,} bytes its Content-Length declares")
        return view
    # The declared length, or for a chunked body one byte more than the limit (werkzeug
    # would stop silently at the limit and hand over a truncated body: a misleading 400).
    want = length if length is not None else limit + 1
    body = _read_with_deadline(environ, want, timeout_s)
    if length is not None and len(body) != length:
        raise BadRequest(f"body ended after {len(body):,} of the "
                         f"{length:,} bytes its Content-Length declares")
    if length is None and len(body) > limit:
        del body
        _discard(environ, limit, timeout_s)
        raise ContentTooLarge(f"body is over the limit {setting}={limit:,}")
    return body


def _discard(environ: dict[str, Any], most: int, timeout_s: float) -> None:
    """Read and drop up to ``most`` more bytes of a chunked body that is over the limit, so
    that a client still sending it gets its 413 instead of a reset connection (gunicorn
    drains only 64 KiB before it closes). Bounded in bytes and by the body deadline; never
    held in memory."""
    try:
        _read_with_deadline(environ, most, timeout_s, keep=False)
    except ProblemError:
        pass


_CHUNK = 1 << 20


def read_into(environ: dict[str, Any], view: memoryview, timeout_s: float) -> int:
    """Fill ``view`` with the body (its declared length), returning the count read.

    Under gunicorn the bytes go straight from the socket into ``view`` (``recv_into``):
    gunicorn's own body reader passes every chunk through two buffers of its own and
    slices them, about seven copies of each byte before it reaches ``view`` (an 8 MB
    binary OIP body: ~10 ms of a worker's CPU, and the client waits for all of it). Only
    when gunicorn's reader is the plain one of a ``Content-Length`` body and holds nothing
    but the bytes that came with the headers; anything else reads through the stream."""
    direct = _direct_source(environ, len(view))
    if direct is None:
        return _read_with_deadline(environ, len(view), timeout_s, sink=view)
    sock, reader = direct
    unreader = reader.unreader
    early = unreader.buf.getvalue()  # what gunicorn read past the headers
    got = min(len(early), len(view))
    view[:got] = early[:got]
    unreader.buf = io.BytesIO()
    unreader.buf.write(early[got:])  # a pipelined next request's bytes stay gunicorn's
    try:
        for n in _recv_into(sock, view, got, timeout_s):
            got += n
    finally:
        reader.length -= got  # gunicorn sees the body consumed (keep-alive works)
    return got


def _direct_source(environ: dict[str, Any], want: int) -> Any:
    """(socket, gunicorn's LengthReader) when the body can be read from the socket
    directly; None otherwise (not gunicorn, chunked, or a read already begun)."""
    sock = environ.get("gunicorn.socket")
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    unreader = getattr(reader, "unreader", None)
    stream_buf = getattr(environ.get("wsgi.input"), "buf", None)
    if sock is None or not hasattr(sock, "recv_into") or unreader is None \
            or type(reader).__name__ != "LengthReader" or getattr(reader, "length", -1) != want \
            or not isinstance(getattr(unreader, "buf", None), io.BytesIO) \
            or getattr(unreader, "sock", None) is not sock \
            or not isinstance(stream_buf, io.BytesIO) or stream_buf.getbuffer().nbytes:
        return None
    return sock, reader


def _recv_into(sock: Any, view: memoryview, start: int, timeout_s: float) -> Iterator[int]:
    """``recv_into`` until ``view`` is full from ``start``, under the same body deadline as
    :func:`_chunks`: each count read; RequestTimeout past it, returning early if the
    client closes (the caller reports the short body)."""
    deadline = time.monotonic() + timeout_s
    prior = sock.gettimeout()
    token = _WATCHDOG.watch(sock, deadline)
    got = start
    try:
        while got < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            n = sock.recv_into(view[got:], min(_CHUNK * 4, len(view) - got))
            if not n:
                if time.monotonic() > deadline:
                    raise TimeoutError
                return
            got += n
            yield n
    except (TimeoutError, OSError) as exc:
        if isinstance(exc, TimeoutError) or time.monotonic() > deadline:
            raise RequestTimeout(f"the body did not arrive within GRADSERVE_BODY_TIMEOUT_S="
                                 f"{timeout_s:g} s (got {got:,} bytes)") from None
        raise
    finally:
        _WATCHDOG.cancel(token)
        try:
            sock.settimeout(prior)
        except OSError:
            pass


def _read_with_deadline(environ: dict[str, Any], want: int, timeout_s: float,
                        keep: bool = True, sink: Any = None) -> Any:
    """``want`` bytes of the body (fewer if the client ends it) as bytes; with ``sink`` (a
    writable memoryview) written into it instead, returning the count read."""
    stream = environ["wsgi.input"]
    sock = environ.get("gunicorn.socket")
    timed = sock is not None and hasattr(sock, "settimeout")
    if not timed and sink is None:
        # Not under gunicorn (tests, another server): one read of the declared length
        # straight from the stream (werkzeug's get_data copies chunk by chunk).
        return stream.read(want) if keep else b""
    parts: list[bytes] = []
    got = 0
    for part in _chunks(stream, sock if timed else None, want, timeout_s):
        if sink is not None:
            sink[got:got + len(part)] = part
        elif keep:
            parts.append(part)
        got += len(part)
    if sink is not None:
        return got
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _chunks(stream: Any, sock: Any, want: int, timeout_s: float) -> Iterator[bytes]:
    """The body's bytes in chunks of at most 1 MiB, until ``want`` or the client's end;
    RequestTimeout past ``timeout_s`` (``sock``: the socket to time, None outside gunicorn)."""
    deadline = time.monotonic() + timeout_s
    prior = sock.gettimeout() if sock is not None else None
    got = 0
    # The socket timeout ends a read that gets no byte at all; a client that trickles a byte
    # now and then restarts it on every recv, so the watchdog ends those at the deadline.
    token = _WATCHDOG.watch(sock, deadline) if sock is not None else None
    try:
        while got < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if sock is not None:
                sock.settimeout(left)
            part = stream.read(min(_CHUNK, want - got))
            if not part or time.monotonic() > deadline:
                raise TimeoutError if time.monotonic() > deadline else _Ended
            got += len(part)
            yield part
    except (TimeoutError, OSError, _Ended) as exc:
        if time.monotonic() > deadline or isinstance(exc, TimeoutError):
            raise RequestTimeout(f"the body did not arrive within GRADSERVE_BODY_TIMEOUT_S="
                                 f"{timeout_s:g} s (got {got:,} bytes)") from None
        if isinstance(exc, _Ended):
            return  # the caller reports the short body
        raise
    except Exception as exc:  # noqa: BLE001 - the server's own framing errors (bad chunks)
        raise BadRequest(f"the body could not be read: {type(exc).__name__} after "
                         f"{got:,} bytes") from None
    finally:
        if token is not None:
            _WATCHDOG.cancel(token)
            try:
                sock.settimeout(prior)
            except OSError:
                pass


class _Ended(Exception):
    """The client closed its side before the declared length arrived."""


class _BodyWatchdog:
    """One thread per process that shuts the read side of a socket whose body deadline has
    passed (a recv blocked on it then returns at once). Started on first use."""

    TICK_S = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, Any]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None

    def watch(self, sock: Any, deadline: float) -> int:
        with self._lock:
            self._next += 1
            self._watched[self._next] = (deadline, sock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="body-watchdog",
                                                daemon=True)
                self._thread.start()
            return self._next

    def cancel(self, token: int) -> None:
        with self._lock:
            self._watched.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now = time.monotonic()
            with self._lock:
                late = [k for k, (at, _) in self._watched.items() if at < now]
                socks = [self._watched.pop(k)[1] for k in late]
            for sock in socks:
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass


_WATCHDOG = _BodyWatchdog()
