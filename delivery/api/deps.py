"""What routes depend on: the process's Runtime, and the guard every /api route passes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from delivery.runtime import Runtime
from delivery.security.auth import Auth, rate_limit_identity
from delivery.security.rate_limits import RateLimits


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def guard(request: Request) -> str:
    """Every /api route: the API key when keys are on, then the caller's rate limit."""
    auth: Auth = request.app.state.auth
    limits: RateLimits = request.app.state.rate_limits
    caller = auth.caller(request.headers)
    client = (request.client.host, request.client.port) if request.client else None
    limits.hit(rate_limit_identity(caller, client), run_task=request.url.path == "/api/run_task")
    return caller


Caller = Annotated[str, Depends(guard)]  # who is asking; the router has already run the guard
