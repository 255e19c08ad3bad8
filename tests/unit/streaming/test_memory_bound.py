"""STREAM_MEMORY_MB: finished logs held for replay are bounded by size, the least recently read
go first; running logs, logs not yet stored and the most recently read one always stay."""

from __future__ import annotations

import asyncio
from collections import deque

from delivery.events import Event
from delivery.streaming.backend import iterate
from delivery.streaming.memory import MemoryEventBackend
from delivery.tasks.records import TaskRecord
from delivery.tasks.store import TaskStore
from stream_manager import StreamManager
from tests.support.waiting import wait_for

EVENTS = 20
CONTENT = "token " * 20


def finish(backend: MemoryEventBackend | StreamManager, task_id: str) -> None:
    backend.open(task_id)
    for _ in range(EVENTS):
        backend.publish(task_id, "QAEngineer", "thought", CONTENT, None)
    backend.publish(task_id, "System", "end", "done", {"verdict": "GO"})


def one_log_bytes() -> int:
    backend = MemoryEventBackend()
    finish(backend, "probe")
    return backend.finished_bytes


def test_finished_logs_stay_within_the_bound_and_the_least_recently_read_go_first():
    one = one_log_bytes()
    assert one > EVENTS * len(CONTENT)  # counts at least the text it holds
    backend = MemoryEventBackend(memory_limit_bytes=3 * one + one // 2)
    for task_id in ("a", "b", "c"):
        finish(backend, task_id)
    assert backend.finished_bytes == 3 * one
    backend.events("a")  # read: "b" is now the least recently read
    finish(backend, "d")
    assert [t for t in "abcd" if backend.holds(t)] == ["a", "c", "d"]
    assert backend.finished_bytes == 3 * one
    backend.subscription("c").close()  # a viewer replays "c": "a" goes next
    finish(backend, "e")
    assert [t for t in "abcde" if backend.holds(t)] == ["c", "d", "e"]


def test_running_logs_are_never_let_go_and_one_log_over_the_bound_stays_alone():
    backend = MemoryEventBackend(memory_limit_bytes=1)
    backend.open("running")
    for _ in range(3 * EVENTS):
        backend.publish("running", "SoftwareDeveloper", "thought", CONTENT, None)
    finish(backend, "a")
    finish(backend, "b")
    assert backend.holds("running") and backend.holds("b") and not backend.holds("a")
    assert backend.finished_bytes == one_log_bytes()


def test_a_finished_log_is_let_go_only_once_the_store_has_it_whole():
    archive: deque[Event] = deque()
    backend = MemoryEventBackend(memory_limit_bytes=1)
    backend.attach_archive(archive)
    finish(backend, "a")
    finish(backend, "b")
    assert backend.holds("a") and backend.holds("b") and backend.finished_bytes == 0
    backend.mark_durable([e for e in archive if e.task_id == "a"])
    backend.mark_durable([e for e in archive if e.task_id == "b"])
    assert not backend.holds("a") and backend.holds("b")


def test_a_viewer_of_a_log_that_is_let_go_reads_on_and_the_next_replays_it_from_the_store(tmp_path):
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    manager = StreamManager(MemoryEventBackend(memory_limit_bytes=1), store)
    manager.start()
    try:
        for task_id in ("a", "b"):
            store.save(TaskRecord(task_id=task_id, requirement="r", skip_confirmation=True, language="en"))
        finish(manager, "a")
        whole = manager.events("a")
        early_viewer = manager.subscription("a", after=0)
        finish(manager, "b")  # once the archiver stored "b" whole, "a" (stored earlier) is let go
        wait_for(lambda: not manager.holds("a"), timeout=10, message="the log of a to be let go")

        async def drain() -> list[Event]:
            return [e async for batch in iterate(early_viewer) for e in batch]

        assert asyncio.run(drain()) == whole
        manager.make_available("a")  # a later viewer: the store has it
        assert manager.holds("a") and manager.events("a") == whole
        assert not manager.holds("b")  # "a" is the most recently read now
    finally:
        manager.close()
        store.close()


def test_a_held_finished_log_is_out_of_the_garbage_collectors_sight_and_replays_the_same():
    """Held as plain tuples, which the collector stops tracking at its next pass (tokens have no
    metadata); read back as equal events with the same SSE frames."""
    import gc

    backend = MemoryEventBackend()
    backend.open("t")
    for n in range(EVENTS):
        backend.publish("t", "QAEngineer", "thought", f"{CONTENT}{n}", None)
    running = backend.events("t")
    frames = [event.sse for event in running[:5]]  # some encoded, as a viewer would have
    backend.publish("t", "System", "end", "done", {"verdict": "GO"})
    held = backend._streams["t"].log
    rows = held._rows  # type: ignore[attr-defined]
    gc.collect()
    assert sum(gc.is_tracked(row) for row in rows) == 1  # the terminal event, with its metadata
    replayed = asyncio.run(read_all(backend, "t", 0))
    assert replayed == [*running, Event("t", EVENTS + 1, "System", "end", "done", replayed[-1].ts, {"verdict": "GO"})]
    assert [event.sse for event in replayed[:5]] == frames
    assert [event.sse for event in replayed] == [event.sse for event in backend.events("t")]
    assert asyncio.run(read_all(backend, "t", EVENTS - 2)) == replayed[EVENTS - 2 :]


async def read_all(backend: MemoryEventBackend, task_id: str, after: int) -> list[Event]:
    return [event async for batch in iterate(backend.subscription(task_id, after)) for event in batch]
