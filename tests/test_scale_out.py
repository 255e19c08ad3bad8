"""Several processes on real engines: two API replicas behind the project's nginx.conf, crews in
a Celery worker, events in Redis Streams, tasks in PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nginx_process import Nginx
from real_services import ensure_redis, fresh_postgres_database
from server_process import ROOT, Server, terminate
from sse_client import StreamResult, parse_lines, read_stream


class Worker:
    """`celery -A worker worker`, as an operator starts it from the project directory (no
    PYTHONPATH). Threads by default: one process, so `kill -9` kills every phase it runs."""

    def __init__(self, env: dict[str, str], log_path: Path, pool: list[str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        pool = ["-P", "threads", "-c", "2"] if pool is None else pool
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "worker", "worker", *pool,
             "--loglevel", "WARNING", "-n", f"test-{time.monotonic_ns()}@%h"],
            cwd=ROOT, env={**_base_env(), **env}, stdout=self._log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        terminate(self.proc, timeout=15)
        self._log.close()


def _base_env() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items() if k not in ("DASHSCOPE_API_KEY", "PYTHONPATH")} | {
        "LLM_PROVIDER": "scripted"}


class Cluster:
    def __init__(self, a: Server, b: Server, nginx: Nginx, worker: Worker, env: dict[str, str]) -> None:
        self.a, self.b, self.nginx, self.worker, self.env = a, b, nginx, worker, env

    def subscribers(self, server: Server, task_id: str) -> int:
        active = httpx.get(server.url + "/api/streams", timeout=10).json()["active"]
        return next((s["subscribers"] for s in active if s["task_id"] == task_id), 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    redis_url = ensure_redis()
    with fresh_postgres_database() as database_url:
        folder = tmp_path_factory.mktemp("cluster")
        env = {"EVENT_BACKEND": "redis", "REDIS_URL": redis_url, "DATABASE_URL": database_url,
               "EXECUTOR": "celery", "SCRIPTED_TOKEN_DELAY_MS": "4", "SSE_HEARTBEAT_S": "1",
               "TASK_LEASE_S": "3"}
        servers: list[Server] = []
        nginx = worker = None
        try:
            for name in ("a", "b"):  # one after the other: the first creates the schema
                servers.append(Server({**env, "INSTANCE_ID": f"replica-{name}",
                                       "DATA_DIR": str(folder / name)}, folder / f"{name}.log"))
            worker = Worker(env, folder / "worker.log")
            nginx = Nginx([s.port for s in servers], folder / "nginx")
            yield Cluster(servers[0], servers[1], nginx, worker, env)
        finally:
            for part in (nginx, worker, *servers):
                if part is not None:
                    part.stop()


def submit(base_url: str, requirement: str) -> str:
    r = httpx.post(base_url + "/api/run_task", json={"user_requirement": requirement,
                                                     "skip_confirmation": True}, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["task_id"]


def test_viewers_through_nginx_on_both_replicas_get_identical_gap_free_logs(cluster):
    task_id = submit(cluster.nginx.url, "A ticketing system for an IT help desk")
    results: list[StreamResult] = [None] * 3  # type: ignore[list-item]

    def view(i: int) -> None:
        results[i] = read_stream(cluster.nginx.url, task_id, timeout=120)

    viewers = [threading.Thread(target=view, args=(i,)) for i in range(3)]
    for v in viewers:
        v.start()
    deadline = time.monotonic() + 20
    spread = (0, 0)
    while time.monotonic() < deadline:
        spread = (cluster.subscribers(cluster.a, task_id), cluster.subscribers(cluster.b, task_id))
        if sum(spread) == 3:
            break
        time.sleep(0.05)
    assert sum(spread) == 3 and min(spread) >= 1, f"nginx did not spread the viewers: {spread}"
    for v in viewers:
        v.join(120)
    first = results[0]
    assert first.status == 200 and first.closed_by_server
    assert first.sequences == list(range(1, len(first.sequences) + 1))
    assert first.events[-1]["event_type"] == "end"
    for other in results[1:]:
        assert other.events == first.events
    # The log each replica serves later (from Redis or the database) is the same one.
    for server in (cluster.a, cluster.b):
        assert read_stream(server.url, task_id).events == first.events


def test_a_viewer_cut_off_from_replica_a_resumes_on_replica_b_missing_nothing(cluster):
    task_id = submit(cluster.nginx.url, "A library catalogue with loans and reminders")
    part = read_stream(cluster.a.url, task_id, max_messages=150)
    assert part.sequences == list(range(1, 151))
    status = httpx.get(f"{cluster.b.url}/api/task/{task_id}/status").json()
    assert status["status"] == "running"  # resumed while the task is still being written
    rest = read_stream(cluster.b.url, task_id, headers={"Last-Event-ID": part.messages[-1].id})
    assert rest.sequences[0] == 151
    whole = part.sequences + rest.sequences
    assert whole == list(range(1, len(whole) + 1))
    assert rest.events[-1]["event_type"] == "end"
    assert part.events + rest.events == read_stream(cluster.nginx.url, task_id).events


def test_the_first_event_reaches_a_client_through_nginx_while_the_task_runs(cluster):
    task_id = submit(cluster.nginx.url, "A time tracker for freelancers")
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", f"{cluster.nginx.url}/api/stream/{task_id}") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            result = StreamResult(status=r.status_code, headers=r.headers)
            lines = r.iter_lines()
            assert parse_lines(lines, result, max_messages=1)
            status = client.get(f"{cluster.nginx.url}/api/task/{task_id}/status").json()["status"]
    assert result.events[0]["event_type"] == "start"
    assert status == "running", "the first event must not wait for the end of the task"


def test_a_replica_killed_mid_task_is_failed_by_the_other_with_an_error_event(cluster, tmp_path):
    """A replica running crews in its own threads dies (kill -9): another reaps its task once
    the lease runs out."""
    doomed = Server({**cluster.env, "EXECUTOR": "thread", "INSTANCE_ID": "replica-doomed",
                     "DATA_DIR": str(tmp_path / "d"), "SCRIPTED_TOKEN_DELAY_MS": "20"},
                    tmp_path / "doomed.log")
    task_id = submit(doomed.url, "A parking garage booking app")
    seen = read_stream(cluster.b.url, task_id, max_messages=20)  # live on B, through Redis
    assert seen.sequences == list(range(1, 21))
    doomed.kill()
    started = time.monotonic()
    tail = read_stream(cluster.b.url, task_id, headers={"Last-Event-ID": "20"}, timeout=60)
    assert time.monotonic() - started < 20  # lease 3 s + a reaper pass
    assert tail.events[-1]["event_type"] == "error"
    assert "worker running this task was lost" in tail.events[-1]["content"]
    whole = seen.sequences + tail.sequences
    assert whole == list(range(1, len(whole) + 1))
    status = httpx.get(f"{cluster.nginx.url}/api/task/{task_id}/status").json()
    assert status["status"] == "failed" and "replica-doomed" in status["error"]


def test_confirm_and_cancel_through_any_replica_reach_the_worker(cluster):
    r = httpx.post(cluster.nginx.url + "/api/run_task", timeout=30,
                   json={"user_requirement": "A wiki for a school", "skip_confirmation": False})
    task_id = r.json()["task_id"]
    until = read_stream(cluster.a.url, task_id, until_type="awaiting_confirmation")
    assert until.events[-1]["event_type"] == "awaiting_confirmation"
    assert httpx.get(f"{cluster.b.url}/api/task/{task_id}/status").json()["status"] == "awaiting_confirmation"
    answer = httpx.post(f"{cluster.b.url}/api/task/{task_id}/confirm", json={"approved": True}, timeout=30)
    assert answer.status_code == 200, answer.text
    again = httpx.post(f"{cluster.a.url}/api/task/{task_id}/confirm", json={"approved": True}, timeout=30)
    assert again.status_code == 409  # answered once, whichever replica is asked
    done = read_stream(cluster.nginx.url, task_id)
    kinds = [e["event_type"] for e in done.events]
    assert kinds.count("confirmed") == 1 and kinds[-1] == "end"
    assert done.sequences == list(range(1, len(done.sequences) + 1))
    result = httpx.get(f"{cluster.a.url}/api/task/{task_id}/result").json()
    assert result["status"] == "succeeded" and all(result["deliverables"].values())

    # Cancel, sent to the replica that did not accept the task, stops the worker's crew.
    task_id = submit(cluster.nginx.url, "A chess club ranking site")
    read_stream(cluster.a.url, task_id, max_messages=50)
    asked = time.monotonic()
    assert httpx.post(f"{cluster.b.url}/api/task/{task_id}/cancel", timeout=30).status_code == 200
    events = read_stream(cluster.a.url, task_id).events
    assert events[-1]["event_type"] == "cancelled"
    assert time.monotonic() - asked < 2.0
    time.sleep(1.0)  # the worker has stopped: nothing follows the terminal event
    assert read_stream(cluster.b.url, task_id).events == events
    assert httpx.get(f"{cluster.b.url}/api/task/{task_id}/status").json()["status"] == "cancelled"


def test_a_worker_killed_mid_task_leaves_a_failed_task_with_an_error_event(cluster):
    """Last in this module: it kills the cluster's worker."""
    task_id = submit(cluster.nginx.url, "A recipe sharing site")
    seen = read_stream(cluster.b.url, task_id, max_messages=30)
    assert seen.sequences == list(range(1, 31))
    cluster.worker.kill()
    killed = time.monotonic()
    tail = read_stream(cluster.b.url, task_id, headers={"Last-Event-ID": "30"}, timeout=60)
    assert time.monotonic() - killed < 20  # lease 3 s + a reaper pass
    last = tail.events[-1]
    assert last["event_type"] == "error" and "worker running this task was lost" in last["content"]
    whole = seen.sequences + tail.sequences
    assert whole == list(range(1, len(whole) + 1))
    status = httpx.get(f"{cluster.nginx.url}/api/task/{task_id}/status").json()
    assert status["status"] == "failed" and status["error"] == last["content"]


def test_a_worker_with_celerys_default_process_pool_runs_phases(cluster, tmp_path):
    """After the kill above, this worker is the only one: the task must run in its pool."""
    worker = Worker(cluster.env, tmp_path / "prefork.log", pool=["-c", "1"])
    try:
        task_id = submit(cluster.nginx.url, "A flashcard app for language learners")
        events = read_stream(cluster.a.url, task_id, timeout=120).events
        assert events[-1]["event_type"] == "end", worker.log_path.read_text()[-2000:]
    finally:
        worker.stop()
