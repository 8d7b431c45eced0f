"""deploy/nginx.conf agrees with gradserve's defaults (the proxy test runs it for real)."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import Settings

CONF = (Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf").read_text()


def directive(name: str) -> str:
    match = re.search(rf"^\s*{name}\s+([^;]+);", CONF, re.M)
    assert match, name
    return match.group(1).strip()


def seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_body_limit_is_gradserves():
    size = directive("client_max_body_size")
    assert size.endswith("m")
    assert int(size[:-1]) * 1024 * 1024 == Settings().max_body_bytes
    assert f"GRADSERVE_MAX_BODY_BYTES={Settings().max_body_bytes:,}" in CONF


def test_timeouts_fit_gradserves():
    s = Settings()
    assert seconds(directive("client_body_timeout")) <= s.body_timeout_s
    assert seconds(directive("client_header_timeout")) <= s.body_timeout_s
    # nginx must wait for the slowest answer gradserve may give.
    assert seconds(directive("proxy_read_timeout")) > s.request_deadline_s


def test_the_proxy_buffers_requests_and_answers_problem_json():
    assert directive("proxy_request_buffering") == "on"
    assert directive("proxy_buffering") == "on"
    assert "error_page 502 503 504 =503" in CONF
    assert CONF.count("application/problem+json") >= 3
