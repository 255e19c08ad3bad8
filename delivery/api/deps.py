"""What routes depend on: the process's Runtime, and the gate every protected route passes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from delivery.runtime import Runtime
from delivery.security.gate import Gate, client_address


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def guard(request: Request) -> str:
    """Every /api route and GET /metrics: security/gate.py's checks. A plain function, so FastAPI
    runs it on a worker thread (the counters may be in Redis)."""
    gate: Gate = request.app.state.gate
    address = client_address(request.scope.get("client"))
    return gate.admit(request.headers, address)  # a new task is counted when it is started (routes._start)


Caller = Annotated[str, Depends(guard)]  # who is asking; the router has already run the guard
