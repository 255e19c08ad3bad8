"""Every state-changing /api request passes here: size limit (413), JSON only (415), and one
JSON audit line — who, what, which task, outcome — with no secret and no requirement text."""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import queue
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delivery.errors import shown
from delivery.events import format_timestamp
from delivery.security.auth import ANONYMOUS, Auth, decode_headers, fingerprint
from delivery.settings import Settings

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TASK_IN_PATH = re.compile(r"^/api/task/([^/]+)/")
# Audit lines waiting for the disk (~300 bytes each): past this many, new lines are dropped and
# counted instead of growing memory without end or making requests wait.
AUDIT_QUEUE_LINES = 100_000

log = logging.getLogger(__name__)


class AuditLog:
    """The audit lines, written off the event loop: a request only puts its line in a queue (never
    blocks); a thread of its own (logging's QueueListener) writes them to AUDIT_LOG, which rotates
    by size (AUDIT_LOG_MAX_MB, keeping AUDIT_LOG_BACKUPS older files), or to stderr ("-"). A disk
    that stalls stalls only that thread; the lines wait in the queue, up to AUDIT_QUEUE_LINES."""

    def __init__(self, settings: Settings) -> None:
        sink: logging.Handler
        if settings.audit_log == "-":
            sink = logging.StreamHandler(sys.stderr)
        else:
            path = Path(settings.audit_log or Path(settings.data_dir) / "audit.log")
            path.parent.mkdir(parents=True, exist_ok=True)
            # delay: opened by the writing thread at its first line, never on the loop.
            sink = logging.handlers.RotatingFileHandler(
                path,
                maxBytes=max(1, int(settings.audit_log_max_mb * 1024 * 1024)),
                backupCount=settings.audit_log_backups,
                encoding="utf-8",
                delay=True,
            )
        sink.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(AUDIT_QUEUE_LINES)
        self._listener = logging.handlers.QueueListener(self._queue, sink)
        self._started = False
        self.dropped = 0

    def start(self) -> None:
        if not self._started:
            self._listener.start()
            self._started = True

    def stop(self) -> None:
        """Write out what waits, then close (at shutdown)."""
        if self._started:
            self._listener.stop()  # writes every queued line first
            self._started = False
        for handler in self._listener.handlers:
            handler.close()

    def write(self, line: str) -> None:
        try:
            self._queue.put_nowait(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "audit log: %d lines dropped so far: %d lines wait for a disk that does not take them "
                    "(check the disk of AUDIT_LOG)",
                    self.dropped,
                    AUDIT_QUEUE_LINES,
                )


@dataclass
class _Exchange:
    """What the guard learns about one request while it passes."""

    status: int = 500
    response_started: bool = False
    answered: bool = False  # the guard answered itself (413 mid-body); the app's answer is dropped
    size: int = 0
    body: bytes = b""  # kept for run_task only, to hash its requirement
    response: bytes = b""  # kept for run_task only, to read its task id


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_bytes: int, audit: AuditLog) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        headers = decode_headers(scope["headers"])
        started = time.time()
        state = _Exchange()
        capture = scope["path"] == "/api/run_task"
        try:
            problem = self._refuse(headers)
            if problem is not None:
                await self._answer(send, state, *problem)
                return

            async def counted_receive() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    chunk = message.get("body", b"")
                    state.size += len(chunk)
                    if capture:
                        state.body += chunk
                    if state.size > self.max_bytes and not state.response_started:
                        # Answer now and tell the app the client left: it stops reading and
                        # whatever it sends next is dropped below.
                        await self._answer(send, state, *self._too_large())
                        state.answered = True
                        return {"type": "http.disconnect"}
                return message

            async def watched_send(message: Message) -> None:
                if state.answered:
                    return
                if message["type"] == "http.response.start":
                    state.status, state.response_started = message["status"], True
                elif capture and message["type"] == "http.response.body":
                    state.response += message.get("body", b"")
                await send(message)

            try:
                await self.app(scope, counted_receive, watched_send)
            except Exception:
                if not state.answered:  # after a 413 the app may fail on the "disconnect"
                    raise
        finally:
            self._audit(scope, headers, state, started)

    def _refuse(self, headers: dict[str, str]) -> tuple[int, str] | None:
        length = headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > self.max_bytes:
            return self._too_large()
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if has_body and content_type != "application/json":
            return 415, (
                f"Send the body as JSON with `Content-Type: application/json` "
                f"(got {shown(content_type) if content_type else 'no content type'})."
            )
        return None

    def _too_large(self) -> tuple[int, str]:
        return 413, (
            f"The request body is larger than {self.max_bytes} bytes (MAX_REQUEST_BYTES); "
            "shorten the requirement (at most 20,000 characters)."
        )

    @staticmethod
    async def _answer(send: Send, state: _Exchange, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        state.status, state.response_started = status, True
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _audit(self, scope: Scope, headers: dict[str, str], state: _Exchange, started: float) -> None:
        key = Auth.presented_key(headers)
        match = _TASK_IN_PATH.match(scope["path"])
        task_id = match.group(1) if match else None
        line: dict[str, Any] = {
            "ts": format_timestamp(started),
            "who": fingerprint(key) if key else ANONYMOUS,
            "client": (scope.get("client") or ("?", 0))[0],
            "method": scope["method"],
            "path": scope["path"],
            "status": state.status,
            "outcome": "ok" if state.status < 400 else "rejected" if state.status < 500 else "error",
            "ms": round((time.time() - started) * 1000, 1),
        }
        if scope["path"] == "/api/run_task":
            try:
                requirement = json.loads(state.body)["user_requirement"]
                line["requirement_sha256"] = hashlib.sha256(str(requirement).encode()).hexdigest()
            except (ValueError, KeyError, TypeError):
                pass
            try:
                task_id = json.loads(state.response)["task_id"]
            except (ValueError, KeyError, TypeError):
                pass
        line["task_id"] = task_id
        self.audit.write(json.dumps(line, ensure_ascii=False))
