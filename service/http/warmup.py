"""A worker's start and end, called from gunicorn's hooks: warm the L1 from the store and
the engine's matmul probes, and mark the app as draining on SIGTERM."""

from __future__ import annotations

import time

from flask import Flask

from service.http.access_log import error_log

# A worker's start: at most this many registered graphs, within this many seconds.
WARM_GRAPHS = 64
WARM_BUDGET_S = 2.0


def warm_cache(app: Flask, n: int = WARM_GRAPHS, budget_s: float = WARM_BUDGET_S) -> int:
    """Load the ``n`` most recently registered graphs from the store into this worker's L1
    (gunicorn's ``post_worker_init``), so that a recycled worker's first by-id requests are
    hits. Bounded by the L1's size and ``budget_s``; a store that fails only leaves the
    worker cold. Returns the count loaded."""
    st = app.extensions.get("gradserve") if isinstance(app, Flask) else None
    if st is None or st.store is None:
        return 0
    stop = time.monotonic() + budget_s
    try:
        ids = st.store.recent(min(n, st.settings.l1_size))
    except Exception as exc:  # noqa: BLE001 - a cold worker still serves
        error_log.warning("L1 warm-up skipped: %s", exc)
        return 0
    loaded = 0
    for graph_id in reversed(ids):  # oldest first: the newest end up the most recently used
        if time.monotonic() > stop:
            break
        try:
            st.cache.plan_for_id(graph_id)
            loaded += 1
        except Exception:  # noqa: BLE001,S112 - expired, corrupt or unreachable: skip it
            continue
    return loaded


def warm_engine() -> None:
    """Probe the engine's few-rows matmul forms now (``engine.ops.products``: ~60 ms once),
    not in the worker's first wide request."""
    from service.engine.backend import current
    from service.engine.ops.products import probe_all

    try:
        probe_all(current().xp)
    except Exception as exc:  # noqa: BLE001 - the forms are then probed at first use
        error_log.warning("matmul probes skipped at start: %s", exc)


def mark_draining(app: Flask) -> None:
    """Called from gunicorn's SIGTERM handler: /readyz answers 503 from now on."""
    st = app.extensions.get("gradserve") if isinstance(app, Flask) else None
    if st is not None:
        st.lifecycle["status"] = "draining"
