"""A request gathered in the worker's event loop before any thread sees it.

A pool thread that reads a request's body waits for the client; 32 clients that send half a
body and stall would hold 32 threads (on bare gunicorn nothing else stops them). So the
worker's event loop reads each request itself, without blocking, into an :class:`Intake`:
the head until its blank line, then exactly the body its ``Content-Length`` declares. Only
a complete request (or one the app must refuse: see :class:`Verdict`) goes to a thread, so
a slow client holds bytes, never a thread.

Those bytes are bounded per worker by a :class:`ByteBudget`
(``GRADSERVE_BODY_BYTES_IN_FLIGHT``): a body's declared length is reserved before its first
byte is read and released when its request is done, on every path; a body that does not
fit what is left is refused with a 503 and Retry-After before it is read, so requests
waiting for a thread or a compute slot cannot together take a worker past its memory.

A head parsed here is only measured (where it ends, its declared length); gunicorn parses it
again, with all its checks, in the thread. Anything this reader does not take on (chunked
bodies, a malformed or repeated ``Content-Length``, a head over :data:`MAX_HEAD`) goes to a
thread at once, unchanged, and gunicorn answers or reads it as it always did.
"""

from __future__ import annotations

import enum
import threading
import time

# Past what gunicorn accepts (a 4 KiB request line and 100 fields of 8 KiB): a head this
# long is one gunicorn refuses as soon as it reads it, so handing it over holds no thread.
MAX_HEAD = 1 << 20
RECV_BYTES = 1 << 20  # one recv's most, so the loop serves other sockets between them
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ByteBudget:
    """Request-body bytes a worker holds at once; thread-safe (threads release)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.refused = 0
        self._lock = threading.Lock()

    def reserve(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.capacity:
                self.refused += 1
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Verdict(enum.Enum):
    """What a thread is handed along with a request."""

    COMPLETE = "complete"  # head and body are here: serve it
    OVER_BUDGET = "over_budget"  # the body would not fit the budget: 503, unread
    OVERDUE = "overdue"  # the body did not arrive within GRADSERVE_BODY_TIMEOUT_S: 408
    AS_IS = "as_is"  # not for this reader (chunked, malformed): gunicorn reads it


class Head:
    """What gathering needs from a request head: where it ends, the declared body length
    (None: not one this reader takes on), and whether the client waits for a 100."""

    __slots__ = ("end", "length", "expects_continue")

    def __init__(self, end: int, length: int | None, expects_continue: bool) -> None:
        self.end = end
        self.length = length
        self.expects_continue = expects_continue


def parse_head(data: bytes | bytearray | memoryview, end: int) -> Head:
    """The head ``data[:end]`` (``end`` just past its blank line), measured."""
    lines = bytes(data[:end]).split(b"\r\n")
    length: int | None = 0
    lengths = set()
    expects = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            length = None
        elif name == b"expect":
            expects = value.lower() == b"100-continue" and lines[0].endswith(b"HTTP/1.1")
    if length is not None and lengths:
        value = lengths.pop()
        # ASCII digits only (b"\xb2" is no digit in bytes, but keep the rule explicit);
        # two different values is a request gunicorn must refuse, not one to gather.
        length = int(value) if not lengths and value.isdigit() and len(value) <= 18 else None
    return Head(end, length, expects)


class Intake:
    """One connection's request as the event loop gathers it."""

    __slots__ = ("buf", "got", "head", "reserved", "started", "deadline", "verdict", "_scan")

    def __init__(self, deadline: float) -> None:
        self.started = time.monotonic()
        self.buf = bytearray(8192)
        self.got = 0
        self.head: Head | None = None
        self.reserved = 0
        self.deadline = deadline
        self.verdict: Verdict | None = None
        self._scan = 0

    def room(self) -> memoryview:
        """Where the next recv writes: up to the body's end once the head is measured (a
        pipelined next request stays on the socket); until then the head buffer, grown."""
        head = self.head
        if head is not None and head.length is not None:
            return memoryview(self.buf)[self.got:head.end + head.length]
        if self.got == len(self.buf):
            self.buf.extend(bytes(min(len(self.buf), MAX_HEAD)))
        return memoryview(self.buf)[self.got:]

    def find_head(self) -> int:
        """The head's end (just past its blank line), or -1 while it is unfinished."""
        at = self.buf.find(b"\r\n\r\n", max(0, self._scan - 3), self.got)
        self._scan = self.got
        return -1 if at < 0 else at + 4

    def size_for(self, head: Head, length: int) -> None:
        """Room for exactly the head and the declared body (one allocation)."""
        whole = head.end + length
        if len(self.buf) < whole:
            # A new zeroed buffer (calloc: its pages are touched only as the body arrives)
            # with what came so far copied in; extend(bytes(n)) would first build n more
            # bytes, a second body-sized allocation at once.
            grown = bytearray(whole)
            grown[:self.got] = memoryview(self.buf)[:self.got]
            self.buf = grown

    def complete(self) -> bool:
        head = self.head
        return head is not None and head.length is not None \
            and self.got >= head.end + head.length

    def gathered(self) -> memoryview:
        """What arrived, as a view of the buffer (no copy)."""
        return memoryview(self.buf)[:self.got]

    def data(self) -> bytes:
        """What arrived, as gunicorn's parser will read it."""
        return bytes(memoryview(self.buf)[:self.got])

    def overdue(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) > self.deadline
