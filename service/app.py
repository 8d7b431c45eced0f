"""The Flask application factory: settings, store and graph cache, routes, hooks, gateway.

What each layer does, and the path of a request through them: docs/architecture.md."""

from __future__ import annotations

from typing import Any

from flask import Flask

from service.config import Settings, load_settings
from service.engine import REGISTRY
from service.http.access_log import configure_logging
from service.http.hooks import install_hooks
from service.http.state import AppState
from service.runtime import tracing
from service.store.cache import GraphCache


def create_app(settings: Settings | None = None, *, store: Any = None) -> Flask:
    """Build the app. ``store`` overrides the configured graph store (tests)."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    tracing.configure()  # span export, when the otel extra and its endpoint are there
    app = Flask("gradserve")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if store is None:
        from service.store import make_store

        store = make_store(settings)
    cache = GraphCache(REGISTRY, settings.limits, store=store, l1_size=settings.l1_size)
    st = AppState(settings=settings, cache=cache, store=store)
    app.extensions["gradserve"] = st

    from service.http.routes import gradients, meta, mlp, oip, onnx_export, playground

    for blueprint in (gradients.bp, mlp.bp, meta.bp, oip.bp, playground.bp, onnx_export.bp):
        app.register_blueprint(blueprint)

    install_hooks(app, st)
    if settings.gateway:
        from service.http.gateway import Gateway

        # The hot routes skip Flask's per-request machinery (service/http/gateway.py); the
        # test client, gunicorn and any WSGI server all enter through it.
        app.wsgi_app = Gateway(app, st)  # type: ignore[method-assign]
    st.lifecycle["status"] = "ready" if meta.self_test() else "starting"
    return app
