"""The TaskStore contract, run against SQLite (the default) and a real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from errors import TaskNotFoundError
from models import TaskStatus
from real_services import fresh_postgres_database
from task_store import SqlTaskStore, StoredEvent, TaskRecord


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'tasks.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture
def store(store_url) -> Iterator[SqlTaskStore]:
    s = SqlTaskStore(store_url)
    yield s
    s.close()


def record(task_id: str, **kw) -> TaskRecord:
    return TaskRecord(task_id=task_id, requirement="Build a wiki", skip_confirmation=True, language="en", **kw)


def test_save_get_update_round_trip(store):
    r = record("t-round", deliverables={"test_plan": "# 测试计划"}, feedback=["more tests"])
    store.save(r)
    assert store.get("t-round") == r
    r.status, r.completed_steps, r.traceability = TaskStatus.running, 2, {"verdict": "GO"}
    store.save(r)
    assert store.get("t-round") == r
    with pytest.raises(TaskNotFoundError):
        store.get("t-missing")


def test_list_filters_pages_and_unfinished(store):
    base = time.time() + 1000
    for i, status in enumerate([TaskStatus.succeeded, TaskStatus.running, TaskStatus.queued]):
        store.save(record(f"t-list-{i}", status=status, created_at=base + i))
    newest = store.list(None, 2, None)
    assert [r.task_id for r in newest] == ["t-list-2", "t-list-1"]
    assert [r.task_id for r in store.list(None, 2, newest[-1].created_at)][0] == "t-list-0"
    assert [r.task_id for r in store.list(TaskStatus.running, 10, None)][0] == "t-list-1"
    assert all(r.status is TaskStatus.running for r in store.list(TaskStatus.running, 10, None))
    assert {"t-list-1", "t-list-2"} <= {r.task_id for r in store.unfinished()}


def test_events_append_in_batches_load_in_order_and_purge(store):
    store.save(record("t-ev", status=TaskStatus.succeeded, finished_at=time.time() - 100))
    events = [StoredEvent("t-ev", i, "QAEngineer", "thought", f"token {i} ✓", 1.5 + i,
                          {"n": i} if i % 2 else None) for i in range(1, 1201)]
    store.append_events(events[600:])
    store.append_events(events[:600])
    assert store.load_events("t-ev") == events
    assert store.last_sequence("t-ev") == 1200
    assert store.last_sequence("t-none") == 0
    assert store.purge_finished_before(time.time()) >= 1
    assert store.load_events("t-ev") == []
    with pytest.raises(TaskNotFoundError):
        store.get("t-ev")


def test_a_second_store_on_the_same_database_sees_the_same_data(store_url, store):
    """Several API processes share one database: what one writes, another reads."""
    store.save(record("t-shared", status=TaskStatus.awaiting_confirmation))
    other = SqlTaskStore(store_url)  # schema creation on an existing database is a no-op
    try:
        assert other.get("t-shared").status is TaskStatus.awaiting_confirmation
    finally:
        other.close()
