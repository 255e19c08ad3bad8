"""A typed Python client of the service's HTTP API, sync (`DeliveryClient`) and async
(`AsyncDeliveryClient`).

    from delivery.client import DeliveryClient

    with DeliveryClient() as client:  # DELIVERY_URL, DELIVERY_API_KEY, or pass them
        task = client.run("开发一个简单的待办事项应用", skip_confirmation=True)
        for event in client.events(task.task_id):
            print(f"[{event.agent_name}] {event.event_type}: {event.content}")

`events()` resumes by itself: after a dropped connection (or a replica restart) it reconnects
with `Last-Event-ID` and never yields an event twice; it ends after the task's terminal event.
Every failure is a `DeliveryError` whose message is one line that says what to do.

It needs only httpx, httpx-sse and pydantic, none of the server's packages.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse
from pydantic import BaseModel, ConfigDict

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_EVENTS = frozenset({"end", "error", "cancelled"})
# How long events() keeps trying to reconnect before it gives up (a restart takes seconds).
RECONNECT_FOR_S = 60.0


# -- errors -----------------------------------------------------------------------------------


class DeliveryError(Exception):
    """A request failed; str(error) is one line that says what to do."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServerUnreachableError(DeliveryError):
    """No answer from the server (down, wrong URL, network)."""


class TaskNotFoundError(DeliveryError):
    """404: no task with this id on this server."""


class AuthenticationError(DeliveryError):
    """401/403: a key is required, or the key (or stream token) is not valid."""


class ConflictError(DeliveryError):
    """409: the task is not in a state that allows this (e.g. confirm a running task)."""


# -- models -----------------------------------------------------------------------------------


class _Model(BaseModel):
    # A newer server may add fields; an older client keeps working.
    model_config = ConfigDict(extra="allow")


class StartedTask(_Model):
    task_id: str
    status: str
    message: str
    stream_url: str
    status_url: str
    stream_token: str | None = None


class TaskStatus(_Model):
    task_id: str
    status: str
    requirement: str
    current_agent: str | None
    completed_steps: int
    total_steps: int
    attempts: int
    priority: str
    error: str | None
    last_sequence: int
    usage: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


class TaskAction(_Model):
    task_id: str
    status: str
    message: str


class TaskResult(_Model):
    task_id: str
    status: str
    language: str
    deliverables: dict[str, str | None]
    traceability: dict[str, Any] | None
    error: str | None
    usage: dict[str, Any]


class AgentInfo(_Model):
    name: str
    role: str
    deliverable: str
    filename: str


class Event(_Model):
    """One event of a task's stream (docs/api.md, "The event stream")."""

    task_id: str
    sequence: int
    agent_name: str
    event_type: str
    content: str
    timestamp: str
    metadata: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.event_type in TERMINAL_EVENTS


# -- what the two clients share: requests, answers, resuming ---------------------------------


def _error_for(response: httpx.Response, what: str) -> DeliveryError:
    """The server's own message (it says what to do), as one line, in the matching class."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list):  # a 422: pydantic's errors, each with loc and msg
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
    message = " ".join(str(detail or response.text or response.reason_phrase).split())
    code = response.status_code
    if code == 404:
        return TaskNotFoundError(f"{what} was not found on {response.request.url.netloc.decode()}: {message}", code)
    if code in (401, 403):
        return AuthenticationError(f"{message} (set DELIVERY_API_KEY or pass --api-key)", code)
    if code == 409:
        return ConflictError(message, code)
    return DeliveryError(f"{what}: HTTP {code}: {message}", code)


def _unreachable(base_url: str, exc: httpx.TransportError) -> ServerUnreachableError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return ServerUnreachableError(
        f"cannot reach the service at {base_url} ({reason}); is it running? Set DELIVERY_URL or pass --url."
    )


def _checked(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 400:
        raise _error_for(response, what)
    return response


def _run_body(
    requirement: str,
    skip_confirmation: bool,
    priority: str,
    max_tokens: int | None,
    max_cost: float | None,
    webhook_url: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_requirement": requirement,
        "skip_confirmation": skip_confirmation,
        "priority": priority,
    }
    budget = {k: v for k, v in (("max_tokens", max_tokens), ("max_cost", max_cost)) if v is not None}
    if budget:
        body["budget"] = budget
    if webhook_url:
        body["webhook_url"] = webhook_url
    return body


@dataclass
class _Resume:
    """Where a stream is: the last sequence yielded, so a reconnect asks for what follows and
    nothing is yielded twice; and how long it has been failing to reconnect."""

    task_id: str
    token: str | None
    last: int = 0
    failing_since: float | None = None
    attempt: int = 0
    done: bool = False

    def request(self) -> tuple[dict[str, str], dict[str, str]]:
        headers = {"Accept": "text/event-stream"}
        if self.last:
            headers["Last-Event-ID"] = str(self.last)
        params = {"token": self.token} if self.token else {}
        return headers, params

    def accept(self, sse: ServerSentEvent) -> Event | None:
        if sse.event == "shutdown" or not sse.data:
            # Not a task event: `shutdown` (the server is going away; the stream then closes and
            # is resumed after the last event, as its `resume` field says), or an empty frame.
            return None
        event = Event.model_validate_json(sse.data)
        if event.sequence <= self.last:
            return None  # already yielded before the reconnect
        self.last = event.sequence
        self.failing_since, self.attempt = None, 0  # progress: a later cut starts a new count
        self.done = event.terminal
        return event

    def retry_after(self, base_url: str, exc: Exception) -> float:
        """Seconds to wait before reconnecting, or raise when it has failed for too long."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if now - self.failing_since > RECONNECT_FOR_S:
            if isinstance(exc, httpx.TransportError):
                raise _unreachable(base_url, exc) from exc
            if isinstance(exc, _RetryableError) and exc.response is not None:
                raise _error_for(exc.response, f"task {self.task_id}") from exc
            raise DeliveryError(
                f"task {self.task_id}: the stream kept closing before the task ended for {RECONNECT_FOR_S:.0f} s; "
                f"follow it again later (after={self.last})."
            ) from exc
        self.attempt += 1
        return min(0.2 * 2 ** (self.attempt - 1), 5.0)


def _retryable(response: httpx.Response) -> bool:
    return response.status_code in (429, 502, 503, 504)


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    url = (base_url or os.environ.get("DELIVERY_URL") or DEFAULT_URL).rstrip("/")
    if "://" not in url:
        url = "http://" + url
    key = api_key if api_key is not None else os.environ.get("DELIVERY_API_KEY", "")
    headers = {"User-Agent": "delivery-client"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return url, headers


def _save_zip(content: bytes, to: Path, extract: bool) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    archive = to / "deliverables.zip"
    archive.write_bytes(content)
    if extract:
        with zipfile.ZipFile(archive) as z:
            z.extractall(to)  # names are the server's own fixed ones (docs/api.md, "Deliverables")
    return to


# -- the clients ------------------------------------------------------------------------------


class DeliveryClient:
    """Blocking client. `base_url` defaults to $DELIVERY_URL (else http://127.0.0.1:8000),
    `api_key` to $DELIVERY_API_KEY."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, headers = _settings(base_url, api_key)
        # Streams wait for events between tokens: no read timeout (the server pings).
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=None),
            transport=transport,
        )
        self._timeout = timeout

    def __enter__(self) -> DeliveryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, timeout=self._timeout, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _checked(response, what)

    def run(
        self,
        requirement: str,
        *,
        skip_confirmation: bool = False,
        priority: str = "normal",
        max_tokens: int | None = None,
        max_cost: float | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> StartedTask:
        """Start a task. A retry with the same `idempotency_key` (a fresh UUID by default) never
        starts a second one."""
        body = _run_body(requirement, skip_confirmation, priority, max_tokens, max_cost, webhook_url)
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return StartedTask.model_validate(
            self._request("POST", "/api/run_task", "start a task", json=body, headers=headers).json()
        )

    def status(self, task_id: str) -> TaskStatus:
        return TaskStatus.model_validate(self._request("GET", f"/api/task/{task_id}/status", f"task {task_id}").json())

    def confirm(self, task_id: str, approved: bool = True, feedback: str | None = None) -> TaskAction:
        """Approve the ProductManager's analysis, or ask for changes (`approved=False` with feedback)."""
        body = {"approved": approved, "feedback": feedback}
        return TaskAction.model_validate(
            self._request("POST", f"/api/task/{task_id}/confirm", f"task {task_id}", json=body).json()
        )

    def cancel(self, task_id: str) -> TaskAction:
        return TaskAction.model_validate(self._request("POST", f"/api/task/{task_id}/cancel", f"task {task_id}").json())

    def result(self, task_id: str) -> TaskResult:
        """The finished task's deliverables; ConflictError while it is unfinished."""
        return TaskResult.model_validate(self._request("GET", f"/api/task/{task_id}/result", f"task {task_id}").json())

    def crew(self) -> list[AgentInfo]:
        return [AgentInfo.model_validate(a) for a in self._request("GET", "/api/crew", "the crew").json()["agents"]]

    def stream_token(self, task_id: str) -> str:
        """A token that opens this task's stream without the API key (?token=)."""
        return str(self._request("POST", f"/api/task/{task_id}/stream_token", f"task {task_id}").json()["stream_token"])

    def download(self, task_id: str, to: str | Path, extract: bool = True) -> Path:
        """Save the finished task's zip as `to/deliverables.zip` (and its files beside it)."""
        response = self._request("GET", f"/api/task/{task_id}/deliverables.zip", f"task {task_id}")
        return _save_zip(response.content, Path(to), extract)

    def events(self, task_id: str, *, after: int = 0, token: str | None = None) -> Iterator[Event]:
        """The task's events from `after` on, live, until its terminal event; reconnects after a
        dropped connection without repeating or losing one. `token`: a stream token instead of
        the API key."""
        resume = _Resume(task_id, token, last=after)
        while not resume.done:
            headers, params = resume.request()
            try:
                with connect_sse(self._http, "GET", f"/api/stream/{task_id}", headers=headers, params=params) as source:
                    response = source.response
                    if response.status_code >= 400:
                        response.read()
                        if not _retryable(response):
                            raise _error_for(response, f"task {task_id}")
                        raise _RetryableError(response)
                    for sse in source.iter_sse():
                        event = resume.accept(sse)
                        if event is not None:
                            yield event
                            if resume.done:
                                return
            except (httpx.TransportError, _RetryableError) as exc:
                time.sleep(resume.retry_after(self.base_url, exc))
                continue
            # The server closed the stream before a terminal event (a replica going away): resume.
            time.sleep(resume.retry_after(self.base_url, _RetryableError(None)))


class AsyncDeliveryClient:
    """The same client for asyncio; every method is a coroutine, `events` an async iterator."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, headers = _settings(base_url, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, read=None), transport=transport
        )
        self._timeout = timeout

    async def __aenter__(self) -> AsyncDeliveryClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, timeout=self._timeout, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _checked(response, what)

    async def run(
        self,
        requirement: str,
        *,
        skip_confirmation: bool = False,
        priority: str = "normal",
        max_tokens: int | None = None,
        max_cost: float | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> StartedTask:
        body = _run_body(requirement, skip_confirmation, priority, max_tokens, max_cost, webhook_url)
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        response = await self._request("POST", "/api/run_task", "start a task", json=body, headers=headers)
        return StartedTask.model_validate(response.json())

    async def status(self, task_id: str) -> TaskStatus:
        response = await self._request("GET", f"/api/task/{task_id}/status", f"task {task_id}")
        return TaskStatus.model_validate(response.json())

    async def confirm(self, task_id: str, approved: bool = True, feedback: str | None = None) -> TaskAction:
        body = {"approved": approved, "feedback": feedback}
        response = await self._request("POST", f"/api/task/{task_id}/confirm", f"task {task_id}", json=body)
        return TaskAction.model_validate(response.json())

    async def cancel(self, task_id: str) -> TaskAction:
        response = await self._request("POST", f"/api/task/{task_id}/cancel", f"task {task_id}")
        return TaskAction.model_validate(response.json())

    async def result(self, task_id: str) -> TaskResult:
        response = await self._request("GET", f"/api/task/{task_id}/result", f"task {task_id}")
        return TaskResult.model_validate(response.json())

    async def crew(self) -> list[AgentInfo]:
        response = await self._request("GET", "/api/crew", "the crew")
        return [AgentInfo.model_validate(a) for a in response.json()["agents"]]

    async def stream_token(self, task_id: str) -> str:
        response = await self._request("POST", f"/api/task/{task_id}/stream_token", f"task {task_id}")
        return str(response.json()["stream_token"])

    async def download(self, task_id: str, to: str | Path, extract: bool = True) -> Path:
        response = await self._request("GET", f"/api/task/{task_id}/deliverables.zip", f"task {task_id}")
        return _save_zip(response.content, Path(to), extract)

    async def events(self, task_id: str, *, after: int = 0, token: str | None = None) -> AsyncIterator[Event]:
        resume = _Resume(task_id, token, last=after)
        while not resume.done:
            headers, params = resume.request()
            try:
                async with aconnect_sse(
                    self._http, "GET", f"/api/stream/{task_id}", headers=headers, params=params
                ) as source:
                    response = source.response
                    if response.status_code >= 400:
                        await response.aread()
                        if not _retryable(response):
                            raise _error_for(response, f"task {task_id}")
                        raise _RetryableError(response)
                    async for sse in source.aiter_sse():
                        event = resume.accept(sse)
                        if event is not None:
                            yield event
                            if resume.done:
                                return
            except (httpx.TransportError, _RetryableError) as exc:
                await asyncio.sleep(resume.retry_after(self.base_url, exc))
                continue
            await asyncio.sleep(resume.retry_after(self.base_url, _RetryableError(None)))


class _RetryableError(Exception):
    """The stream answered 429/5xx or closed before the task's end: try again shortly."""

    def __init__(self, response: httpx.Response | None) -> None:
        super().__init__(
            f"HTTP {response.status_code}" if response is not None else "the stream closed before the task ended"
        )
        self.response = response
