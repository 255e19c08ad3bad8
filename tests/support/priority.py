"""The priority queue's check, shared by the thread-executor and Celery tests: with the only crew
slot busy, queue tasks of every priority and read back the order they started in."""

from __future__ import annotations

import httpx

from tests.support.api import run_task, wait_finished, wait_status

QUEUED = [  # (name, priority), in the order they are submitted while the only slot is busy
    ("low-1", "low"),
    ("normal-1", "normal"),
    ("high-1", "high"),
    ("default", None),  # no priority given: normal
    ("low-2", "low"),
    ("high-2", "high"),
]
EXPECTED_START_ORDER = ["high-1", "high-2", "normal-1", "default", "low-1", "low-2"]


def start_order_of_queued_tasks(c: httpx.Client, timeout: float = 240) -> list[str]:
    """Occupy the only slot with a low-priority task, queue QUEUED behind it, and return their
    names in the order they started (each must succeed). The blocker must start before them all."""
    blocker = run_task(c, "A time tracker for freelancers", priority="low")
    wait_status(c, blocker, "running")
    ids = {}
    for name, priority in QUEUED:
        extra: dict[str, str] = {} if priority is None else {"priority": priority}
        ids[name] = run_task(c, f"A {name} inventory app", True, **extra)
    for name, priority in QUEUED:
        queued = c.get(f"/api/task/{ids[name]}/status").json()
        assert (queued["status"], queued["priority"]) == ("queued", priority or "normal"), queued
    started = {}
    for name, task_id in ids.items():
        done = wait_finished(c, task_id, timeout=timeout)
        assert done["status"] == "succeeded", done
        started[name] = done["started_at"]  # ISO 8601, UTC: compares like the times
    assert wait_finished(c, blocker)["started_at"] < min(started.values())
    listed = {t["task_id"]: t["priority"] for t in c.get("/api/tasks").json()["tasks"]}
    assert (listed[ids["high-1"]], listed[blocker]) == ("high", "low")
    return sorted(started, key=started.__getitem__)
