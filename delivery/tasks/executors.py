"""Where phases run: this process's thread pool, or Celery workers (worker.py).
`make_executor` picks one from EXECUTOR."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from delivery.settings import ExecutorKind, Settings
from delivery.tasks.records import Phase

if TYPE_CHECKING:
    from celery import Celery

# run_phase(task_id, phase, attempt): the attempt lets a worker drop a message that is stale (its
# phase was taken over and resumed since) or a redelivered duplicate.
RunPhase = Callable[[str, Phase, int], None]
RUN_PHASE = "worker.run_phase"  # the Celery task's name (worker.py): run_phase(task_id, phase, attempt)


class Executor(ABC):
    #: True when phases run in this process (the lifecycle then holds queued tasks as runs here,
    #: so cancelling a queued task needs no worker).
    local: bool

    @abstractmethod
    def dispatch(self, task_id: str, phase: Phase, attempt: int) -> None: ...

    def shutdown(self) -> None:
        pass


class ThreadExecutor(Executor):
    """MAX_CONCURRENT_TASKS threads; further phases wait in the pool's queue."""

    local = True

    def __init__(self, workers: int, run_phase: RunPhase) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crew")
        self._run_phase = run_phase

    def dispatch(self, task_id: str, phase: Phase, attempt: int) -> None:
        self._pool.submit(self._run_phase, task_id, phase, attempt)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class CeleryExecutor(Executor):
    """Sends phases through the broker to worker.run_phase; this process runs no crew."""

    local = False

    def __init__(self, app: Celery) -> None:
        self._app = app

    def dispatch(self, task_id: str, phase: Phase, attempt: int) -> None:
        self._app.send_task(RUN_PHASE, args=[task_id, phase.value, attempt])


def make_executor(settings: Settings, run_phase: RunPhase, celery_app: Celery | None = None) -> Executor:
    """The executor EXECUTOR names; a worker passes its own Celery app instead of building another."""
    if settings.executor is ExecutorKind.thread:
        return ThreadExecutor(settings.max_concurrent_tasks, run_phase)
    from delivery.tasks.celery_app import make_celery  # noqa: PLC0415 - Celery is imported only when used

    return CeleryExecutor(celery_app or make_celery(settings))
