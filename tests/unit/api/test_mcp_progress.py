"""run_delivery's progress reports as the event log decides them, when the log arrives in one
batch: a busy event loop may take the last steps and the end of a run together, and the last
report a client sees must still be where the run stopped (a CI run once saw 3.23 of 4)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from delivery.api.mcp import McpDoor
from delivery.crew.roster import ROSTER
from delivery.events import SYSTEM_AGENT, EventType
from delivery.streaming.memory import MemoryEventBackend
from stream_manager import StreamManager


class RecordingContext:
    """What `_follow` uses of FastMCP's Context: the request's app, and report_progress."""

    def __init__(self, streams: StreamManager) -> None:
        app = SimpleNamespace(state=SimpleNamespace(runtime=SimpleNamespace(streams=streams)))
        self.request_context = SimpleNamespace(request=_request_of(app))
        self.reports: list[tuple[float, float | None, str | None]] = []

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        self.reports.append((progress, total, message))


def _request_of(app: Any) -> Any:
    from starlette.requests import Request

    return Request({"type": "http", "app": app, "headers": [], "method": "POST", "path": "/mcp"})


def follow_a_whole_log_at_once(steps_done: int, ending: EventType) -> list[tuple[float, float | None, str | None]]:
    streams = StreamManager(MemoryEventBackend())
    streams.open("t")
    streams.publish("t", SYSTEM_AGENT, EventType.start.value, "started")
    for step, agent in enumerate(ROSTER.agents[:steps_done], start=1):
        streams.publish("t", agent.name, EventType.agent_start.value, "working")
        streams.publish("t", agent.name, EventType.step_end.value, "done", {"completed_steps": step})
    streams.publish("t", SYSTEM_AGENT, ending.value, "over")
    door = SimpleNamespace(settings=SimpleNamespace(mcp_progress_interval_s=15.0))
    context = RecordingContext(streams)

    async def follow() -> bool:
        return await McpDoor._follow(door, context, "t")  # type: ignore[arg-type]

    assert asyncio.run(follow()) is True
    return context.reports


def test_a_run_whose_last_steps_and_end_come_together_reports_its_total_before_answering():
    reports = follow_a_whole_log_at_once(ROSTER.total_steps, EventType.end)
    assert reports == [
        (float(ROSTER.total_steps), ROSTER.total_steps, f"{ROSTER.total_steps} of {ROSTER.total_steps} steps done")
    ]


def test_a_run_that_failed_midway_reports_the_steps_it_did_not_the_total():
    reports = follow_a_whole_log_at_once(2, EventType.error)
    assert len(reports) == 1
    progress, total, message = reports[0]
    assert 2 < progress < 3 and total == ROSTER.total_steps
    assert message == f"2 of {ROSTER.total_steps} steps done"  # no one is working any more
