"""FastAPI entry point. Run with `python main.py` (or `make run`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from dotenv import load_dotenv

load_dotenv()  # before settings and CrewAI read the environment

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse  # noqa: E402
from fastapi.middleware.cors import CORSMiddleware  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402

from api import router  # noqa: E402
from errors import (  # noqa: E402
    AuthenticationRequiredError, DeliverableNotFoundError, DomainError, ForbiddenError,
    InvalidRequestError, InvalidResumePointError, RateLimitedError, TaskNotFinishedError,
    TaskNotFoundError, TaskStateConflictError,
)
from models import Health  # noqa: E402
from request_guard import RequestGuard, audit_logger  # noqa: E402
from services import Services, ServicesDep  # noqa: E402
from settings import Settings, get_settings  # noqa: E402

log = logging.getLogger("multi_agent")
STATIC_DIR = Path(__file__).parent / "static"

# The page runs only its own script and talks only to this server; deliverables are rendered
# with raw HTML escaped, and this keeps a slip there from running code.
TEST_UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'; form-action 'self'")

HTTP_STATUS = {
    TaskNotFoundError: 404,
    DeliverableNotFoundError: 404,
    TaskNotFinishedError: 409,
    TaskStateConflictError: 409,
    InvalidResumePointError: 400,
    InvalidRequestError: 422,
    AuthenticationRequiredError: 401,
    ForbiddenError: 403,
    RateLimitedError: 429,
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services(settings)
        app.state.services = services
        services.start(asyncio.get_running_loop())
        maintenance = asyncio.create_task(services.maintain())
        log.info("LLM: %s; up to %d concurrent tasks", services.model_label, settings.max_concurrent_tasks)
        yield
        maintenance.cancel()
        services.stop()

    app = FastAPI(
        title="Multi-Agent Software Delivery System",
        description="A CrewAI crew (ProductManager → QAEngineer → SoftwareDeveloper → Coordinator) "
                    "turns a requirement into a delivery package, streamed live over SSE.",
        version="0.3.0",
        lifespan=lifespan,
    )
    app.include_router(router)

    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        headers = {}
        if isinstance(exc, AuthenticationRequiredError):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, RateLimitedError):
            headers["Retry-After"] = str(exc.retry_after_s)
        return JSONResponse({"detail": str(exc)}, status_code=HTTP_STATUS.get(type(exc), 400), headers=headers)

    app.add_middleware(RequestGuard, max_bytes=settings.max_request_bytes,
                       audit=audit_logger(settings.audit_log, settings.data_dir))
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # none by default: browsers then allow same-origin pages only
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "Last-Event-ID"],
                           expose_headers=["Retry-After"], max_age=600)

    @app.get("/healthz", response_model=Health)
    async def healthz(services: ServicesDep) -> Health:
        return Health(status="ok", provider=services.model_label,
                      active_tasks=len(services.runner.live_records()),
                      busy_workers=services.runner.busy_workers, auth_required=services.auth.enabled)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/test-ui", include_in_schema=False)
    async def test_ui() -> FileResponse:
        return FileResponse(STATIC_DIR / "test_ui.html", media_type="text/html",
                            headers={"Content-Security-Policy": TEST_UI_CSP})

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
