"""The app: `create_app(settings)` assembles the routes, error mapping, middleware and pages.
Run with `python main.py` (or `make run`); `uvicorn main:app` serves the same app.

Add your own routers or middleware here; the parts they use live in the `delivery` package
(docs/architecture.md is the map).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

load_dotenv()  # before the settings (and CrewAI) read the environment

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exception_handlers import http_exception_handler  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.middleware.cors import CORSMiddleware  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: E402
from sqlalchemy.exc import InterfaceError, OperationalError  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402

from delivery import __version__  # noqa: E402
from delivery.api import a2a  # noqa: E402
from delivery.api.deps import Caller, RuntimeDep  # noqa: E402
from delivery.api.inputs import validation_error  # noqa: E402
from delivery.api.mcp import PATH as MCP_PATH  # noqa: E402
from delivery.api.mcp import McpDoor  # noqa: E402
from delivery.api.routes import router  # noqa: E402
from delivery.api.schemas import Health  # noqa: E402
from delivery.crew.roster import ROSTER  # noqa: E402
from delivery.errors import (  # noqa: E402
    AuthenticationRequiredError,
    DeliverableNotFoundError,
    DomainError,
    InvalidRequestError,
    InvalidResumePointError,
    RequestInProgressError,
    ServiceUnavailableError,
    TaskNotFinishedError,
    TaskNotFoundError,
    TaskStateConflictError,
)
from delivery.events import EventType  # noqa: E402
from delivery.observability import health, metrics  # noqa: E402
from delivery.observability.logs import TaskLogContext, configure_logging  # noqa: E402
from delivery.observability.metrics import HttpMetrics  # noqa: E402
from delivery.runtime import Runtime, freeze_startup_heap  # noqa: E402
from delivery.security.gate import REFUSAL_STATUS, Gate  # noqa: E402
from delivery.security.request_guard import AuditLog, RequestGuard  # noqa: E402
from delivery.settings import Settings, get_settings  # noqa: E402
from delivery.streaming.backend import EventBackend  # noqa: E402

log = logging.getLogger("multi_agent")
STATIC_DIR = Path(__file__).parent / "static"

# The page runs only its own script and talks only to this server; deliverables are rendered
# with raw HTML escaped, and this keeps a slip there from running code.
TEST_UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)

READINESS_TIMEOUT_S = 5.0
UNREADABLE_BODY = (
    "The body could not be read as JSON: send UTF-8 encoded JSON text, with numbers of at most "
    "4300 digits (the fields and their limits are in /docs)."
)

HTTP_STATUS: dict[type[DomainError], int] = {
    TaskNotFoundError: 404,
    DeliverableNotFoundError: 404,
    TaskNotFinishedError: 409,
    TaskStateConflictError: 409,
    RequestInProgressError: 409,
    InvalidResumePointError: 400,
    InvalidRequestError: 422,
    **REFUSAL_STATUS,  # 401, 403, 429: security/gate.py
    ServiceUnavailableError: 503,
}


def create_app(settings: Settings | None = None, *, event_backend: EventBackend | None = None) -> FastAPI:
    """`event_backend` replaces the backend EVENT_BACKEND names (the benchmarks' baseline)."""
    settings = settings or get_settings()
    audit = AuditLog(settings)
    mcp_door = McpDoor(settings, audit)
    a2a_door = a2a.A2aDoor(settings, audit)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format)
        runtime = Runtime(settings, event_backend=event_backend)
        app.state.runtime = runtime
        app.state.gate = Gate.from_settings(settings)
        app.state.auth = app.state.gate.auth
        audit.start()
        runtime.start(asyncio.get_running_loop())
        freeze_startup_heap()
        maintenance = asyncio.create_task(runtime.maintain())
        log.info("LLM: %s; up to %d concurrent tasks", runtime.model_label, settings.max_concurrent_tasks)
        async with mcp_door.serving():
            yield
        maintenance.cancel()
        # Off the loop: the crews may take a moment to reach their next event (Runtime.hand_back).
        await asyncio.to_thread(runtime.hand_back)
        runtime.stop()
        audit.stop()

    app = FastAPI(
        title="Multi-Agent Software Delivery System",
        description="A CrewAI crew (" + " → ".join(ROSTER.names) + ") turns a requirement into a "
        "delivery package, streamed live over SSE.",
        version=__version__,
        lifespan=lifespan,
    )
    app.include_router(router)
    # The MCP door (delivery/api/mcp.py): a plain ASGI app, every method, behind the same gate.
    app.router.routes.append(Route(MCP_PATH, endpoint=mcp_door))
    # The A2A door (delivery/api/a2a.py): its card, JSON-RPC and HTTP+JSON, behind the same gate.
    app.router.routes.append(Route(a2a.CARD_PATH, endpoint=a2a_door.card, methods=["GET"]))
    for path in (a2a.JSONRPC_PATH, a2a.JSONRPC_PATH + "/"):  # clients add the slash, and a redirect loses a POST
        app.router.routes.append(Route(path, endpoint=a2a_door.jsonrpc))
    app.router.routes.append(Mount(a2a.REST_PATH, app=a2a_door.rest))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's list of errors without the `input` it echoes: the input may be a secret, or
        not text at all (an unpaired surrogate), and the answer must always be sendable."""
        return JSONResponse({"detail": [validation_error(e) for e in exc.errors()]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body it cannot decode (bytes that are not UTF-8, a number of
        # thousands of digits) with a 400 that does not say what to do; this one does.
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            return JSONResponse({"detail": UNREADABLE_BODY}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def store_unreachable(_: Request, exc: Exception) -> JSONResponse:
        # The store already waited UNREACHABLE_WAIT_S for the database to come back.
        log.error("answering 503: the task store is unreachable (%s)", str(exc).splitlines()[0])
        return JSONResponse(
            {"detail": "The task database is unreachable; retry in a few seconds (operators: check DATABASE_URL)."},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        headers = {}
        if isinstance(exc, AuthenticationRequiredError):
            headers["WWW-Authenticate"] = "Bearer"
        retry_after = getattr(exc, "retry_after_s", None)  # 429, 503, and 409 for a request in progress
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return JSONResponse({"detail": str(exc)}, status_code=HTTP_STATUS.get(type(exc), 400), headers=headers)

    app.add_middleware(RequestGuard, max_bytes=settings.max_request_bytes, audit=audit)
    app.add_middleware(TaskLogContext)
    app.add_middleware(HttpMetrics)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # none by default: browsers then allow same-origin pages only
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
            expose_headers=["Retry-After"],
            max_age=600,
        )

    @app.get("/healthz", response_model=Health)
    async def healthz(runtime: RuntimeDep, request: Request) -> Health:
        return Health(
            status="ok",
            provider=runtime.model_label,
            active_tasks=len(runtime.runs.live_records()),
            busy_workers=runtime.phases.busy,
            auth_required=request.app.state.auth.enabled,
        )

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, Any]:
        """Liveness: the process answers (restart it when this fails). Open, like /healthz."""
        return health.LIVE

    @app.get("/readyz", tags=["health"], responses={503: {"description": "a part is failing"}})
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        """Readiness: the database, the event path, the broker and every background thread work
        (send no traffic here while this is 503; the body names the failing parts). Open."""
        try:
            parts = await asyncio.wait_for(asyncio.to_thread(runtime.readiness), READINESS_TIMEOUT_S)
        except TimeoutError:
            parts = {"probe": f"the checks took over {READINESS_TIMEOUT_S:g} s: a part hangs (see the log)"}
        status, body = health.readiness_answer(parts)
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(_: Caller) -> Response:
        """Prometheus text format, behind the gate of every protected route (with API_KEYS on, scrape
        with a bearer token). Rendered on a thread: a figure from the database may take a moment."""
        return Response(await asyncio.to_thread(metrics.render), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    test_ui_page = _test_ui_page()

    @app.get("/test-ui", include_in_schema=False)
    async def test_ui() -> HTMLResponse:
        return HTMLResponse(test_ui_page, headers={"Content-Security-Policy": TEST_UI_CSP})

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/test-ui")

    return app


def _test_ui_page() -> str:
    """The page with the crew (agents_config) and the event types embedded as data, so the UI
    copies neither and needs no request (and no API key) to draw itself."""
    data = {"crew": ROSTER.public(), "event_types": [t.value for t in EventType]}
    embedded = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    page = (STATIC_DIR / "test_ui.html").read_text(encoding="utf-8")
    return page.replace("<!--PAGE-DATA-->", f'<script type="application/json" id="page-data">{embedded}</script>')


app = create_app()

if __name__ == "__main__":
    import uvicorn

    s = get_settings()
    configure_logging(s.log_level, s.log_format)
    uvicorn.run(
        "main:app",
        host=s.host,
        port=s.port,
        log_level=s.log_level,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=s.forwarded_allow_ips,
    )
