"""The error a cross-field rule of a request raises: a ValueError that knows its field.

Pydantic reports a model-level check at ``loc: []``; the service reads ``loc`` from this
error instead, so every problem+json item points at a field.
"""

from __future__ import annotations

from collections.abc import Sequence


class CrossFieldError(ValueError):
    """A rule over several fields; ``loc`` is the field to point at."""

    def __init__(self, msg: str, loc: Sequence[str | int]) -> None:
        super().__init__(msg)
        self.loc = tuple(loc)
