"""One real crew, end to end, on the bundled SmolLM2 model through llama-cpp-python (offline)."""

from __future__ import annotations

import time

import httpx

from tests.support.api import assert_well_formed_run, run_task
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for


def test_a_real_crew_runs_on_the_local_model(start_server):
    # Short answers keep the suite quick on 2 cores; the path is the same as with the defaults.
    server = start_server(llm_provider="local", local_max_tokens=48)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/healthz").json()["provider"] == "local:SmolLM2-135M-Instruct"
        task_id = run_task(c, "Build a command-line calculator")
        result = read_stream(server.url, task_id, timeout=600)
        assert result.events[-1]["event_type"] == "end", result.events[-1]
        assert_well_formed_run(result, task_id)
        thoughts = [e for e in result.events if e["event_type"] == "thought"]
        assert len(thoughts) >= 4 * 8  # tokens really streamed, for every agent
        body = c.get(f"/api/task/{task_id}/result").json()
        assert body["status"] == "succeeded"
        for name, text in body["deliverables"].items():
            assert text and text.strip(), name
            assert "scripted" not in text


def test_cancel_stops_the_local_model_mid_generation_within_two_seconds(start_server):
    server = start_server(llm_provider="local", local_max_tokens=400)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a spreadsheet application")
        seen = read_stream(server.url, task_id, until_type="thought")  # the model is generating
        assert seen.events[-1]["event_type"] == "thought"
        started = time.monotonic()
        assert c.post(f"/api/task/{task_id}/cancel").json()["status"] == "cancelled"
        wait_for(
            lambda: c.get("/healthz").json()["busy_workers"] == 0,
            10,
            interval=0.01,
            message="the local model to stop generating",
        )
        assert time.monotonic() - started < 2.0
        events = read_stream(server.url, task_id).events
        assert events[-1]["event_type"] == "cancelled"
        # the shared model is free again: a new task runs to its first token
        other = run_task(c, "Build a clock")
        assert read_stream(server.url, other, until_type="thought").events[-1]["event_type"] == "thought"
        c.post(f"/api/task/{other}/cancel")
