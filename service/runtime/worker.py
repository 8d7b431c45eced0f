"""gunicorn's gthread worker with two changes that keep a worker answerable under load.

gthread hands every readable connection to one thread pool, which parses the headers and
runs the app; a connection that waits for a thread waits in the pool's unbounded queue,
where the app cannot see it. Under a flood of heavy requests a ``/healthz`` probe queued
behind them times out, and time spent in the queue is invisible to the request deadline.

1. **Probes get their own threads.** When a connection becomes readable, the main loop peeks
   (``MSG_PEEK``, nothing consumed) at its first bytes; ``GET /healthz``, ``/readyz`` and
   ``/metrics`` go to a small pool of their own, everything else to the main pool.
2. **Queue time is counted.** The moment a connection is queued is kept for the thread that
   serves it (:func:`queued_at`); the app starts the request's deadline from there, so time
   in the queue counts toward ``GRADSERVE_REQUEST_DEADLINE_S``.
3. **New connections wait for data in the event loop**, not in a pool thread (gthread waits up
   to 5 s in a thread first): an idle connection never holds a thread, and the peek of (1)
   sees the request line.
4. **Graceful closes run on closer threads**, not in the event loop (where gthread lingers up
   to 2 s per connection for the peer's FIN), and the app can ask for a connection to be
   closed after its response (:func:`close_after_response`, after a 408).
5. **A shorter GIL switch interval** (1 ms): probes wait less behind compute threads.

6. **A request reaches a thread only once it has arrived** (``service/runtime/intake.py``):
   the event loop reads its head and its ``Content-Length`` body without blocking, so 32
   clients that send half a body hold 32 buffers, not 32 threads, and health and fast
   clients are served meanwhile. Past ``GRADSERVE_BODY_TIMEOUT_S`` a half-sent body goes to
   a thread to be answered 408 (a half-sent head is closed). Its bytes count against the
   worker's ``GRADSERVE_BODY_BYTES_IN_FLIGHT`` from before the first body byte is read until
   its request is done; a body that does not fit is answered 503 with Retry-After, unread
   (:func:`body_verdict` tells the app which).

Not gathered (gunicorn reads them in the thread, as before): chunked bodies, TLS and HTTP/2
connections, a body over ``GRADSERVE_MAX_BODY_BYTES`` (the app answers 413), and the next
request on a keep-alive connection when gunicorn already read some of it. In production
nginx also buffers bodies before gunicorn sees them (``deploy/nginx.conf``).
"""

from __future__ import annotations

import errno
import io
import selectors
import socket
import sys
import threading
import time
from concurrent import futures
from functools import partial

from gunicorn.http.unreader import SocketUnreader, Unreader
from gunicorn.http2 import negotiation
from gunicorn.workers import gthread

from service.config import load_settings
from service.runtime import memory
from service.runtime.intake import (
    CONTINUE,
    MAX_HEAD,
    RECV_BYTES,
    ByteBudget,
    Intake,
    Verdict,
    parse_head,
)

PROBE_PREFIXES = (b"GET /healthz", b"GET /readyz", b"GET /metrics", b"HEAD /healthz",
                  b"GET /v2/health/")
PROBE_THREADS = 2
CLOSER_THREADS = 4
SWITCH_INTERVAL_S = 0.001



class Preloaded(Unreader):
    """gunicorn's socket reader, fed first from what the event loop gathered, a slice at
    a time: given the whole request in its buffer, gunicorn's ``Unreader.read`` would copy
    what is left of it on every read (a 63 MiB body read 1 MiB at a time: ~2 GB of
    copies, and several body-sized buffers alive at once). It has no ``sock`` attribute on
    purpose: the body is here, not on the socket, so service/http/reader.py's direct
    ``recv_into`` path must not take it."""

    def __init__(self, sock: socket.socket, gathered: memoryview) -> None:
        super().__init__()
        self._sock = sock
        self._gathered = gathered
        self._at = 0

    def chunk(self, size_hint: int | None = None) -> bytes:
        most = SocketUnreader.max_body_chunk
        left = len(self._gathered) - self._at
        if left <= 0:
            self._gathered = memoryview(b"")  # the intake's buffer is free once read
            return self._sock.recv(max(8192, min(size_hint or 0, most)))
        size = min(left, max(8192, min(size_hint or 0, most)))
        part = bytes(self._gathered[self._at:self._at + size])
        self._at += size
        return part

_local = threading.local()


def queued_at() -> float | None:
    """``time.monotonic()`` when this thread's connection was queued (None outside this
    worker, e.g. under Flask's test client)."""
    return getattr(_local, "queued_at", None)


def close_after_response() -> None:
    """Ask the worker to close this thread's connection after the response instead of
    keeping it alive (gunicorn drops an app's ``Connection: close`` header): the rest of a
    body the app gave up on is not drained for another 5 s on this thread."""
    _local.close = True


def body_verdict() -> Verdict | None:
    """How this thread's request arrived: :class:`Verdict` (None outside this worker, or
    for a request gunicorn read itself)."""
    return getattr(_local, "verdict", None)


#: This process's body budget (None until a worker starts: the app runs without one).
BUDGET: ByteBudget | None = None


def is_probe(sock: socket.socket) -> bool:
    """Whether the bytes waiting on ``sock`` start a health/readiness/metrics request."""
    try:
        head = sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (OSError, ValueError):
        return False
    return head.startswith(PROBE_PREFIXES)


class ThreadWorker(gthread.ThreadWorker):
    """gthread with a probe pool, queue-time stamps and idle connections in the event loop."""

    def init_process(self) -> None:
        # A thread that waits for the GIL (a probe back from a recv, the event loop) gets it
        # within this interval from a thread running Python code (5 ms by default, and each
        # request does several such round trips while compute threads are busy).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.probe_pool = futures.ThreadPoolExecutor(max_workers=PROBE_THREADS,
                                                     thread_name_prefix="probe")
        self.closer_pool = futures.ThreadPoolExecutor(max_workers=CLOSER_THREADS,
                                                      thread_name_prefix="closer")
        global BUDGET
        settings = load_settings()
        self.body_timeout_s = settings.body_timeout_s
        self.max_body_bytes = settings.max_body_bytes
        self.budget = BUDGET = ByteBudget(settings.body_bytes_in_flight)
        # Connections whose request is being gathered, in the order they started (so their
        # deadlines, start + the same timeout, are in order too).
        self.gathering: dict[_Conn, None] = {}
        super().init_process()

    def _keepalive_after(self, conn: gthread.TConn, keepalive: bool) -> bool:
        if getattr(_local, "close", False):
            return False
        return super()._keepalive_after(conn, keepalive)

    def enqueue_req(self, conn: gthread.TConn) -> None:
        intake = getattr(conn, "intake", None)
        if intake is not None:
            # Time spent arriving counts toward the request deadline, as a read would have.
            queued, probe = intake.started, intake.buf.startswith(PROBE_PREFIXES)
        else:
            queued, probe = time.monotonic(), is_probe(conn.sock)
        pool = self.probe_pool if probe else self.tpool
        fs = pool.submit(self._handle_stamped, conn, queued)
        fs.add_done_callback(
            lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _handle_stamped(self, conn: gthread.TConn, queued: float) -> object:
        intake = getattr(conn, "intake", None)
        conn.intake = None
        _local.queued_at, _local.close = queued, False
        _local.verdict = intake.verdict if intake is not None else None
        try:
            if intake is not None and intake.got:
                # What the event loop read goes back in front of gunicorn's parser, which
                # parses it as if it had read it itself (its buffer is empty here: a
                # connection with read-ahead is queued by gunicorn directly, not gathered).
                conn.init()
                unreader = conn.parser.unreader
                rest = unreader.buf.getvalue()
                if rest or not isinstance(unreader, SocketUnreader):
                    data = intake.data()
                    intake.buf = bytearray()  # one copy of the request held, not two
                    unreader.buf = io.BytesIO(data + rest if rest else data)
                else:
                    conn.parser.unreader = Preloaded(unreader.sock, intake.gathered())
            return self.handle(conn)
        finally:
            _local.queued_at, _local.close, _local.verdict = None, False, None
            if intake is not None and intake.reserved:
                self.budget.release(intake.reserved)
            # The request's temporaries are free now: glibc gives them back to the OS at
            # most once a second (otherwise each arena keeps its threads' peak).
            memory.release_free_memory()

    # --- gathering a request in the event loop (service/runtime/intake.py) ---------------

    def on_pending_socket_readable(self, conn: gthread.TConn, client: socket.socket) -> None:
        self.pending_conns.remove(conn)
        self._gather(conn)

    def on_client_socket_readable(self, conn: gthread.TConn, client: socket.socket) -> None:
        self.keepalived_conns.remove(conn)
        self._gather(conn)

    def _gather(self, conn: gthread.TConn) -> None:
        """Start gathering the request whose first bytes just arrived on ``conn``."""
        if self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, conn.client) \
                or not isinstance(conn, _Conn):
            self.poller.unregister(conn.sock)
            conn.data_ready = True
            self.enqueue_req(conn)
            return
        conn.intake = Intake(time.monotonic() + self.body_timeout_s)
        self.gathering[conn] = None
        self.poller.modify(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        self._on_readable(conn, conn.sock)

    def _on_readable(self, conn: _Conn, _sock: socket.socket) -> None:
        try:
            self._read_some(conn)
        except Exception:  # noqa: BLE001 - the event loop serves every connection: never die
            self.log.exception("gradserve: error gathering a request; connection closed")
            self._drop(conn)

    def _read_some(self, conn: _Conn) -> None:
        intake = conn.intake
        try:
            for _ in range(4):  # then other sockets get their turn
                with intake.room() as view:  # released before the buffer may grow
                    n = conn.sock.recv_into(view, min(len(view), RECV_BYTES)) if len(view) \
                        else -1
                if n < 0:
                    break
                if not n:  # the client closed before its request arrived
                    self._drop(conn)
                    return
                intake.got += n
                if intake.head is None:
                    self._measure(conn, intake)
                if intake.verdict is not None or intake.complete():
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(conn)
            return
        if intake.verdict is None and intake.complete():
            intake.verdict = Verdict.COMPLETE
        if intake.verdict is not None:
            self._hand_over(conn)

    def _measure(self, conn: _Conn, intake: Intake) -> None:
        """The head has grown: once it is whole, reserve its body's bytes (or refuse)."""
        end = intake.find_head()
        if end < 0:
            if intake.got >= MAX_HEAD:
                intake.verdict = Verdict.AS_IS  # gunicorn refuses it (431/400)
            return
        head = intake.head = parse_head(intake.buf, end)
        if head.length is None or head.length > self.max_body_bytes:
            intake.verdict = Verdict.AS_IS  # chunked, malformed, or the app's 413
            return
        if head.length:
            if not self.budget.reserve(head.length):
                intake.verdict = Verdict.OVER_BUDGET
                return
            intake.reserved = head.length
            intake.size_for(head, head.length)
            if head.expects_continue and not intake.complete():
                try:  # gunicorn sends one more in the thread: 1xx may repeat (RFC 9110)
                    conn.sock.send(CONTINUE)
                except OSError:
                    pass

    def _hand_over(self, conn: _Conn) -> None:
        self.gathering.pop(conn, None)
        self.poller.unregister(conn.sock)
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop(self, conn: _Conn) -> None:
        """Close a connection mid-gathering, its reservation released."""
        self.gathering.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        intake, conn.intake = conn.intake, None
        if intake is not None and intake.reserved:
            self.budget.release(intake.reserved)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gunicorn's idle-connection timeout, then the body deadline of requests still
        arriving: a half-sent body goes to a thread to be answered 408, a half-sent head
        is closed (there is no request to answer yet)."""
        super().murder_pending()
        now = time.monotonic()
        for conn in list(self.gathering):
            if not conn.intake.overdue(now):
                break
            if conn.intake.head is None:
                self._drop(conn)
            else:
                conn.intake.verdict = Verdict.OVERDUE
                try:  # as the reader's watchdog does: the rest is refused, not drained
                    conn.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
                self._hand_over(conn)

    def accept(self, listener: socket.socket) -> None:
        """Accept, then wait for the first bytes in the event loop (as a deferred one)."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.closer = self.closer_pool
        # Closed by murder_pending after `keepalive` seconds without a byte (the deque stays
        # ordered: every entry's timeout is its arrival plus the same keepalive).
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self.on_pending_socket_readable, conn))

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.probe_pool.shutdown(wait=False)
            self.closer_pool.shutdown(wait=False)


class _Conn(gthread.TConn):
    """A connection whose graceful close runs on a closer thread.

    gthread closes a finished connection gracefully in its event loop: a half-close, then up
    to 2 s waiting for the peer to close too. A client that never does (one that was just
    answered 408, say) would stall the loop (accepts, probes, every other connection) for
    2 s per connection.
    """

    closer: futures.ThreadPoolExecutor | None = None
    intake: Intake | None = None

    def close(self, graceful: bool = False) -> None:
        if graceful and self.closer is not None:
            # The FIN now (cheap, never blocks), so the client sees the end of the response
            # at once; the lingering read for its FIN on a closer thread.
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            try:
                self.closer.submit(gthread.TConn.close, self, True)
                return
            except RuntimeError:  # the pool is shut down: the worker is exiting
                pass
        super().close(graceful)
