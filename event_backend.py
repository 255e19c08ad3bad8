"""The event contract: one published event, a viewer's subscription, and the backend interface
that the memory and Redis backends implement (tests/test_event_backends.py runs it on both)."""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

# How many events one subscriber receives per wake-up; bounds the size of one SSE write.
MAX_BATCH = 512


_second_cache: tuple[int, str] = (-1, "")


def format_timestamp(ts: float) -> str:
    """UTC ISO-8601 with milliseconds; the part up to the second is cached (events come in bursts)."""
    global _second_cache
    second = int(ts)
    cached_second, prefix = _second_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_cache = (second, prefix)
    return f"{prefix}.{int(ts * 1000) % 1000:03d}Z"


class Event:
    """One published event. Encoded to SSE bytes at most once, lazily, on the loop thread."""

    __slots__ = ("task_id", "sequence", "agent_name", "event_type", "content", "ts", "metadata", "_sse")

    def __init__(
        self,
        task_id: str,
        sequence: int,
        agent_name: str,
        event_type: str,
        content: str,
        ts: float,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.task_id = task_id
        self.sequence = sequence
        self.agent_name = agent_name
        self.event_type = event_type
        self.content = content
        self.ts = ts
        self.metadata = metadata
        self._sse: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "sequence": self.sequence,
            "agent_name": self.agent_name,
            "event_type": self.event_type,
            "content": self.content,
            "timestamp": format_timestamp(self.ts),
        }
        if self.metadata:
            data["metadata"] = self.metadata
        return data

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            payload = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
            self._sse = (
                f"id: {self.sequence}\nevent: {self.event_type}\ndata: {payload}\n\n".encode()
            )
        return self._sse


class StreamSnapshot:
    __slots__ = ("task_id", "closed", "subscribers", "last_sequence", "created_at", "closed_at")

    def __init__(self, task_id: str, closed: bool, subscribers: int, last_sequence: int,
                 created_at: float, closed_at: float | None) -> None:
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

    archive: deque | None = None  # every event published here is also appended for the store

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The event loop that serves viewers (None on shutdown)."""

    def attach_archive(self, archive: deque | None) -> None:
        self.archive = archive

    @abstractmethod
    def open(self, task_id: str) -> None: ...

    @abstractmethod
    def publish(self, task_id: str, agent_name: str, event_type: str, content: str,
                metadata: dict[str, Any] | None = None) -> None:
        """Append one event from any thread without blocking. The backend assigns its sequence
        (the next one of the task, gap-free even with writers in several processes).

        Raises StreamClosedError after the terminal event and TaskNotFoundError for unknown tasks.
        """

    def load(self, task_id: str) -> bool:
        """Start holding a task that lives outside this process; False if there is none.
        Blocking: call from a worker thread."""
        return False

    @abstractmethod
    def subscription(self, task_id: str, after: int = 0) -> Subscription:
        """A viewer positioned after sequence `after` (TaskNotFoundError for unknown tasks)."""

    @abstractmethod
    def subscribe(self, task_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        """Yield batches of events with sequence > after, then live ones, until the terminal event."""

    @abstractmethod
    def restore(self, task_id: str, events: list[Any], closed: bool = True) -> None:
        """Hold a task's stored log so it can be replayed (closed) or go on (open, for a task
        awaiting confirmation after a restart); no-op if already held."""

    @abstractmethod
    def is_closed(self, task_id: str) -> bool:
        """The log has its terminal event (False for tasks not held). Cheap: the agent thread
        asks before each event, to stop a crew that another process cancelled."""

    @abstractmethod
    def snapshot(self, task_id: str) -> StreamSnapshot: ...

    @abstractmethod
    def snapshots(self) -> list[StreamSnapshot]: ...

    @abstractmethod
    def events(self, task_id: str) -> list[Event]: ...

    @abstractmethod
    def evict_closed_before(self, deadline: float) -> list[str]:
        """Forget streams closed before `deadline` (time.time()); return their task ids."""
