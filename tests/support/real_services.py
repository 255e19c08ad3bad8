"""The real PostgreSQL and Redis of this machine, started if they are not running."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
REDIS_PORT = 6379
RABBITMQ_PORT = 5672

START_POSTGRES = "pg_ctlcluster --skip-systemctl-redirect {version} main start"
START_REDIS = (
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ensure(port: int, start: str, name: str, wait_s: float = 30) -> None:
    if _listening(port):
        return
    subprocess.run(start, shell=True, check=False, capture_output=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _listening(port):
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"{name} is not listening on 127.0.0.1:{port} and `{start}` did not start it; "
        f"start {name} (see README, Troubleshooting) and run the tests again."
    )


def ensure_redis() -> str:
    _ensure(REDIS_PORT, START_REDIS, "Redis")
    return f"redis://127.0.0.1:{REDIS_PORT}/0"


def ensure_rabbitmq() -> str:
    """RabbitMQ (Debian's rabbitmq-server, installed by make test), as a Celery broker."""
    _ensure(RABBITMQ_PORT, "rabbitmq-server -detached", "RabbitMQ", wait_s=90)
    return f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}//"


def ensure_postgres() -> None:
    versions = [os.path.basename(p) for p in glob.glob("/etc/postgresql/*")]
    _ensure(PG_PORT, START_POSTGRES.format(version=versions[0] if versions else "15"), "PostgreSQL")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database for one test session, dropped afterwards."""
    import psycopg

    ensure_postgres()
    name = f"mad_test_{uuid.uuid4().hex[:12]}"
    admin = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def first_sequence_in_redis(client: Any, task_id: str) -> int | None:
    """The first sequence Redis still keeps of a task's log (None when it has none)."""
    first = client.xrange(f"mad:task:{task_id}:events", count=1)
    return int(first[0][0].split(b"-")[0]) if first else None
