"""Logs: text (the default) or, with LOG_FORMAT=json, one JSON object per line. Either way a line
written while a task is being handled (a phase on an executor thread, a request about the task)
names the task, and no line shows a credential written into a URL (ours, or a library's message
quoting REDIS_URL, DATABASE_URL, ...; security/redaction.py)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from delivery.events import format_timestamp
from delivery.security.redaction import redacted_text
from delivery.settings import LogFormat

_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
_TASK_IN_PATH = re.compile(r"^/api/(?:task|stream)/([^/]+)")
# The loggers that write on their own handlers (uvicorn's, Celery's): they get the same format.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.worker", "celery.app.trace")


@contextlib.contextmanager
def log_context(task_id: str) -> Iterator[None]:
    """Lines logged in this context (and in threads that copy it) name `task_id`."""
    token = _task_id.set(task_id)
    try:
        yield
    finally:
        _task_id.reset(token)


class _TaskIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id"):
            record.task_id = _task_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": format_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redacted_text(record.getMessage()),
        }
        task_id = getattr(record, "task_id", None)
        if task_id:
            line["task_id"] = task_id
        if record.exc_info:
            line["exception"] = redacted_text(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = redacted_text(super().format(record))
        task_id = getattr(record, "task_id", None)
        return f"{text} [task {task_id}]" if task_id else text


def configure_logging(level: str, log_format: LogFormat) -> None:
    """One format for every line this process writes: ours, uvicorn's and Celery's."""
    formatter: logging.Formatter = (
        JsonFormatter()
        if log_format is LogFormat.json
        else _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    root.setLevel(level.upper())
    for logger in [root, *(logging.getLogger(name) for name in _SERVER_LOGGERS)]:
        for handler in logger.handlers:
            handler.setFormatter(formatter)
            if not any(isinstance(f, _TaskIdFilter) for f in handler.filters):
                handler.addFilter(_TaskIdFilter())


class TaskLogContext:
    """ASGI middleware: lines logged while a request about a task is handled name the task."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _TASK_IN_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        with log_context(match.group(1)):
            await self.app(scope, receive, send)
