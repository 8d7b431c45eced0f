"""Settings come from GRADSERVE_* variables and a bad value stops start-up, naming it."""

from __future__ import annotations

import re

import pytest

from service.config import ConfigError, load_settings


def test_defaults_bind_loopback():
    s = load_settings({})
    assert s.host == "127.0.0.1" and s.port == 8000
    assert s.redis_url == "" and s.api_keys == ()


def test_values_are_coerced():
    s = load_settings({
        "GRADSERVE_PORT": "9001", "GRADSERVE_MAX_NODES": "1_000", "GRADSERVE_API_KEYS": "a, b",
        "GRADSERVE_METRICS_REQUIRE_KEY": "yes", "GRADSERVE_BREAKER_COOLDOWN_S": "0.5",
    })
    assert s.port == 9001 and s.limits.max_nodes == 1000
    assert s.api_keys == ("a", "b") and s.metrics_require_key is True
    assert s.breaker_cooldown_s == 0.5


@pytest.mark.parametrize("env, name", [
    ({"GRADSERVE_PORT": "abc"}, "GRADSERVE_PORT"),
    ({"GRADSERVE_PORT": "70000"}, "GRADSERVE_PORT"),
    ({"GRADSERVE_MAX_FLOPS": "-5"}, "GRADSERVE_MAX_FLOPS"),
    ({"GRADSERVE_MAX_NODES": "0"}, "GRADSERVE_MAX_NODES"),
    ({"GRADSERVE_LOG_LEVEL": "loud"}, "GRADSERVE_LOG_LEVEL"),
    ({"GRADSERVE_REDIS_URL": "http://x"}, "GRADSERVE_REDIS_URL"),
    ({"GRADSERVE_METRICS_REQUIRE_KEY": "maybe"}, "GRADSERVE_METRICS_REQUIRE_KEY"),
    ({"GRADSERVE_REQUEST_DEADLINE_S": "nan"}, "GRADSERVE_REQUEST_DEADLINE_S"),
    ({"GRADSERVE_API_KEYS_FILE": "/nonexistent/keys"}, "GRADSERVE_API_KEYS_FILE"),
])
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(ConfigError, match=name):
        load_settings(env)


def test_api_keys_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("k1\nk2, k3\n")
    s = load_settings({"GRADSERVE_API_KEYS": "k0", "GRADSERVE_API_KEYS_FILE": str(keys)})
    assert s.all_api_keys == ("k0", "k1", "k2", "k3")


def test_every_setting_is_documented_in_the_readme():
    """Each GRADSERVE_* variable load_settings reads (Settings and Limits fields) has a row in
    README.md's Configuration or Limits table, and no table row names a variable that does
    not exist (a renamed setting leaves no stale row behind)."""
    from dataclasses import fields
    from pathlib import Path

    from service.config import PREFIX, Settings
    from service.engine.limits import Limits

    names = {PREFIX + f.name.upper() for f in fields(Settings) if f.name != "limits"}
    names |= {PREFIX + f.name.upper() for f in fields(Limits)}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `GRADSERVE_")]
    documented = set()
    for row in rows:
        first = row.split("|")[1]
        for var in re.findall(r"`(GRADSERVE_[A-Z0-9_]+)`", first):
            documented.add(var)
        # `GRADSERVE_MAX_REQUESTS` / `_JITTER`: a suffix row names the variable it extends.
        base = re.findall(r"`(GRADSERVE_[A-Z0-9_]+)`", first)
        for suffix in re.findall(r"`(_[A-Z0-9_]+)`", first):
            documented.add(base[0] + suffix)
    assert names - documented == set(), "settings without a README row"
    extra = documented - names - {"GRADSERVE_TEST_BACKEND", "GRADSERVE_SCREENSHOTS"}
    assert extra == set(), "README rows naming no setting"
