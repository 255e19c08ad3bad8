"""A request that fails half-way leaves nothing half-done, on real servers with real parts failing
at the exact step: Redis refusing to open a new task's log (a proxy that cuts the one command),
or a Celery broker that refuses connections. The client gets 503 with Retry-After and what to do;
nothing of the request runs later; a retry with the same Idempotency-Key does the work once."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.api import event_types, stream_until, wait_finished, wait_status
from tests.support.real_services import ensure_redis, fresh_postgres_database
from tests.support.redis_faults import RedisFaults
from tests.support.server_process import Server, free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.system
BODY = {"user_requirement": "A todo app", "skip_confirmation": True}
OPEN_LOG = "HSETNX"  # the one command that opens a new task's log in Redis (RedisEventBackend.open)


def _tasks(c: httpx.Client) -> dict[str, str]:
    return {t["task_id"]: t["status"] for t in c.get("/api/tasks", params={"limit": 200}).json()["tasks"]}


@pytest.fixture
def faults() -> Iterator[RedisFaults]:
    proxy = RedisFaults()
    yield proxy
    proxy.close()


def test_a_submission_whose_log_redis_fails_to_open_is_answered_503_and_its_retry_starts_one_task(
    start_server: Callable[..., Server], faults: RedisFaults
):
    server = start_server(event_backend="redis", redis_url=faults.url, task_lease_s=3)
    key = str(uuid.uuid4())
    with httpx.Client(base_url=server.url, timeout=60) as c:
        faults.fail(OPEN_LOG, "cut")
        refused = c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        detail = refused.json()["detail"]
        assert detail.startswith("The task could not be started: the event log (Redis) failed (ConnectionError).")
        assert "Retry in a few seconds, with the same Idempotency-Key if you sent one" in detail
        assert faults.hits >= 1
        [(failed, status)] = _tasks(c).items()
        assert status == "failed"
        error = c.get(f"/api/task/{failed}/status").json()["error"]
        assert error.startswith("Not started: the event log (Redis) failed (ConnectionError) as it was submitted")

        faults.heal()
        retried = c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key})
        assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers
        started = retried.json()["task_id"]
        assert started != failed
        assert wait_finished(c, started)["status"] == "succeeded"
        again = c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key})
        assert again.headers["idempotent-replayed"] == "true" and again.json()["task_id"] == started

        # The failed one never runs: a lease (3 s) and its reaping pass later it is as it was,
        # and its log is its error alone (written from the record once Redis could take it).
        time.sleep(4)
        assert _tasks(c) == {failed: "failed", started: "succeeded"}
        log = stream_until(server.url, failed, "error", timeout=30).events
        assert event_types(log) == ["error"] and log[0]["content"] == error


def test_a_retry_while_the_first_request_hangs_on_redis_gets_409_with_retry_after(
    start_server: Callable[..., Server], faults: RedisFaults
):
    server = start_server(event_backend="redis", redis_url=faults.url)
    key = str(uuid.uuid4())
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=60) as c:
        faults.fail(OPEN_LOG, "stall")  # Redis hangs as the first request opens its task's log
        first = threading.Thread(
            target=lambda: answers.append(c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key}))
        )
        first.start()
        wait_for(lambda: faults.hits == 1, 30, message="the first request to reach Redis")
        busy = c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key})
        assert busy.status_code == 409
        assert busy.headers["retry-after"] == "2"
        assert busy.json()["detail"].startswith("A request with this Idempotency-Key is still being worked on")
        faults.heal()  # its connection is reset: the first request fails now
        first.join(30)
        assert answers[0].status_code == 503
        retried = c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key})
        assert retried.status_code == 202
        assert wait_finished(c, retried.json()["task_id"])["status"] == "succeeded"
        assert sorted(_tasks(c).values()) == ["failed", "succeeded"]


@pytest.fixture
def broker_down_and_up(start_server: Callable[..., Server]) -> Iterator[tuple[Server, Server]]:
    """Two API replicas on one PostgreSQL and Redis: `down` sends phases to a Celery broker that
    refuses connections, `up` runs them on its own threads."""
    redis_url = ensure_redis()
    with fresh_postgres_database() as database_url:
        shared = {"event_backend": "redis", "redis_url": redis_url, "database_url": database_url}
        up = start_server(**shared, scripted_token_delay_ms=1)
        down = start_server(**shared, executor="celery", celery_broker_url=f"redis://127.0.0.1:{free_port()}/0")
        yield down, up
        down.stop()
        up.stop()


def test_a_submission_the_broker_refuses_is_ended_and_answered_503(broker_down_and_up: tuple[Server, Server]):
    down, up = broker_down_and_up
    key = str(uuid.uuid4())
    with httpx.Client(base_url=up.url, timeout=60) as on_up, httpx.Client(base_url=down.url, timeout=60) as on_down:
        refused = on_down.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        detail = refused.json()["detail"]
        assert detail.startswith(
            "The task could not be started: the task queue (the Celery broker) failed (OperationalError)."
        )
        assert "operators: check CELERY_BROKER_URL (or REDIS_URL)" in detail
        [(failed, status)] = _tasks(on_up).items()
        assert status == "failed"
        log = stream_until(up.url, failed, "error", timeout=30).events
        assert event_types(log) == ["error"]
        assert log[0]["content"].startswith("Not started: the task queue (the Celery broker) failed (OperationalError)")

        # The client retries with the same key, on the replica whose crews run.
        retried = on_up.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key})
        assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers
        assert wait_finished(on_up, retried.json()["task_id"])["status"] == "succeeded"
        assert sorted(_tasks(on_up).values()) == ["failed", "succeeded"]


def test_a_confirmation_the_broker_refuses_is_undone_and_its_retry_applies_once(
    broker_down_and_up: tuple[Server, Server],
):
    down, up = broker_down_and_up
    key = str(uuid.uuid4())
    with httpx.Client(base_url=up.url, timeout=60) as on_up, httpx.Client(base_url=down.url, timeout=60) as on_down:
        task_id = on_up.post("/api/run_task", json={**BODY, "skip_confirmation": False}).json()["task_id"]
        asked = stream_until(up.url, task_id, "awaiting_confirmation").events[-1]
        before = wait_status(on_up, task_id, "awaiting_confirmation")

        refused = on_down.post(
            f"/api/task/{task_id}/confirm", json={"approved": True}, headers={"Idempotency-Key": key}
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["detail"].startswith(
            "Your answer could not be carried out: the task queue (the Celery broker) failed (OperationalError). "
            "It was undone: the task awaits your confirmation again."
        )
        after = wait_status(on_up, task_id, "awaiting_confirmation")
        assert {**after, "last_sequence": 0} == {**before, "last_sequence": 0}  # as it was, asked again:
        again = stream_until(up.url, task_id, "awaiting_confirmation", after=asked["sequence"]).events
        assert event_types(again) == ["confirmed", "awaiting_confirmation"]
        assert again[-1]["content"] == asked["content"]
        assert again[-1]["metadata"]["not_applied"] == (
            "The answer was undone: the task queue (the Celery broker) failed (OperationalError)."
        )

        retried = on_up.post(f"/api/task/{task_id}/confirm", json={"approved": True}, headers={"Idempotency-Key": key})
        assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
        run = stream_until(up.url, task_id, "end").events
        assert event_types(run).count("confirmed") == 2  # the undone one, then the one applied
        assert event_types(run).count("agent_start") == 4  # the analysis once, then the three others
