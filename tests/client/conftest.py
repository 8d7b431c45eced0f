"""The client tests' ``url``: a fresh app served on a local port for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.served import serving


@pytest.fixture
def url() -> Iterator[str]:
    with serving() as base:
        yield base
