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

A half-sent *body* still holds its thread while the app reads it; the app reads it under
``GRADSERVE_BODY_TIMEOUT_S`` (408 past it), and in production nginx buffers bodies before
gunicorn sees them (``deploy/nginx.conf``).
"""

from __future__ import annotations

import errno
import selectors
import socket
import sys
import threading
import time
from concurrent import futures
from functools import partial

from gunicorn.workers import gthread

PROBE_PREFIXES = (b"GET /healthz", b"GET /readyz", b"GET /metrics", b"HEAD /healthz",
                  b"GET /v2/health/")
PROBE_THREADS = 2
CLOSER_THREADS = 4
SWITCH_INTERVAL_S = 0.001

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
        super().init_process()

    def _keepalive_after(self, conn: gthread.TConn, keepalive: bool) -> bool:
        if getattr(_local, "close", False):
            return False
        return super()._keepalive_after(conn, keepalive)

    def enqueue_req(self, conn: gthread.TConn) -> None:
        queued = time.monotonic()
        pool = self.probe_pool if is_probe(conn.sock) else self.tpool
        fs = pool.submit(self._handle_stamped, conn, queued)
        fs.add_done_callback(
            lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _handle_stamped(self, conn: gthread.TConn, queued: float) -> object:
        _local.queued_at, _local.close = queued, False
        try:
            return self.handle(conn)
        finally:
            _local.queued_at, _local.close = None, False

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
