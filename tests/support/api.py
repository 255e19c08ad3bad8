"""The HTTP calls and checks that many tests repeat, against a real server."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.support.sse_client import StreamResult, read_stream
from tests.support.waiting import wait_for

AGENTS = ["ProductManager", "QAEngineer", "SoftwareDeveloper", "Coordinator"]
TERMINAL = {"end", "error", "cancelled"}
FINISHED = {"succeeded", "failed", "cancelled"}
EVENT_KEYS = {"task_id", "sequence", "agent_name", "event_type", "content", "timestamp"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def run_task(
    client: httpx.Client, requirement: str = "Build a todo app with login", skip_confirmation: bool = True, **extra: Any
) -> str:
    r = client.post(
        "/api/run_task", json={"user_requirement": requirement, "skip_confirmation": skip_confirmation, **extra}
    )
    assert r.status_code == 202, r.text
    task_id: str = r.json()["task_id"]
    return task_id


def status(client: httpx.Client, task_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/task/{task_id}/status").json()
    return body


def wait_status(client: httpx.Client, task_id: str, wanted: str | set[str], timeout: float = 60) -> dict[str, Any]:
    """Poll the task's status until it is `wanted` (one status or a set); return the status body."""
    states = {wanted} if isinstance(wanted, str) else wanted
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        last = status(client, task_id)
        return last if last["status"] in states else None

    return wait_for(reached, timeout, message=lambda: f"{task_id} to be {sorted(states)}; last: {last}")


def wait_finished(client: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_status(client, task_id, FINISHED, timeout)


def stream_until(url: str, task_id: str, event_type: str, after: int = 0, timeout: float = 60) -> StreamResult:
    """Read the task's stream from `after` until an `event_type` event, which must come."""
    result = read_stream(url, task_id, params={"after": after}, until_type=event_type, timeout=timeout)
    assert result.messages and result.messages[-1].event == event_type, [m.event for m in result.messages]
    return result


def event_types(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_type"] for e in events]


def subscribers(client: httpx.Client, task_id: str) -> int:
    """Viewers of the task on this server now (0 when it does not hold the stream)."""
    streams = client.get("/api/streams").json()
    return next((s["subscribers"] for s in streams["active"] + streams["finished"] if s["task_id"] == task_id), 0)


def assert_well_formed_run(result: StreamResult, task_id: str) -> None:
    """A whole run in the unified format: gap-free sequences, one terminal `end`, each agent's
    events in one block, in pipeline order, from agent_start to output and step_end."""
    assert result.status == 200 and result.closed_by_server
    events = result.events
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    for message, event in zip(result.messages, events, strict=True):
        assert set(event) - {"metadata"} == EVENT_KEYS
        assert message.id == str(event["sequence"]) and message.event == event["event_type"]
        assert event["task_id"] == task_id
        assert TIMESTAMP.match(event["timestamp"])
    types = event_types(events)
    assert types[0] == "start"
    assert types[-1] == "end" and sum(t in TERMINAL for t in types) == 1
    per_agent = [(e["agent_name"], e["event_type"]) for e in events[1:-1]]
    assert [a for a, t in per_agent if t == "agent_start"] == AGENTS
    for agent in AGENTS:
        mine = [t for a, t in per_agent if a == agent]
        assert mine[0] == "agent_start" and mine[-2:] == ["output", "step_end"]
        assert "thought" in mine and mine.count("output") == 1
    blocks = [a for i, (a, _) in enumerate(per_agent) if i == 0 or per_agent[i - 1][0] != a]
    assert blocks == AGENTS
