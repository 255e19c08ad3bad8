"""Idempotency-Key on run_task, confirm and cancel, on real servers: a retry gets the first
answer and no second task, from any replica; a key reused for another request is refused."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.support.api import stream_until, wait_status
from tests.support.real_services import fresh_postgres_database
from tests.support.server_process import Server

BODY = {"user_requirement": "A todo app", "skip_confirmation": True}


def _tasks(c: httpx.Client) -> list[str]:
    return [t["task_id"] for t in c.get("/api/tasks", params={"limit": 200}).json()["tasks"]]


def test_a_retried_run_task_returns_the_first_answer_and_starts_nothing(start_server: Callable[..., Server]):
    server = start_server()
    key = str(uuid.uuid4())
    with httpx.Client(base_url=server.url, timeout=30) as c:
        first = c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key})
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        # The same request, written differently (key order, whitespace around the requirement).
        again = c.post(
            "/api/run_task",
            json={"skip_confirmation": True, "user_requirement": "  A todo app\n"},
            headers={"Idempotency-Key": key},
        )
        assert again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert _tasks(c) == [first.json()["task_id"]]

        other = c.post("/api/run_task", json={**BODY, "user_requirement": "A wiki"}, headers={"Idempotency-Key": key})
        assert other.status_code == 422
        assert "already used for a different request" in other.json()["detail"]
        # Without a key nothing changes: every request is a new task.
        assert c.post("/api/run_task", json=BODY).json()["task_id"] != first.json()["task_id"]
        assert c.post("/api/run_task", json=BODY).json()["task_id"] != first.json()["task_id"]
        assert len(_tasks(c)) == 3


def test_a_key_names_one_request_on_one_route_for_one_caller(start_server: Callable[..., Server]):
    server = start_server(api_keys="alice-key-000000,bob-key-0000000")
    alice = {"Authorization": "Bearer alice-key-000000"}
    bob = {"Authorization": "Bearer bob-key-0000000"}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        a = c.post("/api/run_task", json=BODY, headers={**alice, "Idempotency-Key": "k1"})
        b = c.post("/api/run_task", json=BODY, headers={**bob, "Idempotency-Key": "k1"})
        assert a.status_code == b.status_code == 202
        assert a.json()["task_id"] != b.json()["task_id"]  # each caller has their own keys
        task_id = a.json()["task_id"]
        # The same key on another route is another request.
        cancel = c.post(f"/api/task/{task_id}/cancel", headers={**alice, "Idempotency-Key": "k1"})
        assert cancel.status_code == 422 and "different request" in cancel.json()["detail"]


def test_confirm_and_cancel_retries_repeat_their_first_answer(start_server: Callable[..., Server]):
    server = start_server(scripted_token_delay_ms=2)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = c.post("/api/run_task", json={**BODY, "skip_confirmation": False}).json()["task_id"]
        paused_at = stream_until(server.url, task_id, "awaiting_confirmation").sequences[-1]
        answer = {"approved": False, "feedback": "Add offline mode"}
        first = c.post(f"/api/task/{task_id}/confirm", json=answer, headers={"Idempotency-Key": "c-1"})
        assert first.status_code == 200
        again = c.post(f"/api/task/{task_id}/confirm", json=answer, headers={"Idempotency-Key": "c-1"})
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        # One revision round, not two: one `confirmed` event, then the revised analysis.
        revision = stream_until(server.url, task_id, "awaiting_confirmation", after=paused_at).events
        assert [e["event_type"] for e in revision].count("confirmed") == 1
        assert wait_status(c, task_id, "awaiting_confirmation")["status"] == "awaiting_confirmation"

        cancel = c.post(f"/api/task/{task_id}/cancel", headers={"Idempotency-Key": "x-1"})
        assert cancel.status_code == 200
        retried = c.post(f"/api/task/{task_id}/cancel", headers={"Idempotency-Key": "x-1"})
        assert retried.status_code == 200 and retried.json() == cancel.json()
        assert retried.headers["idempotent-replayed"] == "true"


def test_refusals_are_not_remembered_so_a_retry_runs_again(start_server: Callable[..., Server]):
    server = start_server(max_queued_tasks=1, max_concurrent_tasks=1, scripted_token_delay_ms=50)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        running = c.post("/api/run_task", json=BODY).json()["task_id"]
        wait_status(c, running, "running")
        queued = c.post("/api/run_task", json=BODY).json()["task_id"]
        full = c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": "later"})
        assert full.status_code == 429
        c.post(f"/api/task/{queued}/cancel")
        c.post(f"/api/task/{running}/cancel")
        retried = c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": "later"})
        assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers


@pytest.mark.parametrize("key", ["", "é", "x" * 256, "tab\there"])
def test_an_unusable_key_is_refused_naming_the_header(server: Server, key: str):
    r = httpx.post(
        server.url + "/api/run_task", json=BODY, headers={b"Idempotency-Key": key.encode("latin-1")}, timeout=30
    )
    assert r.status_code == 422
    assert r.json()["detail"].startswith("Idempotency-Key must be 1 to 255 visible ASCII characters")


@pytest.mark.system
def test_replicas_sharing_a_database_start_one_task_for_concurrent_retries(start_server: Callable[..., Server]):
    with fresh_postgres_database() as url:
        replicas = [start_server(database_url=url, instance_id=f"replica-{i}") for i in range(2)]
        key = str(uuid.uuid4())
        answers: list[httpx.Response] = []

        def send(server: Server) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                for _ in range(5):
                    answers.append(c.post("/api/run_task", json=BODY, headers={"Idempotency-Key": key}))

        threads = [threading.Thread(target=send, args=(replica,)) for replica in replicas for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = [a for a in answers if a.status_code == 202]
        # Some retries may arrive while the first is still being worked on: 409, retry later.
        assert {a.status_code for a in answers} <= {202, 409}, [a.text for a in answers]
        assert len({a.json()["task_id"] for a in accepted}) == 1
        assert sum("idempotent-replayed" not in a.headers for a in accepted) == 1
        with httpx.Client(base_url=replicas[0].url, timeout=30) as c:
            assert _tasks(c) == [accepted[0].json()["task_id"]]
        for replica in replicas:
            replica.stop()
