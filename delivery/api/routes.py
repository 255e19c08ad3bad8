"""The /api routes. Domain errors raised below are mapped to HTTP statuses once, in main.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from delivery.api import views
from delivery.api.deps import Caller, RuntimeDep, guard
from delivery.api.idempotency import run_once
from delivery.api.schemas import (
    ConfirmRequest,
    CrewInfo,
    DeliverableInfo,
    DeliverableList,
    ErrorResponse,
    RunTaskRequest,
    RunTaskResponse,
    StreamInfo,
    StreamList,
    StreamTokenResponse,
    TaskActionResponse,
    TaskList,
    TaskResultResponse,
    TaskStatusResponse,
    VersionInfo,
    VersionList,
    WebhookAttempt,
    WebhookDeliveryInfo,
    WebhookList,
)
from delivery.api.stream_route import register_stream_route
from delivery.crew.roster import ROSTER
from delivery.documents import diff
from delivery.documents.render import to_html
from delivery.errors import DeliverableNotFoundError
from delivery.runtime import Runtime
from delivery.security.auth import Auth
from delivery.security.gate import Gate, client_address
from delivery.security.redaction import redacted_url
from delivery.streaming.backend import StreamSnapshot
from delivery.tasks.records import TaskStatus

GUARDED: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A body that is not UTF-8 JSON text"},
    401: {"model": ErrorResponse, "description": "API keys are on and none was sent"},
    403: {"model": ErrorResponse, "description": "The API key (or stream token) is not valid"},
    413: {"model": ErrorResponse, "description": "Body larger than MAX_REQUEST_BYTES"},
    415: {"model": ErrorResponse, "description": "Body is not application/json"},
    422: {"model": ErrorResponse, "description": "Malformed or unusable input; the detail says which"},
    429: {"model": ErrorResponse, "description": "Rate limit or queue limit reached; see Retry-After"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "Unknown or expired task"}}
IDEMPOTENT: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorResponse,
        "description": "Not possible in the task's current state, or a request with the same "
        "Idempotency-Key is still being worked on (see Retry-After)",
    },
}
HALF_DONE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorResponse,
        "description": "Redis or the Celery broker failed half-way and what was begun was undone "
        "(a new task is recorded as failed, an answer is asked again); retry after Retry-After",
    },
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retry safely: the same key with the same request within 24 h returns the first "
        "answer (header Idempotent-Replayed: true) without doing the work again; with a different "
        "request it is refused (422). 1-255 visible ASCII characters, e.g. a UUID.",
    ),
]
NOT_FINISHED: dict[int | str, dict[str, Any]] = {409: {"model": ErrorResponse, "description": "Not finished yet"}}

router = APIRouter(prefix="/api", dependencies=[Depends(guard)], responses=GUARDED)


def _auth(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


def _stream_info(s: StreamSnapshot) -> StreamInfo:
    return StreamInfo(
        task_id=s.task_id,
        closed=s.closed,
        subscribers=s.subscribers,
        last_sequence=s.last_sequence,
        created_at=views.dt(s.created_at),
        closed_at=views.dt(s.closed_at),
    )


@router.post("/run_task", status_code=202, response_model=RunTaskResponse, responses={**IDEMPOTENT, **HALF_DONE})
def run_task(
    body: RunTaskRequest, runtime: RuntimeDep, request: Request, caller: Caller, _key: IdempotencyKey = None
) -> RunTaskResponse | JSONResponse:
    return run_once(request, runtime, caller, body, 202, lambda: _start(body, runtime, request, caller))


def _start(body: RunTaskRequest, runtime: Runtime, request: Request, caller: str) -> RunTaskResponse:
    # Counted here, not in the guard: a retry answered from its Idempotency-Key starts nothing.
    gate: Gate = request.app.state.gate
    gate.admit_new_task(caller, client_address(request.scope.get("client")))
    tid = views.start_task(runtime, body).task_id
    auth = _auth(request)
    token = auth.stream_token(tid)[0] if auth.enabled else None
    return RunTaskResponse(
        task_id=tid,
        status="started",
        message=f"Task accepted. Follow it with: curl -N http://<host>/api/stream/{tid}",
        stream_url=f"/api/stream/{tid}",
        status_url=f"/api/task/{tid}/status",
        stream_token=token,
    )


@router.post("/task/{task_id}/stream_token", response_model=StreamTokenResponse, responses=NOT_FOUND)
def stream_token(task_id: str, runtime: RuntimeDep, request: Request) -> StreamTokenResponse:
    """A token for `?token=` on this task's stream, for viewers that cannot send headers."""
    runtime.runs.record(task_id)  # 404 for unknown tasks
    token, expires = _auth(request).stream_token(task_id)
    return StreamTokenResponse(task_id=task_id, stream_token=token, expires_at=views.dt(expires))


register_stream_route(router, NOT_FOUND)


@router.get("/task/{task_id}/status", response_model=TaskStatusResponse, responses=NOT_FOUND)
def task_status(task_id: str, runtime: RuntimeDep) -> TaskStatusResponse:
    return views.status_of(runtime, runtime.runs.record(task_id))


@router.get("/task/{task_id}/result", response_model=TaskResultResponse, responses={**NOT_FOUND, **NOT_FINISHED})
def task_result(task_id: str, runtime: RuntimeDep) -> TaskResultResponse:
    return views.result_of(runtime.runs.record(task_id))


@router.post(
    "/task/{task_id}/confirm",
    response_model=TaskActionResponse,
    responses={
        **NOT_FOUND,
        **IDEMPOTENT,
        **HALF_DONE,
        422: {"model": ErrorResponse, "description": "Changes requested without feedback"},
    },
)
def confirm(
    task_id: str,
    body: ConfirmRequest,
    runtime: RuntimeDep,
    request: Request,
    caller: Caller,
    _key: IdempotencyKey = None,
) -> TaskActionResponse | JSONResponse:
    def work() -> TaskActionResponse:
        r = runtime.commands.confirm(task_id, body.approved, body.feedback)
        return TaskActionResponse(task_id=task_id, status=r.status, message=views.confirmation_message(body.approved))

    return run_once(request, runtime, caller, body, 200, work)


@router.post("/task/{task_id}/cancel", response_model=TaskActionResponse, responses={**NOT_FOUND, **IDEMPOTENT})
def cancel(
    task_id: str, runtime: RuntimeDep, request: Request, caller: Caller, _key: IdempotencyKey = None
) -> TaskActionResponse | JSONResponse:
    def work() -> TaskActionResponse:
        r = runtime.commands.cancel(task_id)
        return TaskActionResponse(task_id=task_id, status=r.status, message="The task is cancelled.")

    return run_once(request, runtime, caller, None, 200, work)


@router.get("/task/{task_id}/webhooks", response_model=WebhookList, responses=NOT_FOUND)
def task_webhooks(task_id: str, runtime: RuntimeDep) -> WebhookList:
    """The task's notifications: where each went, every attempt and what the receiver answered."""
    runtime.runs.record(task_id)  # 404 for unknown tasks
    return WebhookList(
        task_id=task_id,
        webhooks=[
            WebhookDeliveryInfo(
                webhook_id=d.webhook_id,
                url=redacted_url(d.url),  # WEBHOOK_URLS are the operator's: a token in one is not the caller's
                type=d.event_type,
                state=d.state,
                created_at=datetime.fromtimestamp(d.created_at, tz=UTC),
                next_attempt_at=views.dt(d.next_attempt_at),
                delivered_at=views.dt(d.delivered_at),
                attempts=[WebhookAttempt(**a) for a in d.attempts],
                payload=json.loads(d.payload),
            )
            for d in runtime.store.webhooks(task_id)
        ],
    )


@router.get("/task/{task_id}/deliverables", response_model=DeliverableList, responses=NOT_FOUND)
def list_deliverables(task_id: str, runtime: RuntimeDep) -> DeliverableList:
    r = runtime.runs.record(task_id)
    items = [
        DeliverableInfo(
            name=spec.deliverable,
            filename=spec.filename,
            agent=spec.name,
            size=len(r.deliverables[spec.deliverable].encode()),
            url=f"/api/task/{task_id}/deliverables/{spec.deliverable}",
        )
        for spec in ROSTER.agents
        if spec.deliverable in r.deliverables
    ]
    return DeliverableList(
        task_id=task_id, status=r.status, deliverables=items, zip_url=f"/api/task/{task_id}/deliverables.zip"
    )


@router.get(
    "/task/{task_id}/deliverables.zip",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}, **NOT_FOUND, **NOT_FINISHED},
)
def deliverables_zip(task_id: str, runtime: RuntimeDep) -> Response:
    r = views.finished(runtime.runs.record(task_id))
    return Response(
        views.package_of(runtime, r),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="delivery-{task_id}.zip"'},
    )


@router.get(
    "/task/{task_id}/deliverables/{name}",
    response_class=Response,
    responses={200: {"content": {"text/markdown": {}, "text/html": {}}}, **NOT_FOUND},
)
def deliverable(
    task_id: str,
    name: str,
    runtime: RuntimeDep,
    format: Annotated[
        Literal["markdown", "html"],
        Query(description="markdown: the document as written; html: rendered, raw HTML escaped"),
    ] = "markdown",
) -> Response:
    key, document = views.document_of(runtime.runs.record(task_id), name)
    if format == "html":
        return Response(to_html(document), media_type="text/html; charset=utf-8")
    return Response(
        document,
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Disposition": f'inline; filename="{ROSTER.filenames[key]}"'},
    )


VersionNumber = Annotated[int, Path(ge=1, le=1_000_000, description="A version number from .../versions")]
Format = Annotated[
    Literal["markdown", "html"],
    Query(description="markdown: the document as written; html: rendered, raw HTML escaped"),
]


@router.get("/task/{task_id}/deliverables/{name}/versions", response_model=VersionList, responses=NOT_FOUND)
def deliverable_versions(task_id: str, name: str, runtime: RuntimeDep) -> VersionList:
    """Every version of a deliverable: the first draft, each revision round and each fix round."""
    runtime.runs.record(task_id)  # 404 for unknown tasks
    key = views.deliverable_key(name)
    versions = [
        VersionInfo(
            number=v.number,
            agent=v.agent,
            reason=v.reason,
            created_at=views.dt(v.created_at),
            gaps=v.gaps,
            size=v.size,
            url=f"/api/task/{task_id}/deliverables/{key}/versions/{v.number}",
        )
        for v in runtime.store.versions(task_id, key)
    ]
    return VersionList(task_id=task_id, deliverable=key, versions=versions)


@router.get(
    "/task/{task_id}/deliverables/{name}/versions/{number}",
    response_class=Response,
    responses={200: {"content": {"text/markdown": {}, "text/html": {}}}, **NOT_FOUND},
)
def deliverable_version(
    task_id: str, name: str, number: VersionNumber, runtime: RuntimeDep, format: Format = "markdown"
) -> Response:
    runtime.runs.record(task_id)
    key = views.deliverable_key(name)
    version = runtime.store.version(task_id, key, number)
    if version is None:
        raise DeliverableNotFoundError(
            f"{key} has no version {number}; GET /api/task/{task_id}/deliverables/{key}/versions lists them."
        )
    if format == "html":
        return Response(to_html(version.content), media_type="text/html; charset=utf-8")
    return Response(version.content, media_type="text/markdown; charset=utf-8")


@router.get(
    "/task/{task_id}/deliverables/{name}/diff",
    response_class=Response,
    responses={200: {"content": {"text/x-diff": {}, "text/html": {}}}, **NOT_FOUND},
)
def deliverable_diff(
    task_id: str,
    name: str,
    runtime: RuntimeDep,
    old: Annotated[
        int | None, Query(alias="from", ge=1, le=1_000_000, description="Default: the one before `to`")
    ] = None,
    new: Annotated[int | None, Query(alias="to", ge=1, le=1_000_000, description="Default: the latest")] = None,
    format: Annotated[Literal["text", "html"], Query(description="text: a unified diff; html: for a page")] = "text",
) -> Response:
    """What changed between two versions of a deliverable."""
    runtime.runs.record(task_id)
    key = views.deliverable_key(name)
    numbers = [v.number for v in runtime.store.versions(task_id, key)]
    if len(numbers) < 2 and (old is None or new is None):
        raise DeliverableNotFoundError(f"{key} has {len(numbers)} version(s); a diff needs two.")
    new = new or numbers[-1]
    old = old or new - 1
    texts = {}
    for number in (old, new):
        version = runtime.store.version(task_id, key, number)
        if version is None:
            raise DeliverableNotFoundError(f"{key} has no version {number}; its versions are {numbers}.")
        texts[number] = version.content
    if format == "html":
        return Response(diff.as_html(texts[old], texts[new]), media_type="text/html; charset=utf-8")
    return Response(
        diff.unified(texts[old], texts[new], f"{key} v{old}", f"{key} v{new}"), media_type="text/x-diff; charset=utf-8"
    )


@router.get("/tasks", response_model=TaskList)
def list_tasks(
    runtime: RuntimeDep,
    status: TaskStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[datetime | None, Query(description="Only tasks created before this time")] = None,
) -> TaskList:
    return views.list_of(runtime, status, limit, before)


@router.get("/streams", response_model=StreamList)
async def list_streams(runtime: RuntimeDep) -> StreamList:
    infos = [_stream_info(s) for s in runtime.streams.snapshots()]
    return StreamList(active=[i for i in infos if not i.closed], finished=[i for i in infos if i.closed])


@router.get("/crew", response_model=CrewInfo)
async def crew() -> CrewInfo:
    """The agents in pipeline order, with the document each writes (from agents_config.py)."""
    return CrewInfo(**ROSTER.public())
