"""Fixtures shared by every test directory (Flask-tutorial style ``app`` and ``client``).

The test client refuses any 5xx other than 503: docs/api.md §7 says every other one is a bug,
so no test can pass while the service answers 500, whatever it was checking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import load_settings
from service.store.memory import MemoryStore


class StrictClient(FlaskClient):
    """A test client that fails the test on any 5xx except 503 (docs/api.md §7)."""

    def open(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        resp = super().open(*args, **kwargs)
        assert resp.status_code < 500 or resp.status_code == 503, (
            f"{resp.status_code} from {args[:1]}: {resp.get_data(as_text=True)[:500]}"
        )
        return resp


def build_app(store: Any = None, **overrides: Any) -> Flask:
    """An app with ``load_settings(**overrides)`` and an in-memory store (or ``store``)."""
    app = create_app(load_settings(env={}, **overrides),
                     store=MemoryStore() if store is None else store)
    app.test_client_class = StrictClient
    return app


@pytest.fixture
def make_app() -> Callable[..., Flask]:
    """Build an app with other settings: ``make_app(api_keys=("k1",), limits=Limits(...))``."""
    return build_app


@pytest.fixture
def app() -> Flask:
    return build_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
