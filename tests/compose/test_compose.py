"""docker-compose.yml brought up for real, every service of every profile, and used as users do.

The engine is podman (runc, netavark) behind its Docker-compatible socket, driven by Docker
Compose v2 and the docker CLI; the official base images are replaced by stand-ins built from
Debian packages (deploy/compose/engine.sh, docs/operations.md "Deployment" says what differs). Our image is
built from our Dockerfile for remote models only (LOCAL_MODEL=false); the crew runs on the
scripted test double (LLM_PROVIDER=scripted), slowed down so that a run lasts seconds.

One compose project for the whole module: built and started once, `down -v` at the end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from delivery.client import DeliveryClient, Event
from tests.support.compose import Container, Stack, engine_down, engine_up, get_json
from tests.support.sse_client import Message, StreamResult, read_stream
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(1800)]

EXPECTED = {"redis": 1, "postgres": 1, "api": 2, "worker": 2, "nginx": 1, "prometheus": 1}
SETTINGS = {
    "LOCAL_MODEL": "false",
    "LLM_PROVIDER": "scripted",
    "SCRIPTED_TOKEN_DELAY_MS": "15",
    # A killed worker's phase is taken over within seconds. (With 6 s, a live worker's lease ran out
    # during the rolling restart on 2 cores: its watchdog renewed late while a neighbour restarted.)
    "TASK_LEASE_S": "15",
    "RATE_LIMIT": "100000/minute",
    "RATE_LIMIT_RUN_TASK": "100000/minute",
}
REQUIREMENT = "A to-do list web app: users add, complete and delete tasks, with due dates and reminders."
DELIVERABLES = {"requirements_analysis", "test_plan", "technical_design", "delivery_review"}

# What earlier tests leave for later ones (task ids and the events their viewers saw).
HISTORY: dict[str, list[tuple[str | None, str | None, str]]] = {}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    started = time.monotonic()
    engine_env = engine_up()
    engine_ready = time.monotonic()
    s = Stack(engine_env, SETTINGS)
    try:
        s.compose("build", "api", timeout=1500)
        built = time.monotonic()
        s.compose("up", "-d", "--no-build", "--scale", "api=2", "--scale", "worker=2", timeout=600)
        s.wait_healthy(EXPECTED)
        print(
            f"\ncompose stack: engine {engine_ready - started:.0f}s, build {built - engine_ready:.0f}s, "
            f"up and healthy {time.monotonic() - built:.0f}s"
        )
        yield s
    finally:
        try:
            try:
                s.save_logs()
            finally:
                s.compose("down", "-v", "--remove-orphans", "-t", "30", check=False, timeout=300)
            left = s.containers(all=True)
            volumes = s.docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={s.project}")
        finally:
            engine_down()  # the socket service and health timer this run started (or found)
        assert not left, f"containers left after `compose down -v`: {[c.name for c in left]}"
        assert not volumes.stdout.split(), f"volumes left after `compose down -v`: {volumes.stdout}"


def run_task(base_url: str, requirement: str = REQUIREMENT) -> str:
    response = httpx.post(
        base_url + "/api/run_task", json={"user_requirement": requirement, "skip_confirmation": True}, timeout=30
    )
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["task_id"])


def as_tuples(result: StreamResult) -> list[tuple[str | None, str | None, str]]:
    return [(m.id, m.event, m.data) for m in result.messages]


def assert_complete(result: StreamResult) -> None:
    """A whole run: 200, sequences 1..N once each, exactly one terminal event and it is `end`."""
    assert result.status == 200, result.body
    types = [m.event for m in result.messages]
    assert types and types[-1] == "end", types[-5:]
    assert sum(t in ("end", "error", "cancelled") for t in types) == 1, types
    assert result.sequences == list(range(1, len(result.messages) + 1))
    assert [m.id for m in result.messages] == [str(s) for s in result.sequences]


def event_types(messages: list[Message]) -> list[str | None]:
    return [m.event for m in messages]


# -- the tests, in the order they run --------------------------------------------------------------


def test_every_service_of_every_profile_is_running_and_its_healthcheck_passes(stack: Stack) -> None:
    containers = stack.wait_healthy(EXPECTED)
    for c in containers:
        assert c.health == "healthy", c.name
        last = c.info["State"]["Health"]["Log"][-1]
        assert last["ExitCode"] == 0, (c.name, last)
    # what the checks asked, asked from here
    status, body = get_json(stack.nginx_url + "/readyz")
    assert status == 200 and body["status"] == "ready", body
    urls = stack.api_urls()
    assert len(urls) == 2
    for url in urls:
        assert httpx.get(url + "/livez", timeout=5).status_code == 200
        status, body = get_json(url + "/readyz")
        assert status == 200 and body["status"] == "ready", body
        status, body = get_json(url + "/healthz")
        assert status == 200 and body["status"] == "ok", body
    assert httpx.get(stack.prometheus_url + "/-/ready", timeout=5).status_code == 200


def test_a_task_streams_through_nginx_to_its_end_and_every_replica_replays_it(stack: Stack) -> None:
    task_id = run_task(stack.nginx_url)
    replicas = stack.api_urls()
    # viewers from the start: one through Nginx, one on each replica directly
    with ThreadPoolExecutor(3) as pool:
        viewers = [pool.submit(read_stream, url, task_id, timeout=120) for url in [stack.nginx_url, *replicas]]
        results = [v.result(timeout=300) for v in viewers]
    for result in results:
        assert_complete(result)
    assert as_tuples(results[1]) == as_tuples(results[0])
    assert as_tuples(results[2]) == as_tuples(results[0])
    types = event_types(results[0].messages)
    assert types[0] == "start" and types.count("step_end") == 4, types

    status, body = get_json(f"{stack.nginx_url}/api/task/{task_id}/status")
    assert status == 200 and body["status"] == "succeeded", body
    status, body = get_json(f"{stack.nginx_url}/api/task/{task_id}/result")
    assert status == 200, body
    assert set(body["deliverables"]) == DELIVERABLES
    assert all(len(text) > 200 for text in body["deliverables"].values())
    # a viewer after the end, on the other replica than the live one, gets the same log
    for url in replicas:
        assert as_tuples(read_stream(url, task_id, timeout=60)) == as_tuples(results[0])
    HISTORY[task_id] = as_tuples(results[0])


def targets(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    status, body = get_json(stack.prometheus_url + "/api/v1/targets")
    assert status == 200, body
    jobs: dict[str, list[dict[str, Any]]] = {}
    for target in body["data"]["activeTargets"]:
        jobs.setdefault(target["labels"]["job"], []).append(target)
    return jobs


def test_prometheus_scrapes_both_api_replicas_and_both_workers(stack: Stack) -> None:
    def all_up() -> dict[str, list[dict[str, Any]]] | None:
        jobs = targets(stack)
        ok = all(
            len(jobs.get(job, [])) == 2 and all(t["health"] == "up" for t in jobs[job]) for job in ("api", "worker")
        )
        return jobs if ok else None

    jobs = wait_for(all_up, 120, interval=2, message=lambda: f"api and worker targets up: {targets(stack)}")
    assert {t["labels"]["instance"].split(":")[1] for t in jobs["api"]} == {"8000"}
    assert {t["labels"]["instance"].split(":")[1] for t in jobs["worker"]} == {"9100"}


def worker_running(stack: Stack, task_id: str) -> Container | None:
    """The worker container running one of the task's phases now (Celery's own answer)."""
    workers = stack.containers("worker")
    answer = stack.docker(
        "exec", workers[0].id, "celery", "-A", "worker", "inspect", "active", "-j", "--timeout", "2", check=False
    )
    try:
        active = json.loads(answer.stdout[answer.stdout.index("{") :])
    except ValueError:
        return None
    for node, tasks in active.items():
        if any(task_id in t["args"] for t in tasks):
            return next((w for w in workers if node == f"celery@{w.hostname}"), None)
    return None


def test_killing_the_worker_that_runs_a_task_loses_nothing(stack: Stack) -> None:
    task_id = run_task(stack.nginx_url)
    with ThreadPoolExecutor(1) as pool:
        viewer = pool.submit(read_stream, stack.nginx_url, task_id, timeout=180)
        # well into the run: the first agent finished, the next phase mid-generation on a worker
        wait_for(
            lambda: (get_json(f"{stack.nginx_url}/api/task/{task_id}/status")[1].get("completed_steps") or 0) >= 1,
            120,
            interval=0.3,
            message="the first agent to finish",
        )
        victim = wait_for(lambda: worker_running(stack, task_id), 60, interval=0.2, message="a worker running the task")
        stack.docker("kill", victim.id)
        killed_at = time.monotonic()
        stack.docker("start", victim.id)
        stack.wait_container_healthy(victim.id)
        result = viewer.result(timeout=300)
    assert_complete(result)
    resumed = [m.json for m in result.messages if m.event == "resumed"]
    assert len(resumed) == 1, resumed
    assert victim.hostname in resumed[0]["content"] + str(resumed[0].get("metadata")), resumed[0]
    status, body = get_json(f"{stack.nginx_url}/api/task/{task_id}/status")
    assert status == 200 and body["status"] == "succeeded" and body["attempts"] >= 2, body
    # and a viewer who comes later gets the same log
    assert as_tuples(read_stream(stack.nginx_url, task_id, timeout=60)) == as_tuples(result)
    print(f"\nworker killed; task resumed and ended {time.monotonic() - killed_at:.0f}s later")
    HISTORY[task_id] = as_tuples(result)
    stack.wait_healthy(EXPECTED)


def test_compose_down_then_up_keeps_the_task_history(stack: Stack) -> None:
    assert HISTORY, "earlier tests ran no task"
    stack.compose("down", "-t", "30", timeout=300)
    assert not stack.containers(all=True)
    volumes = stack.docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.project}")
    assert len(volumes.stdout.split()) == 2, volumes.stdout  # redis-data and postgres-data are kept
    stack.compose("up", "-d", "--no-build", "--scale", "api=2", "--scale", "worker=2", timeout=600)
    stack.wait_healthy(EXPECTED)

    status, body = get_json(stack.nginx_url + "/api/tasks?limit=100")
    assert status == 200, body
    listed = {t["task_id"]: t for t in body["tasks"]}
    for task_id, events in HISTORY.items():
        assert task_id in listed and listed[task_id]["status"] == "succeeded", body
        for url in [stack.nginx_url, *stack.api_urls()]:
            assert as_tuples(read_stream(url, task_id, timeout=60)) == events


def follow(base_url: str, task_id: str) -> list[Event]:
    """A viewer as the Python client is one: across restarts it reconnects with Last-Event-ID."""
    with DeliveryClient(base_url, timeout=30) as client:
        return list(client.events(task_id))


def test_a_rolling_restart_keeps_every_task_and_every_viewers_sequence(stack: Stack) -> None:
    """Ten tasks run; the workers and the API replicas are restarted one at a time (SIGTERM with
    the compose file's grace period, as `docker restart` does), each back to healthy before the
    next. Every task ends `end`; every viewer, through Nginx, reads each sequence exactly once."""
    task_ids = [run_task(stack.nginx_url, f"Inventory app {i}: stock levels, suppliers, orders.") for i in range(10)]
    with ThreadPoolExecutor(len(task_ids)) as pool:
        viewers = {t: pool.submit(follow, stack.nginx_url, t) for t in task_ids}
        wait_for(
            lambda: all(
                get_json(f"{stack.nginx_url}/api/task/{t}/status")[1]["last_sequence"] > 20 for t in task_ids[:8]
            ),
            120,
            interval=0.5,
            message="the first eight tasks to be streaming",
        )
        workers, apis = stack.containers("worker"), stack.containers("api")
        for container in (workers[0], apis[0], workers[1], apis[1]):
            started = time.monotonic()
            stack.docker("restart", "-t", "30", container.id, timeout=120)
            stopped_in = time.monotonic() - started
            stack.wait_container_healthy(container.id)
            print(
                f"\n{container.name}: restarted in {stopped_in:.1f}s, healthy after {time.monotonic() - started:.1f}s"
            )
        seen = {t: v.result(timeout=300) for t, v in viewers.items()}
    handed_back = 0
    for task_id, events in seen.items():
        types = [e.event_type for e in events]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), task_id
        assert types[-1] == "end" and "error" not in types, (task_id, types[-20:])
        resumes = [e for e in events if e.event_type == "resumed"]
        # a graceful stop hands the work back; none was lost and taken over after its lease
        assert all((e.metadata or {}).get("handed_back") for e in resumes), [e.content for e in resumes]
        handed_back += len(resumes)
        status, body = get_json(f"{stack.nginx_url}/api/task/{task_id}/status")
        assert status == 200 and body["status"] == "succeeded", body
        # what the viewer saw across the restarts is the task's one log
        replay = read_stream(stack.nginx_url, task_id, timeout=60).events
        assert [(e["sequence"], e["event_type"], e["content"]) for e in replay] == [
            (e.sequence, e.event_type, e.content) for e in events
        ]
    print(f"\nrolling restart: {handed_back} phases handed back and resumed")
    stack.wait_healthy(EXPECTED)
