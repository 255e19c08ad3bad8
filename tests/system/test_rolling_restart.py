"""A rolling restart, as a deploy does it: two API replicas behind the project's nginx.conf and two
Celery workers on real Redis and PostgreSQL, each stopped with SIGTERM and started again, one at a
time, while ten tasks run. Every task ends `end` and every viewer, reconnecting through Nginx with
Last-Event-ID as browsers do, reads each sequence number exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import wait_finished
from tests.support.celery_worker import Worker
from tests.support.nginx_process import Nginx
from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.server_process import Server, free_port
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for

TASKS = 10
TERMINAL = {"end", "error", "cancelled"}


class Deployment:
    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env, self.folder = env, folder
        self.api_ports = [free_port(), free_port()]
        self.apis: list[Server] = []
        self.workers: list[Worker] = []
        self.nginx: Nginx | None = None
        self.restarts = 0
        try:
            for i, port in enumerate(self.api_ports):
                self.apis.append(self._api(i, port))
            for i in range(2):
                self.workers.append(self._worker(i))
            for worker in self.workers:
                self.assert_ready(worker)
            self.nginx = Nginx(self.api_ports, folder / "nginx")
        except BaseException:
            # Nothing of a half-started deployment may outlive the test: its workers would take
            # other tests' tasks from the shared broker.
            self.stop()
            raise

    def _api(self, i: int, port: int) -> Server:
        name = f"api-{i}-{self.restarts}"
        env = {**self.env, "INSTANCE_ID": f"api-{i}", "DATA_DIR": str(self.folder / f"api-{i}")}
        return Server(env, self.folder / f"{name}.log", port=port)

    def _worker(self, i: int) -> Worker:
        worker = Worker(
            {**self.env, "METRICS_PORT": str(free_port())},
            self.folder / f"worker-{i}-{self.restarts}.log",
            pool=["-P", "threads", "-c", "5"],
        )
        return worker

    @staticmethod
    def assert_ready(worker: Worker) -> None:
        """A worker's METRICS_PORT answers the probes an orchestrator sends."""
        worker.wait_ready()
        port = worker.env["METRICS_PORT"]
        assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).json() == {"status": "ok"}
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        assert set(r.json()["checks"]) == {"database", "events", "archiver", "executor", "watchdog"}

    def restart_api(self, i: int) -> Server:
        self.restarts += 1
        old = self.apis[i]
        old.stop()  # SIGTERM; `terminate` escalates to SIGKILL only after 10 s
        # uvicorn exits by re-raising the SIGTERM it handled (-15); -9 would be our SIGKILL.
        assert old.proc.returncode == -15, old.log_text()[-2000:]
        self.apis[i] = self._api(i, self.api_ports[i])
        return old

    def restart_worker(self, i: int) -> Worker:
        self.restarts += 1
        old = self.workers[i]
        started = time.monotonic()
        old.stop()  # SIGTERM: Celery's warm shutdown
        assert old.proc.returncode == 0 and time.monotonic() - started < 15, old.log_text()[-2000:]
        self.workers[i] = self._worker(i)
        self.assert_ready(self.workers[i])
        return old

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for worker in self.workers:
            worker.stop()
        for api in self.apis:
            api.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with fresh_postgres_database() as database_url:
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": ensure_redis(),
            "DATABASE_URL": database_url,
            "EXECUTOR": "celery",
            "SCRIPTED_TOKEN_DELAY_MS": "40",  # tasks outlast both workers' restarts
            "TASK_LEASE_S": "3",
            "MAX_PHASE_ATTEMPTS": "1",  # a hand-back must not use up an attempt: none is left
            "RATE_LIMIT": "100000/minute",
            "RATE_LIMIT_RUN_TASK": "100000/minute",
        }
        d = Deployment(env, tmp_path_factory.mktemp("rolling"))
        try:
            yield d
        finally:
            d.stop()


def follow(base_url: str, task_id: str, received: list[dict], deadline_s: float = 300) -> None:
    """Read the task's stream to its terminal event, reconnecting with Last-Event-ID whenever the
    connection ends early (a `shutdown` frame, a cut, a 502 while a replica restarts)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(received[-1]["sequence"])} if received else {}
        try:
            result = read_stream(base_url, task_id, headers=headers, allow_cut=True, timeout=30)
        except httpx.HTTPError:
            result = None
        if result is not None and result.status == 200:
            received.extend(m.json for m in result.messages if m.event != "shutdown")  # `shutdown` has no id
            if received and received[-1]["event_type"] in TERMINAL:
                return
        time.sleep(0.2)


def test_a_rolling_restart_of_every_process_keeps_every_task_and_every_sequence(deployment):
    assert deployment.nginx is not None
    url = deployment.nginx.url
    with httpx.Client(base_url=url, timeout=30) as c:
        task_ids = []
        for i in range(TASKS):
            r = c.post("/api/run_task", json={"user_requirement": f"Inventory app {i}", "skip_confirmation": True})
            assert r.status_code == 202, r.text
            task_ids.append(r.json()["task_id"])
    seen: dict[str, list[dict]] = {t: [] for t in task_ids}
    viewers = [threading.Thread(target=follow, args=(url, t, seen[t]), daemon=True) for t in task_ids]
    for v in viewers:
        v.start()
    with httpx.Client(base_url=url, timeout=30) as c:
        states: list[dict] = []

        def all_running() -> bool:
            states[:] = [c.get(f"/api/task/{t}/status").json() for t in task_ids]
            return all(state["last_sequence"] > 20 for state in states)

        wait_for(all_running, 60, message=lambda: f"every task to be streaming: {states}")

    # The workers first, one after the other, while every task still runs: interleaved with the
    # API restarts, the second worker was stopped ~30 s in, and on a slow run every task had
    # already ended (it had nothing to hand back). Then the API replicas.
    old_workers = [deployment.restart_worker(0), deployment.restart_worker(1)]
    deployment.restart_api(0)
    deployment.restart_api(1)

    for v in viewers:
        v.join(300)
        assert not v.is_alive(), "a viewer never reached its task's terminal event"
    with httpx.Client(base_url=url, timeout=30) as c:
        for task_id in task_ids:
            assert wait_finished(c, task_id, timeout=60)["status"] == "succeeded", task_id
    handed_back = 0
    for task_id, events in seen.items():
        types = [e["event_type"] for e in events]
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)), task_id
        assert types[-1] == "end" and "error" not in types, (task_id, types[-20:])
        resumes = [e for e in events if e["event_type"] == "resumed"]
        assert all(e["metadata"]["handed_back"] for e in resumes), resumes
        handed_back += len(resumes)
        # What a viewer saw across the restarts is the task's one log.
        assert read_stream(url, task_id).events == events
    # Each stopped worker was running phases (five threads, ten tasks) and handed them back.
    for worker in old_workers:
        assert "tasks handed back for the next process to resume" in worker.log_text(), worker.log_text()[-2000:]
    assert handed_back >= 2
