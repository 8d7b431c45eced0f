"""Per-app state (settings, graph cache, store), kept in ``app.extensions``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from service.config import Settings
from service.flows.batcher import Batcher
from service.flows.driver import Env
from service.http.steps import admit, release
from service.store.cache import GraphCache


@dataclass
class AppState:
    settings: Settings
    cache: GraphCache
    store: Any
    lifecycle: dict[str, str] = field(default_factory=lambda: {"status": "starting"})
    #: The API keys, as bytes for a constant-time compare (empty: no key needed).
    keys: tuple[bytes, ...] = field(init=False)
    #: gthread runs at most `threads` requests at once per worker; GRADSERVE_MAX_INFLIGHT of
    #: them compute, the others (cheap ones, or ones waiting for a slot) keep threads free.
    inflight: threading.BoundedSemaphore = field(init=False)

    #: The worker's dynamic batcher (service/flows/batcher.py).
    batcher: Batcher = field(init=False)

    def __post_init__(self) -> None:
        self.keys = tuple(k.encode() for k in self.settings.all_api_keys)
        self.inflight = threading.BoundedSemaphore(self.settings.max_inflight)
        self.batcher = Batcher(self.settings.batch_max_size, self.settings.batch_window_us,
                               self.settings.limits)

    def env(self, ctx: Any) -> Env:
        """What a flow may use for the request of ``ctx`` (a ``RequestContext``)."""
        inflight, settings = self.inflight, self.settings
        return Env(settings, self.cache, ctx.deadline, ctx.note, self.batcher,
                   lambda: release(ctx, inflight), lambda: admit(ctx, inflight, settings))


def state() -> AppState:
    return current_app.extensions["gradserve"]
