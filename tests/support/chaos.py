"""What the chaos tests share: a user who answers confirmations, and what every log must show."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx

from tests.support.api import AGENTS
from tests.support.server_process import Server
from tests.support.sse_client import read_stream

FEEDBACK = "Add an export to CSV"
REQUIREMENTS = [("A wiki", True), ("A shop", False), ("A blog", True), ("A forum", False)]  # (text, skip)


def finished_logs(base_url: str, tasks: dict[str, bool], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Check every task succeeded with four deliverables and a log that shows each agent's work
    once per round; return the logs."""
    logs = {}
    with httpx.Client(base_url=base_url, timeout=30) as c:
        for task_id, skip in tasks.items():
            status = c.get(f"/api/task/{task_id}/status").json()
            assert status["status"] == "succeeded", (seed, status)
            result = c.get(f"/api/task/{task_id}/result").json()
            assert all(result["deliverables"].values()) and len(result["deliverables"]) == 4
            logs[task_id] = read_stream(base_url, task_id).events
            assert_each_agent_worked_once_unless_interrupted(logs[task_id], skip, seed)
    return logs


def resumes(logs: dict[str, list[dict[str, Any]]]) -> int:
    return sum(e["event_type"] == "resumed" for events in logs.values() for e in events)


def submit_all(base_url: str) -> dict[str, bool]:
    """The chaos tests' four tasks (two ask for confirmation): {task_id: skip_confirmation}."""
    with httpx.Client(base_url=base_url, timeout=30) as c:
        return {
            c.post("/api/run_task", json={"user_requirement": text, "skip_confirmation": skip}).json()["task_id"]: skip
            for text, skip in REQUIREMENTS
        }


def answer_confirmations(server: Server, tasks: dict[str, bool], until: float, stop_when_done: bool = False) -> None:
    """Play the user: send each waiting analysis back once, then approve it."""
    with httpx.Client(base_url=server.url, timeout=5) as c:
        while time.monotonic() < until:
            statuses = {t: c.get(f"/api/task/{t}/status").json()["status"] for t in tasks}
            if stop_when_done and all(s in ("succeeded", "failed", "cancelled") for s in statuses.values()):
                return
            for task_id, status in statuses.items():
                if status == "awaiting_confirmation":
                    answer = {"approved": True} if _revised(c, task_id) else {"approved": False, "feedback": FEEDBACK}
                    c.post(f"/api/task/{task_id}/confirm", json=answer)
            time.sleep(0.05)


def _revised(c: httpx.Client, task_id: str) -> bool:
    versions = c.get(f"/api/task/{task_id}/deliverables/requirements_analysis/versions").json()["versions"]
    return any(v["reason"].startswith("revision round") for v in versions)


def assert_each_agent_worked_once_unless_interrupted(events: list[dict[str, Any]], skip: bool, seed: int) -> None:
    sequences = [e["sequence"] for e in events]
    assert sequences == list(range(1, len(events) + 1)), seed
    kinds = [e["event_type"] for e in events]
    assert kinds[-1] == "end" and sum(k in ("end", "error", "cancelled") for k in kinds) == 1, seed
    starts = Counter(e["agent_name"] for e in events if e["event_type"] == "agent_start")
    finished = Counter(e["agent_name"] for e in events if e["event_type"] == "step_end")
    restarted = Counter(e["metadata"]["agent"] for e in events if e["event_type"] == "resumed")
    rounds = 1 if skip else 2  # the ProductManager writes again once, when sent back
    # Each agent finished its work exactly once per round, and started again only when resumed
    # (a resume may also name an agent that had not started yet: the kill came just before).
    assert {a: finished[a] for a in AGENTS[1:]} == {a: 1 for a in AGENTS[1:]}, (seed, finished)
    assert finished["ProductManager"] == rounds, (seed, finished)
    for agent in AGENTS:
        base = rounds if agent == "ProductManager" else 1
        assert base <= starts[agent] <= base + restarted[agent], (seed, agent, starts, restarted)
