"""What a task looks like to a caller, and starting one: the answers every door gives (the /api
routes and the MCP door, delivery/api/mcp.py), built here once from the core."""

from __future__ import annotations

from datetime import UTC, datetime

from delivery.api.schemas import (
    BudgetInfo,
    Deliverables,
    RunTaskRequest,
    TaskList,
    TaskResultResponse,
    TaskStatusResponse,
    TaskSummary,
    Traceability,
    Usage,
    UsageTotals,
    UsageWithCalls,
)
from delivery.crew.roster import ROSTER
from delivery.documents.package import build_zip
from delivery.errors import (
    DeliverableNotFoundError,
    InvalidRequestError,
    RateLimitedError,
    TaskNotFinishedError,
    shown,
)
from delivery.llm.usage import summary, totals
from delivery.observability.tracing import trace_id_of
from delivery.runtime import Runtime
from delivery.tasks.records import TaskRecord, TaskStatus


def dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def start_task(runtime: Runtime, body: RunTaskRequest) -> TaskRecord:
    """A new task from a validated request, unless too many wait to start (blocking)."""
    admit(runtime)
    budget = body.budget
    return runtime.commands.submit(
        body.user_requirement,
        body.skip_confirmation,
        max_tokens=budget.max_tokens if budget else None,
        max_cost=budget.max_cost if budget else None,
        webhook_url=body.webhook_url,
        webhook_steps=body.webhook_steps,
        priority=body.priority,
    )


def admit(runtime: Runtime) -> None:
    """Refuse new work, before creating anything, while too many tasks are waiting to start."""
    limit = runtime.settings.max_queued_tasks
    if runtime.store.count(TaskStatus.queued) >= limit:
        raise RateLimitedError(
            f"The service is at capacity: {limit} tasks are already waiting to start "
            "(MAX_QUEUED_TASKS). Retry in a minute.",
            60,
        )


def status_of(runtime: Runtime, r: TaskRecord) -> TaskStatusResponse:
    return TaskStatusResponse(
        task_id=r.task_id,
        status=r.status,
        requirement=r.requirement,
        current_agent=r.current_agent,
        completed_steps=r.completed_steps,
        total_steps=r.total_steps,
        created_at=dt(r.created_at),
        started_at=dt(r.started_at),
        finished_at=dt(r.finished_at),
        error=r.error,
        last_sequence=runtime.streams.last_sequence(r.task_id),
        usage=Usage(**summary(r.usage)),
        budget=BudgetInfo(**r.budget) if r.budget else None,
        trace_id=trace_id_of(r.trace_context),
        attempts=r.attempts,
        priority=r.priority,
    )


def result_of(r: TaskRecord) -> TaskResultResponse:
    """A finished task's documents, traceability and usage (TaskNotFinishedError before)."""
    finished(r)
    return TaskResultResponse(
        task_id=r.task_id,
        status=r.status,
        language=r.language,
        deliverables=Deliverables(**r.deliverables),
        error=r.error,
        traceability=Traceability(**r.traceability) if r.traceability else None,
        usage=UsageWithCalls(**summary(r.usage), calls=r.usage.get("calls", [])),
    )


def finished(record: TaskRecord) -> TaskRecord:
    if not record.status.finished:
        raise TaskNotFinishedError(record.task_id, record.status.value)
    return record


def package_of(runtime: Runtime, r: TaskRecord) -> bytes:
    """The delivery package (deliverables.zip): the documents, their versions, the event log and
    the task's record. Blocking (reads the store)."""
    task = {
        "task_id": r.task_id,
        "status": r.status.value,
        "requirement": r.requirement,
        "language": r.language,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "error": r.error,
        "feedback": r.feedback,
        "traceability": r.traceability,
        "usage": {**summary(r.usage), "calls": r.usage.get("calls", [])},
        "budget": r.budget or None,
        "trace_id": trace_id_of(r.trace_context),
    }
    events = [e.to_dict() for e in runtime.streams.events(r.task_id)]
    versions = runtime.store.all_versions(r.task_id)
    return build_zip(r.deliverables, events, task, versions)


def deliverable_key(name: str) -> str:
    """The deliverable a name (key or filename) means; DeliverableNotFoundError for any other."""
    key = ROSTER.resolve_deliverable(name)
    if key is None:
        raise DeliverableNotFoundError(
            f"No deliverable called {shown(name, 80)}; use one of {', '.join(ROSTER.deliverable_keys)} "
            f"(or {', '.join(ROSTER.filenames.values())})."
        )
    return key


def document_of(r: TaskRecord, name: str) -> tuple[str, str]:
    """(deliverable key, Markdown) of a document produced so far; DeliverableNotFoundError if not yet."""
    key = deliverable_key(name)
    if key not in r.deliverables:
        raise DeliverableNotFoundError(f"{key} has not been produced yet (task is {r.status.value}).")
    return key, r.deliverables[key]


def list_of(runtime: Runtime, status: TaskStatus | None, limit: int, before: datetime | None) -> TaskList:
    """A page of tasks, newest first, as live as this process knows them (blocking)."""
    if before is not None and before.tzinfo is None:
        before = before.replace(tzinfo=UTC)
    try:
        cutoff = before.timestamp() if before else None
    except (OverflowError, ValueError):
        raise InvalidRequestError(
            "before is outside the range of dates this server handles; pass the next_before of a previous page."
        ) from None
    records = runtime.store.list_tasks(status, limit, cutoff)
    live = runtime.runs.live_records()
    records = [live.get(r.task_id, r) for r in records]
    tasks = [
        TaskSummary(
            task_id=r.task_id,
            status=r.status,
            requirement=r.requirement[:200],
            created_at=dt(r.created_at),
            finished_at=dt(r.finished_at),
            error=r.error,
            priority=r.priority,
            usage=UsageTotals(**totals(r.usage.get("calls", []))),
        )
        for r in records
    ]
    next_before = tasks[-1].created_at if len(tasks) == limit else None
    return TaskList(tasks=tasks, next_before=next_before)


def confirmation_message(approved: bool) -> str:
    if approved:
        return "Approved: the rest of the crew is next."
    return "Changes requested: the ProductManager is revising the analysis."
