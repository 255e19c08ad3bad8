"""The real PostgreSQL restarted while a task runs against it: nothing is lost, the task finishes,
and viewers get a gap-free log (they wait while the database is away: durable before visible)."""

from __future__ import annotations

import glob
import os
import subprocess
import threading
import time
from collections.abc import Callable

import httpx

from tests.support.api import AGENTS, wait_finished
from tests.support.real_services import ensure_postgres, fresh_postgres_database
from tests.support.server_process import Server
from tests.support.sse_client import StreamResult, read_stream


def _restart_postgres(down_s: float) -> None:
    """Stop the real server, keep it down for `down_s` (longer than one agent takes, so the
    crew's record saves meet it too, not only the archive), start it again."""
    version = os.path.basename(sorted(glob.glob("/etc/postgresql/*"))[-1])
    cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    subprocess.run([*cluster, "stop", "-m", "fast"], check=True, capture_output=True)
    try:
        time.sleep(down_s)
    finally:  # the machine's PostgreSQL is left running, whatever happens here
        subprocess.run([*cluster, "start"], check=False, capture_output=True)
        ensure_postgres()


def test_a_postgresql_restart_mid_task_loses_nothing(start_server: Callable[..., Server]):
    with fresh_postgres_database() as url:
        server = start_server(database_url=url, scripted_token_delay_ms=3)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            body = {"user_requirement": "A library catalogue", "skip_confirmation": True}
            task_id = c.post("/api/run_task", json=body).json()["task_id"]
            seen: list[StreamResult] = []
            viewer = threading.Thread(target=lambda: seen.append(read_stream(server.url, task_id, timeout=120)))
            viewer.start()
            read_stream(server.url, task_id, max_messages=100)
            _restart_postgres(down_s=4)
            assert wait_finished(c, task_id, timeout=120)["status"] == "succeeded"
            viewer.join(60)
            result = c.get(f"/api/task/{task_id}/result").json()
        [live] = seen
        assert live.closed_by_server and live.events[-1]["event_type"] == "end"
        assert live.sequences == list(range(1, len(live.sequences) + 1))
        assert [e["agent_name"] for e in live.events if e["event_type"] == "step_end"] == AGENTS
        assert all(result["deliverables"].values())
        replay = read_stream(server.url, task_id)  # what the database holds is what was seen
        assert replay.events == live.events
        assert "the task store is unreachable" in server.log_text()
        server.stop()
