"""The HTTP contract, against a real uvicorn server on the scripted provider."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.api import TERMINAL, run_task, stream_until, wait_finished, wait_status
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_run_task_accepts_and_describes_where_to_follow(client):
    r = client.post("/api/run_task", json={"user_requirement": "  Build a blog  ", "skip_confirmation": True})
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {"task_id", "status", "message", "stream_url", "status_url", "stream_token"}
    assert body["stream_token"] is None  # no API keys on this server
    assert UUID4.match(body["task_id"])
    assert body["status"] == "started"
    assert body["stream_url"] == f"/api/stream/{body['task_id']}"
    assert body["status_url"] == f"/api/task/{body['task_id']}/status"
    assert body["task_id"] in body["message"]


def test_skip_confirmation_defaults_to_false_so_the_task_waits_for_confirmation(server, client):
    r = client.post("/api/run_task", json={"user_requirement": "Build a blog"})
    assert r.status_code == 202
    task_id = r.json()["task_id"]
    waiting = stream_until(server.url, task_id, "awaiting_confirmation")
    assert "end" not in [e["event_type"] for e in waiting.events]
    assert wait_status(client, task_id, "awaiting_confirmation")["completed_steps"] == 1
    assert client.post(f"/api/task/{task_id}/cancel").json()["status"] == "cancelled"


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"user_requirement": ""}, "empty"),
        ({"user_requirement": "   \n\t "}, "empty"),
        ({"user_requirement": "x" * 20_001}, "at most 20000"),
        ({}, "Field required"),
        ({"user_requirement": 42}, "valid string"),
        ({"user_requirement": "ok", "skip_confirmation": "maybe"}, "valid boolean"),
    ],
)
def test_bad_requirements_get_422_with_a_message(client, payload, fragment):
    r = client.post("/api/run_task", json=payload)
    assert r.status_code == 422
    assert fragment in r.text


@pytest.mark.parametrize(
    ("path", "body", "unknown", "allowed"),
    [
        (
            "/api/run_task",
            {"user_requirement": "A diary", "skipConfirmation": True},
            "'skipConfirmation'",
            "user_requirement, skip_confirmation, budget, webhook_url, webhook_steps, priority",
        ),
        (
            "/api/run_task",
            {"user_requirement": "A diary", "budget": {"max_tokens": 9, "maxCost": 1}},
            "'maxCost'",
            "max_tokens, max_cost",
        ),
        ("/api/task/{id}/confirm", {"approved": True, "comment": "ok"}, "'comment'", "approved, feedback"),
    ],
    ids=["run_task", "budget", "confirm"],
)
def test_an_unknown_field_is_refused_naming_it_and_the_fields_allowed(client, path, body, unknown, allowed):
    """A misspelt option must not be dropped in silence (the task would then wait for a
    confirmation its client thinks it skipped): 422, and nothing is created or changed."""
    before = len(client.get("/api/tasks").json()["tasks"])
    waiting = run_task(client, skip_confirmation=False) if "{id}" in path else ""
    if waiting:
        wait_status(client, waiting, "awaiting_confirmation")
    r = client.post(path.format(id=waiting), json=body)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert f"unknown field(s) {unknown}; this body takes only: {allowed}" in error["msg"]
    assert len(client.get("/api/tasks").json()["tasks"]) == before + (1 if waiting else 0)
    if waiting:
        assert client.get(f"/api/task/{waiting}/status").json()["status"] == "awaiting_confirmation"


def test_requirement_of_exactly_the_limit_is_accepted(client):
    assert client.post("/api/run_task", json={"user_requirement": "y" * 20_000}).status_code == 202


@pytest.mark.parametrize("path", ["/api/stream/{id}", "/api/task/{id}/status", "/api/task/{id}/result"])
def test_unknown_task_is_404_json(client, path):
    task_id = str(uuid.uuid4())
    r = client.get(path.format(id=task_id))
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    assert task_id in r.json()["detail"]
    # and nothing was created by asking
    listed = client.get("/api/streams").json()
    assert task_id not in {s["task_id"] for s in listed["active"] + listed["finished"]}


def test_status_reports_progress_and_final_state(client):
    task_id = run_task(client)
    status = wait_finished(client, task_id)
    assert status["status"] == "succeeded"
    assert status["completed_steps"] == 4 and status["total_steps"] == 4
    assert status["current_agent"] is None and status["error"] is None
    assert status["started_at"] and status["finished_at"] >= status["started_at"]
    events = read_stream(client.base_url.__str__(), task_id).events
    # The status turns final just before the terminal event is stored: asked after the stream
    # ended, it counts every event.
    assert status["last_sequence"] in (len(events) - 1, len(events))
    assert client.get(f"/api/task/{task_id}/status").json()["last_sequence"] == len(events) == events[-1]["sequence"]


def test_result_has_the_four_deliverables_in_the_requirement_language(client):
    task_id = run_task(client, "开发一个图书管理系统,支持借书和还书")
    wait_finished(client, task_id)
    r = client.get(f"/api/task/{task_id}/result")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "succeeded" and body["language"] == "zh"
    docs = body["deliverables"]
    assert set(docs) == {"requirements_analysis", "test_plan", "technical_design", "delivery_review"}
    assert docs["requirements_analysis"].count("REQ-") >= 2
    assert "借书" in docs["requirements_analysis"] and "需求分析" in docs["requirements_analysis"]
    assert "测试计划" in docs["test_plan"] and "技术方案" in docs["technical_design"]
    assert "scripted" in docs["delivery_review"]  # the test double labels its output


def test_english_requirement_gives_english_deliverables(client):
    task_id = run_task(client, "Build an inventory tracker with barcode scanning")
    wait_finished(client, task_id)
    body = client.get(f"/api/task/{task_id}/result").json()
    assert body["language"] == "en"
    assert body["deliverables"]["test_plan"].count("# Test plan") == 1


def test_result_is_409_while_running(slow_server):
    with httpx.Client(base_url=slow_server.url, timeout=30) as c:
        task_id = run_task(c)
        r = c.get(f"/api/task/{task_id}/result")
        assert r.status_code == 409
        assert "GET /api/stream/" in r.json()["detail"]
        wait_finished(c, task_id)
        assert c.get(f"/api/task/{task_id}/result").status_code == 200


def test_streams_lists_active_with_subscribers_then_finished(slow_server):
    import threading

    with httpx.Client(base_url=slow_server.url, timeout=30) as c:
        task_id = run_task(c)
        readers = [threading.Thread(target=read_stream, args=(slow_server.url, task_id)) for _ in range(2)]
        for t in readers:
            t.start()

        def active_entry() -> dict | None:
            entry = {s["task_id"]: s for s in c.get("/api/streams").json()["active"]}.get(task_id)
            return entry if entry and entry["subscribers"] == 2 else None

        entry = wait_for(active_entry, 10, message="two subscribers of the running task")
        assert not entry["closed"]
        for t in readers:
            t.join(60)
        status = wait_finished(c, task_id)
        finished = {s["task_id"]: s for s in c.get("/api/streams").json()["finished"]}
        assert finished[task_id]["closed"] and finished[task_id]["subscribers"] == 0
        assert finished[task_id]["last_sequence"] == status["last_sequence"]


def test_health_docs_and_test_ui(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["provider"] == "scripted:test-double"
    schema = client.get("/openapi.json").json()
    for path in [
        "/api/run_task",
        "/api/stream/{task_id}",
        "/api/task/{task_id}/status",
        "/api/task/{task_id}/result",
        "/api/streams",
        "/healthz",
    ]:
        assert path in schema["paths"], path
    for model in ["RunTaskRequest", "RunTaskResponse", "TaskStatusResponse", "TaskResultResponse", "StreamList"]:
        assert model in schema["components"]["schemas"], model
    assert client.get("/docs").status_code == 200
    ui = client.get("/test-ui")
    assert ui.status_code == 200 and '<script src="/static/test_ui.js" defer>' in ui.text
    assert "script-src 'self'" in ui.headers["content-security-policy"]
    script = client.get("/static/test_ui.js")
    assert script.status_code == 200 and "EventSource" in script.text
    stream = schema["paths"]["/api/stream/{task_id}"]["get"]
    assert {p["name"] for p in stream["parameters"]} == {"task_id", "after", "token", "last-event-id"}
    assert "text/event-stream" in stream["responses"]["200"]["content"]


def test_a_burst_of_concurrent_submissions_is_all_accepted_recorded_and_ended_once(server):
    """SQLite has one writer at a time; concurrent submits must queue, never fail or go missing."""

    def submit(n: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post(
                "/api/run_task", json={"user_requirement": f"Build burst app {n}", "skip_confirmation": False}
            )

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, range(48)))
    assert [a.status_code for a in answers] == [202] * 48
    ids = {a.json()["task_id"] for a in answers}
    assert len(ids) == 48
    with httpx.Client(base_url=server.url, timeout=30) as c:
        listed = {t["task_id"]: t["status"] for t in c.get("/api/tasks", params={"limit": 200}).json()["tasks"]}
        assert ids <= set(listed)  # every accepted task is in the history
        for task_id in ids:  # and each ends exactly once, whatever state the burst left it in
            assert c.post(f"/api/task/{task_id}/cancel").json()["status"] == "cancelled"
            events = read_stream(server.url, task_id).events
            assert [e["event_type"] for e in events].count("cancelled") == 1
            assert sum(e["event_type"] in TERMINAL for e in events) == 1 and events[-1]["event_type"] == "cancelled"
