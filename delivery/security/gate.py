"""The one check every protected route passes: the /api routes (through the router's dependency),
the stream route (which serves below FastAPI's dependencies), GET /metrics and a worker's metrics
port. In this order:

1. the client address's rate limit (RATE_LIMIT), before anything about the key, so that a flood
   of wrong or missing keys is throttled like any other (429 with Retry-After);
2. when API_KEYS is set, the key (401 without one, 403 for a wrong one), or on a stream a stream
   token for that task;
3. the caller's own rate limit: RATE_LIMIT per key (or stream token), and RATE_LIMIT_RUN_TASK on
   new tasks per key (per address when keys are off).

The client address is the one the server hands the app (ASGI `client`). Behind a proxy, uvicorn
replaces the proxy's address with the client's from X-Forwarded-For, but only when the
connection comes from an address in FORWARDED_ALLOW_IPS; it takes the right-most entry that is
not a trusted proxy, the one the proxy itself appended, so an entry a client writes is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.types import Send

from delivery.errors import AuthenticationRequiredError, DomainError, ForbiddenError, RateLimitedError
from delivery.security.auth import ANONYMOUS, Auth
from delivery.security.rate_limits import RateLimits
from delivery.settings import Settings

# The HTTP answers of a refusal (main.py maps every other domain error with these).
REFUSAL_STATUS: dict[type[DomainError], int] = {
    AuthenticationRequiredError: 401,
    ForbiddenError: 403,
    RateLimitedError: 429,
}
UNKNOWN_ADDRESS = "unknown"


def refusal_headers(exc: DomainError) -> dict[str, str]:
    """What a refusal's answer carries beside its status: how to authenticate, when to retry."""
    if isinstance(exc, AuthenticationRequiredError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, RateLimitedError):
        return {"Retry-After": str(exc.retry_after_s)}
    return {}


async def send_refusal(send: Send, exc: DomainError) -> None:
    """A refusal as a plain ASGI answer, for the doors mounted below FastAPI (/mcp, /a2a)."""
    body = json.dumps({"detail": str(exc)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in refusal_headers(exc).items()]
    await send({"type": "http.response.start", "status": REFUSAL_STATUS.get(type(exc), 400), "headers": headers})
    await send({"type": "http.response.body", "body": body})


def client_address(client: tuple[str, int] | list[Any] | None) -> str:
    """The address in an ASGI scope's `client` (already the forwarded one behind a trusted proxy)."""
    return str(client[0]) if client else UNKNOWN_ADDRESS


class Gate:
    def __init__(self, auth: Auth, limits: RateLimits) -> None:
        self.auth = auth
        self._limits = limits

    @classmethod
    def from_settings(cls, settings: Settings) -> Gate:
        return cls(Auth(settings), RateLimits(settings))

    def admit(
        self,
        headers: Mapping[str, str],
        address: str,
        *,
        stream_of: str | None = None,
        stream_token: str | None = None,
    ) -> str:
        """Who is asking (a key's fingerprint, `token:<task>` or "anonymous"), or the refusal as a
        domain error. `stream_of`: the task whose stream is asked for, which a `stream_token`
        opens without a key. Blocking when the counters are in Redis: call from a thread."""
        self._limits.hit_address(address)
        if self.auth.enabled and stream_of is not None and stream_token and self.auth.presented_key(headers) is None:
            self.auth.check_stream_token(stream_token, stream_of)
            caller, per = f"token:{stream_of}", "stream token"
        else:
            caller, per = self.auth.caller(headers), "API key"
        if caller != ANONYMOUS:  # without keys the address is the caller, counted above
            self._limits.hit_caller(caller, per)
        return caller

    def admit_new_task(self, caller: str, address: str) -> None:
        """Count a new task of a caller already admitted against RATE_LIMIT_RUN_TASK: where a
        task is about to be started (not a retry answered from its idempotency key)."""
        self._limits.hit_new_task(caller if caller != ANONYMOUS else f"ip:{address}")
