"""The seed's customisation: a CrewEventsHandler subclass named in EVENTS_HANDLER changes what a
real server publishes, without editing the project."""

from __future__ import annotations

import httpx
import pytest

from tests.support.api import AGENTS, run_task
from tests.support.sse_client import read_stream


def test_a_handler_named_in_the_settings_decides_what_is_published(start_server):
    server = start_server(events_handler="tests.support.handlers:Quiet")
    with httpx.Client(base_url=server.url, timeout=30) as c:
        task_id = run_task(c, "Build a recipe box")
        events = read_stream(server.url, task_id).events
        result = c.get(f"/api/task/{task_id}/result").json()
    kinds = [e["event_type"] for e in events]
    assert kinds[-1] == "end" and "thought" not in kinds
    outputs = [e for e in events if e["event_type"] == "output"]
    assert [e["agent_name"] for e in outputs] == AGENTS
    for event in outputs:
        assert event["content"].startswith(f"DONE BY {event['agent_name'].upper()}\n\n")
    # What the handler publishes changed; what the crew wrote did not.
    assert not result["deliverables"]["test_plan"].startswith("DONE BY")


def test_a_handler_that_cannot_be_loaded_stops_the_server_with_what_to_fix(start_server):
    with pytest.raises(RuntimeError) as failed:
        start_server(events_handler="tests.support.handlers:Missing")
    assert "EVENTS_HANDLER='tests.support.handlers:Missing' cannot be loaded" in str(failed.value)
