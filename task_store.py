"""Task records: what was asked, where the run stands, what it produced.

In memory for now; a durable SQL store implements the same ``TaskStore`` interface later.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from errors import TaskNotFoundError
from models import TaskStatus

TOTAL_STEPS = 4


@dataclass
class TaskRecord:
    task_id: str
    requirement: str
    skip_confirmation: bool
    language: str
    status: TaskStatus = TaskStatus.queued
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    current_agent: str | None = None
    completed_steps: int = 0
    total_steps: int = TOTAL_STEPS
    error: str | None = None
    # deliverable key (see agents_config.DELIVERABLE_KEYS) -> Markdown
    deliverables: dict[str, str] = field(default_factory=dict)


class TaskStore(ABC):
    @abstractmethod
    def add(self, record: TaskRecord) -> None: ...

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord:
        """Raise TaskNotFoundError for unknown ids."""

    @abstractmethod
    def count_unfinished(self) -> int: ...

    @abstractmethod
    def remove(self, task_ids: list[str]) -> None: ...


class MemoryTaskStore(TaskStore):
    """Records are mutated in place by the worker thread that owns the run; each field is
    assigned atomically, so readers see a consistent value per field."""

    def __init__(self) -> None:
        self._records: dict[str, TaskRecord] = {}
        self._lock = threading.Lock()

    def add(self, record: TaskRecord) -> None:
        with self._lock:
            self._records[record.task_id] = record

    def get(self, task_id: str) -> TaskRecord:
        record = self._records.get(task_id)
        if record is None:
            raise TaskNotFoundError(task_id)
        return record

    def count_unfinished(self) -> int:
        return sum(1 for r in list(self._records.values()) if not r.status.finished)

    def remove(self, task_ids: list[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._records.pop(task_id, None)
