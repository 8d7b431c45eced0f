"""Fixtures of the store tests; the private redis-server ones come from tests/redis_server.py."""

from tests.redis_server import redis_server, redis_server_factory  # noqa: F401
