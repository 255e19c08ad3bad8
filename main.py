"""FastAPI entry point: routes, SSE endpoint, test UI. Run with `python main.py` or `make run`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from dotenv import load_dotenv

load_dotenv()  # before settings and CrewAI read the environment

from fastapi import Depends, FastAPI, Header, Query, Request  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse  # noqa: E402
from sse_starlette import EventSourceResponse  # noqa: E402

from errors import DomainError, InvalidResumePointError, TaskNotFinishedError, TaskNotFoundError  # noqa: E402
from llm_providers import describe_model, make_llm_factory  # noqa: E402
from models import (  # noqa: E402
    Deliverables, ErrorResponse, Health, RunTaskRequest, RunTaskResponse, StreamEventModel,
    StreamInfo, StreamList, TaskResultResponse, TaskStatus, TaskStatusResponse,
)
from settings import Settings, get_settings  # noqa: E402
from stream_manager import StreamManager, StreamSnapshot  # noqa: E402
from task_runner import TaskRunner  # noqa: E402
from task_store import MemoryTaskStore, TaskStore  # noqa: E402

log = logging.getLogger("multi_agent")
STATIC_DIR = Path(__file__).parent / "static"
SSE_RETRY_MS = 3000


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams = StreamManager.instance()
        self.store: TaskStore = MemoryTaskStore()
        self.model_label = describe_model(settings)
        self.runner = TaskRunner(self.store, self.streams, make_llm_factory(settings),
                                 self.model_label, settings.max_concurrent_tasks)


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


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


async def _evict_periodically(services: Services) -> None:
    ttl = services.settings.stream_ttl_s
    while True:
        await asyncio.sleep(min(60.0, max(ttl / 4, 0.5)))
        expired = services.streams.evict_expired(ttl)
        if expired:
            services.store.remove(expired)
            log.info("evicted %d finished streams", len(expired))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services(settings)
        app.state.services = services
        services.streams.bind_loop(asyncio.get_running_loop())
        sweeper = asyncio.create_task(_evict_periodically(services))
        log.info("LLM: %s; up to %d concurrent tasks", services.model_label, settings.max_concurrent_tasks)
        yield
        sweeper.cancel()
        services.runner.shutdown()
        services.streams.bind_loop(None)

    app = FastAPI(
        title="Multi-Agent Software Delivery System",
        description="A CrewAI crew (ProductManager → QAEngineer → SoftwareDeveloper → Coordinator) "
                    "turns a requirement into a delivery package, streamed live over SSE.",
        version="0.2.0",
        lifespan=lifespan,
    )

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        status = {TaskNotFoundError: 404, TaskNotFinishedError: 409,
                  InvalidResumePointError: 400}.get(type(exc), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    not_found = {404: {"model": ErrorResponse, "description": "Unknown or expired task"}}

    @app.post("/api/run_task", status_code=202, response_model=RunTaskResponse)
    async def run_task(body: RunTaskRequest, services: ServicesDep) -> RunTaskResponse:
        record = services.runner.submit(body.user_requirement, body.skip_confirmation)
        tid = record.task_id
        return RunTaskResponse(
            task_id=tid, status="started",
            message=f"Task accepted. Follow it with: curl -N http://<host>/api/stream/{tid}",
            stream_url=f"/api/stream/{tid}", status_url=f"/api/task/{tid}/status")

    @app.get(
        "/api/stream/{task_id}",
        summary="Server-Sent Events of one task, from the beginning or after a sequence",
        response_class=EventSourceResponse,
        responses={
            200: {"description": "`text/event-stream`; each event's `data` is a StreamEvent "
                                 "(see schema), `id` is its sequence, `event` its type.",
                  "content": {"text/event-stream": {"schema": StreamEventModel.model_json_schema()}}},
            400: {"model": ErrorResponse, "description": "Malformed Last-Event-ID"},
            **not_found,
        },
    )
    async def stream(
        task_id: str,
        services: ServicesDep,
        after: Annotated[int | None, Query(ge=0, description="Resume after this sequence")] = None,
        last_event_id: Annotated[str | None, Header(description="Resume after this sequence")] = None,
    ) -> EventSourceResponse:
        services.streams.snapshot(task_id)  # 404 before the stream starts
        start = parse_resume_point(last_event_id, after)

        async def body() -> AsyncIterator[bytes]:
            yield f"retry: {SSE_RETRY_MS}\n\n".encode()
            async for batch in services.streams.subscribe(task_id, start):
                yield batch[0].sse if len(batch) == 1 else b"".join(e.sse for e in batch)

        return EventSourceResponse(
            body(), ping=settings.sse_heartbeat_s, send_timeout=settings.sse_send_timeout_s,
            headers={"Cache-Control": "no-cache"})

    @app.get("/api/task/{task_id}/status", response_model=TaskStatusResponse, responses=not_found)
    async def task_status(task_id: str, services: ServicesDep) -> TaskStatusResponse:
        r = services.store.get(task_id)
        return TaskStatusResponse(
            task_id=r.task_id, status=r.status, current_agent=r.current_agent,
            completed_steps=r.completed_steps, total_steps=r.total_steps,
            created_at=_dt(r.created_at), started_at=_dt(r.started_at),
            finished_at=_dt(r.finished_at), error=r.error,
            last_sequence=services.streams.snapshot(task_id).last_sequence)

    @app.get("/api/task/{task_id}/result", response_model=TaskResultResponse,
             responses={**not_found, 409: {"model": ErrorResponse, "description": "Not finished yet"}})
    async def task_result(task_id: str, services: ServicesDep) -> TaskResultResponse:
        r = services.store.get(task_id)
        if not r.status.finished:
            raise TaskNotFinishedError(task_id, r.status.value)
        return TaskResultResponse(task_id=r.task_id, status=r.status, language=r.language,
                                  deliverables=Deliverables(**r.deliverables), error=r.error)

    @app.get("/api/streams", response_model=StreamList)
    async def list_streams(services: ServicesDep) -> StreamList:
        infos = [_stream_info(s) for s in services.streams.snapshots()]
        return StreamList(active=[i for i in infos if not i.closed],
                          finished=[i for i in infos if i.closed])

    @app.get("/healthz", response_model=Health)
    async def healthz(services: ServicesDep) -> Health:
        return Health(status="ok", provider=services.model_label,
                      active_tasks=services.store.count_unfinished())

    @app.get("/test-ui", include_in_schema=False)
    async def test_ui() -> FileResponse:
        return FileResponse(STATIC_DIR / "test_ui.html", media_type="text/html")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/test-ui")

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    s = get_settings()
    logging.basicConfig(level=s.log_level.upper())
    uvicorn.run("main:app", host=s.host, port=s.port, log_level=s.log_level)
