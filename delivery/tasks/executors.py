"""Where phases run: this process's thread pool, or Celery workers (worker.py).
`make_executor` picks one from EXECUTOR."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from delivery.settings import ExecutorKind, Settings
from delivery.tasks.records import Phase, TaskPriority

if TYPE_CHECKING:
    from celery import Celery

# run_phase(task_id, phase, attempt): the attempt lets a worker drop a message that is stale (its
# phase was taken over and resumed since) or a redelivered duplicate.
RunPhase = Callable[[str, Phase, int], None]
log = logging.getLogger(__name__)
RUN_PHASE = "worker.run_phase"  # the Celery task's name (worker.py): run_phase(task_id, phase, attempt)


class Executor(ABC):
    #: True when phases run in this process (the lifecycle then holds queued tasks as runs here,
    #: so cancelling a queued task needs no worker).
    local: bool

    @abstractmethod
    def dispatch(self, task_id: str, phase: Phase, attempt: int, priority: TaskPriority) -> None:
        """Run the phase when a crew slot is free: waiting phases start by priority, then in the
        order they were dispatched."""

    def shutdown(self) -> None:
        pass

    def problem(self) -> str | None:
        """What keeps phases from being dispatched now (readiness), or None."""
        return None


class ThreadExecutor(Executor):
    """MAX_CONCURRENT_TASKS threads; further phases wait in a priority heap.

    Each dispatch pushes its phase on the heap and submits one job to the pool; a job takes
    whichever phase is first on the heap when it gets a thread, so the pool's own FIFO order
    does not matter and its shutdown and thread handling stay as the standard library has them."""

    local = True

    def __init__(self, workers: int, run_phase: RunPhase) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crew")
        self._run_phase = run_phase
        self._waiting: list[tuple[int, int, str, Phase, int]] = []  # (rank, arrival, task_id, phase, attempt)
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        self._shut_down = False

    def dispatch(self, task_id: str, phase: Phase, attempt: int, priority: TaskPriority) -> None:
        with self._lock:
            heapq.heappush(self._waiting, (priority.rank, next(self._arrivals), task_id, phase, attempt))
            if self._shut_down:  # the process is stopping: the task stays queued, to be handed back
                return
            self._pool.submit(self._run_next)

    def _run_next(self) -> None:
        with self._lock:
            _, _, task_id, phase, attempt = heapq.heappop(self._waiting)
        self._run_phase(task_id, phase, attempt)

    def shutdown(self) -> None:
        """Start no more phases; those waiting stay queued (in the store) for the next process."""
        with self._lock:
            self._shut_down = True
        self._pool.shutdown(wait=False, cancel_futures=True)


class CeleryExecutor(Executor):
    """Sends phases through the broker to worker.run_phase; this process runs no crew."""

    local = False

    def __init__(self, app: Celery) -> None:
        from delivery.tasks.celery_app import broker_priority  # noqa: PLC0415 - Celery is imported only when used

        self._app = app
        self._priorities = {p: broker_priority(app, p) for p in TaskPriority}

    def problem(self) -> str | None:
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
        except Exception as exc:  # noqa: BLE001 - each transport raises its own errors
            log.warning("readiness: the Celery broker is unreachable: %s", exc)
            return f"the Celery broker is unreachable ({type(exc).__name__}); check CELERY_BROKER_URL or REDIS_URL"
        return None

    def dispatch(self, task_id: str, phase: Phase, attempt: int, priority: TaskPriority) -> None:
        self._app.send_task(RUN_PHASE, args=[task_id, phase.value, attempt], priority=self._priorities[priority])


def make_executor(settings: Settings, run_phase: RunPhase, celery_app: Celery | None = None) -> Executor:
    """The executor EXECUTOR names; a worker passes its own Celery app instead of building another."""
    if settings.executor is ExecutorKind.thread:
        return ThreadExecutor(settings.max_concurrent_tasks, run_phase)
    from delivery.tasks.celery_app import make_celery  # noqa: PLC0415 - Celery is imported only when used

    return CeleryExecutor(celery_app or make_celery(settings))
