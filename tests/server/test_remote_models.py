"""What a remote OpenAI-compatible model looks like to viewers when it is unreachable or fails,
against a real server and a fake endpoint that fails on purpose."""

from __future__ import annotations

import httpx

from tests.support.api import run_task
from tests.support.fake_openai import FakeOpenAI
from tests.support.server_process import free_port
from tests.support.sse_client import read_stream


def test_an_unreachable_endpoint_fails_the_task_with_an_actionable_error(start_server):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here
    server = start_server(llm_provider="openai", openai_base_url=dead, llm_model="m", llm_timeout_s=5)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c)
        result = read_stream(server.url, task_id, timeout=90)
        assert result.closed_by_server
        events = result.events
        assert next(e["event_type"] for e in events) == "start"
        assert events[-1]["event_type"] == "error"
        assert sum(e["event_type"] in ("end", "error") for e in events) == 1
        assert "Could not connect" in events[-1]["content"] and "OPENAI_BASE_URL" in events[-1]["content"]
        status = c.get(f"/api/task/{task_id}/status").json()
        assert status["status"] == "failed" and status["error"] == events[-1]["content"]
        assert c.get(f"/api/task/{task_id}/result").json()["status"] == "failed"


def test_transient_model_failures_are_retried_then_the_task_succeeds(start_server):
    fake = FakeOpenAI(fail_first=2)  # two 503s, then answers
    try:
        server = start_server(
            llm_provider="openai", openai_base_url=fake.url, llm_model="fake", llm_max_retries=3, llm_retry_base_s=0.05
        )
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            events = read_stream(server.url, task_id, timeout=120).events
        assert events[-1]["event_type"] == "end", events[-1]
        assert fake.requests >= 2 + 4  # the two failures, then one call per agent at least
        assert "model call failed" in server.log_text()
    finally:
        fake.stop()


def test_a_model_that_keeps_failing_ends_the_task_with_a_clear_error(start_server):
    fake = FakeOpenAI(fail_first=10**6)
    try:
        server = start_server(
            llm_provider="openai", openai_base_url=fake.url, llm_model="fake", llm_max_retries=2, llm_retry_base_s=0.05
        )
        with httpx.Client(base_url=server.url, timeout=30) as c:
            task_id = run_task(c)
            events = read_stream(server.url, task_id, timeout=120).events
        last = events[-1]
        assert last["event_type"] == "error"
        assert "Tried 3 times with backoff (LLM_MAX_RETRIES=2)" in last["content"]
        assert "InternalServerError" in last["content"]
        assert fake.requests == 3  # no retries beyond the setting (the SDK's own are off)
    finally:
        fake.stop()
