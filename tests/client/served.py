"""The app served on a local port for the client's tests (werkzeug's threaded server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from werkzeug.serving import make_server

from tests.conftest import build_app


@contextmanager
def serving() -> Iterator[str]:
    """A fresh app (its own embedded store) served until the block ends: its base URL."""
    server = make_server("127.0.0.1", 0, build_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
