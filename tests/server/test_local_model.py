"""One real crew, end to end, on the bundled SmolLM2 model through llama-cpp-python (offline)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.api import assert_well_formed_run, run_task
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for


@pytest.mark.parametrize("requirement", ["Build a command-line calculator with history", "开发一个简单的待办事项应用"])
def test_the_local_model_delivers_a_well_formed_traced_go_package(start_server, requirement):
    """The grammars hold a 135M model to each document's shape and to requirements that exist."""
    server = start_server(llm_provider="local")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/healthz").json()["provider"] == "local:SmolLM2-135M-Instruct"
        task_id = run_task(c, requirement)
        result = read_stream(server.url, task_id, timeout=600)
        assert result.events[-1]["event_type"] == "end", result.events[-1]
        assert_well_formed_run(result, task_id)
        thoughts = [e for e in result.events if e["event_type"] == "thought"]
        assert len(thoughts) >= 4 * 30  # tokens really streamed, for every agent
        body = c.get(f"/api/task/{task_id}/result").json()
    traced = body["traceability"]
    assert traced["problems"] == {} and traced["verdict"] == "GO", traced
    assert len(traced["requirements"]) >= 3
    assert body["language"] == "en"  # the model writes English only, whatever the requirement's language
    for text in body["deliverables"].values():
        assert "scripted" not in text and not any("\u4e00" <= ch <= "\u9fff" for ch in text.split("\n", 2)[-1])
        chinese = requirement != requirement.encode("ascii", "ignore").decode()
        assert text.startswith("> Written in English") is chinese
    checks = [e for e in result.events if e["event_type"] == "check"]
    assert [e["metadata"]["passed"] for e in checks] == [True] * 4  # no fix round needed


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
