"""Durable before visible: a viewer reading through a `kill -9` of the only server process sees
no event that the crash takes back. After the restart each sequence number still means the event
the viewer saw, and resuming with its own last id yields exactly the rest and one terminal event."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx

from tests.support.api import wait_finished
from tests.support.server_process import Server
from tests.support.sse_client import StreamResult, read_stream
from tests.support.waiting import wait_for


def test_a_crash_takes_back_nothing_a_viewer_saw(start_server: Callable[..., Server], tmp_path):
    # One attempt: the restart gives the task up, so the viewer's resumed stream ends with `error`.
    settings = {"data_dir": str(tmp_path / "data"), "scripted_token_delay_ms": 3, "max_phase_attempts": 1}
    first = start_server(**settings)
    with httpx.Client(base_url=first.url, timeout=30) as c:
        body = {"user_requirement": "A wiki with search", "skip_confirmation": True}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
    seen: list[StreamResult] = []
    viewer = threading.Thread(target=lambda: seen.append(read_stream(first.url, task_id, allow_cut=True)))
    viewer.start()
    wait_for(lambda: first.log_path.exists() and _received(first, task_id) >= 150, 60, message="150 events")
    first.kill()  # mid-stream: the archive has not caught up with what was published
    viewer.join(30)
    [before] = seen
    assert before.cut and not before.closed_by_server
    last_seen = before.sequences[-1]
    assert before.sequences == list(range(1, last_seen + 1))

    second = start_server(port=first.port, **settings)  # viewers reconnect to the same address
    with httpx.Client(base_url=second.url, timeout=30) as c:
        assert wait_finished(c, task_id)["status"] == "failed"
    resumed = read_stream(second.url, task_id, headers={"Last-Event-ID": str(last_seen)})
    assert resumed.closed_by_server
    assert resumed.sequences == list(range(last_seen + 1, last_seen + 1 + len(resumed.sequences)))
    assert [m.event for m in resumed.messages][-1] == "error"
    assert [m.event for m in resumed.messages].count("error") == 1
    assert "MAX_PHASE_ATTEMPTS=1 allows, so the task is given up" in resumed.events[-1]["content"]

    # One sequence, one event: the replay from the start agrees with what the viewer saw.
    replay = read_stream(second.url, task_id)
    assert replay.sequences == list(range(1, len(replay.sequences) + 1))
    assert replay.events[:last_seen] == before.events
    assert replay.events[last_seen:] == resumed.events


def _received(server: Server, task_id: str) -> int:
    """How far viewers can read: the stream's visible last sequence."""
    try:
        return int(httpx.get(f"{server.url}/api/task/{task_id}/status", timeout=5).json()["last_sequence"])
    except (httpx.HTTPError, KeyError, ValueError):
        return 0
