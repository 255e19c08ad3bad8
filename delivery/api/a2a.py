"""The A2A door: the crew as an Agent2Agent agent (A2A 1.0, and 0.3 for older clients).

One thin mapping, no state of its own: the A2A task IS our task (same id; one started here shows
in /api, the CLI and the page), its commands are TaskCommands', and every stream follows the same
event log the SSE API serves, so durability, usage, budgets and other replicas hold here too.
The a2a-sdk supplies the wire formats (its JSON-RPC and HTTP+JSON routes, with 0.3
compatibility); `DeliveryHandler` answers them from our store and log.

The mapping: queued ↔ SUBMITTED, running ↔ WORKING, awaiting confirmation ↔ INPUT_REQUIRED (the
next message on the task approves, or asks for changes with its text as feedback), each agent's
`output` ↔ an artifact sent as the agent finishes, `end` ↔ COMPLETED with the verdict in the
status, `error` ↔ FAILED, `cancelled` ↔ CANCELED. Token events are not mapped (A2A has no place
for them), so a stream costs one update per agent step, not one per token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event as A2aEvent
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import ServerCallContextBuilder, create_jsonrpc_routes, create_rest_routes
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    APIKeySecurityScheme,
    Artifact,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    HTTPAuthSecurityScheme,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    Role,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StringList,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatusUpdateEvent,
)
from a2a.types.a2a_pb2 import TaskStatus as A2aStatus
from a2a.utils.errors import (
    A2AError,
    ContentTypeNotSupportedError,
    InternalError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from delivery import __version__
from delivery.api import views
from delivery.api.inputs import validation_error
from delivery.api.schemas import RunTaskRequest
from delivery.crew.roster import ROSTER
from delivery.errors import DomainError, TaskStateConflictError
from delivery.errors import TaskNotFoundError as OurTaskNotFound
from delivery.events import Event, EventType, format_timestamp
from delivery.runtime import Runtime
from delivery.security.auth import ANONYMOUS, Auth, decode_headers, fingerprint
from delivery.security.gate import Gate, client_address, send_refusal
from delivery.security.request_guard import AuditLog
from delivery.settings import Settings
from delivery.streaming import sse
from delivery.tasks.records import TaskRecord, TaskStatus

log = logging.getLogger(__name__)

CARD_PATH = "/.well-known/agent-card.json"
JSONRPC_PATH = "/a2a"
REST_PATH = "/a2a/rest"
_CALLER = "delivery.a2a.caller"  # the gate's answer, kept in the request's scope state
_REQUEST = "delivery.a2a.request"
# A message that approves the analysis; any other text asks for changes, with itself as feedback.
_APPROVAL = re.compile(r"\s*(approve[ds]?|yes|ok(ay)?|lgtm|go( ahead)?|continue|complete|confirm(ed)?)[\s.!]*", re.I)
# A2A_TCK_HOOKS: the TCK's messageId prefixes (its fixture agent's cases) that expect a task to end
# by itself; tck-input-required keeps the confirmation, the TCK's other cases get the crew.
_TCK_STRAIGHT_THROUGH = re.compile(r"(tck-(?!input-required)|test-resubscribe)")
_STATE = {
    TaskStatus.queued: TaskState.TASK_STATE_SUBMITTED,
    TaskStatus.running: TaskState.TASK_STATE_WORKING,
    TaskStatus.awaiting_confirmation: TaskState.TASK_STATE_INPUT_REQUIRED,
    TaskStatus.succeeded: TaskState.TASK_STATE_COMPLETED,
    TaskStatus.failed: TaskState.TASK_STATE_FAILED,
    TaskStatus.cancelled: TaskState.TASK_STATE_CANCELED,
}
_STATUS = {state: status for status, state in _STATE.items()}
_ENDS_A_CALL = frozenset(
    {
        TaskState.TASK_STATE_INPUT_REQUIRED,
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
    }
)
_FINAL = frozenset({TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED})
STORE_UNREACHABLE = "The task database is unreachable; retry in a few seconds (operators: check DATABASE_URL)."


# -- the card -----------------------------------------------------------------------------------


def agent_card(settings: Settings, base_url: str) -> AgentCard:
    """What this agent does and where: JSON-RPC and HTTP+JSON, 1.0 first, then 0.3 at the same URLs."""
    base = (settings.public_base_url or base_url).rstrip("/")
    interfaces = [
        AgentInterface(url=base + path, protocol_binding=binding, protocol_version=version)
        for version in ("1.0", "0.3")
        for binding, path in (("JSONRPC", JSONRPC_PATH), ("HTTP+JSON", REST_PATH))
    ]
    card = AgentCard(
        name="Multi-Agent Software Delivery",
        description="A crew of four agents (" + " → ".join(ROSTER.names) + ") turns a software requirement "
        "into a delivery package: requirements analysis, test plan, technical design and a review with a "
        "GO/NO-GO verdict, each an artifact sent as its agent finishes. Unless the message's metadata says "
        '{"skip_confirmation": true}, the task asks for input after the analysis: answer "approve", or '
        "with what to change.",
        version=__version__,
        supported_interfaces=interfaces,
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/markdown"],
        skills=[
            AgentSkill(
                id="software-delivery",
                name="Software delivery package",
                description="From one requirement (any language): "
                + ", ".join(f"{a.filename} by the {a.name}" for a in ROSTER.agents)
                + ".",
                tags=["requirements", "test plan", "design", "review"],
                examples=["A REST API for a todo list with user accounts and due-date reminders."],
            )
        ],
    )
    if settings.api_keys.strip():
        card.security_schemes["bearer"].CopyFrom(
            SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="Bearer"))
        )
        card.security_schemes["apiKey"].CopyFrom(
            SecurityScheme(api_key_security_scheme=APIKeySecurityScheme(location="header", name="X-API-Key"))
        )
        for name in ("bearer", "apiKey"):
            requirement = SecurityRequirement()
            requirement.schemes[name].CopyFrom(StringList())
            card.security_requirements.append(requirement)
    return card


# -- the handler --------------------------------------------------------------------------------


class DeliveryHandler(RequestHandler):
    """Every A2A operation, answered from our store, commands and event log."""

    def __init__(self, settings: Settings, audit: AuditLog) -> None:
        self.settings = settings
        self._audit = audit

    # messages

    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Task | Message:
        request = _request_of(context)
        task_id, answers = await self._accept(params, request)
        config = params.configuration
        if not (config.return_immediately if params.HasField("configuration") else False):
            async for _ in self._follow(request, task_id, snapshot=False, answers=answers):
                pass
        history = config.history_length if config.HasField("history_length") else None
        return await self._task(request, task_id, history)

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[A2aEvent]:
        request = _request_of(context)
        task_id, answers = await self._accept(params, request)
        async for event in self._follow(request, task_id, snapshot=True, answers=answers):
            yield event

    async def _accept(self, params: SendMessageRequest, request: Request) -> tuple[str, int]:
        """A new task from the message, or the message's answer to the task waiting for it."""
        message = params.message
        text = "\n".join(part.text for part in message.parts if part.HasField("text")).strip()
        if not text and not message.task_id and any(not part.HasField("text") for part in message.parts):
            raise ContentTypeNotSupportedError(
                "This agent reads the requirement from text parts only; send it as text (text/plain)."
            )
        if message.task_id:
            return await self._answer(request, message.task_id, text, message)
        options = _json(message.metadata) | _json(params.metadata)
        if self.settings.a2a_tck_hooks and _TCK_STRAIGHT_THROUGH.match(message.message_id):
            options.setdefault("skip_confirmation", True)  # the TCK expects its tasks to end on their own

        def work(runtime: Runtime) -> str:
            body = _run_request(text, options)
            gate: Gate = request.app.state.gate
            gate.admit_new_task(request.scope["state"][_CALLER], _address(request.scope))
            return views.start_task(runtime, body).task_id

        return await self._call(request, "SendMessage", work, audited=True, requirement=text), 0

    async def _answer(self, request: Request, task_id: str, text: str, message: Message) -> tuple[str, int]:
        """Confirm the task waiting for this message; (its id, the answers it has had since)."""
        data = next((_json(p.data.struct_value) for p in message.parts if p.HasField("data")), {})
        approved = bool(data["approved"]) if "approved" in data else bool(_APPROVAL.fullmatch(text) or not text)
        feedback = str(data.get("feedback") or text) if not approved else None

        if message.context_id and message.context_id != task_id:
            raise InvalidParamsError(
                f"contextId {message.context_id!r} is not task {task_id}'s context ({task_id}); leave contextId out."
            )

        def work(runtime: Runtime) -> int:
            record = runtime.store.get(task_id)  # what confirm reads: a held run's copy may lag behind it
            if record.status.finished:
                raise UnsupportedOperationError(
                    f"Task {task_id} has {record.status.value}; it takes no more messages. Start a new task with "
                    "a message without taskId."
                )
            if record.status is not TaskStatus.awaiting_confirmation:
                raise InvalidParamsError(
                    f"Task {task_id} is {record.status.value}; it takes a message only while it asks for input "
                    "(input-required). Start a new task with a message without taskId."
                )
            answered = runtime.commands.confirm(task_id, approved, feedback)
            return len(answered.feedback) + (1 if approved else 0)  # each revision asked, and an approval

        return task_id, await self._call(request, "SendMessage", work, audited=True, task_id=task_id)

    # tasks

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        history = params.history_length if params.HasField("history_length") else None
        return await self._task(_request_of(context), params.id, history)

    async def on_list_tasks(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        request = _request_of(context)
        status = _STATUS.get(params.status) if params.status else None
        if params.status and status is None:
            return ListTasksResponse(page_size=params.page_size or 50)
        limit = min(params.page_size or 50, 100)
        before = None
        if params.page_token:
            try:
                before = views.dt(float(params.page_token))
            except ValueError:
                raise InvalidParamsError("pageToken is not one this server gave; pass a nextPageToken.") from None

        def work(runtime: Runtime) -> ListTasksResponse:
            page = views.list_of(runtime, status, limit, before)
            records = [runtime.runs.record(t.task_id) for t in page.tasks]
            history = params.history_length if params.HasField("history_length") else 0
            tasks = [_task_of(r, history, params.include_artifacts) for r in records]
            token = str(page.tasks[-1].created_at.timestamp()) if page.next_before and page.tasks[-1].created_at else ""
            return ListTasksResponse(tasks=tasks, next_page_token=token, page_size=limit, total_size=len(tasks))

        return await self._call(request, "ListTasks", work)

    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task | None:
        request = _request_of(context)

        def work(runtime: Runtime) -> Task:
            record = runtime.runs.record(params.id)
            if record.status.finished and record.status is not TaskStatus.cancelled:
                raise TaskNotCancelableError(f"Task {params.id} has already {record.status.value}.")
            try:
                runtime.commands.cancel(params.id)
            except TaskStateConflictError as exc:
                raise TaskNotCancelableError(str(exc)) from None
            return _task_of(runtime.runs.record(params.id), None)

        return await self._call(request, "CancelTask", work, audited=True, task_id=params.id)

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[A2aEvent]:
        request = _request_of(context)
        record = await self._call(request, "SubscribeToTask", lambda runtime: runtime.runs.record(params.id))
        if record.status.finished:
            raise UnsupportedOperationError(
                f"Task {params.id} has {record.status.value}; read it with GetTask (there is nothing to follow)."
            )
        async for event in self._follow(request, params.id, snapshot=True, ends=_FINAL):
            yield event

    # push notifications: not offered (the card says so); the /api webhooks are (docs/api.md)

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError(_NO_PUSH)

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError(_NO_PUSH)

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError(_NO_PUSH)

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError(_NO_PUSH)

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        raise UnsupportedOperationError("This agent has no extended card; the public card says everything.")

    # following the log

    async def _follow(
        self, request: Request, task_id: str, *, snapshot: bool, answers: int = 0, ends: frozenset[int] = frozenset()
    ) -> AsyncGenerator[A2aEvent]:
        """The task as A2A events from its event log: first the Task as the log has it so far
        (`snapshot`), then an update per event after it, up to the first that ends a call
        (input-required or a terminal state). The snapshot and the updates come from one
        subscription, so a subscriber that reconnects misses nothing and gets nothing twice.
        `answers`: the `confirmed` events the snapshot must include (after a message answered
        the task: events become visible once stored, so the answer's may not be yet). `ends`:
        the states that end it (a subscription goes on through input-required)."""
        ends = ends or _ENDS_A_CALL
        runtime: Runtime = request.app.state.runtime
        streams = runtime.streams
        if not streams.holds(task_id):
            await run_in_threadpool(streams.make_available, task_id)
        record = await self._call(request, "SendMessage", lambda r: r.runs.record(task_id))
        fold = _Fold(record)
        subscription = streams.subscription(task_id, 0)
        caught_up = False
        try:
            while True:
                events = subscription.take()
                if not events:
                    if not caught_up and (fold.answers >= answers or subscription.finished):
                        caught_up = True
                        if snapshot:
                            yield fold.task()
                        if fold.state in ends:
                            return
                        continue
                    if subscription.finished or sse.server_exiting():
                        return
                    await asyncio.wait([subscription.waiter()], timeout=5.0)
                    continue
                for event in events:
                    updates = fold.apply(event)
                    if not caught_up:
                        continue
                    for update in updates:
                        if isinstance(update, TaskStatusUpdateEvent) and update.status.state in ends:
                            final = await self._finished(request, fold, update)
                            if snapshot:
                                for artifact in final:
                                    yield artifact
                                yield update
                            return
                        if snapshot:
                            yield update
        finally:
            subscription.close()

    async def _finished(
        self, request: Request, fold: _Fold, update: TaskStatusUpdateEvent
    ) -> list[TaskArtifactUpdateEvent]:
        """A succeeded task's last word: the verdict (GO/NO-GO) in its final status, and each
        document the crew finished after its agent's `output` (the review gains its traceability
        matrix) sent again, whole, as the artifact it replaces (metadata `final`)."""
        if update.status.state != TaskState.TASK_STATE_COMPLETED:
            return []
        record = await self._call(request, "SendMessage", lambda r: r.runs.record(update.task_id))
        verdict = _verdict(record)
        if verdict:
            update.status.message.parts[0].text = verdict
            update.metadata.update(_verdict_metadata(record))
        sequence = int(update.metadata["sequence"])
        finals = []
        for key in ROSTER.deliverable_keys:
            document = record.deliverables.get(key)
            sent = fold.artifacts.get(key)
            if document is not None and (sent is None or sent.parts[0].text != document):
                artifact = _artifact(key, document)
                fold.artifacts[key] = artifact
                metadata = _struct({"sequence": sequence, "final": True})
                finals.append(
                    TaskArtifactUpdateEvent(
                        task_id=fold.task_id,
                        context_id=fold.task_id,
                        artifact=artifact,
                        last_chunk=True,
                        metadata=metadata,
                    )
                )
        return finals

    async def _task(self, request: Request, task_id: str, history: int | None) -> Task:
        return await self._call(request, "GetTask", lambda runtime: _task_of(runtime.runs.record(task_id), history))

    async def _call(
        self,
        request: Request,
        operation: str,
        work: Any,
        *,
        audited: bool = False,
        task_id: str | None = None,
        requirement: str | None = None,
    ) -> Any:
        """`work(runtime)` on a thread (it may wait on the database or Redis), our domain errors
        as A2A errors with the same messages, and an audit line for what changes a task."""
        runtime: Runtime = request.app.state.runtime
        started, outcome, error, answer = time.time(), "ok", None, None
        try:
            answer = await run_in_threadpool(work, runtime)
            return answer
        except A2AError as exc:
            outcome, error = "rejected", type(exc).__name__
            raise
        except OurTaskNotFound as exc:
            outcome, error = "rejected", type(exc).__name__
            raise TaskNotFoundError(str(exc)) from None
        except DomainError as exc:
            outcome, error = "rejected", type(exc).__name__
            raise InvalidParamsError(str(exc)) from None
        except (OperationalError, InterfaceError) as exc:
            outcome, error = "error", type(exc).__name__
            log.error("A2A %s: the task store is unreachable (%s)", operation, str(exc).splitlines()[0])
            raise InternalError(STORE_UNREACHABLE) from None
        finally:
            if audited:
                found = answer if isinstance(answer, str) else getattr(answer, "id", None)
                _audit(self._audit, request.scope, operation, error, outcome, started, requirement, task_id or found)


_NO_PUSH = (
    "This agent sends no A2A push notifications; follow the task with SubscribeToTask, or use the "
    "signed webhooks of /api (webhook_url in POST /api/run_task, WEBHOOK_URLS)."
)


class _Fold:
    """A task's A2A state built from its events, and the updates each event makes."""

    def __init__(self, record: TaskRecord) -> None:
        self.task_id = record.task_id
        self.state = TaskState.TASK_STATE_SUBMITTED
        self.message: str | None = None
        self.artifacts: dict[str, Artifact] = {}
        self.record = record
        self.sequence = 0  # the last event applied: the updates that follow come after it
        self.answers = 0  # `confirmed` events applied
        self.ts = record.created_at  # the last status change: every subscriber's Task is the same

    def apply(self, event: Event) -> list[A2aEvent]:
        kind = event.event_type
        self.sequence = event.sequence
        if kind == EventType.output.value:
            spec = ROSTER.by_name(event.agent_name)
            if spec is None:
                return []
            artifact = _artifact(spec.deliverable, event.content)
            self.artifacts[spec.deliverable] = artifact
            return [
                TaskArtifactUpdateEvent(
                    task_id=self.task_id,
                    context_id=self.task_id,
                    artifact=artifact,
                    last_chunk=True,
                    metadata=_struct({"sequence": event.sequence}),
                )
            ]
        state, text = self.state, None
        if kind == EventType.confirmed.value:
            self.answers += 1
        if kind in (EventType.start.value, EventType.confirmed.value, EventType.resumed.value):
            state, text = TaskState.TASK_STATE_WORKING, event.content or None
        elif kind == EventType.agent_start.value:
            state, text = TaskState.TASK_STATE_WORKING, f"{event.agent_name} is working."
        elif kind == EventType.awaiting_confirmation.value:
            state = TaskState.TASK_STATE_INPUT_REQUIRED
            text = (event.content or "The analysis is ready.") + ' Answer "approve", or say what to change.'
        elif kind == EventType.end.value:
            state, text = TaskState.TASK_STATE_COMPLETED, event.content or "Delivered."
        elif kind == EventType.error.value:
            state, text = TaskState.TASK_STATE_FAILED, event.content
        elif kind == EventType.cancelled.value:
            state, text = TaskState.TASK_STATE_CANCELED, event.content or "Cancelled."
        else:
            return []
        self.state, self.message, self.ts = state, text, event.ts
        return [
            TaskStatusUpdateEvent(
                task_id=self.task_id,
                context_id=self.task_id,
                status=_status(self.task_id, state, text, event.ts),
                metadata=_struct({"sequence": event.sequence, "eventType": kind, "agent": event.agent_name}),
            )
        ]

    def task(self) -> Task:
        task = Task(
            id=self.task_id,
            context_id=self.task_id,
            status=_status(self.task_id, self.state, self.message, self.ts),
            artifacts=list(self.artifacts.values()),
            metadata=_struct({"sequence": self.sequence}),
        )
        task.history.append(_requirement_message(self.record))
        return task


def _drain(subscription: Any) -> list[Event]:
    events: list[Event] = []
    while batch := subscription.take():
        events += batch
    return events


def _task_of(r: TaskRecord, history: int | None, include_artifacts: bool = True) -> Task:
    state = _STATE[r.status]
    text = r.error if r.status.finished and r.error else _verdict(r) if r.status is TaskStatus.succeeded else None
    if r.status is TaskStatus.awaiting_confirmation:
        text = 'The analysis is ready. Answer "approve", or say what to change.'
    task = Task(
        id=r.task_id,
        context_id=r.task_id,
        status=_status(r.task_id, state, text, r.finished_at or r.started_at or r.created_at),
        metadata=_struct(_verdict_metadata(r) | {"currentAgent": r.current_agent, "completedSteps": r.completed_steps}),
    )
    if include_artifacts:
        task.artifacts.extend(
            _artifact(key, r.deliverables[key]) for key in ROSTER.deliverable_keys if key in r.deliverables
        )
    if history != 0:
        task.history.append(_requirement_message(r))
    return task


def _artifact(key: str, markdown: str) -> Artifact:
    spec = ROSTER.author_of(key)
    return Artifact(
        artifact_id=key,
        name=spec.filename,
        description=f"By the {spec.name}",
        parts=[Part(text=markdown, media_type="text/markdown", filename=spec.filename)],
    )


def _status(task_id: str, state: TaskState, text: str | None, ts: float) -> A2aStatus:
    stamp = Timestamp()
    stamp.FromMilliseconds(int(ts * 1000))
    status = A2aStatus(state=state, timestamp=stamp)
    if text:
        status.message.CopyFrom(
            Message(
                message_id=f"{task_id}:{state}:{int(ts * 1000)}",
                context_id=task_id,
                task_id=task_id,
                role=Role.ROLE_AGENT,
                parts=[Part(text=text)],
            )
        )
    return status


def _requirement_message(r: TaskRecord) -> Message:
    return Message(
        message_id=f"{r.task_id}:requirement",
        context_id=r.task_id,
        task_id=r.task_id,
        role=Role.ROLE_USER,
        parts=[Part(text=r.requirement)],
    )


def _verdict(r: TaskRecord) -> str | None:
    traced = r.traceability or {}
    if not traced.get("verdict"):
        return None
    return f"Verdict: {traced['verdict']} ({traced.get('reason') or 'no reason given'})."


def _verdict_metadata(r: TaskRecord) -> dict[str, Any]:
    traced = r.traceability or {}
    return {"verdict": traced.get("verdict"), "verdictReason": traced.get("reason")} if traced.get("verdict") else {}


def _struct(data: dict[str, Any]) -> Struct:
    return ParseDict({k: v for k, v in data.items() if v is not None}, Struct())


def _json(struct: Struct) -> dict[str, Any]:
    return MessageToDict(struct)


def _run_request(requirement: str, options: dict[str, Any]) -> RunTaskRequest:
    """A /api run request from a message: its text, and options from its metadata."""
    budget = {k: options[k] for k in ("max_tokens", "max_cost") if k in options}
    data = {
        "user_requirement": requirement,
        "skip_confirmation": options.get("skip_confirmation", False),
        "budget": budget or None,
        "priority": options.get("priority", "normal"),
    }
    try:
        return RunTaskRequest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
            for e in (validation_error(e) for e in exc.errors())
        )
        raise InvalidParamsError(
            f"Invalid message: {problems} (user_requirement is the message's text; the other fields come "
            "from its metadata)."
        ) from None


# -- serving ------------------------------------------------------------------------------------


class _ContextBuilder(DefaultServerCallContextBuilder):
    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[_REQUEST] = request
        return context


def _request_of(context: ServerCallContext) -> Request:
    request = context.state[_REQUEST]
    assert isinstance(request, Request)
    return request


class A2aDoor:
    """The agent card, and the JSON-RPC and HTTP+JSON apps, each behind the one gate."""

    def __init__(self, settings: Settings, audit: AuditLog) -> None:
        self.settings = settings
        self._audit = audit
        self.handler = DeliveryHandler(settings, audit)
        builder: ServerCallContextBuilder = _ContextBuilder()
        (jsonrpc,) = create_jsonrpc_routes(self.handler, JSONRPC_PATH, builder, enable_v0_3_compat=True)
        self.jsonrpc = _Gated(jsonrpc.handle, audit)  # served at JSONRPC_PATH by a route of the app's
        self.rest = _Gated(Router(create_rest_routes(self.handler, builder, enable_v0_3_compat=True)), audit)

    async def card(self, request: Request) -> Response:
        """The public card (no key needed: it says how to present one), its URLs this server's."""
        return JSONResponse(agent_card_to_dict(agent_card(self.settings, str(request.base_url))))


class _Gated:
    """An ASGI app behind the gate (rate limit, API key), as /api and /mcp are."""

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self._app = app
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        gate: Gate = scope["app"].state.gate
        try:
            caller = await run_in_threadpool(gate.admit, decode_headers(scope["headers"]), _address(scope))
        except DomainError as exc:
            if scope["method"] == "POST":
                _audit(self._audit, scope, None, type(exc).__name__, "rejected", time.time(), None, None)
            await send_refusal(send, exc)
            return
        scope = {**scope, "state": {**scope.get("state", {}), _CALLER: caller}}
        await self._app(scope, receive, send)


def _audit(
    audit: AuditLog,
    scope: Scope,
    operation: str | None,
    error: str | None,
    outcome: str,
    started: float,
    requirement: str | None,
    task_id: str | None,
) -> None:
    line: dict[str, Any] = {
        "ts": format_timestamp(started),
        "who": scope.get("state", {}).get(_CALLER) or _presented(scope),
        "client": _address(scope),
        "method": "A2A",
        "path": scope["path"],
        "operation": operation,
        "outcome": outcome,
        "error": error,
        "ms": round((time.time() - started) * 1000, 1),
        "task_id": task_id,
    }
    if requirement is not None:
        line["requirement_sha256"] = hashlib.sha256(requirement.encode("utf-8", "surrogatepass")).hexdigest()
    audit.write(json.dumps(line, ensure_ascii=False))


def _presented(scope: Scope) -> str:
    key = Auth.presented_key(decode_headers(scope["headers"]))
    return fingerprint(key) if key else ANONYMOUS


def _address(scope: Scope) -> str:
    return client_address(scope.get("client"))
