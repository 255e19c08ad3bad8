"""The StreamManager: this process's task event logs, and the one place that knows where they live.

Agent threads publish through it, SSE viewers subscribe through it, and the task lifecycle asks it
for a task's log, its last sequence, and to publish the terminal event. Whether a log is held here
in memory, mirrored from Redis, or reloaded from the task store is decided here and nowhere else.

It is the process's singleton (the design card's "StreamManager keyed by task_id"): built once at
start-up from settings with `StreamManager.create(settings, store)`, found anywhere afterwards with
`StreamManager.instance()`, and never patched. Tests and benchmarks may build private managers
with the constructor.

The bridge from agent threads to the event loop is `MemoryEventBackend.publish`
(delivery/streaming/memory.py); docs/architecture.md tells the whole path.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Protocol

from delivery.errors import StreamClosedError, TaskNotFoundError
from delivery.events import SYSTEM_AGENT, TERMINAL_EVENT_TYPES, Event, EventType
from delivery.settings import EventBackendKind, Settings
from delivery.streaming.archive import EventArchiver
from delivery.streaming.backend import EventBackend, StreamSnapshot, Subscription, iterate
from delivery.streaming.memory import MemoryEventBackend
from delivery.streaming.redis_backend import RedisEventBackend
from delivery.tasks.records import TaskRecord, TaskStatus
from delivery.tasks.store import TaskStore

log = logging.getLogger(__name__)

_TERMINAL_EVENT = {
    TaskStatus.succeeded: EventType.end.value,
    TaskStatus.failed: EventType.error.value,
    TaskStatus.cancelled: EventType.cancelled.value,
}


def _restored_ending(record: TaskRecord) -> tuple[str, str, dict[str, Any]]:
    """The terminal event a finished task's record implies: (event type, content, metadata)."""
    content = record.error or f"The task {record.status.value}; this event was restored from its record."
    return _TERMINAL_EVENT[record.status], content, {"restored": True}


class PublishEvent(Protocol):
    def __call__(
        self, task_id: str, agent_name: str, event_type: str, content: str, metadata: dict[str, Any] | None = None, /
    ) -> None: ...


def backend_for(settings: Settings) -> EventBackend:
    """The event backend EVENT_BACKEND names."""
    if settings.event_backend is EventBackendKind.redis:
        return RedisEventBackend(
            settings.redis_url,
            maxlen=settings.redis_stream_maxlen,
            ttl_s=settings.stream_ttl_s,
            memory_limit_bytes=settings.stream_memory_bytes,
        )
    return MemoryEventBackend(memory_limit_bytes=settings.stream_memory_bytes)


class StreamManager:
    _instance: ClassVar[StreamManager | None] = None
    _instance_lock: ClassVar[threading.Lock] = threading.Lock()

    # Bound to the backend's own methods in __init__: the event path has no call in between.
    publish: PublishEvent
    """publish(task_id, agent_name, event_type, content, metadata=None), from any thread, never
    blocking; StreamClosedError after the terminal event, TaskNotFoundError for logs not held."""
    is_closed: Callable[[str], bool]
    """Whether the task's log has its terminal event (cheap: asked before every event)."""

    def __init__(self, backend: EventBackend, store: TaskStore | None = None) -> None:
        """`store` makes logs durable and replayable after they leave memory; without one (unit
        tests, benchmarks of the core) logs live only as long as they are held."""
        self._backend = backend
        self._store = store
        self._archiver = EventArchiver(store, backend.mark_durable) if store is not None else None
        if self._archiver is not None:
            backend.attach_archive(self._archiver.queue, self._archiver.wake)
            backend.attach_store(self._stored_events)
        else:
            backend.attach_archive(None)
        self.publish = backend.publish
        self.is_closed = backend.is_closed

    # -- the process's one manager --------------------------------------------------------------

    @classmethod
    def create(cls, settings: Settings, store: TaskStore, backend: EventBackend | None = None) -> StreamManager:
        """Build this process's manager from settings (`backend` overrides EVENT_BACKEND)."""
        with cls._instance_lock:
            if cls._instance is not None:
                raise RuntimeError(
                    "This process already has a StreamManager; use StreamManager.instance(), "
                    "or close() the old one first."
                )
            cls._instance = cls(backend or backend_for(settings), store)
            return cls._instance

    @classmethod
    def instance(cls) -> StreamManager:
        manager = cls._instance
        if manager is None:
            raise RuntimeError(
                "No StreamManager yet: it is created when the app or the worker starts (delivery.runtime.Runtime)."
            )
        return manager

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin serving: `loop` is the event loop viewers are served on (None in a worker)."""
        self._backend.bind_loop(loop)
        self._backend.start()
        if self._archiver is not None:
            self._archiver.start()

    def close(self) -> None:
        """Write out everything published, stop, and stop being the process's manager."""
        self._backend.bind_loop(None)
        self._backend.stop()
        if self._archiver is not None:
            self._archiver.stop()
        with self._instance_lock:
            if StreamManager._instance is self:
                StreamManager._instance = None

    def problems(self) -> dict[str, str | None]:
        """Readiness of the event path: {part: what is wrong, or None}."""
        parts = {"events": self._backend.problem()}
        if self._archiver is not None:
            parts["archiver"] = self._archiver.problem()
        return parts

    # -- writing ----------------------------------------------------------------------------------

    def open(self, task_id: str) -> None:
        """Start the log of a new task."""
        self._backend.open(task_id)

    def publish_terminal(
        self, task_id: str, agent_name: str, event_type: str, content: str, metadata: dict[str, Any] | None = None
    ) -> None:
        """Publish the event that ends a task's log, wherever that log is.

        Call only after winning the store's conditional update for the ending (see
        delivery/tasks/runs.py), so no one else can be ending the same log.
        """
        try:
            self.make_available(task_id, live=True)
            self.publish(task_id, agent_name, event_type, content, metadata)
        except StreamClosedError:  # the store decided first, so this cannot race; kept as a guard
            log.error("task %s already had a terminal event", task_id)
        except TaskNotFoundError:  # the stream died with its process and no store holds it
            log.error("task %s has no log anywhere; its terminal event is lost", task_id)

    def on_archived(self, listener: Callable[[list[Event]], None]) -> None:
        """Call `listener` (on the archiver's thread; it must not raise) with each batch of
        events once stored: what follows from an event being durable (A2A pushes)."""
        if self._archiver is not None:
            self._archiver.on_archived.append(listener)

    def complete_archive(self, task_id: str) -> int:
        """Store what the shared backend holds of the task's log and the store lacks: the events
        a lost process wrote to Redis but had not yet archived. Called by whoever takes over or
        ends a task another process was running, before it adds events of its own. Returns how
        many were missing. Blocking."""
        if self._archiver is None or self._store is None or not self._backend.shared:
            return 0
        self._archiver.flush()
        missing = self._backend.shared_events_after(task_id, self._store.last_sequence(task_id))
        if missing:
            log.warning("task %s: %d events were in Redis but not in the store; archived now", task_id, len(missing))
            self._archiver.queue.extend(missing)
            self._archiver.flush()
        return len(missing)

    def repair_ending(self, record: TaskRecord) -> None:
        """A finished task whose stored log has no terminal event (its process died between
        storing the ending and storing the event): store what Redis has, and if the event is not
        there either, publish it from the record, so every viewer's stream ends. Blocking."""
        self.complete_archive(record.task_id)
        if self._store is not None:
            events = self._store.load_events(record.task_id)
            if events and events[-1].event_type in TERMINAL_EVENT_TYPES:
                return
        self.publish_terminal(record.task_id, SYSTEM_AGENT, *_restored_ending(record))

    def flush(self) -> None:
        """Store everything published so far and show it to viewers (before a shutdown ends
        their streams). Blocking."""
        if self._archiver is not None:
            self._archiver.flush()

    # -- where a log lives --------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        """Other processes write to the same logs (Redis): one of them may die mid-log."""
        return self._backend.shared

    def holds(self, task_id: str) -> bool:
        """The log is here, ready for viewers without any I/O."""
        return self._backend.holds(task_id)

    def make_available(self, task_id: str, *, live: bool = False) -> None:
        """Hold the task's log here: it is already held, or it is mirrored from the shared backend,
        or it is reloaded from the store (TaskNotFoundError when it is nowhere). `live` keeps a
        reloaded log open for more events (a task that goes on after a restart). Blocking."""
        if self._backend.holds(task_id) or self._backend.load(task_id):
            return
        if self._store is None:
            raise TaskNotFoundError(task_id)
        record = self._store.get(task_id)  # TaskNotFoundError for unknown ids
        events = self._stored_events(task_id)
        lost_ending = record.status.finished and not (events and events[-1].event_type in TERMINAL_EVENT_TYPES)
        self._backend.restore(task_id, events, closed=not (live or lost_ending))
        if lost_ending:
            # The process that ended the task died after storing the status but before its
            # terminal event was stored (so no viewer saw it): end the log as the record says.
            self._backend.publish(task_id, SYSTEM_AGENT, *_restored_ending(record))

    # -- reading ------------------------------------------------------------------------------------

    def subscription(self, task_id: str, after: int = 0) -> Subscription:
        """A viewer's cursor after sequence `after` in a log held here (call make_available first)."""
        return self._backend.subscription(task_id, after)

    async def subscribe(self, task_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        """Batches of events after `after`, live, until the log ends (for in-process readers)."""
        async for batch in iterate(self.subscription(task_id, after)):
            yield batch

    def events(self, task_id: str) -> list[Event]:
        """The task's whole log: held here, else from the store. Blocking when it reads the store."""
        if self._backend.holds(task_id):
            return self._backend.events(task_id)
        if self._store is None:
            raise TaskNotFoundError(task_id)
        return self._stored_events(task_id)

    def _stored_events(self, task_id: str) -> list[Event]:
        """The task's archived log, with what this process has published so far (flushed first)."""
        assert self._store is not None
        if self._archiver is not None:
            self._archiver.flush()
        return self._store.load_events(task_id)

    def last_sequence(self, task_id: str) -> int:
        if self._backend.holds(task_id):
            return self._backend.snapshot(task_id).last_sequence
        return self._store.last_sequence(task_id) if self._store is not None else 0

    def snapshot(self, task_id: str) -> StreamSnapshot:
        return self._backend.snapshot(task_id)

    def snapshots(self) -> list[StreamSnapshot]:
        return self._backend.snapshots()

    def published_count(self) -> int:
        """Events this process has published since it started (metrics)."""
        return self._backend.published_count()

    def evict_expired(self, ttl_s: float) -> list[str]:
        """Forget logs that ended more than `ttl_s` ago (the store still replays them)."""
        return self._backend.evict_closed_before(time.time() - ttl_s)
