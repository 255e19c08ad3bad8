"""Replay from any replica when Redis no longer has the whole log: trimmed to a small
REDIS_STREAM_MAXLEN while the task runs, and expired after STREAM_TTL_S once it ended."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.api import wait_finished, wait_status
from tests.support.real_services import first_sequence_in_redis
from tests.support.replicas import two_replicas
from tests.support.server_process import Server
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for

MAXLEN = 200  # a scripted task publishes about 900 events
TTL_S = 4


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, str]]:
    folder: Path = tmp_path_factory.mktemp("replay")
    settings = {"REDIS_STREAM_MAXLEN": str(MAXLEN), "STREAM_TTL_S": str(TTL_S), "SCRIPTED_TOKEN_DELAY_MS": "5"}
    with two_replicas(folder, **settings) as three:
        yield three


def test_a_late_viewer_on_another_replica_gets_the_whole_log_after_trimming_and_expiry(replicas):
    a, b, redis_url = replicas
    client = redis.Redis.from_url(redis_url)
    with httpx.Client(base_url=a.url, timeout=30) as c:
        body = {"user_requirement": "A library catalogue with loans", "skip_confirmation": True}
        task_id = c.post("/api/run_task", json=body).json()["task_id"]
        key = f"mad:task:{task_id}:events"

        def trimmed() -> bool:
            return (first_sequence_in_redis(client, task_id) or 0) > 1

        wait_for(trimmed, timeout=120, message="Redis to trim the running task's log")
        assert wait_status(c, task_id, {"running", "succeeded"})["status"] == "running", "too short to test"
        late = read_stream(b.url, task_id, timeout=180)  # joins on B mid-run: store start, Redis rest, live
        done = wait_finished(c, task_id)
        assert done["status"] == "succeeded"
    whole = read_stream(a.url, task_id)
    assert whole.sequences == list(range(1, done["last_sequence"] + 1)) and done["last_sequence"] > MAXLEN
    assert late.events == whole.events and late.closed_by_server

    # After STREAM_TTL_S Redis and both replicas' memory have let the log go: B reads the store.
    wait_for(lambda: not client.exists(key), timeout=TTL_S + 30, message="the Redis log to expire")

    def let_go_on_b() -> bool:
        listed = httpx.get(b.url + "/api/streams", timeout=10).json()
        return task_id not in {s["task_id"] for s in listed["active"] + listed["finished"]}

    wait_for(let_go_on_b, timeout=TTL_S + 60, message="replica B to let the finished log go")
    assert read_stream(b.url, task_id).events == whole.events
