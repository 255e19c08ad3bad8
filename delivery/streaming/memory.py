"""Per-task event logs held in this process, fanned out to any number of subscribers.

Threads meet the event loop in exactly one place, `_schedule_wake`: `MemoryEventBackend.publish`
(any thread) appends to a task's log under a short lock; the event becomes visible once it is
durable. With an archive (the service), that is when the archiver's thread has committed it to
the task store and calls `mark_durable`, which, at most once per loop iteration, schedules
`_TaskStream.wake` on the loop with `call_soon_threadsafe`; without one (unit tests, the core
benchmark's publish cost) publish does it itself. So no viewer ever sees an event that a crash
can take back, and the sequence numbers after a restart continue from what viewers saw. The
publisher never waits for the loop, the database or a client. Subscribers hold only a cursor into
the shared log, so a viewer that stops reading costs no memory and cannot slow the agents or
other viewers; a late viewer replays the log from any sequence.

Finished logs stay held for replay until STREAM_TTL_S, and within STREAM_MEMORY_MB: past that
bound the least recently read finished logs are let go (viewers then replay them from the store,
or a shared backend); running logs are never let go, and neither is the most recently read one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any, overload

from delivery.errors import StreamClosedError, TaskNotFoundError
from delivery.events import SYSTEM_AGENT, TERMINAL_EVENT_TYPES, Event, EventType
from delivery.streaming.backend import MAX_BATCH, EventBackend, StreamSnapshot, Subscription


class _TaskStream:
    __slots__ = (
        "closed",
        "closed_at",
        "created_at",
        "durable",
        "lock",
        "log",
        "not_published_here",
        "subscriptions",
        "task_id",
        "wake_pending",
    )

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        # A _FinishedLog once finished and held (read-only: readers use len, slices, iteration).
        self.log: list[Event] = []
        self.durable = 0  # events log[:durable] are in the store (or need not be): viewers see those
        self.lock = threading.Lock()
        self.closed = False
        self.created_at = time.time()
        self.closed_at: float | None = None
        self.subscriptions: set[_MemorySubscription] = set()  # touched on the loop thread only
        self.wake_pending = False
        # Events of the log that this process did not publish (restored from the store, mirrored
        # from Redis): kept off the event path, so publish pays nothing for the metric.
        self.not_published_here = 0

    def wake(self) -> None:
        # Cleared before notifying, so a publish racing with this call schedules a fresh wake.
        self.wake_pending = False
        for sub in self.subscriptions:
            sub.notify()

    def close(self) -> None:
        self.closed = True
        self.closed_at = time.time()


class _FinishedLog:
    """A finished log, held as plain tuples (Event.as_tuple) rather than Event objects.

    The cyclic garbage collector walks every tracked object on each full collection, holding the
    GIL, so every stream stalls meanwhile; finished logs held for replay (up to STREAM_MEMORY_MB,
    about half a million events) were most of what it walked. Tuples of text and numbers are not
    tracked. Reading one back builds the Event objects of the slice read (replay is rarer than
    holding, and costs ~0.3 µs an event), with the SSE frame already encoded kept."""

    __slots__ = ("_rows",)

    def __init__(self, events: list[Event]) -> None:
        self._rows = [event.as_tuple() for event in events]

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            return [Event.from_tuple(row) for row in self._rows[index]]
        return Event.from_tuple(self._rows[index])

    def __iter__(self) -> Iterator[Event]:
        return (Event.from_tuple(row) for row in self._rows)


logger = logging.getLogger(__name__)
MISSING = "Event {sequence} of this task is missing from its archive (a defect: the server log says more)."


def missing_marker(task_id: str, sequence: int, ts: float) -> Event:
    """What stands in a log for an event that was lost or cannot be read (a defect)."""
    return Event(
        task_id,
        sequence,
        SYSTEM_AGENT,
        EventType.action.value,
        MISSING.format(sequence=sequence),
        ts,
        {"missing": True},
    )


def by_sequence(task_id: str, events: list[Event], after: int = 0) -> list[Event]:
    """A stored log as the log held here must be: event n at index n-1, so that a viewer resuming
    after any sequence gets exactly what follows it. A sequence missing from the store (it refused
    an event) is a defect: it is logged as an error and held by a marker event in its place (a
    `System` action whose metadata says `missing`), never by shifting the later events.
    `after`: the events continue a log of that many (a shared backend's reader)."""
    if not events or (events[0].sequence == after + 1 and events[-1].sequence == after + len(events)):
        return events  # in order, nothing missing: the reader's every batch, at no cost
    log: list[Event] = []
    missing: list[int] = []
    for event in events:
        if event.sequence <= after + len(log):
            continue  # held already, or stored twice: the first is the one viewers saw
        while after + len(log) + 1 < event.sequence:
            sequence = after + len(log) + 1
            missing.append(sequence)
            log.append(missing_marker(task_id, sequence, event.ts))
        log.append(event)
    if missing:
        logger.error("task %s: events %s are missing from the stored log; replayed as markers", task_id, missing)
    return log


def _wake_all(streams: list[_TaskStream]) -> None:
    for stream in streams:
        stream.wake()


class _MemorySubscription(Subscription):
    __slots__ = ("_closed", "_cursor", "_stream")

    def __init__(self, stream: _TaskStream, after: int) -> None:
        super().__init__()
        self._stream = stream
        self._cursor = after
        self._closed = False
        stream.subscriptions.add(self)

    def take(self) -> list[Event]:
        log = self._stream.log
        head = self._stream.durable
        if self._cursor >= head:
            return []
        end = min(head, self._cursor + MAX_BATCH)
        batch = log[self._cursor : end]
        self._cursor = end
        return batch

    @property
    def finished(self) -> bool:
        return self._stream.closed and self._cursor >= len(self._stream.log)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.subscriptions.discard(self)


class MemoryEventBackend(EventBackend):
    def __init__(self, archive: deque[Event] | None = None, memory_limit_bytes: int = 0) -> None:
        """`memory_limit_bytes` bounds the finished logs held (STREAM_MEMORY_MB); 0: no bound."""
        self._streams: dict[str, _TaskStream] = {}
        self._memory_limit = memory_limit_bytes
        # Finished logs held, least recently read first: task_id -> estimated bytes.
        self._finished: OrderedDict[str, int] = OrderedDict()
        self._finished_bytes = 0
        self._finished_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._published_evicted = 0  # published by streams no longer held
        self.archive = archive  # every published event is also appended here (see archive.py)

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def _get(self, task_id: str) -> _TaskStream:
        stream = self._streams.get(task_id)
        if stream is None:
            raise TaskNotFoundError(task_id)
        return stream

    def _schedule_wake(self, stream: _TaskStream, schedule: bool) -> None:
        loop = self._loop
        if schedule and loop is not None:
            try:
                loop.call_soon_threadsafe(stream.wake)
            except RuntimeError:  # loop closed during shutdown: nobody is listening any more
                pass

    # -- writing --------------------------------------------------------------------------------

    def open(self, task_id: str) -> None:
        if task_id in self._streams:
            raise ValueError(f"stream {task_id} already exists")
        self._streams[task_id] = _TaskStream(task_id)

    def publish(
        self, task_id: str, agent_name: str, event_type: str, content: str, metadata: dict[str, Any] | None = None
    ) -> None:
        stream = self._get(task_id)
        with stream.lock:
            if stream.closed:
                raise StreamClosedError(f"stream {task_id} already ended")
            event = Event(task_id, len(stream.log) + 1, agent_name, event_type, content, time.time(), metadata)
            stream.log.append(event)
            if event_type in TERMINAL_EVENT_TYPES:
                stream.close()
            if self.archive is not None:  # visible once the archiver has committed it
                self.archive.append(event)
                if not self.archive_wake.is_set():
                    self.archive_wake.set()
                return
            stream.durable = event.sequence
            schedule = not stream.wake_pending
            stream.wake_pending = True
        self._schedule_wake(stream, schedule)
        if stream.closed:
            self._hold_finished(stream)

    def mark_durable(self, events: list[Event]) -> None:
        """The archiver committed `events` (in sequence order per task): show them to viewers."""
        latest: dict[str, int] = {}
        for event in events:
            latest[event.task_id] = event.sequence
        to_wake = []
        finished = []
        for task_id, sequence in latest.items():
            stream = self._streams.get(task_id)
            if stream is None:
                continue
            with stream.lock:
                if sequence <= stream.durable:
                    continue
                stream.durable = sequence
                if stream.closed and sequence == len(stream.log):
                    finished.append(stream)
                if not stream.wake_pending:
                    stream.wake_pending = True
                    to_wake.append(stream)
        loop = self._loop
        if to_wake and loop is not None:  # one hop to the loop for the whole commit
            try:
                loop.call_soon_threadsafe(_wake_all, to_wake)
            except RuntimeError:  # loop closed during shutdown
                pass
        for stream in finished:  # only a log the store has whole may be let go
            self._hold_finished(stream)

    def replicate(self, task_id: str, events: list[Event]) -> None:
        """Append events whose sequences were assigned elsewhere (a shared backend's reader).
        Ones already held are skipped, so overlapping reads never duplicate an event."""
        stream = self._get(task_id)
        with stream.lock:
            for event in by_sequence(task_id, events, after=len(stream.log)):
                if stream.closed or event.sequence <= len(stream.log):
                    continue
                stream.log.append(event)
                stream.durable = event.sequence  # durable where it came from (Redis, the store)
                stream.not_published_here += 1
                if event.event_type in TERMINAL_EVENT_TYPES:
                    stream.close()
            schedule = not stream.wake_pending
            stream.wake_pending = True
        self._schedule_wake(stream, schedule)
        if stream.closed:
            self._hold_finished(stream)

    def restore(self, task_id: str, events: list[Event], closed: bool = True) -> None:
        if task_id in self._streams:
            return
        stream = _TaskStream(task_id)
        stream.log = list(by_sequence(task_id, events))
        stream.durable = len(stream.log)
        stream.not_published_here = len(stream.log)
        if closed:
            stream.close()
        if stream.log:
            stream.created_at = stream.log[0].ts
        self._streams[task_id] = stream
        if closed:
            self._hold_finished(stream)

    # -- the memory bound -----------------------------------------------------------------------

    def _hold_finished(self, stream: _TaskStream) -> None:
        """Count a finished, durable log against STREAM_MEMORY_MB (once), and let go of the least
        recently read ones while over it."""
        size = sum(event.held_bytes() for event in stream.log)
        with self._finished_lock:
            if stream.task_id in self._finished or self._streams.get(stream.task_id) is not stream:
                return
            self._finished[stream.task_id] = size
            self._finished_bytes += size
            with stream.lock:  # a finished log no longer changes: held out of the collector's sight
                stream.log = _FinishedLog(stream.log)  # type: ignore[assignment]
            while self._memory_limit and self._finished_bytes > self._memory_limit and len(self._finished) > 1:
                task_id, freed = self._finished.popitem(last=False)
                self._finished_bytes -= freed
                self._let_go(task_id)

    def _let_go(self, task_id: str) -> None:
        stream = self._streams.pop(task_id, None)
        if stream is not None:
            self._published_evicted += len(stream.log) - stream.not_published_here

    def _read(self, stream: _TaskStream) -> _TaskStream:
        """A viewer reads this log: a finished one becomes the last to be let go."""
        if stream.closed:
            with self._finished_lock:
                if stream.task_id in self._finished:
                    self._finished.move_to_end(stream.task_id)
        return stream

    @property
    def finished_bytes(self) -> int:
        """What the finished logs held here cost (estimated), which STREAM_MEMORY_MB bounds."""
        return self._finished_bytes

    # -- reading --------------------------------------------------------------------------------

    def holds(self, task_id: str) -> bool:
        return task_id in self._streams

    def subscription(self, task_id: str, after: int = 0) -> Subscription:
        return _MemorySubscription(self._read(self._get(task_id)), max(after, 0))

    def events(self, task_id: str) -> list[Event]:
        return list(self._read(self._get(task_id)).log)

    def is_closed(self, task_id: str) -> bool:
        stream = self._streams.get(task_id)
        return stream is not None and stream.closed

    def snapshot(self, task_id: str) -> StreamSnapshot:
        s = self._get(task_id)
        return StreamSnapshot(s.task_id, s.closed, len(s.subscriptions), s.durable, s.created_at, s.closed_at)

    def snapshots(self) -> list[StreamSnapshot]:
        return [self.snapshot(task_id) for task_id in list(self._streams)]

    def evict_closed_before(self, deadline: float) -> list[str]:
        expired = [
            tid
            for tid, s in list(self._streams.items())
            if s.closed and s.closed_at is not None and s.closed_at < deadline
        ]
        with self._finished_lock:
            for task_id in expired:
                self._finished_bytes -= self._finished.pop(task_id, 0)
                self._let_go(task_id)
        return expired

    def published_count(self) -> int:
        return self._published_evicted + sum(len(s.log) - s.not_published_here for s in list(self._streams.values()))
