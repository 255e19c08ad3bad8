"""The contract of an event backend: where task logs live, and a viewer's subscription to one.

`MemoryEventBackend` (this process) and `RedisEventBackend` (shared by processes) implement it,
and tests/unit/streaming/test_event_backends.py runs one contract suite against both. Code
outside this package reaches a backend only through the `StreamManager` (stream_manager.py).
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from delivery.events import Event

# How many events one subscriber receives per wake-up; bounds the size of one SSE write.
MAX_BATCH = 512


class StreamSnapshot:
    __slots__ = ("closed", "closed_at", "created_at", "last_sequence", "subscribers", "task_id")

    def __init__(
        self,
        task_id: str,
        closed: bool,
        subscribers: int,
        last_sequence: int,
        created_at: float,
        closed_at: float | None,
    ) -> None:
        self.task_id = task_id
        self.closed = closed
        self.subscribers = subscribers
        self.last_sequence = last_sequence
        self.created_at = created_at
        self.closed_at = closed_at


class Subscription(ABC):
    """One viewer's position in a task's log. Use from the event loop thread only.

    A subscription owns at most one pending future: the backend resolves it (`notify`) when
    events arrive, and the SSE response resolves the same one for heartbeats, disconnects and
    shutdown, so waiting costs one future however many things can end the wait.
    """

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    @abstractmethod
    def take(self) -> list[Event]:
        """The next events already published (at most MAX_BATCH), or [] when caught up."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """Caught up with a log that has ended."""

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved by the next `notify`. Call right after take() returned [], with no
        await in between, so that no event can slip between the check and the wait."""
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def notify(self) -> None:
        """Wake the pending wait, if any (event loop thread only)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @abstractmethod
    def close(self) -> None: ...


async def iterate(subscription: Subscription) -> AsyncIterator[list[Event]]:
    """Batches from `subscription` until its log ends."""
    try:
        while True:
            batch = subscription.take()
            if batch:
                yield batch
            elif subscription.finished:
                return
            else:
                await subscription.waiter()
    finally:
        subscription.close()


class EventBackend(ABC):
    """Where task events live: in this process (memory) or shared by processes (redis)."""

    archive: deque[Event] | None = None  # every event published here is also appended for the store
    archive_wake: threading.Event = threading.Event()  # set after appending (attach_archive)
    shared = False  # other processes write to the same logs

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The event loop that serves viewers (None once it stops)."""

    def start(self) -> None:
        """Start background work (threads, connections); a no-op where there is none."""

    def stop(self) -> None:
        """Finish background work: everything published so far is written."""

    def problem(self) -> str | None:
        """What keeps this backend from working now (readiness), or None."""
        return None

    def attach_archive(self, archive: deque[Event] | None, wake: threading.Event | None = None) -> None:
        """Append every published event to `archive` and set `wake` (the archiver's) after it."""
        self.archive = archive
        self.archive_wake = wake or threading.Event()

    def mark_durable(self, events: list[Event]) -> None:
        """The archive has committed these events (called from the archiver's thread). A backend
        that holds events back until then shows them now; a shared backend, whose events are
        durable where replay reads them once published, ignores it."""

    @abstractmethod
    def open(self, task_id: str) -> None:
        """Start a new, empty log (ValueError if the task already has one)."""

    @abstractmethod
    def publish(
        self, task_id: str, agent_name: str, event_type: str, content: str, metadata: dict[str, Any] | None = None
    ) -> None:
        """Append one event from any thread without blocking. The backend assigns its sequence
        (the next one of the task, gap-free even with writers in several processes).

        Raises StreamClosedError after the terminal event and TaskNotFoundError for unknown tasks.
        """

    def load(self, task_id: str) -> bool:
        """Start holding a task whose log lives outside this process; False if there is none.
        Blocking: call from a worker thread."""
        return False

    def attach_store(self, stored_events: Callable[[str], list[Event]]) -> None:
        """How to read a task's archived log: a shared backend fills in from it what it no
        longer keeps itself (a log trimmed to REDIS_STREAM_MAXLEN)."""

    def shared_events_after(self, task_id: str, sequence: int) -> list[Event]:
        """The events after `sequence` that a shared backend holds for the task (those another
        process wrote); nothing for a backend that shares nothing. Blocking."""
        return []

    @abstractmethod
    def restore(self, task_id: str, events: list[Event], closed: bool = True) -> None:
        """Hold a task's stored log so it can be replayed (closed) or go on (open, for a task
        awaiting confirmation after a restart); no-op if already held."""

    @abstractmethod
    def holds(self, task_id: str) -> bool:
        """The task's log is held here, so viewers can subscribe without any I/O."""

    @abstractmethod
    def subscription(self, task_id: str, after: int = 0) -> Subscription:
        """A viewer positioned after sequence `after` (TaskNotFoundError for tasks not held)."""

    @abstractmethod
    def is_closed(self, task_id: str) -> bool:
        """The log has its terminal event (False for tasks not held). Cheap: the agent thread
        asks before each event, to stop a crew that another process cancelled."""

    @abstractmethod
    def snapshot(self, task_id: str) -> StreamSnapshot: ...

    @abstractmethod
    def snapshots(self) -> list[StreamSnapshot]: ...

    @abstractmethod
    def events(self, task_id: str) -> list[Event]:
        """A copy of the log held here (TaskNotFoundError when not held)."""

    @abstractmethod
    def published_count(self) -> int:
        """Events this process has appended to task logs since it started (for metrics)."""

    @abstractmethod
    def evict_closed_before(self, deadline: float) -> list[str]:
        """Forget streams closed before `deadline` (time.time()); return their task ids."""
