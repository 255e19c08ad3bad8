"""SSE behaviour against a real uvicorn server: format, order, fan-out, replay, resume."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.api import AGENTS, assert_well_formed_run, run_task, subscribers, wait_finished
from tests.support.sse_client import read_stream
from tests.support.waiting import wait_for


def test_a_run_streams_the_unified_format_in_order(server):
    with httpx.Client(base_url=server.url) as c:
        task_id = run_task(c)
    result = read_stream(server.url, task_id)
    assert_well_formed_run(result, task_id)
    assert result.retry == 3000
    # thoughts carry token deltas that add up to the agent's output
    for agent in AGENTS:
        thoughts = "".join(
            e["content"] for e in result.events if e["agent_name"] == agent and e["event_type"] == "thought"
        )
        output = next(e["content"] for e in result.events if e["agent_name"] == agent and e["event_type"] == "output")
        assert thoughts.strip() == output.strip()


def test_headers_suit_proxies_and_heartbeats_arrive(slow_server):
    with httpx.Client(base_url=slow_server.url) as c:
        task_id = run_task(c)
    result = read_stream(slow_server.url, task_id)
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-accel-buffering"] == "no"
    assert any(c.startswith("ping") for c in result.comments), result.comments  # heartbeat is 0.5 s here
    assert_well_formed_run(result, task_id)


def test_three_live_subscribers_receive_identical_logs(slow_server):
    with httpx.Client(base_url=slow_server.url) as c:
        task_id = run_task(c)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: read_stream(slow_server.url, task_id), range(3)))
    logs = [[m.data for m in r.messages] for r in results]
    assert logs[0] == logs[1] == logs[2]
    assert_well_formed_run(results[0], task_id)


def test_late_join_mid_run_and_after_finish_replays_from_sequence_one(slow_server):
    with httpx.Client(base_url=slow_server.url) as c:
        task_id = run_task(c)
        wait_for(
            lambda: c.get(f"/api/task/{task_id}/status").json()["last_sequence"] >= 50,
            30,
            message="50 events of the running task",
        )
        mid = read_stream(slow_server.url, task_id)
        wait_finished(c, task_id)
    after = read_stream(slow_server.url, task_id)
    assert_well_formed_run(mid, task_id)
    assert [m.data for m in mid.messages] == [m.data for m in after.messages]


def test_resume_with_last_event_id_or_after_misses_and_repeats_nothing(slow_server):
    with httpx.Client(base_url=slow_server.url) as c:
        task_id = run_task(c)
    first = read_stream(slow_server.url, task_id, max_messages=40)
    assert first.sequences == list(range(1, 41))
    resumed = read_stream(slow_server.url, task_id, headers={"Last-Event-ID": "40"})
    assert resumed.sequences[0] == 41
    full = read_stream(slow_server.url, task_id)
    assert [m.data for m in first.messages + resumed.messages] == [m.data for m in full.messages]
    by_query = read_stream(slow_server.url, task_id, params={"after": 40})
    assert [m.data for m in by_query.messages] == [m.data for m in resumed.messages]
    # the header wins over ?after= (a reconnecting EventSource keeps its original URL)
    both = read_stream(slow_server.url, task_id, params={"after": 0}, headers={"Last-Event-ID": "100"})
    assert both.sequences[0] == 101
    # resuming at the end of a finished log yields nothing and closes
    end = read_stream(slow_server.url, task_id, headers={"Last-Event-ID": str(len(full.messages))})
    assert end.messages == [] and end.closed_by_server


def test_malformed_resume_points_are_rejected_with_400_or_422(server):
    with httpx.Client(base_url=server.url) as c:
        task_id = run_task(c)
        r = c.get(f"/api/stream/{task_id}", headers={"Last-Event-ID": "abc"})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"]
        r = c.get(f"/api/stream/{task_id}", headers={"Last-Event-ID": "-3"})
        assert r.status_code == 400
        assert c.get(f"/api/stream/{task_id}", params={"after": -1}).status_code == 422
        r = c.get(f"/api/stream/{task_id}", params={"after": "x"})
        assert r.status_code == 422 and r.json()["detail"].startswith("after must be the sequence number")


def test_concurrent_crews_never_mix_their_events(start_server):
    server = start_server(scripted_token_delay_ms=1, max_concurrent_tasks=4)
    requirements = {
        "alpha": "Build an alpha telescope scheduler with maintenance windows",
        "beta": "Build a beta bakery ordering site with delivery slots",
        "gamma": "Build a gamma greenhouse sensor dashboard with alerts",
        "delta": "Build a delta dentist booking app with reminders",
    }
    with httpx.Client(base_url=server.url) as c:
        ids = {name: run_task(c, req) for name, req in requirements.items()}
    with ThreadPoolExecutor(len(ids)) as pool:
        results = dict(zip(ids, pool.map(lambda tid: read_stream(server.url, tid), ids.values()), strict=False))
    for name, result in results.items():
        assert_well_formed_run(result, ids[name])
        text = "".join(e["content"] for e in result.events if e["event_type"] in ("thought", "output"))
        assert name in text
        for other in requirements:
            if other != name:
                assert other not in text, f"{other}'s tokens leaked into {name}'s stream"


def test_a_stalled_subscriber_does_not_stall_the_others(slow_server):
    """One client connects and never reads; the crew and the other viewers go on at full speed."""
    with httpx.Client(base_url=slow_server.url) as c:
        task_id = run_task(c)
    stalled = socket.create_connection(("127.0.0.1", slow_server.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /api/stream/{task_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        readers = []
        done = threading.Event()

        def watch() -> None:
            readers.append(read_stream(slow_server.url, task_id))
            done.set()

        threading.Thread(target=watch).start()
        assert done.wait(60), "a healthy viewer was held up by the stalled one"
        assert_well_formed_run(readers[0], task_id)
        with httpx.Client(base_url=slow_server.url) as c:
            assert c.get(f"/api/task/{task_id}/status").json()["status"] == "succeeded"
        # the stalled client still gets a correct log when it finally reads
        stalled.settimeout(10)
        raw = b""
        while b"event: end" not in raw:
            chunk = stalled.recv(65536)
            if not chunk:
                break
            raw += chunk
        assert b"event: end" in raw
    finally:
        stalled.close()


def test_a_viewer_that_disconnects_is_forgotten(slow_server):
    with httpx.Client(base_url=slow_server.url) as c:
        task_id = run_task(c, "Build a bookmark manager", skip_confirmation=False)
        with c.stream("GET", f"/api/stream/{task_id}") as r:
            lines = r.iter_lines()  # kept referenced: a discarded iterator closes the response
            next(line for line in lines if line.startswith("id:"))  # now subscribed
            assert subscribers(c, task_id) == 1
        wait_for(lambda: subscribers(c, task_id) == 0, 10, message="the departed viewer to be forgotten")
        c.post(f"/api/task/{task_id}/cancel")


def test_a_viewer_that_stops_reading_is_cut_off_without_slowing_anyone(start_server):
    """8 MB into one stream: more than the socket buffers of a client that never reads."""
    server = start_server(app="bench.core_app:app", sse_send_timeout_s=1)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        prepared = c.post("/bench/prepare", params={"tasks": 1}).json()
        (task_id,) = prepared["streams"]
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(f"GET /api/stream/{task_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        healthy: list = []
        viewer = threading.Thread(target=lambda: healthy.append(read_stream(server.url, task_id, timeout=120)))
        viewer.start()
        wait_for(lambda: subscribers(c, task_id) == 2, message="both viewers to subscribe")
        rss_before = _rss_kb(server.proc.pid)
        started = time.monotonic()
        c.post("/bench/start", params={"batch": prepared["batch"], "tokens": 40_000})
        viewer.join(120)
        assert time.monotonic() - started < 60, "the reading viewer was held up"
        assert healthy[0].sequences == list(range(1, 40_002))  # all, once, in order
        wait_for(lambda: "stopped reading for 1.0s; disconnected" in server.log_text(), message="the cut-off")
        assert subscribers(c, task_id) == 0
        growth_mb = (_rss_kb(server.proc.pid) - rss_before) / 1024
        # The log itself (40,001 events, each encoded once) is ~15 MB; the stalled viewer holds a
        # cursor and at most one transport buffer, not a copy of what it missed.
        assert growth_mb < 64, f"server grew by {growth_mb:.0f} MB"
    stalled.settimeout(10)
    received = b""
    while chunk := stalled.recv(1 << 20):
        received += chunk
    stalled.close()
    assert b"event: end" not in received and len(received) < 8_000_000  # cut off, then closed


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_sigterm_closes_every_stream_and_the_restarted_server_resumes_running_and_queued_tasks(start_server, tmp_path):
    """A deploy (SIGTERM, then the same server again on the same data) keeps every task: the running
    crew stops at its next event, the queued task stays queued, and the next process resumes both
    from their first unfinished agent; viewers get `shutdown`, never an `error`, and each sequence
    goes on exactly once. MAX_PHASE_ATTEMPTS=1: a hand-back uses up no attempt (a crash would)."""
    data = tmp_path / "data"
    settings = {"data_dir": data, "scripted_token_delay_ms": 20, "max_concurrent_tasks": 1, "max_phase_attempts": 1}
    server = start_server(**settings)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        waiting = run_task(c, "Build a diary", skip_confirmation=False)
        read_stream(server.url, waiting, until_type="awaiting_confirmation")
        running = run_task(c, "Build a payroll system")
        read_stream(server.url, running, max_messages=20)
        queued = run_task(c, "Build a library catalogue")
        assert c.get(f"/api/task/{queued}/status").json()["status"] == "queued"
    results: dict = {}

    def view(name: str, task_id: str) -> None:
        results[name] = read_stream(server.url, task_id, timeout=30)

    viewers = [
        threading.Thread(target=view, args=(name, task_id), daemon=True)
        for name, task_id in (("waiting-1", waiting), ("waiting-2", waiting), ("running", running), ("queued", queued))
    ]
    for v in viewers:
        v.start()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        wait_for(
            lambda: subscribers(c, waiting) == 2 and subscribers(c, running) == 1 and subscribers(c, queued) == 1,
            message="all four viewers to subscribe",
        )
    started = time.monotonic()
    server.proc.terminate()
    server.proc.wait(timeout=15)
    assert time.monotonic() - started < 10
    for v in viewers:
        v.join(5)
        assert not v.is_alive(), "a viewer's stream was left hanging after shutdown"
    for name, result in results.items():
        final = result.messages[-1]
        assert final.event == "shutdown" and final.id is None and "Last-Event-ID" in final.json["resume"], name
        assert result.closed_by_server and "error" not in [m.event for m in result.messages], name
    assert "stopping: 2 tasks handed back" in server.log_text()

    # The same data and port (viewers reconnect to the same address); a faster model, to finish.
    again = start_server(port=server.port, **{**settings, "scripted_token_delay_ms": 1})
    with httpx.Client(base_url=again.url, timeout=30) as c:
        assert c.get(f"/api/task/{waiting}/status").json()["status"] == "awaiting_confirmation"
        for task_id in (running, queued):
            assert wait_finished(c, task_id, timeout=120)["status"] == "succeeded", task_id
    for name, task_id in (("running", running), ("queued", queued)):
        before = [m.json for m in results[name].messages if m.event != "shutdown"]
        seen = before[-1]["sequence"] if before else 0
        rest = read_stream(again.url, task_id, headers={"Last-Event-ID": str(seen)})
        assert rest.sequences == list(range(seen + 1, seen + 1 + len(rest.sequences))), name
        types = [m.event for m in rest.messages]
        assert types.count("resumed") == 1 and types[-1] == "end" and "error" not in types, (name, types)
        resumed = rest.events[types.index("resumed")]
        assert resumed["metadata"]["handed_back"] is True and resumed["metadata"]["attempt"] == 2
        assert "stopped (a restart or deploy) and handed this task back" in resumed["content"]
        replay = read_stream(again.url, task_id)
        assert replay.sequences == list(range(1, len(replay.sequences) + 1))
        assert replay.events == before + rest.events


def test_fifty_viewers_of_one_task_each_receive_the_whole_log_once(slow_server):
    """Any number of viewers: each has its own cursor into one shared log."""
    with httpx.Client(base_url=slow_server.url, timeout=30) as c:
        task_id = run_task(c, "Build a conference schedule app")

    async def view() -> list[str]:
        async with (
            httpx.AsyncClient(base_url=slow_server.url, timeout=60) as client,
            client.stream("GET", f"/api/stream/{task_id}") as r,
        ):
            return [line async for line in r.aiter_lines() if line.startswith("data:")]

    async def all_viewers() -> list[list[str]]:
        return await asyncio.gather(*(view() for _ in range(50)))

    logs = asyncio.run(all_viewers())
    reference = read_stream(slow_server.url, task_id)
    assert_well_formed_run(reference, task_id)
    expected = [f"data: {m.data}" for m in reference.messages]
    assert all(log == expected for log in logs)
