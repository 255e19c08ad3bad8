"""The StreamManager in process: the event log and its fan-out, where logs live, the singleton."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from delivery.errors import StreamClosedError, TaskNotFoundError
from delivery.events import Event, format_timestamp
from delivery.streaming.memory import MemoryEventBackend
from delivery.streaming.redis_backend import RedisEventBackend
from delivery.tasks.records import TaskRecord, TaskStatus
from delivery.tasks.store import TaskStore
from stream_manager import StreamManager
from tests.support.real_services import ensure_redis, first_sequence_in_redis
from tests.support.waiting import wait_for


def make_manager() -> StreamManager:
    return StreamManager(MemoryEventBackend())


async def collect(manager: StreamManager, task_id: str, after: int = 0) -> list:
    events = []
    async for batch in manager.subscribe(task_id, after):
        events.extend(batch)
    return events


def test_sequences_are_gap_free_and_per_thread_order_is_kept_under_concurrent_publishers():
    manager = make_manager()
    manager.open("t")
    threads_n, per_thread = 8, 2000
    barrier = threading.Barrier(threads_n)

    def publisher(n: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            manager.publish("t", f"agent{n}", "thought", str(i))

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    manager.publish("t", "System", "end", "done")

    events = asyncio.run(collect(manager, "t"))
    assert [e.sequence for e in events] == list(range(1, threads_n * per_thread + 2))
    for n in range(threads_n):
        contents = [e.content for e in events if e.agent_name == f"agent{n}"]
        assert contents == [str(i) for i in range(per_thread)]


def test_every_subscriber_gets_every_event_live_and_late():
    async def scenario() -> None:
        manager = make_manager()
        manager.start(asyncio.get_running_loop())
        manager.open("t")
        early = [asyncio.create_task(collect(manager, "t")) for _ in range(3)]
        await asyncio.sleep(0)

        def produce() -> None:
            for i in range(500):
                manager.publish("t", "A", "thought", str(i))
            manager.publish("t", "System", "end", "bye")

        producer = threading.Thread(target=produce)
        producer.start()
        await asyncio.sleep(0.001)
        middle = asyncio.create_task(collect(manager, "t"))  # joins while events flow
        producer.join()
        late = await collect(manager, "t")  # joins after the end
        results = await asyncio.gather(*early, middle)
        expected = list(range(1, 502))
        for events in [*results, late]:
            assert [e.sequence for e in events] == expected
            assert events[-1].event_type == "end"
        assert manager.snapshot("t").subscribers == 0

    asyncio.run(scenario())


def test_subscribe_after_n_resumes_with_nothing_missing_or_repeated():
    manager = make_manager()
    manager.open("t")
    for i in range(10):
        manager.publish("t", "A", "thought", str(i))
    manager.publish("t", "System", "end", "")
    for after in (0, 1, 5, 10, 11, 50):
        events = asyncio.run(collect(manager, "t", after))
        assert [e.sequence for e in events] == list(range(after + 1, 12))


def test_subscriber_waiting_beyond_head_receives_later_events():
    async def scenario() -> None:
        manager = make_manager()
        manager.start(asyncio.get_running_loop())
        manager.open("t")
        manager.publish("t", "A", "thought", "1")
        waiting = asyncio.create_task(collect(manager, "t", after=3))
        while manager.snapshot("t").subscribers == 0:  # the viewer is waiting at the tail
            await asyncio.sleep(0)
        for i in range(2, 6):
            await asyncio.to_thread(manager.publish, "t", "A", "thought", str(i))
        await asyncio.to_thread(manager.publish, "t", "System", "error", "failed")
        events = await asyncio.wait_for(waiting, 5)
        assert [e.sequence for e in events] == [4, 5, 6]

    asyncio.run(scenario())


def test_terminal_event_closes_the_log():
    manager = make_manager()
    manager.open("t")
    manager.publish("t", "System", "start", "")
    manager.publish("t", "System", "error", "boom")
    with pytest.raises(StreamClosedError):
        manager.publish("t", "System", "end", "again")
    assert manager.snapshot("t").closed
    assert manager.snapshot("t").last_sequence == 2


def test_unknown_task_is_an_error_not_a_new_stream():
    manager = make_manager()
    with pytest.raises(TaskNotFoundError):
        manager.snapshot("nope")
    with pytest.raises(TaskNotFoundError):
        manager.publish("nope", "A", "thought", "x")
    with pytest.raises(TaskNotFoundError):
        asyncio.run(collect(manager, "nope"))
    assert manager.snapshots() == []


def test_eviction_honours_the_ttl_and_never_drops_live_streams():
    manager = make_manager()
    for task_id in ("live", "done"):
        manager.open(task_id)
    manager.publish("done", "System", "end", "")
    assert manager.evict_expired(ttl_s=3600) == []
    time.sleep(0.01)
    assert manager.evict_expired(ttl_s=0.001) == ["done"]
    assert [s.task_id for s in manager.snapshots()] == ["live"]


def test_publishing_never_waits_for_a_blocked_event_loop():
    """Publishers must not wait on the loop: here the loop is stuck in a blocking call while a
    thread publishes; the thread finishes long before the loop wakes up."""

    async def scenario() -> None:
        manager = make_manager()
        manager.start(asyncio.get_running_loop())
        manager.open("t")
        done = threading.Event()

        def produce() -> None:
            for i in range(20_000):
                manager.publish("t", "A", "thought", str(i))
            done.set()

        threading.Thread(target=produce).start()
        finished_while_loop_blocked = done.wait(timeout=20)  # blocks the loop thread itself
        assert finished_while_loop_blocked
        manager.publish("t", "System", "end", "")
        events = await collect(manager, "t")
        assert len(events) == 20_001

    asyncio.run(scenario())


def test_event_wire_format():
    manager = make_manager()
    manager.open("t")
    manager.publish("t", "QAEngineer", "output", "行1\nline 2", {"k": 1})
    manager.publish("t", "System", "end", "")
    event = asyncio.run(collect(manager, "t"))[0]
    text = event.sse.decode()
    assert text.startswith("id: 1\nevent: output\ndata: {")
    assert text.endswith("}\n\n") and text.count("\n") == 4  # content newlines are escaped
    data = event.to_dict()
    assert list(data) == ["task_id", "sequence", "agent_name", "event_type", "content", "timestamp", "metadata"]
    assert data["content"] == "行1\nline 2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["timestamp"])
    assert format_timestamp(0.5) == "1970-01-01T00:00:00.500Z"


_TEXT = st.text(st.characters(exclude_categories=["Cs"]))  # any text that can be sent (no lone surrogates)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    agent=_TEXT,
    event_type=_TEXT,
    content=_TEXT,
    sequence=st.integers(1, 2**63 - 1),
    ts=st.floats(0, 4e9),
    metadata=st.none() | st.dictionaries(_TEXT, _JSON, max_size=4),
)
def test_the_sse_frame_carries_exactly_the_json_of_the_event(agent, event_type, content, sequence, ts, metadata):
    event = Event("t-1", sequence, agent, event_type, content, ts, metadata)
    expected = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
    for line_break in "\x85\u2028\u2029":  # escaped: see the next test
        expected = expected.replace(line_break, f"\\u{ord(line_break):04x}")
    assert event.sse == f"id: {sequence}\nevent: {event_type}\ndata: {expected}\n\n".encode()


def test_a_frame_is_split_into_lines_only_where_sse_splits_it_even_by_readers_built_on_splitlines():
    """U+0085, U+2028 and U+2029 end a line for str.splitlines (and so for httpx's and requests'
    iter_lines), not for SSE: escaped in the JSON, an event's data stays on one line for both."""
    text = "a\u2028b\x85c\u2029d"
    event = Event("t-1", 1, "Agent\u2028", "thought", text, 0.0, {"k\u2029": ["\x85"]})
    lines = event.sse.decode().splitlines()
    assert lines[:2] == ["id: 1", "event: thought"] and lines[3:] == [""]
    assert json.loads(lines[2].removeprefix("data: ")) == event.to_dict()


# -- where a log lives ----------------------------------------------------------------------------


def stored_manager(tmp_path) -> tuple[StreamManager, TaskStore]:
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    return StreamManager(MemoryEventBackend(), store), store


def test_a_log_that_left_memory_is_reloaded_from_the_store_for_replay(tmp_path):
    manager, store = stored_manager(tmp_path)
    store.save(TaskRecord(task_id="t", requirement="r", skip_confirmation=True, language="en"))
    manager.start()
    manager.open("t")
    for i in range(5):
        manager.publish("t", "A", "thought", str(i), None)
    manager.publish("t", "System", "end", "done", {"verdict": "GO"})
    held = manager.events("t")
    time.sleep(0.001)
    assert manager.evict_expired(ttl_s=0) == ["t"]
    assert not manager.holds("t")
    assert manager.events("t") == held  # read from the store (the archive was flushed first)
    assert manager.last_sequence("t") == 6
    manager.make_available("t")
    assert manager.holds("t") and manager.is_closed("t")
    assert [e.sequence for e in asyncio.run(collect(manager, "t", after=3))] == [4, 5, 6]
    manager.close()
    store.close()


def test_unknown_tasks_are_not_available_anywhere(tmp_path):
    manager, store = stored_manager(tmp_path)
    with pytest.raises(TaskNotFoundError):
        manager.make_available("nope")
    assert not manager.holds("nope") and manager.last_sequence("nope") == 0
    store.close()


def test_the_terminal_event_reaches_a_log_reloaded_live_after_a_restart(tmp_path):
    """A task whose process died: its stored log is reopened and ended right after its last event."""
    manager, store = stored_manager(tmp_path)
    store.save(TaskRecord(task_id="t", requirement="r", skip_confirmation=True, language="en"))
    store.append_events([Event("t", n, "A", "thought", str(n), 1.0 + n) for n in (1, 2, 3)])
    manager.start()
    manager.publish_terminal("t", "System", "error", "Interrupted")
    events = manager.events("t")
    assert [(e.sequence, e.event_type) for e in events][-2:] == [(3, "thought"), (4, "error")]
    manager.close()  # flushes the archive
    assert [e.sequence for e in store.load_events("t")] == [1, 2, 3, 4]
    store.close()


def test_a_finished_task_whose_terminal_event_died_with_its_process_gets_it_back(tmp_path):
    """The status was stored as succeeded, then the process died before the `end` event was
    (no viewer saw it): replay ends the log as the record says, once."""
    manager, store = stored_manager(tmp_path)
    store.save(
        TaskRecord(task_id="t", requirement="r", skip_confirmation=True, language="en", status=TaskStatus.succeeded)
    )
    store.append_events([Event("t", n, "A", "thought", str(n), 1.0 + n) for n in (1, 2, 3)])
    manager.start()
    manager.make_available("t")
    manager.flush()  # stored, so shown (no event loop here to be woken)
    replay = asyncio.run(collect(manager, "t"))
    assert [(e.sequence, e.event_type) for e in replay][-2:] == [(3, "thought"), (4, "end")]
    assert replay[-1].metadata == {"restored": True}
    manager.close()  # flushes the archive: the next replay reads it from the store
    assert [e.event_type for e in store.load_events("t")][-1:] == ["end"]
    store.close()


def test_one_manager_per_process_built_from_settings_and_found_by_instance(tmp_path):
    from delivery.settings import Settings

    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    with pytest.raises(RuntimeError, match="No StreamManager yet"):
        StreamManager.instance()
    manager = StreamManager.create(Settings(_env_file=None), store)
    try:
        assert StreamManager.instance() is manager
        with pytest.raises(RuntimeError, match="already has a StreamManager"):
            StreamManager.create(Settings(_env_file=None), store)
        # The event path is the backend's own bound method: no call in between.
        assert manager.publish == manager._backend.publish
    finally:
        manager.close()
        store.close()
    with pytest.raises(RuntimeError):
        StreamManager.instance()


@pytest.mark.system
def test_the_archive_of_a_lost_producer_is_completed_from_redis(tmp_path):
    """A process wrote events to Redis and died before its archiver stored the last of them:
    the one that takes the task over copies the rest from Redis, once, keeping their sequences."""
    url = ensure_redis()
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    producer = RedisEventBackend(url, ttl_s=60)  # no archive: what it wrote, the store never saw
    taker = StreamManager(RedisEventBackend(url, ttl_s=60), store)
    task_id = f"test-{uuid.uuid4()}"
    try:
        producer.start()
        taker.start()
        producer.open(task_id)
        for i in range(5):
            producer.publish(task_id, "ProductManager", "thought", f"token {i}")
        wait_for(lambda: producer.published_count() == 5, timeout=10)
        store.append_events([Event(task_id, 1, "System", "start", "first", 1.0)])  # archived before the crash
        assert taker.complete_archive(task_id) == 4
        assert taker.complete_archive(task_id) == 0
        stored = store.load_events(task_id)
        assert [(e.sequence, e.content) for e in stored] == [(1, "first")] + [
            (i + 2, f"token {i + 1}") for i in range(4)
        ]
    finally:
        producer.stop()
        taker.close()
        store.close()


@pytest.mark.system
def test_a_log_that_vanished_from_redis_is_put_back_and_goes_on_gap_free(tmp_path):
    """Redis lost a running task's log (it restarted without keeping data): the process that
    goes on with the task puts the stored log back, and every process continues it."""
    url = ensure_redis()
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    first, second, reader = (StreamManager(RedisEventBackend(url, ttl_s=60), store) for _ in range(3))
    task_id = str(uuid.uuid4())
    try:
        for manager in (first, second, reader):
            manager.start()
        store.save(TaskRecord(task_id=task_id, requirement="r", skip_confirmation=False, language="en"))
        first.open(task_id)
        for i in range(3):
            first.publish(task_id, "ProductManager", "thought", f"before {i}")
        wait_for(lambda: store.last_sequence(task_id) == 3, timeout=10)
        client = redis.Redis.from_url(url)
        client.delete(f"mad:task:{task_id}:events", f"mad:task:{task_id}:meta")  # lost with Redis
        second.make_available(task_id, live=True)
        second.publish(task_id, "System", "resumed", "goes on")
        second.publish_terminal(task_id, "System", "end", "done")
        wait_for(lambda: store.last_sequence(task_id) == 5, timeout=10)
        reader.make_available(task_id)
        logged = [(e.sequence, e.content) for e in reader.events(task_id)]
        assert logged == [(1, "before 0"), (2, "before 1"), (3, "before 2"), (4, "goes on"), (5, "done")]
        assert [(e.sequence, e.content) for e in store.load_events(task_id)] == logged
    finally:
        for manager in (first, second, reader):
            manager.close()
        store.close()


@pytest.mark.system
def test_a_shared_log_whose_ending_died_with_its_process_is_repaired(tmp_path):
    """The process that ended a task stored its status, then died before its terminal event
    reached Redis or the store: the watchdog's repair stores what Redis has and ends the log
    from the record, so viewers' streams end and the replay is whole."""
    url = ensure_redis()
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    producer = RedisEventBackend(url, ttl_s=60)  # no archive: it died before storing
    repairer, viewer = (StreamManager(RedisEventBackend(url, ttl_s=60), store) for _ in range(2))
    task_id = str(uuid.uuid4())
    now = time.time()
    record = TaskRecord(task_id=task_id, requirement="r", skip_confirmation=True, language="en")
    record.status, record.finished_at, record.error = TaskStatus.failed, now - 100, "The budget ran out."
    try:
        for part in (producer, repairer, viewer):
            part.start()
        store.save(record)
        producer.open(task_id)
        producer.publish(task_id, "System", "start", "started")
        producer.publish(task_id, "ProductManager", "thought", "需求")
        wait_for(lambda: producer.published_count() == 2, timeout=10)
        store.append_events([Event(task_id, 1, "System", "start", "started", now - 200)])
        assert [r.task_id for r in store.finished_without_ending(now - 3600, now - 30)] == [task_id]
        repairer.repair_ending(record)
        wait_for(lambda: store.last_sequence(task_id) == 3, timeout=10)
        stored = [(e.sequence, e.event_type, e.content) for e in store.load_events(task_id)]
        assert stored == [(1, "start", "started"), (2, "thought", "需求"), (3, "error", "The budget ran out.")]
        assert store.finished_without_ending(now - 3600, now - 30) == []
        viewer.make_available(task_id)
        assert [(e.sequence, e.event_type, e.content) for e in viewer.events(task_id)] == stored
    finally:
        producer.stop()
        repairer.close()
        viewer.close()
        store.close()


@pytest.mark.system
def test_a_log_trimmed_in_redis_is_completed_from_the_store_while_running_and_after_the_end(tmp_path):
    """REDIS_STREAM_MAXLEN keeps only the newest events in Redis: a process that loads the log
    later gets the rest from the store, gap-free, live and finished alike."""
    url = ensure_redis()
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    producer, live_reader, late_reader = (
        StreamManager(RedisEventBackend(url, maxlen=1000, ttl_s=60), store) for _ in range(3)
    )
    task_id = str(uuid.uuid4())
    client = redis.Redis.from_url(url)
    try:
        for manager in (producer, live_reader, late_reader):
            manager.start()
        store.save(TaskRecord(task_id=task_id, requirement="r", skip_confirmation=True, language="en"))
        producer.open(task_id)
        for i in range(3000):
            producer.publish(task_id, "QAEngineer", "thought", f"token {i}")
        wait_for(lambda: store.last_sequence(task_id) == 3000, timeout=30)
        first_kept = first_sequence_in_redis(client, task_id)
        assert first_kept is not None and first_kept > 1000  # Redis really trimmed the log
        live_reader.make_available(task_id)  # while running: the store's start, Redis's rest, then live
        producer.publish(task_id, "QAEngineer", "thought", "token 3000")
        producer.publish_terminal(task_id, "System", "end", "done")
        expected = [(n, f"token {n - 1}") for n in range(1, 3002)] + [(3002, "done")]
        wait_for(lambda: live_reader.is_closed(task_id), timeout=30, message="the live reader to see the end")
        assert [(e.sequence, e.content) for e in live_reader.events(task_id)] == expected
        late_reader.make_available(task_id)  # after the end
        assert [(e.sequence, e.content) for e in late_reader.events(task_id)] == expected
    finally:
        for manager in (producer, live_reader, late_reader):
            manager.close()
        store.close()
