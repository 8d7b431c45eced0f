"""Per-app state (settings, graph cache, store), kept in ``app.extensions``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from service.config import Settings
from service.graphs import GraphCache


@dataclass
class AppState:
    settings: Settings
    cache: GraphCache
    store: Any
    lifecycle: dict[str, str] = field(default_factory=lambda: {"status": "starting"})


def state() -> AppState:
    return current_app.extensions["gradserve"]
