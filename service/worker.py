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

A half-sent *body* still holds its thread while the app reads it; the app reads it under
``GRADSERVE_BODY_TIMEOUT_S`` (408 past it), and in production nginx buffers bodies before
gunicorn sees them (``deploy/nginx.conf``).
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
import time
from concurrent import futures
from functools import partial

from gunicorn.workers import gthread

PROBE_PREFIXES = (b"GET /healthz", b"GET /readyz", b"GET /metrics", b"HEAD /healthz")
PROBE_THREADS = 2

_local = threading.local()


def queued_at() -> float | None:
    """``time.monotonic()`` when this thread's connection was queued (None outside this
    worker, e.g. under Flask's test client)."""
    return getattr(_local, "queued_at", None)


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
        self.probe_pool = futures.ThreadPoolExecutor(max_workers=PROBE_THREADS,
                                                     thread_name_prefix="probe")
        super().init_process()

    def enqueue_req(self, conn: gthread.TConn) -> None:
        queued = time.monotonic()
        pool = self.probe_pool if is_probe(conn.sock) else self.tpool
        fs = pool.submit(self._handle_stamped, conn, queued)
        fs.add_done_callback(
            lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _handle_stamped(self, conn: gthread.TConn, queued: float) -> object:
        _local.queued_at = queued
        try:
            return self.handle(conn)
        finally:
            _local.queued_at = None

    def accept(self, listener: socket.socket) -> None:
        """Accept, then wait for the first bytes in the event loop (as a deferred one)."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = gthread.TConn(self.cfg, client_sock, client_addr, listener.getsockname())
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
