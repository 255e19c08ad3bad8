"""Two API replicas sharing Redis and a fresh PostgreSQL database, as the system tests run them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.server_process import Server


@contextmanager
def two_replicas(folder: Path, **settings: str) -> Iterator[tuple[Server, Server, str]]:
    """Replicas "a" and "b" (`INSTANCE_ID`), `EVENT_BACKEND=redis` on the machine's Redis, a
    database of their own, rate limits out of the way, plus `settings`; yields them and the Redis
    URL. They start one after the other: the first creates the schema."""
    redis_url = ensure_redis()
    with fresh_postgres_database() as database_url:
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "RATE_LIMIT": "100000/minute",
            "RATE_LIMIT_RUN_TASK": "100000/minute",
            **settings,
        }
        servers: list[Server] = []
        try:
            for name in ("a", "b"):
                servers.append(
                    Server({**env, "INSTANCE_ID": name, "DATA_DIR": str(folder / name)}, folder / f"{name}.log")
                )
            yield servers[0], servers[1], redis_url
        finally:
            for server in servers:
                server.stop()
