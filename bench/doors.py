"""What each door costs the server per event, against our SSE on the same run (issue 26).

One server, the scripted crew at 100 tokens/s per agent. A round starts TASKS tasks at once,
each followed to its end by the one client that started it, through one door:

- `sse`:  POST /api/run_task, then GET /api/stream/{id} (raw socket, as every other bench viewer);
- `a2a`:  SendStreamingMessage with the a2a-sdk client (JSON-RPC, A2A 1.0);
- `mcp`:  the run_delivery tool with a progress token, with the `mcp` client (streamable HTTP);
- `none`: POST /api/run_task and nobody follows: what the crews cost alone.

Every round ends by polling /api/tasks until none is running (the same small cost in each). The
server's CPU time (utime+stime from /proc) over a round, minus the median `none` round's, divided
by the events the round's tasks logged, is the door's cost per event; each door against `sse` is
the figure. Rounds are interleaved (none, sse, a2a, mcp, none, ...) so drift hits every door alike.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
from a2a.types.a2a_pb2 import SendMessageRequest

from bench.probe import TICKS, cpu_ticks
from bench.run import QUICK, start
from bench.sse_load import Subscriber, subscribe
from tests.support.a2a_client import a2a_client, collect
from tests.support.a2a_client import message as a2a_message
from tests.support.mcp_client import session
from tests.support.server_process import Server

TASKS = 5 if QUICK else 20
REPS = 1 if QUICK else 2
KINDS = ("none", "sse", "a2a", "mcp")


async def _follow_sse(server: Server, http: httpx.AsyncClient, requirement: str) -> None:
    r = await http.post("/api/run_task", json={"user_requirement": requirement, "skip_confirmation": True})
    sub = await subscribe("127.0.0.1", server.port, Subscriber(r.json()["task_id"]))
    assert sub.terminal, f"an SSE viewer ended before its task did: {sub.task_id}"


async def _follow_a2a(server: Server, http: httpx.AsyncClient, requirement: str) -> None:
    async with a2a_client(server.url) as client:
        events = await collect(
            client.send_message(SendMessageRequest(message=a2a_message(requirement, skip_confirmation=True)))
        )
    assert events[-1].status_update.status.state, "A2A stream ended without a final status"


async def _follow_mcp(server: Server, http: httpx.AsyncClient, requirement: str) -> None:
    async def progress(progress: float, total: float | None, message: str | None) -> None:
        return None  # received and dropped, as a client that only shows a spinner

    async with session(server.url) as client:
        result = await client.call_tool("run_delivery", {"requirement": requirement}, progress_callback=progress)
    assert not result.isError, result.content


async def _start_only(server: Server, http: httpx.AsyncClient, requirement: str) -> None:
    r = await http.post("/api/run_task", json={"user_requirement": requirement, "skip_confirmation": True})
    assert r.status_code == 202, r.text


FOLLOW: dict[str, Callable[[Server, httpx.AsyncClient, str], Awaitable[None]]] = {
    "none": _start_only,
    "sse": _follow_sse,
    "a2a": _follow_a2a,
    "mcp": _follow_mcp,
}


async def _round(server: Server, kind: str, n: int) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        tag = f"doors-{kind}-{n}"
        before = cpu_ticks(server.proc.pid)
        t0 = time.monotonic()
        await asyncio.gather(*(FOLLOW[kind](server, http, f"Build app {i} ({tag})") for i in range(TASKS)))
        while (await http.get("/api/tasks", params={"status": "running", "limit": 1})).json()["tasks"]:
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - t0
        cpu_s = (cpu_ticks(server.proc.pid) - before) / TICKS
        listed = (await http.get("/api/tasks", params={"limit": 200})).json()["tasks"]
        mine = [t for t in listed if tag in t["requirement"]]
        assert len(mine) == TASKS and all(t["status"] == "succeeded" for t in mine), [t["status"] for t in mine]
        events = 0
        for t in mine:
            events += (await http.get(f"/api/task/{t['task_id']}/status")).json()["last_sequence"]
    return {"cpu_s": cpu_s, "events": events, "wall_s": elapsed}


def doors() -> dict:
    server = start("ours", scripted_token_delay_ms=10, max_concurrent_tasks=TASKS)
    try:
        asyncio.run(_round(server, "sse", 0))  # warm-up: imports and first crews
        rounds: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for rep in range(REPS):
            for kind in KINDS:
                rounds[kind].append(asyncio.run(_round(server, kind, rep + 1)))
    finally:
        server.stop()
    per_event = {kind: statistics.median(r["cpu_s"] / r["events"] for r in rounds[kind]) * 1e6 for kind in KINDS}
    crews = per_event["none"]
    alone = [r["cpu_s"] / r["events"] * 1e6 for r in rounds["none"]]
    door_us = {kind: per_event[kind] - crews for kind in KINDS if kind != "none"}
    return {
        "tasks": TASKS,
        "rounds": rounds,
        "server_cpu_us_per_event": per_event,
        "door_cpu_us_per_event": door_us,
        # how much the crews alone vary from round to round: the noise under every door's figure
        "none_spread_us_per_event": [min(alone), max(alone)],
        "vs_sse": {kind: door_us[kind] / door_us["sse"] for kind in ("a2a", "mcp")} if door_us["sse"] > 0 else {},
    }


STEPS = [("doors", doors)]
