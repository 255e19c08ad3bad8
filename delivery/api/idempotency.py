"""`Idempotency-Key` on the routes that change things (run_task, confirm, cancel), and the same
rules for the MCP tools that do (their `idempotency_key` argument, delivery/api/mcp.py).

A client that did not hear the answer (a timeout, a dropped connection) sends the same request
again with the same key and gets the original answer, without the work being done twice, from
any replica (the keys live in the task store). The rules, after Stripe's and the IETF draft
"The Idempotency-Key HTTP Header Field":
- keys are scoped to the caller (the API key; with keys off, the whole service is one caller);
- the same key with a different request (route, task or body) is refused (422);
- while the first request is still being worked on, a second one gets 409 with Retry-After;
- only accepted answers (2xx) are remembered: after a refusal (429 at capacity, 409 in the wrong
  state, ...) a retry with the same key is tried afresh. So is one after a 503 (Redis or the
  broker failed half-way): the work undoes what it had begun before answering (TaskCommands), so
  the retry does it once;
- answers are kept for IDEMPOTENCY_TTL_S (default 24 h), then the key may be used again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from delivery.errors import InvalidRequestError, RequestInProgressError, shown
from delivery.runtime import Runtime

HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
# A claim unanswered this long belongs to a request whose process died: the next one takes over.
ABANDONED_AFTER_S = 120
MAX_KEY_CHARS = 255

Answer = TypeVar("Answer", bound=BaseModel)


def key_of(request: Request) -> str | None:
    """The request's Idempotency-Key, None without one, InvalidRequestError when unusable."""
    key = request.headers.get(HEADER)
    return None if key is None else checked_key(key, "Idempotency-Key")


def checked_key(key: str, name: str) -> str:
    """`key` if it can be one (`name`: what the client calls it), else InvalidRequestError."""
    # Visible ASCII and spaces: what a client library sends for a UUID or any token, and
    # what every store compares the same way.
    if not 1 <= len(key) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in key) or not key.strip():
        raise InvalidRequestError(
            f"{name} must be 1 to {MAX_KEY_CHARS} visible ASCII characters (a UUID is a "
            f"good choice), got {shown(key)} ({len(key)} characters)."
        )
    return key


def run_once(
    request: Request,
    runtime: Runtime,
    caller: str,
    body: BaseModel | None,
    status_code: int,
    work: Callable[[], Answer],
) -> Answer | JSONResponse:
    """`work()`, unless this caller already sent this Idempotency-Key: then its first answer."""
    key = key_of(request)
    if key is None:
        return work()
    what = (
        request.method,
        request.url.path,
        "" if body is None else json.dumps(body.model_dump(mode="json"), sort_keys=True),
    )
    answer = once(runtime, caller, key, what, status_code, work)
    if isinstance(answer, Remembered):
        return JSONResponse(json.loads(answer.answer), answer.status_code, headers={REPLAYED_HEADER: "true"})
    return answer


@dataclass(frozen=True)
class Remembered:
    """The first answer to a key, as stored: its status code and its JSON."""

    status_code: int
    answer: str


def once(
    runtime: Runtime,
    caller: str,
    key: str,
    what: tuple[str, ...],
    status_code: int,
    work: Callable[[], Answer],
    *,
    name: str = "Idempotency-Key",
) -> Answer | Remembered:
    """`work()` the first time this caller sends `key`, its remembered answer after that (any
    door: /api's header, the MCP tools' idempotency_key). `what` names the request (door,
    route or tool, task, body): the same key for a different one is refused. `name`: what the
    client calls the key, for the refusals."""
    scope = _digest(caller, key)
    fingerprint = _digest(*what)
    now, store = time.time(), runtime.store
    remembered = store.claim_request(
        scope,
        fingerprint,
        now,
        abandoned_before=now - ABANDONED_AFTER_S,
        expired_before=now - runtime.settings.idempotency_ttl_s,
    )
    if remembered is not None:
        if remembered.fingerprint != fingerprint:
            raise InvalidRequestError(
                f"This {name} was already used for a different request (another route, tool, "
                "task or body). Use a new key for a new request; reuse a key only to retry the same one."
            )
        if remembered.status_code is None or remembered.answer is None:
            raise RequestInProgressError(
                f"A request with this {name} is still being worked on; retry in a moment to get its answer."
            )
        return Remembered(remembered.status_code, remembered.answer)
    try:
        answer = work()
    except BaseException:
        store.release_request(scope)
        raise
    store.answer_request(scope, status_code, answer.model_dump_json())
    return answer


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
