"""Redis restarted while a task runs on a Celery worker: nothing is lost, the task finishes, and
the viewer reading through the restart gets a gap-free log that equals the replay.

Redis runs here as docker-compose runs it: with its append-only file, so a restart keeps the
event streams, their sequence counters and the broker's queue."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.api import AGENTS, wait_finished
from tests.support.celery_worker import Worker
from tests.support.real_services import fresh_postgres_database
from tests.support.server_process import Server, free_port, terminate
from tests.support.sse_client import StreamResult, read_stream
from tests.support.waiting import wait_for


class RedisServer:
    """A Redis of this test's own, persistent like docker-compose's, that can be restarted."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--save",
                "",
            ],
            stdout=open(self.folder / "redis.log", "ab"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _answers(client), timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)  # SIGTERM: Redis writes its append-only file and exits


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def test_a_redis_restart_mid_task_loses_nothing(own_redis: RedisServer, tmp_path: Path):
    with fresh_postgres_database() as database_url:
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": own_redis.url,
            "DATABASE_URL": database_url,
            "EXECUTOR": "celery",
            "SCRIPTED_TOKEN_DELAY_MS": "3",
            "TASK_LEASE_S": "3",
        }
        api = Server({**env, "INSTANCE_ID": "api", "DATA_DIR": str(tmp_path / "api")}, tmp_path / "api.log")
        worker = Worker(env, tmp_path / "worker.log")
        try:
            with httpx.Client(base_url=api.url, timeout=60) as c:
                body = {"user_requirement": "A library catalogue", "skip_confirmation": True}
                task_id = c.post("/api/run_task", json=body).json()["task_id"]
                seen: list[StreamResult] = []
                viewer = threading.Thread(target=lambda: seen.append(read_stream(api.url, task_id, timeout=120)))
                viewer.start()
                read_stream(api.url, task_id, max_messages=100)
                own_redis.stop()
                time.sleep(3)  # the crew goes on meanwhile: its events wait in the writer's outbox
                own_redis.start()
                status = wait_finished(c, task_id, timeout=120)
                assert status["status"] == "succeeded", (status, worker.log_text()[-2000:])
                viewer.join(60)
                result = c.get(f"/api/task/{task_id}/result").json()
            [live] = seen
            assert live.closed_by_server and live.events[-1]["event_type"] == "end"
            assert live.sequences == list(range(1, len(live.sequences) + 1))
            assert [e["agent_name"] for e in live.events if e["event_type"] == "step_end"] == AGENTS
            assert "resumed" not in [e["event_type"] for e in live.events]  # nothing was lost to resume
            assert all(result["deliverables"].values())
            assert read_stream(api.url, task_id).events == live.events
            assert "Redis write failed" in worker.log_text()  # the restart did hit the crew's writes
        finally:
            worker.stop()
            api.stop()
