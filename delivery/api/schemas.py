"""Typed request, response and event models of the public API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from delivery.api.inputs import storable_text
from delivery.crew.roster import ROSTER
from delivery.errors import shown
from delivery.events import EventType
from delivery.tasks.records import TaskPriority, TaskStatus

MAX_REQUIREMENT_CHARS = 20_000


class StrictBody(BaseModel):
    """A request body that refuses fields it does not know: a misspelt option (`skipConfirmation`)
    would otherwise be dropped without a word, and the task run as the client did not ask."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [name for name in data if name not in cls.model_fields]
            if unknown:
                names = ", ".join(shown(str(name), 60) for name in unknown[:5])
                raise ValueError(
                    f"unknown field(s) {names}; this body takes only: {', '.join(cls.model_fields)} (see /docs)"
                )
        return data


class TaskBudget(StrictBody):
    """Limits lower than the server's (MAX_TOKENS_PER_TASK, MAX_COST_PER_TASK) for one task."""

    max_tokens: int | None = Field(
        None,
        ge=1,
        le=10**9,
        description="Stop the task past this many tokens (prompt + completion, all agents, revision rounds included).",
    )
    max_cost: float | None = Field(
        None,
        gt=0,
        le=10**6,
        allow_inf_nan=False,
        description="Stop the task past this cost, in the currency of the model's price.",
    )


class RunTaskRequest(StrictBody):
    user_requirement: str = Field(
        description="What to build, in any language (1-20,000 characters after trimming).",
        examples=["开发一个简单的待办事项应用"],
    )
    skip_confirmation: bool = Field(
        False,
        description="false (default): pause after the ProductManager's analysis until someone "
        "answers POST /api/task/{id}/confirm. true: run straight through.",
    )
    budget: TaskBudget | None = Field(None, description="Optional limits for this task, at most the server's.")
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        description="Optional http(s) URL that gets this task's notifications, signed as Standard Webhooks "
        "says (awaiting confirmation, succeeded, failed, cancelled). Public addresses only unless the "
        "operator allows others.",
        examples=["https://example.com/hooks/delivery"],
    )
    webhook_steps: bool = Field(False, description="Also notify the webhooks each time an agent finishes.")
    priority: TaskPriority = Field(
        TaskPriority.normal,
        description="When the server is at MAX_CONCURRENT_TASKS: queued tasks start by priority "
        "(high, normal, low), then in the order they arrived.",
    )

    @field_validator("webhook_url")
    @classmethod
    def _storable_url(cls, value: str | None) -> str | None:
        return None if value is None else storable_text("webhook_url", value)

    @field_validator("user_requirement")
    @classmethod
    def _strip_and_bound(cls, value: str) -> str:
        value = storable_text("user_requirement", value).strip()
        if not value:
            raise ValueError("user_requirement is empty: describe the software you want built")
        if len(value) > MAX_REQUIREMENT_CHARS:
            raise ValueError(
                f"user_requirement has {len(value)} characters; shorten it to at most {MAX_REQUIREMENT_CHARS}"
            )
        return value


class WebhookAttempt(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's answer; null when none came (see error)")
    error: str | None = Field(description="Why the attempt did not count as delivered; null when it did")
    duration_ms: int


class WebhookDeliveryInfo(BaseModel):
    webhook_id: str = Field(description="The webhook-id header, the same on every attempt")
    url: str
    type: str = Field(
        description="task.awaiting_confirmation, task.step_finished, task.succeeded, ...; an A2A push: "
        "a2a.statusUpdate or a2a.artifactUpdate"
    )
    state: str = Field(description="pending (more attempts to come), delivered, or failed (gave up)")
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    attempts: list[WebhookAttempt]
    payload: dict[str, Any] = Field(description="The JSON body sent")


class WebhookList(BaseModel):
    task_id: str
    webhooks: list[WebhookDeliveryInfo]


class RunTaskResponse(BaseModel):
    task_id: str
    status: str = Field("started", description="Always 'started': the task was accepted.")
    message: str
    stream_url: str
    status_url: str
    stream_token: str | None = Field(
        None,
        description="With API keys on: pass as ?token= to open this "
        "task's stream where headers cannot be sent (browsers' EventSource).",
    )


class StreamTokenResponse(BaseModel):
    task_id: str
    stream_token: str = Field(description="Pass as ?token= to GET /api/stream/{task_id}.")
    expires_at: datetime


class UsageTotals(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    calls: int = Field(description="Model calls made")
    cost: float | None = Field(description="null when no price is known for a model used (see price_note)")
    currency: str | None
    estimated: bool = Field(description="true when some counts are estimates (the server sent no usage)")


class ModelCall(BaseModel):
    agent: str
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    duration_s: float
    estimated: bool
    interrupted: bool = Field(description="cut short (budget, cancel, failure): what it had used so far")
    cost: float | None
    currency: str | None


class Usage(BaseModel):
    """Tokens and cost, per agent (pipeline order) and for the task, revision rounds included."""

    agents: dict[str, UsageTotals]
    total: UsageTotals
    price_note: str | None = Field(description="Says which models have no known price (LLM_PRICES adds them)")


class UsageWithCalls(Usage):
    calls: list[ModelCall] = Field(description="Every model call, in order")


class BudgetInfo(BaseModel):
    max_tokens: int | None = None
    max_cost: float | None = None
    tokens_setting: str | None = Field(None, description="Where max_tokens comes from: the request or the server")
    cost_setting: str | None = None


class TaskStatusResponse(BaseModel):
    task_id: str
    status: TaskStatus
    requirement: str = Field(description="The requirement as submitted (trimmed).")
    current_agent: str | None
    completed_steps: int
    total_steps: int
    attempts: int = Field(description="Times its current phase was started: above 1 after it was resumed (recovery)")
    priority: TaskPriority
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    last_sequence: int
    usage: Usage
    budget: BudgetInfo | None = Field(description="The limits this task runs under; null when none")
    trace_id: str | None = Field(description="Its OpenTelemetry trace (when tracing is on)")


# One optional Markdown field per agent's deliverable, in pipeline order (from agents_config).
Deliverables = create_model(
    "Deliverables",
    __doc__="The documents produced so far, keyed by deliverable name.",
    **{key: (str | None, None) for key in ROSTER.deliverable_keys},  # type: ignore[call-overload]
)


class TraceRow(BaseModel):
    requirement: str
    test_cases: list[str]
    design_elements: list[str]


class TraceGap(BaseModel):
    requirement: str
    missing: list[str] = Field(description="'test_case' and/or 'design'")


class Traceability(BaseModel):
    """Computed by code from the documents, not taken from the model."""

    requirements: list[str]
    matrix: list[TraceRow]
    gaps: list[TraceGap]
    problems: dict[str, list[str]] = Field(
        default_factory=dict, description="Every gap the code's check found, per deliverable (empty: none)"
    )
    verdict: str = Field(description="GO or NO-GO: GO only when the check finds no gap")
    reason: str


class TaskResultResponse(BaseModel):
    task_id: str
    status: TaskStatus
    language: str = Field(description="'zh' or 'en': the language the deliverables are written in.")
    deliverables: Deliverables  # type: ignore[valid-type]  # built from the roster
    traceability: Traceability | None
    error: str | None
    usage: UsageWithCalls


class ConfirmRequest(StrictBody):
    approved: bool
    feedback: str | None = Field(None, max_length=5000, description="Required when approved is false: what to change.")

    @field_validator("feedback")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        value = storable_text("feedback", value).strip() if value else None
        return value or None


class TaskActionResponse(BaseModel):
    task_id: str
    status: TaskStatus
    message: str


class DeliverableInfo(BaseModel):
    name: str
    filename: str
    agent: str
    size: int
    url: str


class DeliverableList(BaseModel):
    task_id: str
    status: TaskStatus
    deliverables: list[DeliverableInfo]
    zip_url: str


class TaskSummary(BaseModel):
    task_id: str
    status: TaskStatus
    requirement: str = Field(description="The first 200 characters of the requirement.")
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    priority: TaskPriority
    usage: UsageTotals = Field(description="The task's total tokens and cost so far")


class TaskList(BaseModel):
    tasks: list[TaskSummary]
    next_before: datetime | None = Field(description="Pass as ?before= for the next page.")


class StreamInfo(BaseModel):
    task_id: str
    closed: bool
    subscribers: int
    last_sequence: int
    created_at: datetime
    closed_at: datetime | None


class StreamList(BaseModel):
    active: list[StreamInfo]
    finished: list[StreamInfo]


class StreamEventModel(BaseModel):
    """The JSON carried in every SSE `data:` line (the seed's unified format)."""

    task_id: str
    sequence: int = Field(description="1, 2, 3, ... per task: no gap, no duplicate.")
    agent_name: str
    event_type: EventType
    content: str
    timestamp: str = Field(description="UTC ISO-8601 with milliseconds, e.g. 2026-11-21T10:00:00.123Z")
    metadata: dict[str, Any] | None = Field(None, description="Optional extra detail.")


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="What went wrong and what to do; for malformed fields, FastAPI's list of errors."
    )


class CrewAgent(BaseModel):
    name: str = Field(description="The agent's `agent_name` in the event stream.")
    role: str
    deliverable: str = Field(description="Key of the document it writes.")
    filename: str = Field(description="File name of that document in downloads and the zip.")
    title: dict[str, str] = Field(description="What the document is called, per language (en, zh).")
    tab: dict[str, str] = Field(description="A short label for the document, per language.")


class CrewInfo(BaseModel):
    """The crew, in pipeline order (agents_config.AGENTS)."""

    agents: list[CrewAgent]
    total_steps: int


class VersionInfo(BaseModel):
    number: int = Field(description="1, 2, ... for this deliverable")
    agent: str
    reason: str = Field(description="Why it was written: first draft, revision round n: <feedback>, fix round n, ...")
    created_at: datetime
    gaps: list[str] = Field(description="What the code's check found in this version")
    size: int
    url: str


class VersionList(BaseModel):
    task_id: str
    deliverable: str
    versions: list[VersionInfo]


class Health(BaseModel):
    status: str
    provider: str
    active_tasks: int = Field(
        description="Tasks this process holds, running or waiting here. Under EXECUTOR=celery crews run in the "
        "workers, so an API process holds none: the deployment's figures are the workers' `/metrics`."
    )
    busy_workers: int = Field(description="Threads of this process currently running a crew (0 under EXECUTOR=celery).")
    auth_required: bool = Field(False, description="Whether /api routes need an API key (API_KEYS).")
