"""The TaskStore contract, run against SQLite (the default) and a real PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.exc import OperationalError

from delivery.errors import TaskNotFoundError
from delivery.events import Event
from delivery.tasks.records import DocumentVersion, TaskRecord, TaskStatus
from delivery.tasks.store import PushConfig, RememberedRequest, TaskStore, WebhookDelivery
from tests.support.real_services import fresh_postgres_database


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.system)])
def store_url(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'tasks.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture
def store(store_url) -> Iterator[TaskStore]:
    s = TaskStore(store_url)
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
    newest = store.list_tasks(None, 2, None)
    assert [r.task_id for r in newest] == ["t-list-2", "t-list-1"]
    assert next(r.task_id for r in store.list_tasks(None, 2, newest[-1].created_at)) == "t-list-0"
    assert next(r.task_id for r in store.list_tasks(TaskStatus.running, 10, None)) == "t-list-1"
    assert all(r.status is TaskStatus.running for r in store.list_tasks(TaskStatus.running, 10, None))
    assert {"t-list-1", "t-list-2"} <= {r.task_id for r in store.unfinished()}


def test_events_append_in_batches_load_in_order_and_purge(store):
    store.save(record("t-ev", status=TaskStatus.succeeded, finished_at=time.time() - 100))
    events = [
        Event("t-ev", i, "QAEngineer", "thought", f"token {i} ✓", 1.5 + i, {"n": i} if i % 2 else None)
        for i in range(1, 1201)
    ]
    store.append_events(events[600:])
    store.append_events(events[:600])
    assert store.load_events("t-ev") == events
    assert store.last_sequence("t-ev") == 1200
    assert store.last_sequence("t-none") == 0
    assert store.purge_finished_before(time.time()) >= 1
    assert store.load_events("t-ev") == []
    with pytest.raises(TaskNotFoundError):
        store.get("t-ev")


def test_push_configs_are_bounded_per_task_keep_their_place_when_replaced_and_go_with_their_task(store):
    store.save(record("t-push", status=TaskStatus.running))
    base = time.time()
    for n in range(3):
        assert store.save_push_config(PushConfig("t-push", f"c{n}", f"https://r.example/{n}", base + n), limit=3)
    assert not store.save_push_config(PushConfig("t-push", "c3", "https://r.example/3", base + 3), limit=3)
    # Replacing one is not adding one, and it keeps its place (paging reads them in this order).
    assert store.save_push_config(PushConfig("t-push", "c0", "https://r.example/moved", base + 9, token="t"), limit=3)
    configs = store.push_configs(["t-push"])["t-push"]
    assert [(c.config_id, c.url, c.created_at, c.token) for c in configs] == [
        ("c0", "https://r.example/moved", base, "t"),
        ("c1", "https://r.example/1", base + 1, None),
        ("c2", "https://r.example/2", base + 2, None),
    ]
    store.save(record("t-push", status=TaskStatus.succeeded, finished_at=base - 100))
    assert store.purge_finished_before(base) >= 1
    assert store.push_configs(["t-push"]) == {}


def test_a_second_store_on_the_same_database_sees_the_same_data(store_url, store):
    """Several API processes share one database: what one writes, another reads."""
    store.save(record("t-shared", status=TaskStatus.awaiting_confirmation))
    other = TaskStore(store_url)  # schema creation on an existing database is a no-op
    try:
        assert other.get("t-shared").status is TaskStatus.awaiting_confirmation
    finally:
        other.close()


def test_a_database_made_by_an_earlier_version_gains_the_new_columns(tmp_path):
    """Additive migration: nullable columns added since are created, old rows stay readable."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema of the first release, one row in it
        conn.execute(
            "CREATE TABLE tasks (task_id VARCHAR(36) PRIMARY KEY, requirement TEXT NOT NULL, "
            "skip_confirmation BOOLEAN NOT NULL, language VARCHAR(8) NOT NULL, status VARCHAR(32) NOT NULL, "
            "created_at FLOAT NOT NULL, started_at FLOAT, finished_at FLOAT, current_agent VARCHAR(64), "
            "completed_steps INTEGER NOT NULL, total_steps INTEGER NOT NULL, error TEXT, "
            "deliverables TEXT NOT NULL, feedback TEXT NOT NULL, traceability TEXT)"
        )
        conn.execute(
            "INSERT INTO tasks VALUES ('t-old', 'Build a wiki', 1, 'en', 'succeeded', 1.0, 2.0, 3.0, NULL, "
            "4, 4, NULL, '{\"test_plan\": \"# Plan\"}', '[]', NULL)"
        )
    store = TaskStore(f"sqlite:///{path}")
    try:
        old = store.get("t-old")
        assert old.status is TaskStatus.succeeded and old.deliverables == {"test_plan": "# Plan"}
        assert old.owner is None and old.heartbeat_at is None and old.run_seconds == 0.0
        with sqlite3.connect(path) as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        assert {"owner", "heartbeat_at", "confirm_deadline", "run_seconds"} <= columns
        old.owner = "me"
        store.save(old)
        assert store.get("t-old").owner == "me"
    finally:
        store.close()


def test_unknown_ids_that_no_table_could_hold_are_not_found_without_a_query(store):
    for task_id in ("\x00", "a\x00b", "x" * 37, "x" * 100_000):
        with pytest.raises(TaskNotFoundError):
            store.get(task_id)


def test_an_idempotency_claim_is_answered_once_and_remembered_until_it_expires(store):
    now = 1_000_000.0
    scope = f"scope-{time.time_ns()}"

    def claim(at: float, fingerprint: str = "fp"):
        return store.claim_request(scope, fingerprint, at, abandoned_before=at - 120, expired_before=at - 86400)

    assert claim(now) is None  # claimed: the caller does the work
    in_progress = claim(now + 1)
    assert in_progress is not None and in_progress.status_code is None and in_progress.fingerprint == "fp"
    store.answer_request(scope, 202, '{"task_id": "t"}')
    remembered = claim(now + 2, "another")
    assert remembered is not None
    assert (remembered.fingerprint, remembered.status_code, remembered.answer) == ("fp", 202, '{"task_id": "t"}')
    # An answer outlives the abandonment limit; after the TTL the key is free again.
    assert claim(now + 1000) is not None
    assert claim(now + 86401) is None


def test_a_failed_or_abandoned_claim_frees_the_key(store):
    scope = f"scope-{time.time_ns()}"
    assert store.claim_request(scope, "fp", 10.0, abandoned_before=0, expired_before=0) is None
    store.release_request(scope)  # the request failed: a retry runs afresh
    assert store.claim_request(scope, "fp", 11.0, abandoned_before=0, expired_before=0) is None
    # Its process died mid-request: once the claim is older than the abandonment limit, taken over.
    assert store.claim_request(scope, "fp", 12.0, abandoned_before=11.0, expired_before=0) is not None
    assert store.claim_request(scope, "fp", 200.0, abandoned_before=80.0, expired_before=0) is None
    assert store.purge_requests_before(1e12) >= 1


def test_a_phase_is_claimed_once_and_a_later_attempt_fences_off_the_earlier(store):
    queued = record("t-claim", status=TaskStatus.queued)
    store.save(queued)
    first, second = store.get("t-claim"), store.get("t-claim")
    first.owner, second.owner = "worker-1", "worker-2"
    assert store.claim_phase(first)
    assert not store.claim_phase(second)  # the same message, delivered twice
    assert store.claim_phase(first)  # its owner may claim again (a local run held since submit)
    assert store.heartbeat("worker-1", {"t-claim": 1}, 100.0) == []
    taken = store.get("t-claim")
    taken.owner, taken.attempts, taken.heartbeat_at = "reaper", 2, None
    assert store.take_over(taken, "worker-1", 100.0)
    first.completed_steps = 3
    assert not store.save_unless_finished(first)  # attempt 1 is over: its writes are refused
    assert store.heartbeat("worker-1", {"t-claim": 1}, 200.0) == ["t-claim"]
    now = store.get("t-claim")
    assert (now.owner, now.attempts, now.heartbeat_at, now.completed_steps) == ("reaper", 2, None, 0)
    assert store.save_unless_finished(now)
    celery = store.get("t-claim")  # taken over for Celery: nobody's until a worker claims it
    celery.owner, celery.attempts = None, 3
    assert not store.take_over(celery, "reaper", 999.0)  # read with another heartbeat: someone moved first
    assert store.take_over(celery, "reaper", None)
    assert store.heartbeat("reaper", {"t-claim": 2}, 300.0) == ["t-claim"]  # attempt 2 is over
    paused = store.get("t-claim")
    paused.status, paused.owner = TaskStatus.awaiting_confirmation, None
    store.save(paused)
    paused.owner = "worker-3"
    assert not store.claim_phase(paused)  # a message that comes back for a paused task runs nothing


def test_finished_tasks_without_a_stored_ending_are_found_in_their_window(store):
    for name, finished_at, ending in [
        ("t-end-ok", 500.0, "end"),
        ("t-end-lost", 500.0, None),
        ("t-end-old", 50.0, None),
    ]:
        store.save(record(name, status=TaskStatus.succeeded, finished_at=finished_at))
        store.append_events([Event(name, 1, "System", "start", "s", 1.0)])
        if ending:
            store.append_events([Event(name, 2, "System", ending, "done", 2.0)])
    store.save(record("t-end-running", status=TaskStatus.running))
    assert [r.task_id for r in store.finished_without_ending(100.0, 1000.0)] == ["t-end-lost"]


@pytest.mark.system
def test_processes_starting_together_on_a_fresh_postgresql_all_get_the_schema():
    """A new deployment starts its API replicas and workers at once: each creates the schema if
    it is missing. Concurrent CREATE TABLEs collided (UniqueViolation on pg_type) and a process
    died at start-up; now they take turns and every one starts."""
    with fresh_postgres_database() as url:
        barrier = threading.Barrier(6)

        def start() -> TaskStore:
            barrier.wait()
            return TaskStore(url)

        with ThreadPoolExecutor(6) as pool:
            stores = list(pool.map(lambda _: start(), range(6)))
        try:
            stores[0].save(record("t-1"))
            assert all(s.get("t-1").task_id == "t-1" for s in stores)
        finally:
            for s in stores:
                s.close()


class _LosesTheFirstAnswer:
    """The store's engine, except that the first transaction commits and then reports the
    connection lost, as a database restart between COMMIT and its answer does."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.lost = 0

    def begin(self):
        @contextlib.contextmanager
        def transaction():
            with self._engine.begin() as conn:
                yield conn
            if not self.lost:
                self.lost += 1
                raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

        return transaction()

    def __getattr__(self, name):
        return getattr(self._engine, name)


def _writes(store: TaskStore, n: int) -> dict:
    """Writes the store retries, with their first answer and how to see they happened once. (The
    event archive's insert skips stored sequences: test_events_append_in_batches_load_in_order_and_purge.)"""
    task_id = f"t-again-{n}"
    base = record(task_id, status=TaskStatus.queued)
    started = record(task_id, status=TaskStatus.running, owner="p-1", heartbeat_at=12.5)
    version = DocumentVersion(task_id, "test_plan", "QAEngineer", "first draft", 3.25, [], content="# Plan")
    delivery = WebhookDelivery(f"wh-{n}", task_id, "http://receiver/", "task.succeeded", "{}", 1.0, next_attempt_at=1.0)
    return {
        "save": (lambda: store.save(base), None, lambda: store.get(task_id) == base),
        "transition": (
            lambda: store.transition(started, TaskStatus.queued),
            True,
            lambda: store.get(task_id).status is TaskStatus.running,
        ),
        "add_version": (lambda: store.add_version(version), 1, lambda: len(store.versions(task_id, "test_plan")) == 1),
        "claim_request": (
            lambda: store.claim_request(f"scope-{n}", "fp", 7.5, 0.0, 0.0),
            None,
            lambda: store.claim_request(f"scope-{n}", "fp", 8.5, 0.0, 0.0) == RememberedRequest("fp", 7.5, None, None),
        ),
        "add_webhooks": (lambda: store.add_webhooks([delivery]), None, lambda: len(store.webhooks(task_id)) == 1),
    }


@pytest.mark.parametrize("write", ["save", "transition", "add_version", "claim_request", "add_webhooks"])
def test_a_write_retried_after_its_commit_lost_its_answer_answers_as_the_first_time_and_is_kept_once(store, write):
    n = time.monotonic_ns()
    store.save(record(f"t-again-{n}", status=TaskStatus.queued))  # what the conditional save expects
    call, answer, happened_once = _writes(store, n)[write]
    engine = store.engine
    store.engine = _LosesTheFirstAnswer(engine)
    try:
        assert call() == answer
        assert store.engine.lost == 1  # the answer was lost, and the store retried
    finally:
        store.engine = engine
    assert happened_once()
