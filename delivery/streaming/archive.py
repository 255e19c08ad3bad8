"""Copies published events to the task store in batches, on its own thread.

The publisher only appends to a deque (lock-free, O(1)); this thread wakes every
``interval_s``, drains it and writes one batch per transaction, so neither the agent threads nor
the event loop ever wait for the database.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from delivery.events import Event
from delivery.tasks.store import TaskStore

log = logging.getLogger(__name__)


class EventArchiver:
    def __init__(self, store: TaskStore, interval_s: float = 0.1, max_batch: int = 500) -> None:
        self.queue: deque[Event] = deque()
        self._store = store
        self._interval_s = interval_s
        self._max_batch = max_batch
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="event-archiver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    def flush(self) -> None:
        """Write everything queued so far (also called at shutdown and before reading back)."""
        with self._flush_lock:
            while self.queue:
                batch: list[Event] = []
                while self.queue and len(batch) < self._max_batch:
                    batch.append(self.queue.popleft())
                try:
                    self._store.append_events(batch)
                except Exception:
                    log.exception("could not archive %d events", len(batch))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()
