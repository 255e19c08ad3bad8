"""Usage, cost and budgets as a client sees them: in the events, status, result, history and zip,
and budgets that stop a run, against real servers (and a fake remote model)."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest

from tests.support.api import AGENTS, run_task, wait_finished
from tests.support.fake_openai import PROMPT_TOKENS, FakeOpenAI
from tests.support.sse_client import read_stream

PRICED = '{"scripted-test-double": {"input": 1.5, "output": 6.0, "currency": "USD"}}'


@pytest.fixture(scope="module")
def priced(start_server):
    return start_server(llm_prices=PRICED, max_tokens_per_task=1_000_000)


def test_usage_and_cost_are_in_every_answer_and_agree(priced):
    with httpx.Client(base_url=priced.url, timeout=30) as c:
        task_id = run_task(c, "Build an expense tracker with receipts")
        wait_finished(c, task_id)
        status = c.get(f"/api/task/{task_id}/status").json()
        result = c.get(f"/api/task/{task_id}/result").json()
        listed = next(t for t in c.get("/api/tasks").json()["tasks"] if t["task_id"] == task_id)
        task_json = json.loads(
            zipfile.ZipFile(io.BytesIO(c.get(f"/api/task/{task_id}/deliverables.zip").content)).read("task.json")
        )
    events = read_stream(priced.url, task_id).events
    total = status["usage"]["total"]
    assert total["calls"] == 4 and total["currency"] == "USD" and total["estimated"] is False
    assert total["total_tokens"] == total["prompt_tokens"] + total["completion_tokens"] > 1000
    assert total["cost"] == pytest.approx((total["prompt_tokens"] * 1.5 + total["completion_tokens"] * 6.0) / 1e6)
    assert list(status["usage"]["agents"]) == AGENTS
    assert status["budget"] == {
        "max_tokens": 1_000_000,
        "max_cost": None,
        "tokens_setting": "MAX_TOKENS_PER_TASK",
        "cost_setting": None,
    }
    # The terminal event carries the task's totals; each step_end its agent's.
    assert events[-1]["event_type"] == "end" and events[-1]["metadata"]["usage"] == total
    step_ends = {e["agent_name"]: e["metadata"]["usage"] for e in events if e["event_type"] == "step_end"}
    assert step_ends == status["usage"]["agents"]
    assert [c["agent"] for c in result["usage"]["calls"]] == AGENTS
    assert sum(c["total_tokens"] for c in result["usage"]["calls"]) == total["total_tokens"]
    assert listed["usage"] == total
    assert task_json["usage"]["total"] == total and task_json["usage"]["calls"] == result["usage"]["calls"]
    assert events[0]["metadata"]["budget"]["max_tokens"] == 1_000_000


def test_a_request_budget_stops_the_task_mid_generation_with_what_to_do(start_server):
    server = start_server(scripted_token_delay_ms=2)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a recipe site", budget={"max_tokens": 400})
        status = wait_finished(c, task_id)
    events = read_stream(server.url, task_id).events
    last = events[-1]
    assert status["status"] == "failed" and last["event_type"] == "error" and last["content"] == status["error"]
    assert "budget of 400 tokens (budget.max_tokens)" in last["content"]
    assert "larger `budget.max_tokens` in the request body" in last["content"]
    assert last["metadata"]["usage"]["total_tokens"] == 401 == status["usage"]["total"]["total_tokens"]
    assert status["usage"]["total"]["calls"] >= 1
    stopped_agent = last["agent_name"]
    assert events[-2]["agent_name"] == stopped_agent and events[-2]["event_type"] == "thought"  # mid-generation


@pytest.fixture(scope="module")
def limited(start_server):
    return start_server(max_tokens_per_task=5000)


@pytest.mark.parametrize(
    "budget, fragment",
    [
        ({"max_tokens": 0}, "greater than or equal to 1"),
        ({"max_tokens": -5}, "greater than or equal to 1"),
        ({"max_tokens": "lots"}, "valid integer"),
        ({"max_cost": 0}, "greater than 0"),
        ({"max_cost": "NaN"}, "finite number"),
        ({"max_tokens": 10, "unit": "words"}, "unknown field(s) 'unit'; this body takes only: max_tokens, max_cost"),
        ({"max_tokens": 10**10}, "less than or equal to 1000000000"),
        ({"max_tokens": 5001}, "above this server's MAX_TOKENS_PER_TASK=5000"),
    ],
)
def test_a_budget_that_cannot_work_is_refused_with_the_field_named(limited, budget, fragment):
    with httpx.Client(base_url=limited.url, timeout=30) as c:
        before = len(c.get("/api/tasks").json()["tasks"])
        r = c.post("/api/run_task", json={"user_requirement": "Build a blog", "budget": budget})
        assert r.status_code == 422 and fragment in r.text and "budget" in r.text
        assert len(c.get("/api/tasks").json()["tasks"]) == before  # nothing was created


@pytest.mark.parametrize("reports_usage", [True, False])
def test_a_remote_models_usage_is_exact_when_reported_and_marked_estimated_when_not(start_server, reports_usage):
    fake = FakeOpenAI(reports_usage=reports_usage)
    try:
        server = start_server(llm_provider="openai", openai_base_url=fake.url, llm_model="gpt-4o-mini")
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c, "Build a guestbook")
            status = wait_finished(c, task_id, timeout=120)
            calls = c.get(f"/api/task/{task_id}/result").json()["usage"]["calls"]
        assert status["status"] == "succeeded", status["error"]
        assert all(body.get("stream_options") == {"include_usage": True} for body in fake.bodies)
        assert len(calls) == fake.requests and {c["model"] for c in calls} == {"gpt-4o-mini"}
        if reports_usage:
            assert all(c["prompt_tokens"] == PROMPT_TOKENS and not c["estimated"] for c in calls)
        else:
            assert all(c["estimated"] and c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in calls)
        assert status["usage"]["total"]["estimated"] is (not reports_usage)
        assert status["usage"]["total"]["currency"] == "USD" and status["usage"]["total"]["cost"] > 0
    finally:
        fake.stop()
