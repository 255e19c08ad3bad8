"""Where crew phases run: a thread pool in this process, or Celery workers (`worker.py`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from settings import Settings


class Phase(str, Enum):
    analysis = "analysis"  # the ProductManager (again on each revision round)
    delivery = "delivery"  # QA, Developer, Coordinator


class Executor(ABC):
    #: True when phases run in this process (the runner then knows queued tasks locally).
    local: bool

    @abstractmethod
    def dispatch(self, task_id: str, phase: Phase) -> None: ...

    def shutdown(self) -> None:
        pass


class ThreadExecutor(Executor):
    local = True

    def __init__(self, workers: int, run_phase: Callable[[str, Phase], None]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crew")
        self._run_phase = run_phase

    def dispatch(self, task_id: str, phase: Phase) -> None:
        self._pool.submit(self._run_phase, task_id, phase)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class CeleryExecutor(Executor):
    """Sends phases to `worker.run_phase` through the broker; the API process runs no crew."""

    local = False

    def __init__(self, settings: Settings) -> None:
        from worker import make_celery

        self._app = make_celery(settings)

    def dispatch(self, task_id: str, phase: Phase) -> None:
        self._app.send_task("worker.run_phase", args=[task_id, phase.value])
