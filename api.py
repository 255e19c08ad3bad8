"""The /api routes. Domain errors raised below are mapped to HTTP statuses in main.py."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from deliverables import AGENT_OF, FILENAMES, build_zip, resolve_name
from errors import (
    DeliverableNotFoundError, InvalidRequestError, InvalidResumePointError, TaskNotFinishedError,
)
from markdown_render import to_html
from models import (
    ConfirmRequest, DeliverableInfo, DeliverableList, Deliverables, ErrorResponse, RunTaskRequest,
    RunTaskResponse, StreamEventModel, StreamInfo, StreamList, TaskActionResponse, TaskList,
    TaskResultResponse, TaskStatus, TaskStatusResponse, TaskSummary, Traceability,
)
from services import ServicesDep
from sse import MEDIA_TYPE, serve_events
from stream_manager import StreamSnapshot
from task_store import TaskRecord

SSE_RETRY_MS = 3000
router = APIRouter(prefix="/api")

NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown or expired task"}}
CONFLICT = {409: {"model": ErrorResponse, "description": "Not possible in the task's current state"}}


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


def _stream_info(s: StreamSnapshot) -> StreamInfo:
    return StreamInfo(task_id=s.task_id, closed=s.closed, subscribers=s.subscribers,
                      last_sequence=s.last_sequence, created_at=_dt(s.created_at),
                      closed_at=_dt(s.closed_at))


def parse_resume_point(last_event_id: str | None, after: int | None) -> int:
    """Last-Event-ID (sent by a reconnecting EventSource) wins over ?after=."""
    if last_event_id is not None and last_event_id.strip():
        value = last_event_id.strip()
        if not value.isdigit():
            raise InvalidResumePointError(
                f"Last-Event-ID must be the sequence number of the last event received (an integer "
                f">= 0), got {value[:40]!r}.")
        return int(value)
    return after or 0


def parse_after(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise InvalidRequestError(
            f"after must be the sequence number of the last event received (an integer >= 0), "
            f"got {value[:40]!r}.")
    return int(value)


@router.post("/run_task", status_code=202, response_model=RunTaskResponse)
def run_task(body: RunTaskRequest, services: ServicesDep) -> RunTaskResponse:
    record = services.runner.submit(body.user_requirement, body.skip_confirmation)
    tid = record.task_id
    return RunTaskResponse(
        task_id=tid, status="started",
        message=f"Task accepted. Follow it with: curl -N http://<host>/api/stream/{tid}",
        stream_url=f"/api/stream/{tid}", status_url=f"/api/task/{tid}/status")


def _resume_point(scope: Scope) -> int:
    last_event_id = next((v for k, v in scope["headers"] if k == b"last-event-id"), None)
    after = parse_qs(scope["query_string"].decode("latin-1")).get("after", [None])[-1]
    return parse_resume_point(None if last_event_id is None else last_event_id.decode("latin-1"),
                              parse_after(after))


class EventStreamRoute(APIRoute):
    """GET /api/stream/{task_id}: documented by FastAPI from `stream` below, served as plain ASGI.

    A stream stays open for as long as a viewer watches, so whatever the request path keeps
    alive is paid per viewer: FastAPI's request, dependency and exit-stack frames cost ~4 KB of
    an idle connection (docs/benchmarks.md). Domain errors raised here still reach the app's
    exception handlers (Starlette's ExceptionMiddleware sits above the router).
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await super().handle(scope, receive, send)  # 405 with Allow
            return
        task_id = scope["path_params"]["task_id"]
        start = _resume_point(scope)
        services = scope["app"].state.services
        if not services.streams.holds(task_id):
            await run_in_threadpool(services.ensure_stream, task_id)  # 404 for unknown tasks
        settings = services.settings
        await serve_events(services.streams.subscription(task_id, start), scope, receive, send,
                           heartbeat_s=settings.sse_heartbeat_s,
                           send_timeout_s=settings.sse_send_timeout_s, retry_ms=SSE_RETRY_MS)


async def stream(
    task_id: str,
    after: Annotated[int | None, Query(ge=0, description="Resume after this sequence")] = None,
    last_event_id: Annotated[str | None, Header(description="Resume after this sequence")] = None,
) -> None:
    """Server-Sent Events of one task: every event from the beginning (or after the given
    sequence), live until the task ends. This signature documents the route; requests are
    served by `EventStreamRoute.handle`."""
    raise NotImplementedError  # never called: EventStreamRoute.handle serves the route


router.add_api_route(
    "/stream/{task_id}", stream, methods=["GET"], route_class_override=EventStreamRoute,
    summary="Server-Sent Events of one task, from the beginning or after a sequence",
    response_class=Response,
    status_code=200,
    responses={
        200: {"description": "`text/event-stream`; each event's `data` is a StreamEvent "
                             "(see schema), `id` is its sequence, `event` its type.",
              "content": {MEDIA_TYPE: {"schema": StreamEventModel.model_json_schema()}}},
        400: {"model": ErrorResponse, "description": "Malformed Last-Event-ID"},
        **NOT_FOUND,
    },
)


@router.get("/task/{task_id}/status", response_model=TaskStatusResponse, responses=NOT_FOUND)
def task_status(task_id: str, services: ServicesDep) -> TaskStatusResponse:
    r = services.runner.record(task_id)
    return TaskStatusResponse(
        task_id=r.task_id, status=r.status, requirement=r.requirement, current_agent=r.current_agent,
        completed_steps=r.completed_steps, total_steps=r.total_steps,
        created_at=_dt(r.created_at), started_at=_dt(r.started_at),
        finished_at=_dt(r.finished_at), error=r.error,
        last_sequence=services.last_sequence(task_id))


@router.get("/task/{task_id}/result", response_model=TaskResultResponse,
            responses={**NOT_FOUND, 409: {"model": ErrorResponse, "description": "Not finished yet"}})
def task_result(task_id: str, services: ServicesDep) -> TaskResultResponse:
    r = _finished(services.runner.record(task_id))
    return TaskResultResponse(
        task_id=r.task_id, status=r.status, language=r.language,
        deliverables=Deliverables(**r.deliverables), error=r.error,
        traceability=Traceability(**r.traceability) if r.traceability else None)


def _finished(record: TaskRecord) -> TaskRecord:
    if not record.status.finished:
        raise TaskNotFinishedError(record.task_id, record.status.value)
    return record


@router.post("/task/{task_id}/confirm", response_model=TaskActionResponse,
             responses={**NOT_FOUND, **CONFLICT,
                        422: {"model": ErrorResponse, "description": "Changes requested without feedback"}})
def confirm(task_id: str, body: ConfirmRequest, services: ServicesDep) -> TaskActionResponse:
    r = services.runner.confirm(task_id, body.approved, body.feedback)
    message = ("Approved: QA, Developer and Coordinator are next." if body.approved else
               "Changes requested: the ProductManager is revising the analysis.")
    return TaskActionResponse(task_id=task_id, status=r.status, message=message)


@router.post("/task/{task_id}/cancel", response_model=TaskActionResponse,
             responses={**NOT_FOUND, **CONFLICT})
def cancel(task_id: str, services: ServicesDep) -> TaskActionResponse:
    r = services.runner.cancel(task_id)
    return TaskActionResponse(task_id=task_id, status=r.status, message="The task is cancelled.")


@router.get("/task/{task_id}/deliverables", response_model=DeliverableList, responses=NOT_FOUND)
def list_deliverables(task_id: str, services: ServicesDep) -> DeliverableList:
    r = services.runner.record(task_id)
    items = [DeliverableInfo(name=key, filename=FILENAMES[key], agent=AGENT_OF[key],
                             size=len(r.deliverables[key].encode()),
                             url=f"/api/task/{task_id}/deliverables/{key}")
             for key in FILENAMES if key in r.deliverables]
    return DeliverableList(task_id=task_id, status=r.status, deliverables=items,
                           zip_url=f"/api/task/{task_id}/deliverables.zip")


@router.get("/task/{task_id}/deliverables.zip", response_class=Response,
            responses={200: {"content": {"application/zip": {}}}, **NOT_FOUND,
                       409: {"model": ErrorResponse, "description": "Not finished yet"}})
def deliverables_zip(task_id: str, services: ServicesDep) -> Response:
    r = _finished(services.runner.record(task_id))
    task = {"task_id": r.task_id, "status": r.status.value, "requirement": r.requirement,
            "language": r.language, "created_at": r.created_at, "started_at": r.started_at,
            "finished_at": r.finished_at, "error": r.error, "feedback": r.feedback,
            "traceability": r.traceability}
    data = build_zip(r.deliverables, services.event_log(task_id), task)
    return Response(data, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="delivery-{task_id}.zip"'})


@router.get("/task/{task_id}/deliverables/{name}", response_class=Response,
            responses={200: {"content": {"text/markdown": {}, "text/html": {}}}, **NOT_FOUND})
def deliverable(
    task_id: str,
    name: str,
    services: ServicesDep,
    format: Annotated[Literal["markdown", "html"], Query(
        description="markdown: the document as written; html: rendered, raw HTML escaped")] = "markdown",
) -> Response:
    r = services.runner.record(task_id)
    key = resolve_name(name)
    if key is None:
        raise DeliverableNotFoundError(
            f"No deliverable called {name!r}; use one of {', '.join(FILENAMES)} "
            f"(or {', '.join(FILENAMES.values())}).")
    if key not in r.deliverables:
        raise DeliverableNotFoundError(f"{key} has not been produced yet (task is {r.status.value}).")
    if format == "html":
        return Response(to_html(r.deliverables[key]), media_type="text/html; charset=utf-8")
    return Response(r.deliverables[key], media_type="text/markdown; charset=utf-8",
                    headers={"Content-Disposition": f'inline; filename="{FILENAMES[key]}"'})


@router.get("/tasks", response_model=TaskList)
def list_tasks(
    services: ServicesDep,
    status: TaskStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[datetime | None, Query(description="Only tasks created before this time")] = None,
) -> TaskList:
    if before is not None and before.tzinfo is None:
        before = before.replace(tzinfo=timezone.utc)
    records = services.store.list(status, limit, before.timestamp() if before else None)
    live = services.runner.live_records()
    records = [live.get(r.task_id, r) for r in records]
    tasks = [TaskSummary(task_id=r.task_id, status=r.status, requirement=r.requirement[:200],
                         created_at=_dt(r.created_at), finished_at=_dt(r.finished_at), error=r.error)
             for r in records]
    next_before = tasks[-1].created_at if len(tasks) == limit else None
    return TaskList(tasks=tasks, next_before=next_before)


@router.get("/streams", response_model=StreamList)
async def list_streams(services: ServicesDep) -> StreamList:
    infos = [_stream_info(s) for s in services.streams.snapshots()]
    return StreamList(active=[i for i in infos if not i.closed],
                      finished=[i for i in infos if i.closed])
