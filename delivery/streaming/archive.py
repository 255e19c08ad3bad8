"""Copies published events to the task store in group commits, on its own thread.

The publisher only appends to a deque (lock-free, O(1)); this thread drains it every
``interval_s`` (a few milliseconds) and writes what it finds in one transaction per batch, so
neither the agent threads nor the event loop ever wait for the database. After each commit it
tells the backend (`on_durable`), which only then shows the events to viewers: what a viewer has
seen is always in the store, so a crash can take nothing back (docs/architecture.md).

A batch the store refuses (the database is down or restarting) is kept and retried, never
dropped: viewers wait, and see everything once the database is back.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from sqlalchemy.exc import InterfaceError, OperationalError

from delivery.events import Event
from delivery.observability import metrics
from delivery.tasks.store import TaskStore

log = logging.getLogger(__name__)

RETRY_S = 0.5  # after a failed commit


class EventArchiver:
    def __init__(
        self,
        store: TaskStore,
        on_durable: Callable[[list[Event]], None] | None = None,
        interval_s: float = 0.002,
        max_batch: int = 2000,
    ) -> None:
        self.queue: deque[Event] = deque()
        # Set by publishers when they queue an event while this thread may be idle: an idle
        # archiver sleeps instead of polling (a process holds it for its whole life, and a
        # 2 ms poll costs ~3 % of a core in a server nobody uses).
        self.wake = threading.Event()
        self._store = store
        self._on_durable = on_durable
        # Called after `on_durable` with each committed batch (A2A pushes: delivery/api/a2a_push.py).
        self.on_archived: list[Callable[[list[Event]], None]] = []
        self._interval_s = interval_s
        self._max_batch = max_batch
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="event-archiver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._failing:
                self._stop.wait(RETRY_S)
            elif not self.queue:
                self.wake.clear()
                if not self.queue:  # queued between the check and the clear: go on at once
                    self.wake.wait(1.0)
                continue
            else:
                self._stop.wait(self._interval_s)  # let a burst gather: one commit for all of it
            try:
                self.flush()
            except Exception:
                metrics.BACKGROUND_ERRORS.labels("archiver").inc()
                log.exception("an archiver pass failed; it goes on with the next events")
                self._stop.wait(RETRY_S)

    def flush(self) -> bool:
        """Write everything queued so far (also called at shutdown and before reading back).
        False when the store refused a batch: it stays queued, first in line."""
        with self._flush_lock:
            while self.queue:
                batch: list[Event] = []
                while self.queue and len(batch) < self._max_batch:
                    batch.append(self.queue.popleft())
                try:
                    self._store.append_events(batch)
                except (OperationalError, InterfaceError) as exc:  # the database is unreachable
                    self.queue.extendleft(reversed(batch))
                    if not self._failing:
                        log.error("cannot archive events (%s); viewers wait until the store is back", exc)
                    self._failing = True
                    return False
                except Exception:  # noqa: BLE001 - the store refuses something in the batch itself
                    self._write_one_by_one(batch)
                if self._failing:
                    log.warning("archiving events again")
                    self._failing = False
                if self._on_durable is not None:
                    self._on_durable(batch)
                for listener in self.on_archived:
                    listener(batch)
        return True

    def _write_one_by_one(self, batch: list[Event]) -> None:
        # So that one event no store can keep (a duplicate, text the database refuses) cannot
        # hold back every stream: the others are written, it is logged and shown anyway.
        for event in batch:
            try:
                self._store.append_events([event])
            except Exception:
                log.exception(
                    "event %d of task %s cannot be archived; it will be missing from replays",
                    event.sequence,
                    event.task_id,
                )

    def problem(self) -> str | None:
        """Readiness: the thread that stores events died (viewers would see nothing new)."""
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "the event archiver thread stopped; restart this process (its log says why)"
        return None

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()
