"""The tables of the task history, created on start (with the columns earlier versions lacked)
by whichever of several starting processes comes first."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, Text, inspect
from sqlalchemy.engine import Connection, Engine

TASK_ID_CHARS = 36  # a UUID


metadata = MetaData()


tasks_table = Table(
    "tasks",
    metadata,
    Column("task_id", String(TASK_ID_CHARS), primary_key=True),
    Column("requirement", Text, nullable=False),
    Column("skip_confirmation", Boolean, nullable=False),
    Column("language", String(8), nullable=False),
    Column("status", String(32), nullable=False, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("current_agent", String(64)),
    Column("completed_steps", Integer, nullable=False),
    Column("total_steps", Integer, nullable=False),
    Column("error", Text),
    Column("deliverables", Text, nullable=False),
    Column("feedback", Text, nullable=False),
    Column("traceability", Text),
    Column("owner", String(200)),
    Column("heartbeat_at", Float),
    Column("confirm_deadline", Float),
    Column("run_seconds", Float),
    Column("usage", Text),
    Column("budget", Text),
    Column("trace_context", String(64)),
    Column("webhook_url", Text),
    Column("webhook_steps", Boolean),
    Column("phase", String(16)),
    Column("attempts", Integer),
    Column("priority", String(8)),
)


events_table = Table(
    "events",
    metadata,
    Column("task_id", String(TASK_ID_CHARS), primary_key=True),
    Column("sequence", Integer, primary_key=True),
    Column("agent_name", String(64), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("content", Text, nullable=False),
    Column("ts", Float, nullable=False),
    Column("metadata", Text),
)


versions_table = Table(
    "versions",
    metadata,
    Column("task_id", String(TASK_ID_CHARS), primary_key=True),
    Column("deliverable", String(64), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("agent", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("gaps", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("content", Text, nullable=False),
)


# Idempotency-Key: one row per caller and key, with the answer once there is one (answer NULL:
# the first request is still being worked on). The key itself is kept only as part of a hash.
request_keys_table = Table(
    "request_keys",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("status_code", Integer),
    Column("answer", Text),
)


# The webhook outbox: one row per notification and endpoint, kept until delivered or given up.
webhooks_table = Table(
    "webhook_deliveries",
    metadata,
    Column("webhook_id", String(40), primary_key=True),
    Column("task_id", String(TASK_ID_CHARS), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("next_attempt_at", Float, index=True),
    Column("attempts", Text, nullable=False),
    Column("delivered_at", Float),
    Column("headers", Text),  # JSON: headers of the receiver's own (an A2A config's token), sent as they are
)


# A2A push-notification configs (delivery/api/a2a_push.py): where a task's updates are pushed.
# Per task, so every replica and worker sees them and they outlive restarts.
push_configs_table = Table(
    "a2a_push_configs",
    metadata,
    Column("task_id", String(TASK_ID_CHARS), primary_key=True),
    Column("config_id", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("token", Text),
    Column("auth_scheme", String(64)),
    Column("auth_credentials", Text),
    Column("created_at", Float, nullable=False),
)


# Any constant: the PostgreSQL advisory lock that processes creating the schema take in turn.
SCHEMA_LOCK = 0x6D61645F736368  # "mad_sch"


def create_schema(engine: Engine) -> None:
    """Create the tables (and add the columns earlier versions lacked) once, whoever comes first.

    API replicas and workers of a new deployment start together; on PostgreSQL two concurrent
    CREATE TABLEs collide (UniqueViolation on pg_type), which ended one process at start-up (a
    Celery worker then stayed up, never ready). Under a transaction-scoped advisory lock the
    others wait, then find the schema made. SQLite serialises writers itself."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        metadata.create_all(conn)
        _add_missing_columns(conn)


def _add_missing_columns(conn: Connection) -> None:
    """Additive schema changes for databases made by earlier versions (nullable columns only)."""
    for table in (tasks_table, webhooks_table):
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
