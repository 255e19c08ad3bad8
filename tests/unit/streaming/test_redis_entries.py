"""How events are kept in Redis entries: a field per part of the event, read back exactly (text
in any language, metadata, time), and entries an earlier version wrote as one JSON object."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from delivery.streaming.redis_backend import RedisEventBackend
from tests.support.real_services import ensure_redis
from tests.support.waiting import wait_for

pytestmark = pytest.mark.system


def test_events_read_back_from_redis_are_the_events_published():
    """Read live (the reader thread's XREAD) and loaded afterwards (XRANGE)."""
    url = ensure_redis()
    writer, reader, late = (RedisEventBackend(url, ttl_s=60) for _ in range(3))
    task_id = str(uuid.uuid4())
    published = [
        ("ProductManager", "thought", "需求分析：用户登录 \u2028 \"quoted\" \\ back", None),
        ("QAEngineer", "step_end", "", {"usage": {"prompt_tokens": 3, "cost": None}, "名字": ["列表", 1.5]}),
        ("System", "end", "done", {"verdict": "GO"}),
    ]
    try:
        for backend in (writer, reader, late):
            backend.start()
        writer.open(task_id)
        assert reader.load(task_id)  # held before the events come: its reader thread tails them
        for agent, event_type, content, metadata in published:
            writer.publish(task_id, agent, event_type, content, metadata)
        wait_for(lambda: reader.is_closed(task_id), timeout=10, message="the live reader to get the end")
        assert late.load(task_id)
        expected = [(n, *p) for n, p in enumerate(published, 1)]
        for backend in (reader, late):
            events = backend.events(task_id)
            assert [(e.sequence, e.agent_name, e.event_type, e.content, e.metadata) for e in events] == expected
            assert all(isinstance(e.ts, float) and e.ts > 1e9 for e in events)
        assert [e.ts for e in reader.events(task_id)] == [e.ts for e in late.events(task_id)]
    finally:
        for backend in (writer, reader, late):
            backend.stop()


def test_an_entry_written_by_an_earlier_version_is_still_read():
    url = ensure_redis()
    client = redis.Redis.from_url(url)
    task_id = str(uuid.uuid4())
    key, meta = f"mad:task:{task_id}:events", f"mad:task:{task_id}:meta"
    old = {"a": "Coordinator", "t": "output", "c": "交付评审", "ts": 1700000000.25, "m": {"step": 4}}
    client.hset(meta, mapping={"seq": 1, "closed": 1})
    client.xadd(key, {"e": json.dumps(old, ensure_ascii=False)}, id="1-0")
    client.expire(key, 60)
    client.expire(meta, 60)
    backend = RedisEventBackend(url, ttl_s=60)
    assert backend.load(task_id)
    (event,) = backend.events(task_id)
    assert (event.sequence, event.agent_name, event.event_type, event.content, event.ts, event.metadata) == (
        1,
        "Coordinator",
        "output",
        "交付评审",
        1700000000.25,
        {"step": 4},
    )


def test_an_entry_that_cannot_be_read_is_held_by_a_marker_and_the_reader_goes_on():
    """Something other than this code wrote an entry into a task's log: live and late readers hold
    a marker at its sequence, every other event keeps its own, and the task's end still arrives."""
    url = ensure_redis()
    client = redis.Redis.from_url(url)
    writer, reader, late = (RedisEventBackend(url, ttl_s=60) for _ in range(3))
    task_id = str(uuid.uuid4())
    try:
        for backend in (writer, reader, late):
            backend.start()
        writer.open(task_id)
        assert reader.load(task_id)
        writer.publish(task_id, "ProductManager", "thought", "first")
        wait_for(lambda: len(reader.events(task_id)) == 1, timeout=10, message="the first event")
        # the next sequence, as the append script would take it, but with fields no version writes
        client.hincrby(f"mad:task:{task_id}:meta", "seq", 1)
        client.xadd(f"mad:task:{task_id}:events", {"x": "not an event"}, id="2-0")
        writer.publish(task_id, "System", "end", "done")
        wait_for(lambda: reader.is_closed(task_id), timeout=10, message="the live reader to get the end")
        assert late.load(task_id)
        for backend in (reader, late):
            events = backend.events(task_id)
            assert [(e.sequence, e.agent_name, e.event_type) for e in events] == [
                (1, "ProductManager", "thought"),
                (2, "System", "action"),
                (3, "System", "end"),
            ]
            assert events[1].metadata == {"missing": True}
    finally:
        for backend in (writer, reader, late):
            backend.stop()
