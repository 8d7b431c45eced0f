"""deploy/nginx-replicas.conf is deploy/nginx.conf plus an upstream of replicas, passive health
checks and retries on the next replica, and nothing else: the two cannot drift apart
(tests/e2e/test_replicas.py runs the file for real, tests/deploy/test_nginx_conf.py checks
nginx.conf against the settings).
"""

from __future__ import annotations

import re
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SINGLE = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
REPLICAS = (DEPLOY / "nginx-replicas.conf").read_text(encoding="utf-8")


def directives(text: str) -> list[str]:
    """The configuration without comments and blank lines, one directive a line."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(re.sub(r"\s+", " ", line))
    return out


def test_only_the_upstream_and_the_retry_directives_differ():
    single, replicas = directives(SINGLE), directives(REPLICAS)
    changed = re.compile(r"^(server \S+:\d+( |;)|zone |proxy_next_upstream|proxy_connect_timeout )")
    assert [d for d in single if not changed.match(d)] == \
        [d for d in replicas if not changed.match(d)]


def test_upstream_of_replicas_with_passive_health_checks():
    servers = re.findall(r"^\s*server (\S+) ([^;]*);\s*# test: upstream$", REPLICAS, re.M)
    assert len(servers) >= 2
    for _, params in servers:
        opts = dict(p.split("=") for p in params.split())
        assert int(opts["max_fails"]) >= 1 and opts["fail_timeout"].endswith("s")
    assert re.search(r"^\s*zone gradserve \d+k;", REPLICAS, re.M)


def test_retries_on_the_next_replica_include_posts_and_say_why():
    match = re.search(r"^\s*proxy_next_upstream ([^;]+);", REPLICAS, re.M)
    assert match and match.group(1).split() == ["error", "timeout", "http_503", "non_idempotent"]
    before = REPLICAS[:match.start()]
    assert "pure function of its body" in before[-1200:]
    tries = re.search(r"^\s*proxy_next_upstream_tries (\d+);", REPLICAS, re.M)
    assert tries and int(tries.group(1)) >= 2
    assert re.search(r"^\s*proxy_next_upstream_timeout \d+s;", REPLICAS, re.M)
