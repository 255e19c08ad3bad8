"""What a task is: its status, the phases it runs in, and the record kept for it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from delivery.crew.roster import ROSTER


class TaskStatus(str, Enum):
    queued = "queued"
    running = "running"
    awaiting_confirmation = "awaiting_confirmation"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.succeeded, TaskStatus.failed, TaskStatus.cancelled)


FINISHED_STATUSES = frozenset(s for s in TaskStatus if s.finished)


class TaskPriority(str, Enum):
    """Which queued task starts first: higher priority, then earlier arrival (both executors)."""

    low = "low"
    normal = "normal"
    high = "high"

    @property
    def rank(self) -> int:
        """0 starts first."""
        return _PRIORITY_RANKS[self]


_PRIORITY_RANKS = {TaskPriority.high: 0, TaskPriority.normal: 1, TaskPriority.low: 2}


class Phase(str, Enum):
    """A unit of work dispatched to an executor."""

    analysis = "analysis"  # the first agent alone (again on each revision round)
    delivery = "delivery"  # the rest of the crew, once the analysis is approved


@dataclass
class TaskRecord:
    task_id: str
    requirement: str
    skip_confirmation: bool
    language: str
    status: TaskStatus = TaskStatus.queued
    # Microsecond precision, like the ISO times the API shows and takes back as ?before=.
    created_at: float = field(default_factory=lambda: round(time.time(), 6))
    started_at: float | None = None
    finished_at: float | None = None
    current_agent: str | None = None
    completed_steps: int = 0
    total_steps: int = ROSTER.total_steps
    error: str | None = None
    # deliverable key (agents_config.AGENTS[i].deliverable) -> Markdown
    deliverables: dict[str, str] = field(default_factory=dict)
    feedback: list[str] = field(default_factory=list)  # one entry per requested revision
    traceability: dict[str, Any] | None = None
    owner: str | None = None  # the process running (or last running) a phase: its instance id
    heartbeat_at: float | None = None  # refreshed by the owner while a phase is queued or running
    confirm_deadline: float | None = None  # while awaiting_confirmation
    run_seconds: float = 0.0  # running time of the phases that ended (TASK_TIMEOUT_S counts it)
    # Token usage and cost so far (delivery/llm/usage.py): {"agents": {...}, "total": {...}, "calls": [...]}
    usage: dict[str, Any] = field(default_factory=dict)
    # The limits this task runs under: {"max_tokens": int | None, "max_cost": float | None, ...}
    budget: dict[str, Any] = field(default_factory=dict)
    trace_context: str | None = None  # W3C traceparent of the task's trace, continued by every process
    phase: Phase | None = None  # the phase last dispatched: what to go on with if its process is lost
    attempts: int = 1  # how many times that phase was started (recovery adds one; MAX_PHASE_ATTEMPTS)
    webhook_url: str | None = None  # the caller's endpoint for this task's notifications
    webhook_steps: bool = False  # also notify when each agent finishes
    priority: TaskPriority = TaskPriority.normal  # the order its phases start in when they must wait


@dataclass
class DocumentVersion:
    """One version of a deliverable: a first draft, a revision the user asked for, or a fix round."""

    task_id: str
    deliverable: str
    agent: str
    reason: str  # e.g. "first draft", "revision round 1: add export", "fix round 1: 2 gaps"
    created_at: float
    gaps: list[str]  # what the code's check found in it
    content: str = ""
    size: int = 0  # bytes of content (listings carry no content)
    number: int = 0  # 1, 2, ... per task and deliverable; assigned by the store
