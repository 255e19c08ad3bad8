"""One task, three doors: a run started through /api, MCP or A2A is watched, confirmed and
cancelled through each of the other two, with each door's own official client (httpx on /api and
its SSE stream, the `mcp` client, the a2a-sdk client) against one real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from a2a.client.client import Client
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    SendMessageConfiguration,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from mcp import ClientSession
from pydantic import AnyUrl

from delivery.crew.roster import ROSTER
from tests.support.a2a_client import a2a_client, collect, message, states
from tests.support.api import stream_until
from tests.support.mcp_client import call, session, wait_state

ANALYSIS = ROSTER.analyst.deliverable
# What each door calls our statuses: the A2A states map onto them one to one here.
A2A_STATUS = {
    TaskState.TASK_STATE_SUBMITTED: "queued",
    TaskState.TASK_STATE_WORKING: "running",
    TaskState.TASK_STATE_INPUT_REQUIRED: "awaiting_confirmation",
    TaskState.TASK_STATE_COMPLETED: "succeeded",
    TaskState.TASK_STATE_CANCELED: "cancelled",
    TaskState.TASK_STATE_FAILED: "failed",
}


@pytest.fixture(scope="module")
def slow(start_server):
    """Tokens every 3 ms: a run lasts a few seconds, long enough to be cancelled mid-way."""
    return start_server(scripted_token_delay_ms=3)


@dataclass
class Doors:
    url: str
    http: httpx.AsyncClient
    mcp: ClientSession
    a2a: Client  # streaming: subscriptions
    a2a_calls: Client  # not streaming: one answer per call

    # -- start ------------------------------------------------------------------------------
    async def start(self, door: str, requirement: str, confirm: bool) -> str:
        if door == "api":
            r = await self.http.post(
                "/api/run_task", json={"user_requirement": requirement, "skip_confirmation": not confirm}
            )
            assert r.status_code == 202, r.text
            return str(r.json()["task_id"])
        if door == "mcp":
            started = await call(self.mcp, "start_delivery", requirement=requirement, skip_confirmation=not confirm)
            return str(started["task_id"])
        extra: dict[str, Any] = {} if confirm else {"skip_confirmation": True}
        request = SendMessageRequest(
            message=message(requirement, **extra), configuration=SendMessageConfiguration(return_immediately=True)
        )
        (answer,) = await collect(self.a2a_calls.send_message(request))
        return str(answer.task.id)

    # -- watch: each door's own way of following a task; returns the analysis it showed ----------
    async def watch_until_waiting(self, door: str, task_id: str) -> str:
        if door == "api":
            run = await asyncio.to_thread(stream_until, self.url, task_id, "awaiting_confirmation")
            outputs = [e for e in run.events if e["event_type"] == "output"]
            return str(outputs[-1]["content"])
        if door == "mcp":
            await wait_state(self.mcp, task_id, "awaiting_confirmation")
            read = await self.mcp.read_resource(AnyUrl(f"delivery://{task_id}/{ANALYSIS}"))
            return str(read.contents[0].text)  # type: ignore[union-attr]
        seen = []
        async for event in self.a2a.subscribe(SubscribeToTaskRequest(id=task_id)):
            seen.append(event)
            task = event.task if event.HasField("task") else None
            if (task and task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED) or (
                states(seen[-1:]) == ["TASK_STATE_INPUT_REQUIRED"]
            ):
                break  # the subscription goes on to the end; a watcher may leave here
        got = await self.a2a_calls.get_task(GetTaskRequest(id=task_id))
        return next(a.parts[0].text for a in got.artifacts if a.artifact_id == ANALYSIS)

    async def watch_to_end(self, door: str, task_id: str) -> None:
        if door == "api":
            await asyncio.to_thread(stream_until, self.url, task_id, "end")
        elif door == "mcp":
            await wait_state(self.mcp, task_id, "succeeded")
        else:
            events = await collect(self.a2a.subscribe(SubscribeToTaskRequest(id=task_id)))
            assert states(events)[-1] == "TASK_STATE_COMPLETED", states(events)

    # -- act ---------------------------------------------------------------------------------
    async def approve(self, door: str, task_id: str) -> None:
        if door == "api":
            r = await self.http.post(f"/api/task/{task_id}/confirm", json={"approved": True})
            assert r.status_code == 200, r.text
        elif door == "mcp":
            await call(self.mcp, "confirm_delivery", task_id=task_id, approved=True)
        else:
            request = SendMessageRequest(
                message=message("approve", task_id), configuration=SendMessageConfiguration(return_immediately=True)
            )
            await collect(self.a2a_calls.send_message(request))

    async def cancel(self, door: str, task_id: str) -> None:
        if door == "api":
            r = await self.http.post(f"/api/task/{task_id}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        elif door == "mcp":
            assert (await call(self.mcp, "cancel_delivery", task_id=task_id))["status"] == "cancelled"
        else:
            cancelled = await self.a2a_calls.cancel_task(CancelTaskRequest(id=task_id))
            assert cancelled.status.state == TaskState.TASK_STATE_CANCELED

    async def status(self, door: str, task_id: str) -> str:
        if door == "api":
            return str((await self.http.get(f"/api/task/{task_id}/status")).json()["status"])
        if door == "mcp":
            return str((await call(self.mcp, "get_delivery", task_id=task_id))["status"])
        return A2A_STATUS[(await self.a2a_calls.get_task(GetTaskRequest(id=task_id))).status.state]


@asynccontextmanager
async def doors(url: str) -> AsyncIterator[Doors]:
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=60))
        mcp = await stack.enter_async_context(session(url))
        a2a = await stack.enter_async_context(a2a_client(url))
        calls = await stack.enter_async_context(a2a_client(url, streaming=False))
        yield Doors(url, http, mcp, a2a, calls)


PAIRS = [(start, other) for start in ("api", "mcp", "a2a") for other in ("api", "mcp", "a2a") if other != start]


@pytest.mark.parametrize(("started_by", "other"), PAIRS, ids=[f"{s}-then-{o}" for s, o in PAIRS])
def test_a_run_started_through_one_door_is_watched_confirmed_and_cancelled_through_another(slow, started_by, other):
    async def scenario() -> None:
        async with doors(slow.url) as d:
            task_id = await d.start(started_by, f"Build a garden planner ({started_by})", confirm=True)
            analysis = await d.watch_until_waiting(other, task_id)
            # The analysis the other door showed is the task's own, as /api serves it
            served = await d.http.get(f"/api/task/{task_id}/deliverables/{ANALYSIS}")
            assert analysis == served.text
            assert await d.status(started_by, task_id) == "awaiting_confirmation"
            await d.approve(other, task_id)
            await d.watch_to_end(other, task_id)
            assert [await d.status(door, task_id) for door in ("api", "mcp", "a2a")] == ["succeeded"] * 3

            running = await d.start(started_by, f"Build a seed catalogue ({started_by})", confirm=False)
            while await d.status(other, running) == "queued":
                await asyncio.sleep(0.05)
            await d.cancel(other, running)
            assert [await d.status(door, running) for door in ("api", "mcp", "a2a")] == ["cancelled"] * 3

    asyncio.run(scenario())
