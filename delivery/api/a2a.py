"""The A2A door: the crew as an Agent2Agent agent (A2A 1.0, and 0.3 for older clients).

One thin mapping, no state of its own: the A2A task IS our task (same id; one started here shows
in /api, the CLI and the page), its commands are TaskCommands', and every stream follows the same
event log the SSE API serves, so durability, usage, budgets and other replicas hold here too.
The a2a-sdk supplies the wire formats (its JSON-RPC and HTTP+JSON routes, with 0.3
compatibility); `DeliveryHandler` answers them from our store and log. Push notifications are
our signed webhooks (delivery/api/a2a_push.py).

The mapping (delivery/api/a2a_mapping.py): queued ↔ SUBMITTED, running ↔ WORKING, awaiting
confirmation ↔ INPUT_REQUIRED (the next message on the task approves, or asks for changes with its
text as feedback), each agent's `output` ↔ an artifact sent as the agent finishes, `end` ↔
COMPLETED with the verdict in the status, `error` ↔ FAILED, `cancelled` ↔ CANCELED. Token events
are not mapped (A2A has no place for them), so a stream costs one update per agent step, not one
per token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

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
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from delivery import __version__
from delivery.api import views
from delivery.api.a2a_mapping import (
    FINAL_STATES,
    STATUS_OF,
    Fold,
    final_updates,
    json_of,
    task_of,
)
from delivery.api.inputs import validation_error
from delivery.api.schemas import RunTaskRequest
from delivery.crew.roster import ROSTER
from delivery.errors import DomainError, TaskStateConflictError
from delivery.errors import TaskNotFoundError as OurTaskNotFound
from delivery.events import Event, format_timestamp
from delivery.runtime import Runtime
from delivery.security.auth import ANONYMOUS, Auth, decode_headers, fingerprint
from delivery.security.gate import Gate, client_address, send_refusal
from delivery.security.request_guard import AuditLog
from delivery.settings import Settings
from delivery.streaming import sse
from delivery.tasks.records import TaskStatus
from delivery.tasks.store import PushConfig

if TYPE_CHECKING:
    from delivery.api.a2a_push import A2aPushes

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
_ENDS_A_CALL = frozenset(
    {
        TaskState.TASK_STATE_INPUT_REQUIRED,
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
    }
)
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
        capabilities=AgentCapabilities(streaming=True, push_notifications=bool(settings.webhook_secret)),
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
        wanted = params.HasField("configuration") and params.configuration.HasField("task_push_notification_config")
        push = params.configuration.task_push_notification_config if wanted else None
        text = "\n".join(part.text for part in message.parts if part.HasField("text")).strip()
        if not text and not message.task_id and any(not part.HasField("text") for part in message.parts):
            raise ContentTypeNotSupportedError(
                "This agent reads the requirement from text parts only; send it as text (text/plain)."
            )
        if message.task_id:
            return await self._answer(request, message.task_id, text, message, push)
        options = json_of(message.metadata) | json_of(params.metadata)
        if self.settings.a2a_tck_hooks and _TCK_STRAIGHT_THROUGH.match(message.message_id):
            options.setdefault("skip_confirmation", True)  # the TCK expects its tasks to end on their own
        pushes = _pushes(request) if push is not None else None

        def work(runtime: Runtime) -> str:
            body = _run_request(text, options)
            config = pushes.config_of(push) if pushes and push else None  # a bad URL starts nothing
            gate: Gate = request.app.state.gate
            gate.admit_new_task(request.scope["state"][_CALLER], _address(request.scope))
            task_id = views.start_task(runtime, body).task_id
            if pushes and config:
                config = pushes.for_task(config, task_id)
                pushes.save(config)
                pushes.catch_up(config)  # the events stored before the config was
            return task_id

        return await self._call(request, "SendMessage", work, audited=True, requirement=text), 0

    async def _answer(
        self, request: Request, task_id: str, text: str, message: Message, push: TaskPushNotificationConfig | None
    ) -> tuple[str, int]:
        """Confirm the task waiting for this message (and push its updates from now on to the
        config `push`, if given); (its id, the answers it has had since)."""
        pushes = _pushes(request) if push is not None else None
        data = next((json_of(p.data.struct_value) for p in message.parts if p.HasField("data")), {})
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
            if pushes and push:
                pushes.save(pushes.config_of(push, task_id))
            answered = runtime.commands.confirm(task_id, approved, feedback)
            return len(answered.feedback) + (1 if approved else 0)  # each revision asked, and an approval

        return task_id, await self._call(request, "SendMessage", work, audited=True, task_id=task_id)

    # tasks

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        history = params.history_length if params.HasField("history_length") else None
        return await self._task(_request_of(context), params.id, history)

    async def on_list_tasks(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        request = _request_of(context)
        status = STATUS_OF.get(params.status) if params.status else None
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
            tasks = [task_of(r, history, params.include_artifacts) for r in records]
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
            return task_of(runtime.runs.record(params.id), None)

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
        async for event in self._follow(request, params.id, snapshot=True, ends=FINAL_STATES):
            yield event

    # push notifications: each config's URL gets the task's updates as signed webhooks (a2a_push.py)

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        request = _request_of(context)
        pushes = _pushes(request)

        def work(runtime: Runtime) -> TaskPushNotificationConfig:
            runtime.store.get(params.task_id)  # TaskNotFoundError before the URL is looked at
            config = pushes.config_of(params, params.task_id)
            pushes.save(config)
            return pushes.as_a2a(config)

        operation = "CreateTaskPushNotificationConfig"
        return await self._call(request, operation, work, audited=True, task_id=params.task_id)

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        request = _request_of(context)
        pushes = _pushes(request)

        def work(runtime: Runtime) -> TaskPushNotificationConfig:
            config_id = params.id or params.task_id  # an unnamed config is named after its task
            for config in _push_configs(runtime, params.task_id):
                if config.config_id == config_id:
                    return pushes.as_a2a(config)
            raise TaskNotFoundError(
                f"Task {params.task_id} has no push config {config_id!r}; ListTaskPushNotificationConfigs "
                "shows the ones it has."
            )

        return await self._call(request, "GetTaskPushNotificationConfig", work)

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        request = _request_of(context)
        pushes = _pushes(request)

        def work(runtime: Runtime) -> ListTaskPushNotificationConfigsResponse:
            page, token = pushes.page(_push_configs(runtime, params.task_id), params.page_size, params.page_token)
            return ListTaskPushNotificationConfigsResponse(
                configs=[pushes.as_a2a(c) for c in page], next_page_token=token
            )

        return await self._call(request, "ListTaskPushNotificationConfigs", work)

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        request = _request_of(context)
        _pushes(request)

        def work(runtime: Runtime) -> None:
            runtime.store.get(params.task_id)
            # Deleting what is not there succeeds (as in the a2a-sdk): a repeat changes nothing.
            runtime.store.delete_push_config(params.task_id, params.id or params.task_id)

        operation = "DeleteTaskPushNotificationConfig"
        await self._call(request, operation, work, audited=True, task_id=params.task_id)

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
        fold = Fold(record)
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
        self, request: Request, fold: Fold, update: TaskStatusUpdateEvent
    ) -> list[TaskArtifactUpdateEvent]:
        """A succeeded task's last word (`final_updates`)."""
        if update.status.state != TaskState.TASK_STATE_COMPLETED:
            return []
        record = await self._call(request, "SendMessage", lambda r: r.runs.record(update.task_id))
        return final_updates(record, fold, update)

    async def _task(self, request: Request, task_id: str, history: int | None) -> Task:
        return await self._call(request, "GetTask", lambda runtime: task_of(runtime.runs.record(task_id), history))

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
    "This server sends no push notifications: its operator has not set WEBHOOK_SECRET, which signs "
    "them. Follow the task with SubscribeToTask, or poll it with GetTask."
)


def _pushes(request: Request) -> A2aPushes:
    runtime: Runtime = request.app.state.runtime
    if runtime.a2a_pushes is None:
        raise PushNotificationNotSupportedError(_NO_PUSH)
    return runtime.a2a_pushes


def _push_configs(runtime: Runtime, task_id: str) -> list[PushConfig]:
    runtime.store.get(task_id)  # TaskNotFoundError for an unknown task, not an empty list
    return runtime.store.push_configs([task_id]).get(task_id, [])


def _drain(subscription: Any) -> list[Event]:
    events: list[Event] = []
    while batch := subscription.take():
        events += batch
    return events


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
