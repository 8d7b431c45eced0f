"""gradserve: gradients by backpropagation as a REST microservice."""

from __future__ import annotations

from typing import Any


def create_app(settings: Any = None, **kwargs: Any) -> Any:
    """The Flask application (see :func:`service.app.create_app`)."""
    from service.app import create_app as _create_app

    return _create_app(settings, **kwargs)


__all__ = ["create_app"]
