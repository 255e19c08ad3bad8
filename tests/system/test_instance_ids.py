"""Process identity on real servers: two replicas started on one host with `uvicorn --port` (the
PORT setting the same for both) own their tasks under different ids; restarting one after a
`kill -9` takes over only its own tasks, at once, and leaves the other's live task alone."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from delivery.tasks.records import TaskStatus
from delivery.tasks.store import TaskStore
from delivery.tasks.watchdog import EXITED_OWNER
from tests.support.api import event_types, stream_until, wait_status
from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.server_process import Server

LEASE_S = 120  # far longer than the test waits: a lease never decides here


def test_replicas_on_one_host_have_their_own_ids_and_a_restart_takes_over_only_its_own(tmp_path: Path):
    redis_url = ensure_redis()
    with fresh_postgres_database() as database_url:
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "PORT": "8000",  # what the old default id was made of; each binds its own `--port`
            "SCRIPTED_TOKEN_DELAY_MS": "15",
            "TASK_LEASE_S": str(LEASE_S),
            "RATE_LIMIT": "100000/minute",
            "RATE_LIMIT_RUN_TASK": "100000/minute",
        }

        def replica(name: str, port: int | None = None) -> Server:
            return Server({**env, "DATA_DIR": str(tmp_path / name)}, tmp_path / f"{name}.log", port=port)

        store = TaskStore(database_url)
        servers = [replica("a")]
        servers.append(replica("b"))
        a, b = servers
        try:
            with httpx.Client(timeout=30) as c:
                body = {"user_requirement": "Build a parking app", "skip_confirmation": True}
                on_a = c.post(a.url + "/api/run_task", json=body).json()["task_id"]
                on_b = c.post(b.url + "/api/run_task", json=body).json()["task_id"]
            for url, task_id in ((a.url, on_a), (b.url, on_b)):
                with httpx.Client(base_url=url, timeout=30) as c:
                    wait_status(c, task_id, "running")
            owner_a, owner_b = store.get(on_a).owner, store.get(on_b).owner
            assert owner_a and owner_b and owner_a != owner_b
            assert f"{socket.gethostname()}:8000" not in (owner_a, owner_b)

            killed_at = time.monotonic()
            b.kill()  # its task is left running, owned by a process that is gone
            servers[1] = b = replica("b", port=b.port)
            resumed = stream_until(b.url, on_b, "resumed", timeout=60).events[-1]
            assert time.monotonic() - killed_at < LEASE_S / 2  # at once, not when the lease runs out
            assert resumed["metadata"]["lost"] == EXITED_OWNER.format(owner=owner_b)
            assert store.get(on_b).owner != owner_b
            assert store.get(on_a).status is TaskStatus.running  # A's task was live through B's restart

            # A's task went on under A the whole time: B's restart did not take it.
            run_a = stream_until(a.url, on_a, "end", timeout=180)
            assert "resumed" not in event_types(run_a.events)
            stored_a = store.get(on_a)
            assert (stored_a.status, stored_a.owner, stored_a.attempts) == (TaskStatus.succeeded, owner_a, 1)
            assert event_types(stream_until(b.url, on_b, "end", timeout=180).events).count("resumed") == 1
        finally:
            for server in servers:
                server.stop()
            store.close()
