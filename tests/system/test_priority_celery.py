"""The priority queue with Celery workers, on a Redis broker and on RabbitMQ: with the worker's
only thread busy, queued phases start by priority, then in the order they arrived."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.celery_worker import Worker
from tests.support.priority import EXPECTED_START_ORDER, start_order_of_queued_tasks
from tests.support.real_services import ensure_rabbitmq, ensure_redis, fresh_postgres_database
from tests.support.server_process import Server

BROKER_DB = 5  # a Redis database of its own, emptied first: no message of another test is in it


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "rabbitmq":
        return ensure_rabbitmq()
    url = ensure_redis().rsplit("/", 1)[0] + f"/{BROKER_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def one_worker_thread(broker_url: str, tmp_path: Path) -> Iterator[Server]:
    with fresh_postgres_database() as database_url:
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": ensure_redis(),
            "DATABASE_URL": database_url,
            "EXECUTOR": "celery",
            "CELERY_BROKER_URL": broker_url,
            "SCRIPTED_TOKEN_DELAY_MS": "3",
            "RATE_LIMIT": "100000/minute",
            "RATE_LIMIT_RUN_TASK": "100000/minute",
        }
        server = Server({**env, "DATA_DIR": str(tmp_path / "api")}, tmp_path / "api.log")
        worker = Worker({**env, "DATA_DIR": str(tmp_path / "worker")}, tmp_path / "worker.log")  # one thread
        try:
            worker.wait_ready()
            yield server
        finally:
            worker.stop()
            server.stop()


def test_queued_phases_start_by_priority_then_arrival_on_celery(one_worker_thread):
    with httpx.Client(base_url=one_worker_thread.url, timeout=30) as c:
        assert start_order_of_queued_tasks(c) == EXPECTED_START_ORDER
