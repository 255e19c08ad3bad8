"""The EventBackend contract, run against the memory backend and a real Redis."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis

from delivery.errors import StreamClosedError, TaskNotFoundError
from delivery.events import Event
from delivery.observability import metrics
from delivery.streaming.archive import EventArchiver
from delivery.streaming.backend import EventBackend, iterate
from delivery.streaming.memory import MISSING, MemoryEventBackend
from delivery.streaming.redis_backend import RedisEventBackend
from delivery.tasks.store import TaskStore
from tests.support.real_services import ensure_redis
from tests.support.waiting import wait_for

Factory = Callable[[], EventBackend]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.system)])
def kind(request) -> str:
    return request.param


@pytest.fixture
def make_backend(kind) -> Iterator[Callable[[], EventBackend]]:
    """A factory: with Redis, each call is a separate 'process' sharing the same Redis."""
    url = ensure_redis() if kind == "redis" else None
    made: list[EventBackend] = []

    def make() -> EventBackend:
        backend = RedisEventBackend(url, maxlen=100_000, ttl_s=60) if url else MemoryEventBackend()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.bind_loop(None)
        backend.stop()


def new_id() -> str:
    return f"test-{uuid.uuid4()}"


async def collect(backend: EventBackend, task_id: str, after: int = 0) -> list:
    events = []
    async for batch in iterate(backend.subscription(task_id, after)):
        events.extend(batch)
    return events


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Yield to the loop until `condition` holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.01)


def run(scenario: Callable[[asyncio.AbstractEventLoop], Awaitable[None]], *backends: EventBackend) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for b in backends:
            b.bind_loop(loop)
            b.start()
        await asyncio.wait_for(scenario(loop), timeout=60)

    asyncio.run(main())


def test_every_subscriber_gets_every_event_live_mid_and_late(make_backend):
    backend = make_backend()
    task_id = new_id()

    async def scenario(loop) -> None:
        backend.open(task_id)
        early = [asyncio.create_task(collect(backend, task_id)) for _ in range(3)]
        await asyncio.sleep(0)

        def produce() -> None:
            for i in range(500):
                backend.publish(task_id, "A", "thought", str(i))
            backend.publish(task_id, "System", "end", "bye", {"verdict": "GO"})

        producer = threading.Thread(target=produce)
        producer.start()
        await asyncio.sleep(0.001)
        middle = asyncio.create_task(collect(backend, task_id))
        await asyncio.to_thread(producer.join)
        results = await asyncio.gather(*early, middle)
        late = await collect(backend, task_id)
        for events in [*results, late]:
            assert [e.sequence for e in events] == list(range(1, 502))
            assert [e.content for e in events[:-1]] == [str(i) for i in range(500)]
            assert events[-1].event_type == "end" and events[-1].metadata == {"verdict": "GO"}
        resumed = await collect(backend, task_id, after=450)
        assert [e.sequence for e in resumed] == list(range(451, 502))
        assert backend.snapshot(task_id).subscribers == 0

    run(scenario, backend)


def test_sequences_stay_gap_free_with_many_writer_threads(make_backend):
    backend = make_backend()
    task_id = new_id()

    async def scenario(loop) -> None:
        backend.open(task_id)
        reader = asyncio.create_task(collect(backend, task_id))
        barrier = threading.Barrier(4)

        def publisher(n: int) -> None:
            barrier.wait()
            for i in range(1000):
                backend.publish(task_id, f"agent{n}", "thought", str(i))

        threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            await asyncio.to_thread(t.join)
        backend.publish(task_id, "System", "end", "done")
        events = await reader
        assert [e.sequence for e in events] == list(range(1, 4002))
        for n in range(4):  # each writer's own order is kept
            assert [e.content for e in events if e.agent_name == f"agent{n}"] == [str(i) for i in range(1000)]

    run(scenario, backend)


def test_the_log_ends_once(make_backend):
    backend = make_backend()
    task_id = new_id()

    async def scenario(loop) -> None:
        backend.open(task_id)
        backend.publish(task_id, "System", "cancelled", "stopped by the user")
        with pytest.raises(StreamClosedError):
            backend.publish(task_id, "System", "end", "too late")
        events = await collect(backend, task_id)
        assert [(e.sequence, e.event_type) for e in events] == [(1, "cancelled")]
        with pytest.raises(TaskNotFoundError):
            backend.subscription(new_id())

    run(scenario, backend)


def test_the_archive_receives_every_event_with_its_sequence(make_backend):
    backend = make_backend()
    archive: deque = deque()
    backend.attach_archive(archive)
    task_id = new_id()

    async def scenario(loop) -> None:
        backend.open(task_id)
        for i in range(300):
            backend.publish(task_id, "A", "thought", str(i))
        backend.publish(task_id, "System", "end", "done")
        backend.mark_durable(list(archive))  # what the archiver does after its commit
        await collect(backend, task_id)
        await until(lambda: len(archive) == 301)  # the Redis writer archives after its write returns
        assert [(e.sequence, e.content) for e in archive][:3] == [(1, "0"), (2, "1"), (3, "2")]
        assert [e.sequence for e in archive] == list(range(1, 302))

    run(scenario, backend)


def test_writers_in_two_processes_share_one_gap_free_sequence(kind, make_backend):
    """Two backends stand for two processes; only Redis shares a task between them."""
    if kind == "memory":
        assert make_backend().load(new_id()) is False  # nothing outside the process
        return
    a, b = make_backend(), make_backend()
    task_id = new_id()

    async def scenario(loop) -> None:
        a.open(task_id)
        a.publish(task_id, "A", "thought", "from a, before b looked")
        await until(lambda: len(a.events(task_id)) == 1)  # written to Redis and read back by a
        assert await asyncio.to_thread(b.load, task_id) is True
        viewer_b = asyncio.create_task(collect(b, task_id))

        def write(backend, name) -> None:
            for i in range(500):
                backend.publish(task_id, name, "thought", str(i))

        writers = [threading.Thread(target=write, args=(x, n)) for x, n in ((a, "A"), (b, "B"))]
        for t in writers:
            t.start()
        for t in writers:
            await asyncio.to_thread(t.join)
        # Each process writes its own outbox: the end must not overtake the other's last events.
        await until(lambda: len(a.events(task_id)) == len(b.events(task_id)) == 1001)
        b.publish(task_id, "System", "end", "done")
        events_b = await viewer_b
        events_a = await collect(a, task_id)
        assert [e.sequence for e in events_b] == list(range(1, 1003))
        assert [(e.sequence, e.agent_name, e.content) for e in events_a] == [
            (e.sequence, e.agent_name, e.content) for e in events_b
        ]
        assert [e.content for e in events_b if e.agent_name == "B"] == [str(i) for i in range(500)]
        assert await asyncio.to_thread(b.load, new_id()) is False

    run(scenario, a, b)


def test_with_an_archive_viewers_see_only_what_it_has_committed():
    """Durable before visible: the memory backend shows an event once the archive committed it."""
    backend = MemoryEventBackend()
    archive: deque = deque()
    backend.attach_archive(archive)
    task_id = new_id()

    async def scenario(loop) -> None:
        backend.open(task_id)
        for i in range(5):
            backend.publish(task_id, "A", "thought", str(i))
        sub = backend.subscription(task_id)
        assert sub.take() == [] and backend.snapshot(task_id).last_sequence == 0
        committed = [archive.popleft() for _ in range(3)]
        backend.mark_durable(committed)
        waiter = sub.waiter()
        await asyncio.wait_for(waiter, 5)  # the commit wakes the viewer
        assert [e.sequence for e in sub.take()] == [1, 2, 3]
        assert backend.snapshot(task_id).last_sequence == 3
        backend.publish(task_id, "System", "end", "done")
        assert not sub.finished  # the end is not shown before it is stored
        backend.mark_durable(list(archive))
        assert [e.sequence for e in sub.take()] == [4, 5, 6] and sub.finished
        sub.close()

    run(scenario, backend)


@pytest.mark.system
def test_a_log_tailed_while_the_reader_waits_is_read_at_once(monkeypatch):
    """The reader waits READ_BLOCK_MS for new entries of the logs it tails (here 30 s, so that a
    reader left waiting would fail the test): a log tailed meanwhile wakes it, whether it waited
    with nothing to tail or blocked in XREAD on other logs."""
    from delivery.streaming import redis_backend

    monkeypatch.setattr(redis_backend, "READ_BLOCK_MS", 30_000)
    url = ensure_redis()
    api, worker = RedisEventBackend(url, ttl_s=60), RedisEventBackend(url, ttl_s=60)
    first, second = new_id(), new_id()

    async def scenario(loop) -> None:
        await asyncio.sleep(0.3)  # the API's reader is waiting, with nothing to tail
        for task_id in (first, second):  # then blocked in XREAD on `first` when `second` comes
            api.open(task_id)
            assert await asyncio.to_thread(worker.load, task_id) is True
            worker.publish(task_id, "ProductManager", "thought", f"the first token of {task_id}")
            await until(lambda: len(api.events(task_id)) == 1, timeout=10)  # noqa: B023 - awaited here
            assert api.events(task_id)[0].content == f"the first token of {task_id}"

    try:
        run(scenario, api, worker)
    finally:
        for backend in (api, worker):
            backend.bind_loop(None)
            backend.stop()  # wakes its reader too: it does not wait out the 30 s


def test_a_stored_log_with_a_gap_is_indexed_by_sequence_and_the_gap_marked(caplog):
    """Event 3 never reached the store: a viewer resuming after 3 gets 4 and on, not 5 and on
    (the log is indexed by sequence, not by position), and the gap is reported, not hidden."""
    stored = [Event("t", n, "A", "thought", f"token {n}", 1.0) for n in (1, 2, 4, 5)]
    backend = MemoryEventBackend()
    backend.restore("t", stored)
    assert [e.sequence for e in backend.subscription("t", after=3).take()] == [4, 5]
    log = backend.subscription("t", after=0).take()
    assert [e.sequence for e in log] == [1, 2, 3, 4, 5]
    assert [log[i] for i in (0, 1, 3, 4)] == stored
    assert (log[2].agent_name, log[2].event_type, log[2].metadata) == ("System", "action", {"missing": True})
    assert "events [3] are missing from the stored log" in caplog.text


def _background_errors(loop: str) -> float:
    return metrics.BACKGROUND_ERRORS.labels(loop)._value.get()


@pytest.mark.system
def test_an_event_redis_cannot_take_is_set_aside_and_every_other_one_goes_on(caplog):
    """Metadata no encoder takes (crews' events are cleaned at publish; code of one's own may
    publish directly): the Redis writer sets that event aside, logged with its task and counted,
    and writes the events after it; the writer thread lives on (it used to die, its outbox
    growing without bound)."""
    backend = RedisEventBackend(ensure_redis(), maxlen=1000, ttl_s=60)
    archive: deque = deque()
    backend.attach_archive(archive)
    task_id = new_id()
    before = _background_errors("redis-writer")

    async def scenario(loop) -> None:
        backend.open(task_id)
        backend.publish(task_id, "A", "thought", "before")
        backend.publish(task_id, "A", "action", "odd", {"handle": object()})
        backend.publish(task_id, "System", "end", "done")
        await until(lambda: len(archive) == 2)

    run(scenario, backend)
    assert [e.content for e in archive] == ["before", "done"]
    assert _background_errors("redis-writer") == before + 1
    assert f"task {task_id}: an event (action) could not be written to Redis; set aside" in caplog.text


def test_the_archiver_outlives_a_pass_that_fails(tmp_path, caplog):
    """A pass of the archiver that raises (here: showing a committed batch fails once) is logged
    and counted, and the thread goes on archiving; readiness sees it alive."""
    store = TaskStore(f"sqlite:///{tmp_path / 'tasks.db'}")
    shown: list[int] = []

    def on_durable(batch: list[Event]) -> None:
        if not shown:
            shown.append(0)
            raise RuntimeError("a viewer's wake-up failed")
        shown.extend(e.sequence for e in batch)

    archiver = EventArchiver(store, on_durable)
    before = _background_errors("archiver")
    archiver.start()
    try:
        archiver.queue.append(Event("t", 1, "A", "thought", "one", 1.0))
        archiver.wake.set()
        wait_for(lambda: _background_errors("archiver") == before + 1, 10, message="the failed pass")
        archiver.queue.append(Event("t", 2, "A", "thought", "two", 1.0))
        archiver.wake.set()
        wait_for(lambda: 2 in shown, 10, message="the next event archived")
        assert archiver.problem() is None
        assert [e.sequence for e in store.load_events("t")] == [1, 2]
        assert "an archiver pass failed; it goes on with the next events" in caplog.text
    finally:
        archiver.stop()
        store.close()


def test_a_replicated_batch_with_a_gap_is_held_by_sequence_not_refused(caplog):
    """The Redis reader hands the mirror a batch that skips a sequence (a defect upstream): the
    mirror marks the gap and keeps every event at its own sequence instead of raising (which
    killed the reader thread)."""
    backend = MemoryEventBackend()
    backend.restore("t", [], closed=False)  # a log the reader mirrors
    backend.replicate("t", [Event("t", n, "A", "thought", str(n), 1.0) for n in (1, 2)])
    backend.replicate("t", [Event("t", n, "A", "thought", str(n), 1.0) for n in (2, 3, 5)])
    assert [(e.sequence, e.content) for e in backend.events("t")][-3:] == [
        (3, "3"),
        (4, MISSING.format(sequence=4)),
        (5, "5"),
    ]
    assert "events [4] are missing" in caplog.text


@pytest.mark.system
def test_while_redis_is_unreachable_a_crew_pauses_at_the_outbox_bound_and_loses_nothing():
    """Redis (behind a proxy) goes down mid-task: the crew's thread waits once the outbox holds
    `outbox_limit` events (memory stays bounded), the event loop's own publish is never held, and
    when Redis is back every event is written, in order, once."""
    from tests.support.tcp_proxy import CuttableProxy

    proxy = CuttableProxy(6379)
    ensure_redis()
    backend = RedisEventBackend(f"redis://127.0.0.1:{proxy.port}/0", ttl_s=60, outbox_limit=50)
    task_id = new_id()
    published = threading.Event()
    try:
        backend.start()
        backend.open(task_id)
        proxy.down()
        proxy.cut()

        def crew() -> None:
            for n in range(200):
                backend.publish(task_id, "A", "thought", str(n))
            published.set()

        thread = threading.Thread(target=crew, daemon=True)
        thread.start()
        wait_for(lambda: len(backend._outbox) >= 50, timeout=10, message="the outbox to fill")
        assert not published.wait(1.5), "the crew went on publishing past the bound"
        assert len(backend._outbox) <= 51  # the writer's batch in hand aside

        async def from_the_loop() -> None:  # e.g. a cancel: taken at once, never waits on Redis
            backend.publish(task_id, "System", "action", "from the loop")

        asyncio.run(asyncio.wait_for(from_the_loop(), 1))
        proxy.up()
        assert published.wait(30), "the crew did not go on once Redis was back"
        backend.publish(task_id, "System", "end", "done")
        client = redis.Redis.from_url(ensure_redis())
        wait_for(lambda: client.xlen(f"mad:task:{task_id}:events") == 202, timeout=30, message="every event")
        contents = [e.content for e in backend.shared_events_after(task_id, 0)]
        crew_part = [c for c in contents if c.isdigit()]
        assert crew_part == [str(n) for n in range(200)] and "from the loop" in contents and contents[-1] == "done"
    finally:
        backend.stop()
        proxy.close()
