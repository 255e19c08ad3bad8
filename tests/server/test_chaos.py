"""Chaos: the only server process is killed (`kill -9`) at random moments, over and over, while
tasks run, wait for confirmation and are revised. Every task still ends `end` with four
deliverables and a gap-free log, and no agent's work is done twice except the one interrupted.

The moments are random on every run; the seed is printed so a failing run can be replayed with
CHAOS_SEED=<seed>."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.api import AGENTS
from tests.support.server_process import Server
from tests.support.sse_client import read_stream

KILLS = 6
FEEDBACK = "Add an export to CSV"


def test_tasks_finish_through_random_kills_of_the_server(start_server: Callable[..., Server], tmp_path):
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 10**6))
    print(f"CHAOS_SEED={seed}")
    rng = random.Random(seed)
    settings = {"data_dir": str(tmp_path / "data"), "scripted_token_delay_ms": 2, "max_phase_attempts": 10}
    server = start_server(**settings)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        tasks = {
            c.post("/api/run_task", json={"user_requirement": requirement, "skip_confirmation": skip}).json()[
                "task_id"
            ]: skip
            for requirement, skip in [("A wiki", True), ("A shop", False), ("A blog", True), ("A forum", False)]
        }
    for _ in range(KILLS):
        _answer_confirmations(server, tasks, until=time.monotonic() + rng.uniform(0.2, 2.5))
        server.kill()
        server = start_server(port=server.port, **settings)
    _answer_confirmations(server, tasks, until=time.monotonic() + 180, stop_when_done=True)

    resumes = 0
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for task_id, skip in tasks.items():
            status = c.get(f"/api/task/{task_id}/status").json()
            assert status["status"] == "succeeded", (seed, status)
            result = c.get(f"/api/task/{task_id}/result").json()
            assert all(result["deliverables"].values()) and len(result["deliverables"]) == 4
            events = read_stream(server.url, task_id).events
            _assert_each_agent_worked_once_unless_interrupted(events, skip, seed)
            resumes += sum(e["event_type"] == "resumed" for e in events)
    assert resumes >= 1, f"no kill hit a running task (seed {seed}): the test proved nothing"


def _answer_confirmations(server: Server, tasks: dict[str, bool], until: float, stop_when_done: bool = False) -> None:
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


def _assert_each_agent_worked_once_unless_interrupted(events: list[dict[str, Any]], skip: bool, seed: int) -> None:
    sequences = [e["sequence"] for e in events]
    assert sequences == list(range(1, len(events) + 1)), seed
    kinds = [e["event_type"] for e in events]
    assert kinds[-1] == "end" and sum(k in ("end", "error", "cancelled") for k in kinds) == 1, seed
    starts = Counter(e["agent_name"] for e in events if e["event_type"] == "agent_start")
    finished = Counter(e["agent_name"] for e in events if e["event_type"] == "step_end")
    restarted = Counter(e["metadata"]["agent"] for e in events if e["event_type"] == "resumed")
    rounds = 1 if skip else 2  # the ProductManager writes again once, when sent back
    # Each delivery agent finished its work exactly once, and started again only when resumed (a
    # resume may also name an agent that had not started yet: the kill came just before). The
    # ProductManager may finish a round twice: its phase restarts it even when the kill came
    # after its step_end but before the pause for confirmation (a known gap).
    assert {a: finished[a] for a in AGENTS[1:]} == {a: 1 for a in AGENTS[1:]}, (seed, finished)
    assert rounds <= finished["ProductManager"] <= rounds + restarted["ProductManager"], (seed, finished)
    for agent in AGENTS:
        base = rounds if agent == "ProductManager" else 1
        assert base <= starts[agent] <= base + restarted[agent], (seed, agent, starts, restarted)
