"""GET /api/stream/{task_id}: documented by FastAPI, served as plain ASGI.

A stream stays open for as long as a viewer watches, so whatever the request path keeps alive is
paid per viewer: FastAPI's request, dependency and exit-stack frames cost ~4 KB of an idle
connection (docs/benchmarks.md). The route therefore calls the gate every protected route passes
(security/gate.py) itself instead of through the router's dependency. Domain errors raised here
still reach the app's exception handlers (Starlette's ExceptionMiddleware sits above the router).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from delivery.api.inputs import parse_resume_point
from delivery.api.schemas import ErrorResponse, StreamEventModel
from delivery.security.auth import decode_headers
from delivery.security.gate import client_address
from delivery.settings import Settings
from delivery.streaming.backend import Subscription
from delivery.streaming.sse import MEDIA_TYPE, serve_events

SSE_RETRY_MS = 3000


class EventStreamRoute(APIRoute):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await super().handle(scope, receive, send)  # 405 with Allow
            return
        # Only what serving needs stays referenced while the stream is open: everything used
        # to check and position the viewer lives in _open's frame, which is gone by then.
        subscription, settings = await self._open(scope)
        await serve_events(
            subscription,
            scope,
            receive,
            send,
            heartbeat_s=settings.sse_heartbeat_s,
            send_timeout_s=settings.sse_send_timeout_s,
            retry_ms=SSE_RETRY_MS,
        )

    async def _open(self, scope: Scope) -> tuple[Subscription, Settings]:
        task_id = scope["path_params"]["task_id"]
        query = parse_qs(scope["query_string"].decode("latin-1"))
        headers = decode_headers(scope["headers"])
        state = scope["app"].state
        await run_in_threadpool(
            state.gate.admit,
            headers,
            client_address(scope.get("client")),
            stream_of=task_id,
            stream_token=query.get("token", [None])[-1],
        )
        start = parse_resume_point(headers.get("last-event-id"), query.get("after", [None])[-1])
        streams = state.runtime.streams
        if not streams.holds(task_id):
            await run_in_threadpool(streams.make_available, task_id)  # 404 for unknown tasks
        return streams.subscription(task_id, start), state.runtime.settings


async def stream(
    task_id: str,
    after: Annotated[int | None, Query(ge=0, description="Resume after this sequence")] = None,
    token: Annotated[str | None, Query(description="Stream token from run_task (with API keys on)")] = None,
    last_event_id: Annotated[str | None, Header(description="Resume after this sequence")] = None,
) -> None:
    """Server-Sent Events of one task: every event from the beginning (or after the given
    sequence), live until the task ends. This signature documents the route; requests are
    served by `EventStreamRoute.handle`."""
    raise NotImplementedError  # never called: EventStreamRoute.handle serves the route


def register_stream_route(router: APIRouter, not_found: dict) -> None:
    router.add_api_route(
        "/stream/{task_id}",
        stream,
        methods=["GET"],
        route_class_override=EventStreamRoute,
        summary="Server-Sent Events of one task, from the beginning or after a sequence",
        response_class=Response,
        status_code=200,
        responses={
            200: {
                "description": "`text/event-stream`; each event's `data` is a StreamEvent "
                "(see schema), `id` is its sequence, `event` its type.",
                "content": {MEDIA_TYPE: {"schema": StreamEventModel.model_json_schema()}},
            },
            400: {"model": ErrorResponse, "description": "Malformed Last-Event-ID"},
            **not_found,
        },
    )
