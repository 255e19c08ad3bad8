"""LOG_FORMAT=json: every line the server writes is one JSON object, naming the task it is about."""

from __future__ import annotations

import json

import httpx

from tests.support.api import run_task, wait_finished
from tests.support.server_process import free_port


def test_json_logs_name_the_task(start_server):
    server = start_server(
        log_format="json",
        llm_provider="openai",
        llm_model="m",
        llm_max_retries=0,
        openai_base_url=f"http://127.0.0.1:{free_port()}/v1",
        llm_timeout_s=3,
    )
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a kite shop")
        assert wait_finished(c, task_id, timeout=60)["status"] == "failed"
    lines = [line for line in server.log_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line, or this raises
    assert all({"ts", "level", "logger", "message"} <= set(p) for p in parsed)
    ours = next(p for p in parsed if p["message"] == f"task {task_id} failed")
    assert ours["level"] == "ERROR" and ours["task_id"] == task_id and "APIConnectionError" in ours["exception"]
    # Lines of other loggers (CrewAI's own), written while the phase ran, name the task too.
    assert len({p["logger"] for p in parsed if p.get("task_id") == task_id}) >= 2
