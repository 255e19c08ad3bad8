"""Durable task history in SQL: SQLAlchemy Core over SQLite (the embedded default, in DATA_DIR)
or any URL in DATABASE_URL. One part per table (`delivery/tasks/history/`), all on one engine
(`history.database.Database`):

- `schema`: the tables, created on start;
- `task_rows`: task records and the conditional saves of the race rules;
- `event_rows`: the archived event log;
- `version_rows`: every version of every deliverable;
- `request_rows`: Idempotency-Key claims;
- `webhook_rows`: the webhook outbox;
- `push_config_rows`: A2A push-notification configs (what the outbox sends for A2A clients).

Calls that are safe to repeat wait out a database restart (`database.until_reachable`); each part
says why its calls are safe, and which are not retried.
"""

from __future__ import annotations

from delivery.tasks.history.database import PING_TIMEOUT_S, UNREACHABLE_WAIT_S
from delivery.tasks.history.event_rows import EventRows
from delivery.tasks.history.push_config_rows import PushConfig, PushConfigRows
from delivery.tasks.history.request_rows import RememberedRequest, RequestRows
from delivery.tasks.history.task_rows import HANDED_BACK_AT, TaskRows
from delivery.tasks.history.version_rows import VersionRows
from delivery.tasks.history.webhook_rows import WebhookDelivery, WebhookRows


class TaskStore(TaskRows, EventRows, VersionRows, RequestRows, WebhookRows, PushConfigRows):
    """The task history of every process: one per process, shared by its threads."""


__all__ = [
    "HANDED_BACK_AT",
    "PING_TIMEOUT_S",
    "UNREACHABLE_WAIT_S",
    "PushConfig",
    "RememberedRequest",
    "TaskStore",
    "WebhookDelivery",
]
