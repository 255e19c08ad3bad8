"""History survives a restart: real server processes killed and restarted on the same data."""

from __future__ import annotations

import io
import sqlite3
import zipfile
from pathlib import Path

import httpx

from tests.support.api import assert_well_formed_run, run_task, wait_finished, wait_status
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for


def stored_events(data_dir: Path, task_id: str) -> int:
    with sqlite3.connect(data_dir / "tasks.db") as conn:
        return int(conn.execute("SELECT count(*) FROM events WHERE task_id = ?", (task_id,)).fetchone()[0])


def unzip(data: bytes) -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(data))
    return {name: archive.read(name) for name in archive.namelist()}


def test_a_finished_task_is_fully_available_after_a_restart(start_server, tmp_path):
    data = tmp_path / "data"
    first = start_server(data_dir=data)
    with httpx.Client(base_url=first.url, timeout=30) as c:
        task_id = run_task(c, "Build a library catalogue")
        wait_finished(c, task_id)
        before = {
            "status": c.get(f"/api/task/{task_id}/status").json(),
            "result": c.get(f"/api/task/{task_id}/result").json(),
            "zip": c.get(f"/api/task/{task_id}/deliverables.zip").content,
        }
        log = read_stream(first.url, task_id)
    wait_for(lambda: stored_events(data, task_id) == len(log.messages), message="the archive to hold the log")
    first.kill()

    second = start_server(data_dir=data)
    with httpx.Client(base_url=second.url, timeout=30) as c:
        assert c.get(f"/api/task/{task_id}/status").json() == before["status"]
        assert c.get(f"/api/task/{task_id}/result").json() == before["result"]
        replay = read_stream(second.url, task_id)
        assert [m.data for m in replay.messages] == [m.data for m in log.messages]
        assert_well_formed_run(replay, task_id)
        resumed = read_stream(second.url, task_id, headers={"Last-Event-ID": "10"})
        assert [m.data for m in resumed.messages] == [m.data for m in log.messages[10:]]
        assert unzip(c.get(f"/api/task/{task_id}/deliverables.zip").content) == unzip(before["zip"])
        assert task_id in {t["task_id"] for t in c.get("/api/tasks").json()["tasks"]}


def test_a_crash_resumes_running_tasks_from_the_first_unfinished_agent(start_server, tmp_path):
    """kill -9 while the QAEngineer writes: after the restart the task goes on from the
    QAEngineer (the ProductManager's finished analysis is kept, not redone) and succeeds; the
    log tells what happened, gap-free. A task waiting for confirmation simply goes on waiting."""
    data = tmp_path / "data"
    first = start_server(data_dir=data, scripted_token_delay_ms=20)
    with httpx.Client(base_url=first.url, timeout=30) as c:
        running = run_task(c, "Build a payroll system")
        waiting = run_task(c, "Build a gym planner", skip_confirmation=False)
        # Kill while the QAEngineer writes: after its agent_start (which follows the
        # ProductManager's step_end) and ten more events.
        pm_done = _first(first.url, running, "step_end")
        qa_start = read_stream(first.url, running, until_type="agent_start", params={"after": pm_done})
        read_stream(first.url, running, max_messages=10, params={"after": qa_start.sequences[-1]})
        wait_status(c, waiting, "awaiting_confirmation")
        before = read_stream(first.url, waiting, until_type="awaiting_confirmation")
        analysis = c.get(f"/api/task/{running}/deliverables/requirements_analysis").text
    first.kill()

    second = start_server(data_dir=data)
    with httpx.Client(base_url=second.url, timeout=30) as c:
        assert wait_finished(c, running)["status"] == "succeeded"
        replay = read_stream(second.url, running)
        assert replay.closed_by_server
        assert replay.sequences == list(range(1, len(replay.sequences) + 1))
        kinds = [(e["agent_name"], e["event_type"]) for e in replay.events]
        [resumed] = [e for e in replay.events if e["event_type"] == "resumed"]
        assert resumed["metadata"] == {
            "lost": resumed["metadata"]["lost"],
            "agent": "QAEngineer",
            "attempt": 2,
            "max_attempts": 3,
            "handed_back": False,  # a crash, not a graceful stop
        }
        assert "QAEngineer starts again (attempt 2 of 3)" in resumed["content"]
        rest = kinds[resumed["sequence"] :]
        assert rest[0] == ("QAEngineer", "agent_start")  # the interrupted agent starts over ...
        assert kinds.count(("ProductManager", "agent_start")) == 1  # ... the finished one does not
        assert kinds.count(("QAEngineer", "agent_start")) == 2
        assert [a for a, t in rest if t == "step_end"] == ["QAEngineer", "SoftwareDeveloper", "Coordinator"]
        assert kinds[-1] == ("System", "end")
        assert c.get(f"/api/task/{running}/deliverables/requirements_analysis").text == analysis
        assert all(c.get(f"/api/task/{running}/result").json()["deliverables"].values())

        # Waiting needs no process: the task is still there to be answered, its log goes on.
        assert c.get(f"/api/task/{waiting}/status").json()["status"] == "awaiting_confirmation"
        assert c.post(f"/api/task/{waiting}/confirm", json={"approved": True}).status_code == 200
        after = read_stream(second.url, waiting)
        assert after.events[: len(before.events)] == before.events
        assert after.sequences == list(range(1, len(after.sequences) + 1))
        assert after.events[len(before.events)]["event_type"] == "confirmed"
        assert after.events[-1]["event_type"] == "end"
        assert c.get(f"/api/task/{waiting}/status").json()["status"] == "succeeded"


def _first(url: str, task_id: str, event_type: str) -> int:
    """The sequence of the task's first `event_type` event (waiting for it)."""
    return int(read_stream(url, task_id, until_type=event_type).sequences[-1])
