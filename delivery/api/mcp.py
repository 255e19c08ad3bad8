"""The MCP door: the crew as Model Context Protocol tools and resources at /mcp.

One thin mapping, no state of its own: every tool calls what the /api routes call (views.py,
TaskCommands) and `run_delivery` follows the same event log the SSE stream serves, so usage,
budgets, durability and other replicas hold for it as for /api. The SDK's streamable HTTP
transport runs stateless (a JSON-RPC request per POST, answered on that POST's own SSE stream):
any replica serves any request, and no MCP session outlives a restart because none exists.

Every HTTP request to /mcp passes the one gate (security/gate.py: rate limit per address, then
the API key as a bearer token, then per key); the tools that change a task leave an audit line
like the /api routes'. Domain errors come back as tool errors (isError) with their own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Any, TypeVar

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import McpError
from mcp.types import (
    CallToolResult,
    Completion,
    CompletionArgument,
    ErrorData,
    LoggingLevel,
    PromptReference,
    ResourceLink,
    ResourceTemplateReference,
    TextContent,
    ToolAnnotations,
)
from pydantic import AnyUrl, BaseModel, Field, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from delivery import __version__
from delivery.api import views
from delivery.api.idempotency import Remembered, checked_key, once
from delivery.api.inputs import validation_error
from delivery.api.schemas import ConfirmRequest, RunTaskRequest, TaskBudget, UsageTotals
from delivery.crew.roster import ROSTER
from delivery.errors import DomainError, InvalidRequestError
from delivery.events import EventType, format_timestamp
from delivery.llm.usage import totals
from delivery.runtime import Runtime
from delivery.security.auth import ANONYMOUS, Auth, decode_headers, fingerprint
from delivery.security.gate import Gate, client_address, send_refusal
from delivery.security.request_guard import AuditLog
from delivery.settings import Settings
from delivery.streaming import sse
from delivery.tasks.records import TaskPriority, TaskRecord, TaskStatus

log = logging.getLogger(__name__)

PATH = "/mcp"
_CALLER = "delivery.mcp.caller"  # the gate's answer, kept in the request's scope state for the tools
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_LOCAL_HOSTS = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
RESOURCE_NOT_FOUND = -32002  # the code the MCP specification gives an unreadable resource
STORE_UNREACHABLE = "The task database is unreachable; retry in a few seconds (operators: check DATABASE_URL)."

Model = TypeVar("Model", bound=BaseModel)
Body = TypeVar("Body", bound=BaseModel | None)  # a tool's validated arguments (None: only a task id)


class DeliveryState(BaseModel):
    """A task as the MCP tools show it: where it is, what it cost, and its documents once done."""

    task_id: str
    status: TaskStatus
    requirement: str
    current_agent: str | None
    completed_steps: int
    total_steps: int
    usage: UsageTotals
    verdict: str | None = Field(description="GO or NO-GO once the task has succeeded")
    verdict_reason: str | None
    error: str | None
    documents: dict[str, str] | None = Field(
        description="Each deliverable's Markdown, by name, once the task has finished; null before"
    )
    document_uris: dict[str, str] = Field(description="delivery:// resources of the documents produced so far")
    package_uri: str = Field(description="The delivery package (zip) as a resource")
    awaiting_confirmation: bool = Field(description="true: answer with confirm_delivery (or cancel_delivery)")


class DeliveryAction(BaseModel):
    task_id: str
    status: TaskStatus
    message: str
    replayed: bool = Field(
        False, description="true: the first answer to this idempotency_key, sent again; nothing was done twice"
    )


IdempotencyKey = Annotated[
    str | None,
    Field(
        description="Retry this call with the same key (after a timeout or a dropped connection) and get its "
        "first answer back without the work being done twice. 1 to 255 visible ASCII characters; a UUID is a "
        "good choice. Remembered for 24 hours by default; a key is the caller's own."
    ),
]


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding check: which Host (and Origin) headers /mcp answers.

    A browser page can reach a server on the user's own machine under a name it controls; the
    check refuses such names. MCP_ALLOWED_HOSTS lists the real ones (a deployment's host names,
    with the local names always allowed); empty: the local names when HOST is a loopback
    address, and no check on a server listening on other interfaces, whose names it cannot
    know (put API keys on it); "*": no check. Origins: those of the allowed hosts and CORS_ORIGINS."""
    hosts = [h.strip() for h in settings.mcp_allowed_hosts.split(",") if h.strip()]
    if hosts == ["*"] or (not hosts and settings.host not in _LOOPBACK):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    allowed = list(_LOCAL_HOSTS)
    for host in hosts:
        allowed += [host] if host.endswith(":*") else [host, f"{host}:*"]
    origins = [f"{scheme}://{host}" for host in allowed for scheme in ("http", "https")]
    origins += [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=allowed, allowed_origins=origins
    )


class McpDoor:
    """The FastMCP server with our tools and resources, and the ASGI app served at /mcp."""

    def __init__(self, settings: Settings, audit: AuditLog) -> None:
        self.settings = settings
        self._audit = audit
        self._manager: StreamableHTTPSessionManager | None = None
        root = logging.getLogger()
        # FastMCP calls logging.basicConfig, which would put its own (Rich) handler on a root
        # logger that has none yet; ours is configured in the lifespan (observability/logs.py).
        placeholder = logging.NullHandler() if not root.handlers else None
        if placeholder is not None:
            root.addHandler(placeholder)
        try:
            self.server = _FastMCP(
                name="multi-agent-delivery",
                instructions="A crew of four agents (" + " → ".join(ROSTER.names) + ") turns a software "
                "requirement into a delivery package: requirements analysis, test plan, technical design and "
                "a review with a GO/NO-GO verdict. run_delivery does it in one call (minutes; it reports "
                "progress); start_delivery + get_delivery do it without waiting. The documents are "
                "resources at delivery://{task_id}/{document}; the zip at delivery://{task_id}/package.",
                stateless_http=True,
                transport_security=transport_security(settings),
                max_request_body_size=settings.max_request_bytes,
            )
        finally:
            if placeholder is not None:
                root.removeHandler(placeholder)
        # One line per request at INFO ("Processing request of type ...", "Terminating session").
        for name in ("mcp.server.lowlevel.server", "mcp.server.streamable_http"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.server._mcp_server.version = __version__  # FastMCP takes no version
        self._register_tools()
        self._register_resources()
        self._register_utilities()

    # -- serving --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Run the transport for one lifespan of the app (a session manager runs only once)."""
        s = self.server.settings
        self._manager = StreamableHTTPSessionManager(
            app=self.server._mcp_server,  # the low-level server FastMCP wraps
            stateless=True,
            json_response=False,  # SSE answers, so a long tool call carries progress notifications
            security_settings=s.transport_security,
            max_request_body_size=s.max_request_body_size,
        )
        async with self._manager.run():
            yield
        self._manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app at /mcp: the gate, then the SDK's transport."""
        if scope["type"] != "http":
            return
        state = scope["app"].state
        gate: Gate = state.gate
        try:
            caller = await run_in_threadpool(gate.admit, decode_headers(scope["headers"]), _address(scope))
        except DomainError as exc:
            if scope["method"] == "POST":
                self._write_audit(scope, None, type(exc).__name__, "rejected", time.time(), None)
            await send_refusal(send, exc)
            return
        if self._manager is None:
            body = b'{"detail": "The server is starting or stopping; retry in a few seconds."}'
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"5")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope = {**scope, "state": {**scope.get("state", {}), _CALLER: caller}}
        await self._manager.handle_request(scope, receive, send)

    # -- tools ----------------------------------------------------------------------------------

    def _register_tools(self) -> None:
        mcp = self.server
        changes = ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False)
        reads = ToolAnnotations(readOnlyHint=True, openWorldHint=False)

        @mcp.tool(
            description="Start a delivery: the crew turns the requirement into four documents. Returns the "
            "task id at once; follow it with get_delivery. Unless skip_confirmation is true, the task "
            "pauses after the ProductManager's analysis until confirm_delivery answers.",
            annotations=changes,
        )
        async def start_delivery(
            ctx: Context,
            requirement: Annotated[str, Field(description="What to build, in any language (up to 20,000 characters)")],
            skip_confirmation: bool = False,
            max_tokens: Annotated[int | None, Field(description="Stop the task past this many tokens")] = None,
            max_cost: Annotated[float | None, Field(description="Stop the task past this cost")] = None,
            priority: TaskPriority = TaskPriority.normal,
            idempotency_key: IdempotencyKey = None,
        ) -> CallToolResult:
            message = "Task started. Follow it with get_delivery" + (
                "." if skip_confirmation else "; confirm the analysis with confirm_delivery when it asks."
            )
            work = self._once(
                "start_delivery",
                idempotency_key,
                lambda: _run_request(requirement, skip_confirmation, max_tokens, max_cost, priority),
                _starting(message),
            )
            return await self._call(ctx, "start_delivery", work, audited=True, requirement=requirement)

        @mcp.tool(
            description="A delivery's state: status, current agent, steps done, usage, and once it has "
            "finished the verdict and every document.",
            annotations=reads,
        )
        async def get_delivery(ctx: Context, task_id: str) -> CallToolResult:
            return await self._call(ctx, "get_delivery", lambda runtime, _: _state(runtime.runs.record(task_id)))

        @mcp.tool(
            description="Answer a delivery that awaits confirmation of the ProductManager's analysis: "
            "approved=true lets the rest of the crew go on; approved=false with feedback asks for a revision.",
            annotations=changes,
        )
        async def confirm_delivery(
            ctx: Context,
            task_id: str,
            approved: bool,
            feedback: Annotated[
                str | None, Field(description="Required when approved is false: what to change")
            ] = None,
            idempotency_key: IdempotencyKey = None,
        ) -> CallToolResult:
            def confirm(runtime: Runtime, _: Request, body: ConfirmRequest) -> DeliveryAction:
                r = runtime.commands.confirm(task_id, body.approved, body.feedback)
                return DeliveryAction(task_id=task_id, status=r.status, message=views.confirmation_message(approved))

            work = self._once(
                "confirm_delivery",
                idempotency_key,
                lambda: _validated(ConfirmRequest, {"approved": approved, "feedback": feedback}),
                confirm,
                task_id,
            )
            return await self._call(ctx, "confirm_delivery", work, audited=True, task_id=task_id)

        @mcp.tool(
            description="Cancel a queued, running or waiting delivery.",
            annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=False),
        )
        async def cancel_delivery(ctx: Context, task_id: str, idempotency_key: IdempotencyKey = None) -> CallToolResult:
            def cancel(runtime: Runtime, _: Request, __: None) -> DeliveryAction:
                r = runtime.commands.cancel(task_id)
                return DeliveryAction(task_id=task_id, status=r.status, message="The task is cancelled.")

            work = self._once("cancel_delivery", idempotency_key, lambda: None, cancel, task_id)
            return await self._call(ctx, "cancel_delivery", work, audited=True, task_id=task_id)

        @mcp.tool(description="Recent deliveries, newest first.", annotations=reads)
        async def list_deliveries(
            ctx: Context,
            status: TaskStatus | None = None,
            limit: Annotated[int, Field(ge=1, le=200)] = 20,
        ) -> CallToolResult:
            return await self._call(
                ctx, "list_deliveries", lambda runtime, _: views.list_of(runtime, status, limit, None)
            )

        @mcp.tool(
            description="Run a whole delivery in one call and return the package: the verdict and every "
            "document (the zip as a resource link). Takes minutes; progress notifications (current agent, "
            "steps done) come at least every ~15 s, so send a progressToken. It runs straight through "
            "(no confirmation). If the call is dropped the task goes on: call again with the same "
            "idempotency_key to follow the same task to its end, or get_delivery with its task id.",
            annotations=changes,
        )
        async def run_delivery(
            ctx: Context,
            requirement: Annotated[str, Field(description="What to build, in any language (up to 20,000 characters)")],
            max_tokens: Annotated[int | None, Field(description="Stop the task past this many tokens")] = None,
            max_cost: Annotated[float | None, Field(description="Stop the task past this cost")] = None,
            priority: TaskPriority = TaskPriority.normal,
            idempotency_key: IdempotencyKey = None,
        ) -> CallToolResult:
            work = self._once(
                "run_delivery",
                idempotency_key,
                lambda: _run_request(requirement, True, max_tokens, max_cost, priority),
                _starting("started"),
            )
            started = await self._call(ctx, "run_delivery", work, audited=True, requirement=requirement)
            if started.isError or started.structuredContent is None:
                return started
            task_id = started.structuredContent["task_id"]
            try:
                followed = await self._follow(ctx, task_id)
            except DomainError as exc:  # a replayed key's task purged since (TASK_RETENTION_DAYS)
                return _error(str(exc))
            except (OperationalError, InterfaceError):  # its stored log could not be read
                return _error(STORE_UNREACHABLE + f" Task {task_id} goes on; follow it with get_delivery.")
            if not followed:
                return _error(
                    f"This server is shutting down; task {task_id} goes on on another one. Follow it with "
                    "get_delivery (the documents come with it once it has finished)."
                )
            return await self._call(ctx, "run_delivery", lambda runtime, _: _finished_state(runtime, task_id))

    @staticmethod
    def _once(
        tool: str,
        key: str | None,
        validate: Callable[[], Body],
        work: Callable[[Runtime, Request, Body], DeliveryAction],
        task_id: str = "",
    ) -> Callable[[Runtime, Request], DeliveryAction]:
        """A tool that changes a task: its arguments validated (`validate()`, once), then
        `work`, done once per idempotency_key as /api does it for Idempotency-Key
        (delivery/api/idempotency.py): the same store, so a key's answer holds on any replica.
        The validated arguments name the request, so a retry written differently (spaces
        around the requirement) is the same request."""

        def checked_then_done(runtime: Runtime, http: Request) -> DeliveryAction:
            body = validate()
            if key is None:
                return work(runtime, http, body)
            checked = checked_key(key, "idempotency_key")
            arguments = "" if body is None else json.dumps(body.model_dump(mode="json"), sort_keys=True)
            caller = http.scope["state"][_CALLER]
            answer = once(
                runtime,
                caller,
                checked,
                ("MCP", tool, task_id, arguments),
                200,
                lambda: work(runtime, http, body),
                name="idempotency_key",
            )
            if isinstance(answer, Remembered):
                return DeliveryAction.model_validate_json(answer.answer).model_copy(update={"replayed": True})
            return answer

        return checked_then_done

    async def _call(
        self,
        ctx: Context,
        tool: str,
        work: Callable[[Runtime, Request], BaseModel | CallToolResult],
        *,
        audited: bool = False,
        task_id: str | None = None,
        requirement: str | None = None,
    ) -> CallToolResult:
        """`work` on a thread (it may wait on the database or Redis), its answer or its error as
        a tool result; an audit line for the tools that change a task."""
        request = _request(ctx)
        runtime: Runtime = request.app.state.runtime
        started, outcome, error, answer = time.time(), "ok", None, None
        try:
            answer = await run_in_threadpool(work, runtime, request)
        except DomainError as exc:
            outcome, error = "rejected", type(exc).__name__
            return _error(str(exc))
        except (OperationalError, InterfaceError) as exc:  # the store already waited for the database
            outcome, error = "error", type(exc).__name__
            log.error("MCP %s: the task store is unreachable (%s)", tool, str(exc).splitlines()[0])
            return _error(STORE_UNREACHABLE)
        finally:
            if audited:
                task_id = task_id or getattr(answer, "task_id", None)
                self._write_audit(request.scope, tool, error, outcome, started, requirement, task_id)
        if isinstance(answer, CallToolResult):
            return answer
        data = answer.model_dump(mode="json")
        return CallToolResult(
            content=[TextContent(type="text", text=json.dumps(data, ensure_ascii=False, indent=2))],
            structuredContent=data,
        )

    async def _follow(self, ctx: Context, task_id: str) -> bool:
        """Follow the task's event log until it ends (True) or the server stops (False: uvicorn
        waits for open responses, and the task goes on elsewhere), reporting progress: at once
        when an agent starts or finishes, and every MCP_PROGRESS_INTERVAL_S in between. The spec
        wants each progress value above the last: it is the steps done plus a fraction growing
        within a step, and the total once every agent has finished (the package is then a moment
        away)."""
        runtime: Runtime = _request(ctx).app.state.runtime
        streams, interval = runtime.streams, self.settings.mcp_progress_interval_s
        if not streams.holds(task_id):
            await run_in_threadpool(streams.make_available, task_id)
        total, done, beats, agent = ROSTER.total_steps, 0, 0, None
        subscription = streams.subscription(task_id, 0)
        next_report = 0.0  # the first report goes out at once
        try:
            while True:
                changed = False
                for event in subscription.take():
                    if event.event_type == EventType.agent_start.value:
                        agent, changed = event.agent_name, True
                    elif event.event_type == EventType.step_end.value:
                        steps = int((event.metadata or {}).get("completed_steps", done))
                        if steps > done:
                            done, beats, changed = steps, 0, True
                finished = subscription.finished
                now = time.monotonic()
                # A batch may hold the last steps and the end together (a busy loop): report them
                # before answering, so the last progress a client sees is where the run stopped.
                if changed or (not finished and now >= next_report and done < total):
                    beats += 1
                    progress = done + beats / (beats + 10) if done < total else float(total)
                    working = f"{agent} is working; " if agent and done < total and not finished else ""
                    await ctx.report_progress(progress, total, f"{working}{done} of {total} steps done")
                    next_report = now + interval
                    if not finished:
                        continue  # take() again before waiting: events may have come during the report
                if finished:
                    return True  # the tool's answer follows
                if sse.server_exiting():
                    return False
                # Right after take() returned nothing, as Subscription.waiter asks.
                wait_s = next_report - time.monotonic() if done < total else interval
                await asyncio.wait([subscription.waiter()], timeout=max(0.0, wait_s))
        finally:
            subscription.close()

    # -- resources ------------------------------------------------------------------------------

    def _register_resources(self) -> None:
        mcp = self.server

        # Registered before the document template, which would match ".../package" too.
        @mcp.resource(
            "delivery://{task_id}/package",
            name="package",
            title="Delivery package (zip)",
            description="The four documents, their versions, the event log and the task's record, as "
            "deliverables.zip; while the task runs, what it has produced so far.",
            mime_type="application/zip",
        )
        async def package(task_id: str, ctx: Context) -> bytes:
            runtime: Runtime = _request(ctx).app.state.runtime
            return await run_in_threadpool(lambda: views.package_of(runtime, runtime.runs.record(task_id)))

        names = ", ".join(ROSTER.deliverable_keys)

        @mcp.resource(
            "delivery://{task_id}/{document}",
            name="document",
            title="Delivery document",
            description=f"One deliverable as Markdown ({names}), readable as soon as its agent has written it.",
            mime_type="text/markdown",
        )
        async def document(task_id: str, document: str, ctx: Context) -> str:
            runtime: Runtime = _request(ctx).app.state.runtime
            views.deliverable_key(document)  # an unknown name says so, whatever the task
            return (await run_in_threadpool(lambda: views.document_of(runtime.runs.record(task_id), document)))[1]

    def _register_utilities(self) -> None:
        low_level = self.server._mcp_server  # the handlers FastMCP has no decorator for

        @low_level.set_logging_level()
        async def set_level(level: LoggingLevel) -> None:
            """Accepted: the door sends no log notifications (the event log is the record), so
            every level is honoured trivially; clients may still set one."""

        @self.server.completion()
        async def complete(
            ref: PromptReference | ResourceTemplateReference, argument: CompletionArgument, _: Any
        ) -> Completion:
            """The document names of delivery://{task_id}/{document}; nothing else is guessable."""
            if isinstance(ref, ResourceTemplateReference) and argument.name == "document":
                names = [k for k in ROSTER.deliverable_keys if k.startswith(argument.value)]
                return Completion(values=names, total=len(names), hasMore=False)
            return Completion(values=[], total=0, hasMore=False)

    # -- audit ----------------------------------------------------------------------------------

    def _write_audit(
        self,
        scope: Scope,
        tool: str | None,
        error: str | None,
        outcome: str,
        started: float,
        requirement: str | None,
        task_id: str | None = None,
    ) -> None:
        line: dict[str, Any] = {
            "ts": format_timestamp(started),
            "who": scope.get("state", {}).get(_CALLER) or _presented(scope),
            "client": _address(scope),
            "method": "MCP",
            "path": PATH,
            "tool": tool,
            "outcome": outcome,
            "error": error,
            "ms": round((time.time() - started) * 1000, 1),
            "task_id": task_id,
        }
        if requirement is not None:
            line["requirement_sha256"] = hashlib.sha256(requirement.encode("utf-8", "surrogatepass")).hexdigest()
        self._audit.write(json.dumps(line, ensure_ascii=False))


class _FastMCP(FastMCP):
    async def read_resource(self, uri: AnyUrl | str) -> Iterable[ReadResourceContents]:
        """A domain error reading a resource is answered with its own message (FastMCP wraps it
        twice in "Error creating resource from template: ..."), as "resource not found"."""
        try:
            return await super().read_resource(uri)
        except Exception as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, DomainError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise McpError(ErrorData(code=RESOURCE_NOT_FOUND, message=str(cause))) from exc


def _request(ctx: Context) -> Request:
    request = ctx.request_context.request
    assert isinstance(request, Request), "the MCP door serves streamable HTTP only"
    return request


def _presented(scope: Scope) -> str:
    """Who a refused request said it was, as the /api audit lines name it."""
    key = Auth.presented_key(decode_headers(scope["headers"]))
    return fingerprint(key) if key else ANONYMOUS


def _address(scope: Scope) -> str:
    return client_address(scope.get("client"))


def _starting(message: str) -> Callable[[Runtime, Request, RunTaskRequest], DeliveryAction]:
    """start_delivery's and run_delivery's work: count the new task against
    RATE_LIMIT_RUN_TASK and start it (not done for a retry answered from its key)."""

    def start(runtime: Runtime, request: Request, body: RunTaskRequest) -> DeliveryAction:
        gate: Gate = request.app.state.gate
        gate.admit_new_task(request.scope["state"][_CALLER], _address(request.scope))
        r = views.start_task(runtime, body)
        return DeliveryAction(task_id=r.task_id, status=r.status, message=message)

    return start


def _validated(model: type[Model], data: dict[str, Any]) -> Model:
    """`model` from tool arguments, or InvalidRequestError with what the /api answers would say."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
            for e in (validation_error(e) for e in exc.errors())
        )
        raise InvalidRequestError(f"Invalid arguments: {problems}.") from None


def _run_request(
    requirement: str, skip_confirmation: bool, max_tokens: int | None, max_cost: float | None, priority: TaskPriority
) -> RunTaskRequest:
    budget = None if max_tokens is None and max_cost is None else {"max_tokens": max_tokens, "max_cost": max_cost}
    if budget is not None:
        _validated(TaskBudget, budget)
    return _validated(
        RunTaskRequest,
        {
            "user_requirement": requirement,
            "skip_confirmation": skip_confirmation,
            "budget": budget,
            "priority": priority,
        },
    )


def _state(r: TaskRecord) -> DeliveryState:
    traced = r.traceability or {}
    return DeliveryState(
        task_id=r.task_id,
        status=r.status,
        requirement=r.requirement,
        current_agent=r.current_agent,
        completed_steps=r.completed_steps,
        total_steps=r.total_steps,
        usage=UsageTotals(**totals(r.usage.get("calls", []))),
        verdict=traced.get("verdict"),
        verdict_reason=traced.get("reason"),
        error=r.error,
        documents=dict(r.deliverables) if r.status.finished else None,
        document_uris={
            key: f"delivery://{r.task_id}/{key}" for key in ROSTER.deliverable_keys if key in r.deliverables
        },
        package_uri=f"delivery://{r.task_id}/package",
        awaiting_confirmation=r.status is TaskStatus.awaiting_confirmation,
    )


def _finished_state(runtime: Runtime, task_id: str) -> CallToolResult:
    """run_delivery's answer: the package when the task succeeded, a tool error saying why not."""
    state = _state(runtime.runs.record(task_id))
    data = state.model_dump(mode="json")
    if state.status is not TaskStatus.succeeded:
        return _error(
            f"Task {task_id} {state.status.value}: {state.error or 'no reason recorded'}. "
            "get_delivery shows what it had produced."
        )
    summary = f"Delivery {task_id} succeeded. Verdict: {state.verdict} ({state.verdict_reason})."
    link = ResourceLink(
        type="resource_link",
        uri=AnyUrl(state.package_uri),
        name=f"delivery-{task_id}.zip",
        mimeType="application/zip",
        description="The delivery package",
    )
    return CallToolResult(
        content=[
            TextContent(type="text", text=summary),
            TextContent(type="text", text=json.dumps(data, ensure_ascii=False, indent=2)),
            link,
        ],
        structuredContent=data,
    )


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], isError=True)
