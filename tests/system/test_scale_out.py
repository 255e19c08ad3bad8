"""Several processes on real engines: API replicas behind the project's nginx.conf, crews in a
Celery worker, events in Redis Streams, tasks in PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import subscribers, wait_status
from tests.support.celery_worker import Worker
from tests.support.nginx_process import Nginx
from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.server_process import Server
from tests.support.sse_client import StreamResult, parse_lines, read_stream
from tests.support.waiting import wait_for


class Cluster:
    def __init__(self, a: Server, b: Server, nginx: Nginx, worker: Worker, env: dict[str, str], folder: Path) -> None:
        self.a, self.b, self.nginx, self.worker, self.env, self.folder = a, b, nginx, worker, env, folder

    def replica(self, name: str, **env: str) -> Server:
        """Another API replica on the cluster's Redis and PostgreSQL."""
        return Server(
            {**self.env, "INSTANCE_ID": f"replica-{name}", "DATA_DIR": str(self.folder / name), **env},
            self.folder / f"{name}.log",
        )


def viewers_on(server: Server, task_id: str) -> int:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        return subscribers(c, task_id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    redis_url = ensure_redis()
    with fresh_postgres_database() as database_url:
        folder = tmp_path_factory.mktemp("cluster")
        env = {
            "EVENT_BACKEND": "redis",
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "EXECUTOR": "celery",
            "SCRIPTED_TOKEN_DELAY_MS": "4",
            "SSE_HEARTBEAT_S": "1",
            "TASK_LEASE_S": "3",
            "RATE_LIMIT": "100000/minute",
            "RATE_LIMIT_RUN_TASK": "100000/minute",
        }
        servers: list[Server] = []
        nginx: Nginx | None = None
        worker: Worker | None = None
        try:
            for name in ("a", "b"):  # one after the other: the first creates the schema
                servers.append(
                    Server(
                        {**env, "INSTANCE_ID": f"replica-{name}", "DATA_DIR": str(folder / name)},
                        folder / f"{name}.log",
                    )
                )
            worker = Worker(env, folder / "worker.log")  # one thread: it runs one phase at a time
            nginx = Nginx([s.port for s in servers], folder / "nginx")
            yield Cluster(servers[0], servers[1], nginx, worker, env, folder)
        finally:
            parts: list[Nginx | Worker | Server | None] = [nginx, worker, *servers]
            for part in parts:
                if part is not None:
                    part.stop()


def submit(base_url: str, requirement: str, skip_confirmation: bool = True, **headers: str) -> str:
    r = httpx.post(
        base_url + "/api/run_task",
        json={"user_requirement": requirement, "skip_confirmation": skip_confirmation},
        headers=headers,
        timeout=30,
    )
    assert r.status_code == 202, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def gap_free(sequences: list[int]) -> bool:
    return sequences == list(range(1, len(sequences) + 1))


def test_viewers_through_nginx_on_both_replicas_get_identical_gap_free_logs(cluster):
    task_id = submit(cluster.nginx.url, "A ticketing system for an IT help desk")
    results: list[StreamResult | None] = [None] * 3

    def view(i: int) -> None:
        results[i] = read_stream(cluster.nginx.url, task_id, timeout=120)

    viewers = [threading.Thread(target=view, args=(i,)) for i in range(3)]
    for v in viewers:
        v.start()

    def all_connected() -> tuple[int, int] | None:
        spread = (viewers_on(cluster.a, task_id), viewers_on(cluster.b, task_id))
        return spread if sum(spread) == 3 else None

    spread = wait_for(all_connected, 20, message="three viewers to connect through nginx")
    assert min(spread) >= 1, f"nginx did not spread the viewers: {spread}"
    for v in viewers:
        v.join(120)
    first = results[0]
    assert first is not None and first.status == 200 and first.closed_by_server
    assert gap_free(first.sequences) and first.events[-1]["event_type"] == "end"
    for other in results[1:]:
        assert other is not None and other.events == first.events
    # The log each replica serves later (from Redis or the database) is the same one.
    for server in (cluster.a, cluster.b):
        assert read_stream(server.url, task_id).events == first.events


def test_a_viewer_cut_off_from_replica_a_resumes_on_replica_b_missing_nothing(cluster):
    task_id = submit(cluster.nginx.url, "A library catalogue with loans and reminders")
    part = read_stream(cluster.a.url, task_id, max_messages=150)
    assert part.sequences == list(range(1, 151))
    status = httpx.get(f"{cluster.b.url}/api/task/{task_id}/status").json()
    assert status["status"] == "running"  # resumed while the task is still being written
    rest = read_stream(cluster.b.url, task_id, headers={"Last-Event-ID": part.messages[-1].id or ""})
    assert rest.sequences[0] == 151
    assert gap_free(part.sequences + rest.sequences)
    assert rest.events[-1]["event_type"] == "end"
    assert part.events + rest.events == read_stream(cluster.nginx.url, task_id).events


def test_resume_with_last_event_id_through_nginx(cluster):
    """Nginx passes Last-Event-ID on to whichever replica it picks."""
    task_id = submit(cluster.nginx.url, "A newsletter service with double opt-in")
    part = read_stream(cluster.nginx.url, task_id, max_messages=80)
    rest = read_stream(cluster.nginx.url, task_id, headers={"Last-Event-ID": "80"})
    assert rest.sequences[0] == 81 and gap_free(part.sequences + rest.sequences)
    assert rest.events[-1]["event_type"] == "end"


def test_the_first_event_reaches_a_client_through_nginx_while_the_task_runs(cluster):
    task_id = submit(cluster.nginx.url, "A time tracker for freelancers")
    with httpx.Client(timeout=30) as client, client.stream("GET", f"{cluster.nginx.url}/api/stream/{task_id}") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        result = StreamResult(status=r.status_code, headers=r.headers)
        assert parse_lines(r.iter_lines(), result, max_messages=1)
        status = client.get(f"{cluster.nginx.url}/api/task/{task_id}/status").json()["status"]
    assert result.events[0]["event_type"] == "start"
    assert status == "running", "the first event must not wait for the end of the task"


def test_when_the_replica_serving_a_viewer_dies_the_viewer_fails_over_through_nginx(cluster):
    """Two replicas of their own behind their own Nginx: the one serving the viewer is killed
    mid-stream; the viewer reconnects through Nginx with its last id and misses nothing."""
    c, d = cluster.replica("c"), cluster.replica("d")
    nginx = Nginx([c.port, d.port], cluster.folder / "nginx-cd")
    try:
        task_id = submit(nginx.url, "A booking system for a climbing gym")
        seen: list[StreamResult] = []
        reader = threading.Thread(
            target=lambda: seen.append(read_stream(nginx.url, task_id, timeout=120, allow_cut=True))
        )
        reader.start()
        serving: Server = wait_for(
            lambda: c if viewers_on(c, task_id) else d if viewers_on(d, task_id) else None,
            20,
            message="the viewer to reach a replica",
        )
        survivor = d if serving is c else c
        wait_for(
            lambda: httpx.get(f"{survivor.url}/api/task/{task_id}/status").json()["last_sequence"] >= 60,
            30,
            message="60 events of the running task",
        )
        serving.kill()
        reader.join(60)
        first = seen[0]
        assert first.cut or not first.events or first.events[-1]["event_type"] != "end", (
            "the viewer's stream should have broken with its replica"
        )
        last_id = first.messages[-1].id if first.messages else "0"
        rest = read_stream(nginx.url, task_id, headers={"Last-Event-ID": last_id or "0"}, timeout=120)
        assert rest.status == 200 and rest.events[-1]["event_type"] == "end"
        assert gap_free(first.sequences + rest.sequences)
        assert viewers_on(survivor, task_id) == 0  # it was served there, and has finished

        # A task awaiting confirmation outlives every API replica: stop the survivor too, start
        # a new one, and confirm there.
        waiting = submit(nginx.url, "A volunteer rota for a food bank", skip_confirmation=False)
        read_stream(survivor.url, waiting, until_type="awaiting_confirmation")
        survivor.stop()
        e = cluster.replica("e")
        try:
            answer = httpx.post(f"{e.url}/api/task/{waiting}/confirm", json={"approved": True}, timeout=30)
            assert answer.status_code == 200, answer.text
            done = read_stream(e.url, waiting, timeout=120)
            assert done.events[-1]["event_type"] == "end", (done.events[-1]["content"], done.events[-1]["metadata"])
            assert gap_free(done.sequences)
        finally:
            e.stop()
    finally:
        nginx.stop()
        for server in (c, d):
            server.stop()


def test_rate_limits_are_shared_by_the_replicas_through_redis(cluster):
    """RATE_LIMIT_RUN_TASK=3/minute for one key, counted once across two replicas."""
    key = f"shared-limit-{time.monotonic_ns()}"
    f = cluster.replica("f", API_KEYS=key, RATE_LIMIT_RUN_TASK="3/minute")
    g = cluster.replica("g", API_KEYS=key, RATE_LIMIT_RUN_TASK="3/minute")
    try:
        codes, accepted = [], []
        for server in (f, g, f, g, f):
            r = httpx.post(
                server.url + "/api/run_task",
                headers={"X-API-Key": key},
                timeout=30,
                json={"user_requirement": "A parking permit portal", "skip_confirmation": False},
            )
            codes.append(r.status_code)
            if r.status_code == 202:
                accepted.append((server, r.json()["task_id"]))
        assert codes == [202, 202, 202, 429, 429], codes
        for server, task_id in accepted:  # free the worker for the next tests
            httpx.post(f"{server.url}/api/task/{task_id}/cancel", headers={"X-API-Key": key}, timeout=30)
    finally:
        f.stop()
        g.stop()


def test_a_replica_killed_mid_task_is_resumed_by_the_others_on_a_worker(cluster, tmp_path):
    """A replica running crews in its own threads dies (kill -9): once its lease runs out another
    process takes the phase over and a Celery worker runs it again from its first unfinished
    agent; the viewer reading through the kill resumes with its own last id."""
    doomed = Server(
        {
            **cluster.env,
            "EXECUTOR": "thread",
            "INSTANCE_ID": "replica-doomed",
            "DATA_DIR": str(tmp_path / "d"),
            "SCRIPTED_TOKEN_DELAY_MS": "20",
        },
        tmp_path / "doomed.log",
    )
    task_id = submit(doomed.url, "A parking garage booking app")
    seen = read_stream(cluster.b.url, task_id, max_messages=20)  # live on B, through Redis
    assert seen.sequences == list(range(1, 21))
    doomed.kill()
    started = time.monotonic()
    tail = read_stream(cluster.b.url, task_id, headers={"Last-Event-ID": "20"}, timeout=120)
    events = seen.events + tail.events
    assert gap_free(seen.sequences + tail.sequences)
    resumed = [e for e in events if e["event_type"] == "resumed"]
    assert len(resumed) == 1 and "replica-doomed" in resumed[0]["content"]
    assert resumed[0]["metadata"]["agent"] == "ProductManager" and resumed[0]["metadata"]["attempt"] == 2
    assert time.monotonic() - started < 60
    assert events[-1]["event_type"] == "end" and [e["event_type"] for e in events].count("end") == 1
    status = httpx.get(f"{cluster.nginx.url}/api/task/{task_id}/status").json()
    assert status["status"] == "succeeded" and status["attempts"] == 2


def test_confirm_and_cancel_through_any_replica_reach_the_worker(cluster):
    r = httpx.post(
        cluster.nginx.url + "/api/run_task",
        timeout=30,
        json={"user_requirement": "A wiki for a school", "skip_confirmation": False},
    )
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
    assert gap_free(done.sequences)
    result = httpx.get(f"{cluster.a.url}/api/task/{task_id}/result").json()
    assert result["status"] == "succeeded" and all(result["deliverables"].values())


def test_cancel_sent_to_another_replica_stops_the_workers_crew(cluster):
    """The worker has one thread: a crew that went on generating after the cancel would hold it,
    and the next task could not start."""
    task_id = submit(cluster.nginx.url, "A chess club ranking site")
    read_stream(cluster.a.url, task_id, max_messages=50)
    asked = time.monotonic()
    assert httpx.post(f"{cluster.b.url}/api/task/{task_id}/cancel", timeout=30).status_code == 200
    events = read_stream(cluster.a.url, task_id).events
    assert events[-1]["event_type"] == "cancelled"
    assert time.monotonic() - asked < 2.0
    next_task = submit(cluster.nginx.url, "A birdwatching log")
    started = read_stream(cluster.a.url, next_task, max_messages=1, timeout=30)
    assert started.events[0]["event_type"] == "start"
    assert time.monotonic() - asked < 5.0, "the worker was still busy with the cancelled crew"
    assert read_stream(cluster.b.url, task_id).events == events  # nothing followed the terminal event
    with httpx.Client(base_url=cluster.b.url, timeout=30) as c:
        assert wait_status(c, task_id, "cancelled")["status"] == "cancelled"
        c.post(f"/api/task/{next_task}/cancel")


def test_a_killed_worker_loses_neither_its_running_phase_nor_the_one_waiting_for_it(cluster, tmp_path):
    """Near the end of this module: it kills the cluster's worker (one thread). Task 1 runs
    there, task 2 waits in the broker. After `kill -9` and a new worker: task 1 goes on from the
    QAEngineer (the ProductManager's work is kept), task 2 runs, both end once."""
    first = submit(cluster.nginx.url, "A recipe sharing site")
    second = submit(cluster.nginx.url, "A plant watering reminder")
    seen = read_stream(cluster.b.url, first, until_type="step_end")  # the ProductManager is done
    cluster.worker.kill()
    replacement = Worker(cluster.env, tmp_path / "replacement.log")
    try:
        last_id = str(seen.sequences[-1])
        tail = read_stream(cluster.b.url, first, headers={"Last-Event-ID": last_id}, timeout=120)
        events = seen.events + tail.events
        assert gap_free(seen.sequences + tail.sequences)
        kinds = [e["event_type"] for e in events]
        assert kinds.count("resumed") == 1 and kinds[-1] == "end" and kinds.count("end") == 1
        resumed = next(e for e in events if e["event_type"] == "resumed")
        assert resumed["metadata"]["agent"] == "QAEngineer"
        starts = [e["agent_name"] for e in events if e["event_type"] == "agent_start"]
        assert starts.count("ProductManager") == 1, starts  # finished work is not redone
        waiting = read_stream(cluster.a.url, second, timeout=120).events
        assert waiting[-1]["event_type"] == "end", replacement.log_text()[-2000:]
        assert "resumed" not in [e["event_type"] for e in waiting]
        for task_id in (first, second):
            result = httpx.get(f"{cluster.nginx.url}/api/task/{task_id}/result").json()
            assert result["status"] == "succeeded" and all(result["deliverables"].values())
    finally:
        replacement.stop()


def test_a_worker_with_celerys_default_process_pool_runs_phases(cluster, tmp_path):
    """On a queue of its own, served by a replica of its own, the prefork worker is the only one that
    can take the task: it ends only if a phase runs in the pool's child process."""
    queue = {"CELERY_QUEUE": f"prefork-{uuid.uuid4().hex[:8]}"}
    replica = cluster.replica("prefork", **queue)
    worker = Worker({**cluster.env, **queue}, tmp_path / "prefork.log", pool=["-c", "1"])
    try:
        worker.wait_ready()
        task_id = submit(replica.url, "A flashcard app for language learners")
        events = read_stream(replica.url, task_id, timeout=120).events
        assert events[-1]["event_type"] == "end", worker.log_text()[-2000:]
        children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read_text().split()
        assert len(children) == 1, f"not a prefork pool of one child: {children}"
    finally:
        worker.stop()
        replica.stop()
