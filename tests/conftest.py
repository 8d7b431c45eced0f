"""Fixtures shared by every test directory (Flask-tutorial style ``app`` and ``client``).

The test client refuses any 5xx other than 503: docs/api.md §7 says every other one is a bug,
so no test can pass while the service answers 500, whatever it was checking.
"""

from __future__ import annotations

import os

# GRADSERVE_TEST_BACKEND=array-api-strict runs the engine on that backend (make test's second
# pass over the op table, the properties, the lecture, MLP and HTTP oracle tests). Set before
# anything builds the engine's registry, which reads GRADSERVE_BACKEND once per process.
if os.environ.get("GRADSERVE_TEST_BACKEND"):
    os.environ["GRADSERVE_BACKEND"] = os.environ["GRADSERVE_TEST_BACKEND"]

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402

from service import create_app  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.http.access_log import configure_logging  # noqa: E402
from service.store.memory import MemoryStore  # noqa: E402

# The service's loggers stop propagating when the first app configures them; pytest's log
# capture attaches itself to non-propagating loggers as each test starts, so the first
# test to build an app would capture none of its access lines. Configured now, they are
# non-propagating before any test starts (each app sets its own level again).
configure_logging("warning")


def pytest_report_header(config: pytest.Config) -> str:
    from service.engine import REGISTRY

    return f"gradserve backend: {REGISTRY.backend} ({REGISTRY.device})"


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
