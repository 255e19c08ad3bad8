"""The seed's streaming design, rewritten here only as a benchmark baseline. Do not use it.

- publish() blocks the agent thread on a round trip through the event loop
  (``run_coroutine_threadsafe(queue.put(...)).result()``) for every event;
- one bounded asyncio.Queue per task is shared by all subscribers, so each gets only part of
  the events, and a late subscriber gets nothing of what came before;
- one event per write, no batching; a subscriber notices the end only when it takes the
  terminal event itself or its 30 s wait times out.

It is plugged in the supported way, as the event backend the app is built with
(`create_app(event_backend=NaiveEventBackend())`), so everything else is our service.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from delivery.errors import StreamClosedError, TaskNotFoundError
from delivery.events import TERMINAL_EVENT_TYPES, Event
from delivery.streaming.backend import EventBackend, StreamSnapshot, Subscription


class _NaiveStream:
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self.waiters: list[asyncio.Future[None]] = []
        self.closed = False
        self.subscribers = 0
        self.sequence = 0
        self.created_at = time.time()
        self.closed_at: float | None = None


class NaiveEventBackend(EventBackend):
    def __init__(self) -> None:
        self._streams: dict[str, _NaiveStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def _get(self, task_id: str) -> _NaiveStream:
        if task_id not in self._streams:
            raise TaskNotFoundError(task_id)
        return self._streams[task_id]

    def open(self, task_id: str) -> None:
        self._streams[task_id] = _NaiveStream(task_id)

    def publish(
        self, task_id: str, agent_name: str, event_type: str, content: str, metadata: dict[str, Any] | None = None
    ) -> None:
        stream = self._get(task_id)
        if stream.closed:
            raise StreamClosedError(task_id)
        stream.sequence += 1
        event = Event(task_id, stream.sequence, agent_name, event_type, content, time.time(), metadata)
        if self.archive is not None:
            self.archive.append(event)
            self.archive_wake.set()
        assert self._loop is not None, "the naive design needs the event loop for every publish"
        future = asyncio.run_coroutine_threadsafe(self._put(stream, event), self._loop)
        future.result(timeout=5.0)
        if event_type in TERMINAL_EVENT_TYPES:
            stream.closed, stream.closed_at = True, time.time()

    @staticmethod
    async def _put(stream: _NaiveStream, event: Event) -> None:
        await stream.queue.put(event)
        waiters, stream.waiters = stream.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def subscription(self, task_id: str, after: int = 0) -> Subscription:
        return _NaiveSubscription(self._get(task_id))

    def holds(self, task_id: str) -> bool:
        return task_id in self._streams

    def restore(self, task_id: str, events: list[Event], closed: bool = True) -> None:
        pass

    def is_closed(self, task_id: str) -> bool:
        stream = self._streams.get(task_id)
        return stream is not None and stream.closed

    def snapshot(self, task_id: str) -> StreamSnapshot:
        s = self._get(task_id)
        return StreamSnapshot(task_id, s.closed, s.subscribers, s.sequence, s.created_at, s.closed_at)

    def snapshots(self) -> list[StreamSnapshot]:
        return [self.snapshot(t) for t in list(self._streams)]

    def events(self, task_id: str) -> list[Event]:
        return []

    def published_count(self) -> int:
        return sum(s.sequence for s in list(self._streams.values()))

    def evict_closed_before(self, deadline: float) -> list[str]:
        return []


class _NaiveSubscription(Subscription):
    """The seed's viewer: takes one event at a time from the queue it shares with the others."""

    def __init__(self, stream: _NaiveStream) -> None:
        super().__init__()
        self._stream = stream
        self._closed = False
        self._took_end = False
        stream.subscribers += 1

    def take(self) -> list[Event]:
        try:
            event = self._stream.queue.get_nowait()
        except asyncio.QueueEmpty:
            return []
        self._took_end = event.event_type in TERMINAL_EVENT_TYPES
        return [event]

    @property
    def finished(self) -> bool:
        # The seed's reader stops once it takes the terminal event itself (others may never see it).
        return self._took_end or (self._stream.closed and self._stream.queue.empty())

    def waiter(self) -> asyncio.Future[None]:
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
            self._stream.waiters.append(self._waiter)
        return self._waiter

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.subscribers -= 1
