"""Confirmation, revision, cancel, timeouts and the /api/tasks history, against real servers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.api import TERMINAL, event_types, run_task, wait_finished, wait_status
from tests.support.api import stream_until as until
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def lc_server(start_server):
    return start_server(max_revision_rounds=2)


@pytest.fixture
def c(lc_server):
    with httpx.Client(base_url=lc_server.url, timeout=30) as client:
        yield client


def test_approve_after_the_analysis_runs_the_rest_of_the_crew(lc_server, c):
    task_id = run_task(c, "Build a recipe site with ratings", skip_confirmation=False)
    waiting = until(lc_server.url, task_id, "awaiting_confirmation")
    prompt = waiting.events[-1]
    assert prompt["agent_name"] == "ProductManager"
    assert f"POST /api/task/{task_id}/confirm" in prompt["content"] and "REQ-1" in prompt["content"]
    assert prompt["metadata"]["revision_rounds_left"] == 2
    status = c.get(f"/api/task/{task_id}/status").json()
    assert status["status"] == "awaiting_confirmation" and status["completed_steps"] == 1
    assert c.get("/healthz").json()["busy_workers"] == 0  # waiting holds no worker thread

    r = c.post(f"/api/task/{task_id}/confirm", json={"approved": True})
    assert r.status_code == 200 and r.json()["status"] == "running"
    full = read_stream(lc_server.url, task_id)
    kinds = event_types(full.events)
    assert kinds.index("awaiting_confirmation") < kinds.index("confirmed") < kinds.index("end")
    assert full.sequences == list(range(1, len(kinds) + 1))
    confirmed = full.events[kinds.index("confirmed")]
    assert confirmed["content"] == "Approved" and confirmed["metadata"]["approved"] is True
    starts = [e["agent_name"] for e in full.events if e["event_type"] == "agent_start"]
    assert starts == ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]
    assert wait_finished(c, task_id)["status"] == "succeeded"


def test_request_changes_then_approve(lc_server, c):
    task_id = run_task(c, "Build a notes app with tags", skip_confirmation=False)
    first = until(lc_server.url, task_id, "awaiting_confirmation").events
    r = c.post(f"/api/task/{task_id}/confirm", json={"approved": False, "feedback": "  add offline sync  "})
    assert r.status_code == 200
    events = first + until(lc_server.url, task_id, "awaiting_confirmation", after=first[-1]["sequence"]).events
    kinds = event_types(events)
    assert kinds.count("awaiting_confirmation") == 2 and kinds.count("confirmed") == 1
    revised = events[-1]
    assert "offline sync" in revised["content"]  # the revision took the feedback in
    assert revised["metadata"]["revision_rounds_left"] == 1
    confirmed = events[kinds.index("confirmed")]
    assert confirmed["metadata"] == {"approved": False, "feedback": "add offline sync", "revision_round": 1}
    assert [e["agent_name"] for e in events if e["event_type"] == "agent_start"] == ["ProductManager", "ProductManager"]
    assert c.post(f"/api/task/{task_id}/confirm", json={"approved": True}).status_code == 200
    assert wait_finished(c, task_id)["status"] == "succeeded"
    result = c.get(f"/api/task/{task_id}/result").json()
    assert "offline sync" in result["deliverables"]["requirements_analysis"]
    assert "offline sync" in result["deliverables"]["test_plan"]


def test_confirm_errors_say_what_to_do(lc_server, c):
    assert c.post("/api/task/00000000-0000-4000-8000-000000000000/confirm", json={"approved": True}).status_code == 404
    task_id = run_task(c, "Build a chat app", skip_confirmation=False)
    until(lc_server.url, task_id, "awaiting_confirmation")
    r = c.post(f"/api/task/{task_id}/confirm", json={"approved": False, "feedback": "   "})
    assert r.status_code == 422 and "feedback" in r.json()["detail"]
    assert c.post(f"/api/task/{task_id}/confirm", json={"feedback": "x"}).status_code == 422
    for round_ in (1, 2):
        assert (
            c.post(f"/api/task/{task_id}/confirm", json={"approved": False, "feedback": f"change {round_}"}).status_code
            == 200
        )
        wait_status(c, task_id, "awaiting_confirmation")
    r = c.post(f"/api/task/{task_id}/confirm", json={"approved": False, "feedback": "again"})
    assert r.status_code == 409 and "MAX_REVISION_ROUNDS=2" in r.json()["detail"]
    assert c.post(f"/api/task/{task_id}/confirm", json={"approved": True}).status_code == 200
    r = c.post(f"/api/task/{task_id}/confirm", json={"approved": True})
    assert r.status_code == 409 and "awaiting_confirmation" in r.json()["detail"]
    wait_finished(c, task_id)
    assert c.post(f"/api/task/{task_id}/confirm", json={"approved": True}).status_code == 409


def test_no_answer_within_the_confirmation_timeout_cancels(start_server):
    server = start_server(confirmation_timeout_s=1)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a timer", skip_confirmation=False)
        until(server.url, task_id, "awaiting_confirmation")
        status = wait_status(c, task_id, "cancelled", timeout=10)
        assert "CONFIRMATION_TIMEOUT_S=1s" in read_stream(server.url, task_id).events[-1]["content"]
        assert status["finished_at"]


def test_waiting_tasks_do_not_block_others(start_server):
    server = start_server(max_concurrent_tasks=1)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        waiting = run_task(c, "Build a poll app", skip_confirmation=False)
        until(server.url, waiting, "awaiting_confirmation")
        other = run_task(c, "Build a quiz app", skip_confirmation=True)
        assert wait_finished(c, other)["status"] == "succeeded"
        assert c.get(f"/api/task/{waiting}/status").json()["status"] == "awaiting_confirmation"


def test_cancel_while_tokens_stream_stops_the_worker_within_two_seconds(start_server):
    server = start_server(scripted_token_delay_ms=20)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build an issue tracker")
        read_stream(server.url, task_id, max_messages=30)  # tokens are flowing
        assert c.get("/healthz").json()["busy_workers"] == 1
        started = time.monotonic()
        r = c.post(f"/api/task/{task_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        wait_for(
            lambda: c.get("/healthz").json()["busy_workers"] == 0, 10, interval=0.01, message="the crew thread to stop"
        )
        stopped_after = time.monotonic() - started
        assert stopped_after < 2.0, f"the crew thread ran on for {stopped_after:.2f}s"
        events = read_stream(server.url, task_id).events
        assert events[-1]["event_type"] == "cancelled"
        assert sum(e["event_type"] in TERMINAL for e in events) == 1
        assert c.get(f"/api/task/{task_id}/status").json()["status"] == "cancelled"
        # Repeating is harmless; the log does not grow.
        assert c.post(f"/api/task/{task_id}/cancel").json()["status"] == "cancelled"
        assert len(read_stream(server.url, task_id).events) == len(events)


def test_cancel_a_waiting_task_and_after_finish(lc_server, c):
    waiting = run_task(c, "Build a wiki", skip_confirmation=False)
    until(lc_server.url, waiting, "awaiting_confirmation")
    assert c.post(f"/api/task/{waiting}/cancel").json()["status"] == "cancelled"
    assert c.post(f"/api/task/{waiting}/confirm", json={"approved": True}).status_code == 409
    done = run_task(c, "Build a forum")
    wait_finished(c, done)
    r = c.post(f"/api/task/{done}/cancel")
    assert r.status_code == 409 and "already succeeded" in r.json()["detail"]
    assert c.post("/api/task/00000000-0000-4000-8000-000000000000/cancel").status_code == 404


def test_a_task_past_its_timeout_fails_with_an_error_event(start_server):
    server = start_server(scripted_token_delay_ms=10, task_timeout_s=1)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a large ERP")
        status = wait_status(c, task_id, "failed", timeout=15)
        assert "TASK_TIMEOUT_S=1s" in status["error"]
        events = read_stream(server.url, task_id).events
        assert events[-1]["event_type"] == "error" and events[-1]["content"] == status["error"]
        wait_for(lambda: c.get("/healthz").json()["busy_workers"] == 0, 5, message="the timed-out crew to stop")


def test_concurrent_confirm_and_cancel_leave_one_consistent_outcome(lc_server, c):
    for _ in range(6):
        task_id = run_task(c, "Build a booking system", skip_confirmation=False)
        until(lc_server.url, task_id, "awaiting_confirmation")
        barrier = threading.Barrier(2)

        def call(path: str, body: dict | None = None, barrier=barrier, task_id=task_id) -> int:
            with httpx.Client(base_url=lc_server.url, timeout=30) as own:
                barrier.wait()
                return own.post(f"/api/task/{task_id}/{path}", json=body).status_code

        with ThreadPoolExecutor(2) as pool:
            confirm = pool.submit(call, "confirm", {"approved": True})
            cancel = pool.submit(call, "cancel")
            codes = (confirm.result(), cancel.result())
        assert codes in {(200, 200), (409, 200), (200, 409)}, codes
        final = wait_status(c, task_id, "cancelled") if codes[1] == 200 else wait_finished(c, task_id)
        events = read_stream(lc_server.url, task_id).events
        assert sum(e["event_type"] in TERMINAL for e in events) == 1
        terminal = events[-1]["event_type"]
        assert {"cancelled": "cancelled", "end": "succeeded", "error": "failed"}[terminal] == final["status"]
        assert event_types(events).count("confirmed") == (1 if codes[0] == 200 else 0)


def test_task_history_lists_newest_first_with_filters_and_pages(lc_server, c):
    ids = [run_task(c, f"Build history app {n}") for n in range(3)]
    for task_id in ids:
        wait_finished(c, task_id)
    listed = c.get("/api/tasks", params={"limit": 2}).json()
    assert [t["task_id"] for t in listed["tasks"]] == ids[::-1][:2]
    page2 = c.get("/api/tasks", params={"limit": 1, "before": listed["next_before"]}).json()
    assert page2["tasks"][0]["task_id"] == ids[0]
    succeeded = c.get("/api/tasks", params={"status": "succeeded", "limit": 200}).json()["tasks"]
    assert set(ids) <= {t["task_id"] for t in succeeded}
    assert all(t["status"] == "succeeded" for t in succeeded)
    assert c.get("/api/tasks", params={"status": "nonsense"}).status_code == 422
    assert c.get("/api/tasks", params={"limit": 0}).status_code == 422
