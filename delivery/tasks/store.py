"""Durable task history: records, complete event logs and deliverables.

SQLAlchemy Core over SQLite (the embedded default, in DATA_DIR) or any URL in DATABASE_URL.
The event log is written in batches by `delivery.streaming.archive.EventArchiver`, never on the
event path.
"""

from __future__ import annotations

import contextlib
import json
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine

from delivery.errors import TaskNotFoundError
from delivery.events import Event
from delivery.tasks.records import FINISHED_STATUSES, DocumentVersion, TaskRecord, TaskStatus


class TaskStore(ABC):
    @abstractmethod
    def save(self, record: TaskRecord) -> None:
        """Insert or update the record."""

    @abstractmethod
    def transition(self, record: TaskRecord, expected: TaskStatus) -> bool:
        """Save the record only if the stored status is still `expected`."""

    @abstractmethod
    def save_unless_finished(self, record: TaskRecord) -> bool:
        """Save the record only if the stored task has not finished (someone else ended it)."""

    @abstractmethod
    def expired_confirmations(self, now: float) -> list[TaskRecord]: ...

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord:
        """Raise TaskNotFoundError for unknown ids."""

    @abstractmethod
    def list_tasks(self, status: TaskStatus | None, limit: int, before: float | None) -> list[TaskRecord]:
        """Newest first; only tasks created strictly before `before` when given."""

    @abstractmethod
    def count(self, status: TaskStatus) -> int: ...

    @abstractmethod
    def append_events(self, events: list[Event]) -> None: ...

    @abstractmethod
    def load_events(self, task_id: str) -> list[Event]: ...

    @abstractmethod
    def last_sequence(self, task_id: str) -> int: ...

    @abstractmethod
    def unfinished(self) -> list[TaskRecord]: ...

    @abstractmethod
    def heartbeat(self, owner: str, task_ids: list[str], ts: float) -> None:
        """Mark these unfinished tasks as alive in `owner`."""

    @abstractmethod
    def purge_finished_before(self, ts: float) -> int:
        """Delete finished tasks (and their events) that finished before ts; return how many."""

    @abstractmethod
    def add_version(self, version: DocumentVersion) -> int:
        """Keep one version of a deliverable; its number (1, 2, ... per task and deliverable) is
        assigned here and returned."""

    @abstractmethod
    def versions(self, task_id: str, deliverable: str) -> list[DocumentVersion]:
        """Every version of a deliverable, oldest first, without their content."""

    @abstractmethod
    def version(self, task_id: str, deliverable: str, number: int) -> DocumentVersion | None:
        """One version, with its content."""

    @abstractmethod
    def all_versions(self, task_id: str) -> list[DocumentVersion]:
        """Every version of every deliverable of a task, with content (the zip)."""

    def close(self) -> None:
        pass


metadata = MetaData()
tasks_table = Table(
    "tasks",
    metadata,
    Column("task_id", String(36), primary_key=True),
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
)
events_table = Table(
    "events",
    metadata,
    Column("task_id", String(36), primary_key=True),
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
    Column("task_id", String(36), primary_key=True),
    Column("deliverable", String(64), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("agent", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("gaps", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("content", Text, nullable=False),
)

_JSON_COLUMNS = ("deliverables", "feedback", "traceability", "usage", "budget")
_FINISHED = [s.value for s in FINISHED_STATUSES]


def _to_row(record: TaskRecord) -> dict[str, Any]:
    row = asdict(record)
    row["status"] = record.status.value
    for name in _JSON_COLUMNS:
        row[name] = None if row[name] is None else json.dumps(row[name], ensure_ascii=False)
    return row


def _from_row(row: Any) -> TaskRecord:
    data = dict(row._mapping)
    data["status"] = TaskStatus(data["status"])
    for name in _JSON_COLUMNS:
        data[name] = None if data[name] is None else json.loads(data[name])
    data["run_seconds"] = data["run_seconds"] or 0.0  # NULL in rows made before the column
    data["usage"] = data["usage"] or {}
    data["budget"] = data["budget"] or {}
    return TaskRecord(**data)


class SqlTaskStore(TaskStore):
    def __init__(self, url: str) -> None:
        self._write_lock: threading.Lock | contextlib.nullcontext = contextlib.nullcontext()
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            with self.engine.connect() as conn:  # WAL is a property of the file: set it once
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            # SQLite has one writer at a time; queueing our own writers here instead of in
            # SQLite's busy loop keeps concurrent submits from ever seeing "database is locked".
            self._write_lock = threading.Lock()
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        # sqlite3 uses ?, psycopg %s: the drivers we support for the raw event insert.
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[self.engine.dialect.paramstyle]
        self._insert_event_sql = (
            "INSERT INTO events (task_id, sequence, agent_name, event_type, content, ts, metadata) "
            f"VALUES ({', '.join([mark] * 7)})"
        )

    def save(self, record: TaskRecord) -> None:
        row = _to_row(record)
        with self._write_lock, self.engine.begin() as conn:
            updated = conn.execute(
                update(tasks_table).where(tasks_table.c.task_id == record.task_id).values(**row)
            ).rowcount
            if not updated:
                conn.execute(insert(tasks_table).values(**row))

    def _conditional_save(self, record: TaskRecord, condition: Any) -> bool:
        query = update(tasks_table).where(tasks_table.c.task_id == record.task_id, condition).values(**_to_row(record))
        with self._write_lock, self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def transition(self, record: TaskRecord, expected: TaskStatus) -> bool:
        return self._conditional_save(record, tasks_table.c.status == expected.value)

    def save_unless_finished(self, record: TaskRecord) -> bool:
        return self._conditional_save(record, tasks_table.c.status.not_in(_FINISHED))

    def expired_confirmations(self, now: float) -> list[TaskRecord]:
        query = select(tasks_table).where(
            tasks_table.c.status == TaskStatus.awaiting_confirmation.value, tasks_table.c.confirm_deadline < now
        )
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def get(self, task_id: str) -> TaskRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(tasks_table).where(tasks_table.c.task_id == task_id)).first()
        if row is None:
            raise TaskNotFoundError(task_id)
        return _from_row(row)

    def list_tasks(self, status: TaskStatus | None, limit: int, before: float | None) -> list[TaskRecord]:
        query = select(tasks_table).order_by(tasks_table.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(tasks_table.c.status == status.value)
        if before is not None:  # half a microsecond absorbs float rounding of the ISO round trip
            query = query.where(tasks_table.c.created_at < before - 5e-7)
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def count(self, status: TaskStatus) -> int:
        query = select(func.count()).select_from(tasks_table).where(tasks_table.c.status == status.value)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar() or 0

    def append_events(self, events: list[Event]) -> None:
        if not events:
            return
        # The driver's own executemany: SQLAlchemy's per-row parameter processing is pure
        # Python and, for thousands of events, holds the GIL long enough to delay the SSE loop.
        rows = [
            (
                e.task_id,
                e.sequence,
                e.agent_name,
                e.event_type,
                e.content,
                e.ts,
                None if e.metadata is None else json.dumps(e.metadata, ensure_ascii=False),
            )
            for e in events
        ]
        with self._write_lock, self.engine.begin() as conn:
            conn.exec_driver_sql(self._insert_event_sql, rows)

    def load_events(self, task_id: str) -> list[Event]:
        query = select(events_table).where(events_table.c.task_id == task_id).order_by(events_table.c.sequence)
        with self.engine.connect() as conn:
            return [
                Event(
                    r.task_id,
                    r.sequence,
                    r.agent_name,
                    r.event_type,
                    r.content,
                    r.ts,
                    None if r.metadata is None else json.loads(r.metadata),
                )
                for r in conn.execute(query)
            ]

    def last_sequence(self, task_id: str) -> int:
        query = select(func.max(events_table.c.sequence)).where(events_table.c.task_id == task_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar() or 0

    def unfinished(self) -> list[TaskRecord]:
        query = select(tasks_table).where(tasks_table.c.status.not_in(_FINISHED))
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def heartbeat(self, owner: str, task_ids: list[str], ts: float) -> None:
        if not task_ids:
            return
        query = update(tasks_table).where(tasks_table.c.task_id.in_(task_ids)).values(owner=owner, heartbeat_at=ts)
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(query)

    def purge_finished_before(self, ts: float) -> int:
        old = select(tasks_table.c.task_id).where(tasks_table.c.finished_at < ts)
        with self._write_lock, self.engine.begin() as conn:
            ids = [r.task_id for r in conn.execute(old)]
            if ids:
                conn.execute(delete(events_table).where(events_table.c.task_id.in_(ids)))
                conn.execute(delete(versions_table).where(versions_table.c.task_id.in_(ids)))
                conn.execute(delete(tasks_table).where(tasks_table.c.task_id.in_(ids)))
        return len(ids)

    def add_version(self, version: DocumentVersion) -> int:
        t = versions_table
        latest = select(func.max(t.c.number)).where(
            t.c.task_id == version.task_id, t.c.deliverable == version.deliverable
        )
        with self._write_lock, self.engine.begin() as conn:
            number = (conn.execute(latest).scalar() or 0) + 1
            conn.execute(
                insert(t).values(
                    task_id=version.task_id,
                    deliverable=version.deliverable,
                    number=number,
                    agent=version.agent,
                    reason=version.reason,
                    created_at=version.created_at,
                    gaps=json.dumps(version.gaps, ensure_ascii=False),
                    size=len(version.content.encode()),
                    content=version.content,
                )
            )
        return number

    def versions(self, task_id: str, deliverable: str) -> list[DocumentVersion]:
        t = versions_table
        columns = [t.c.task_id, t.c.deliverable, t.c.number, t.c.agent, t.c.reason, t.c.created_at, t.c.gaps, t.c.size]
        query = select(*columns).where(t.c.task_id == task_id, t.c.deliverable == deliverable).order_by(t.c.number)
        with self.engine.connect() as conn:
            return [_version(row, with_content=False) for row in conn.execute(query)]

    def version(self, task_id: str, deliverable: str, number: int) -> DocumentVersion | None:
        t = versions_table
        query = select(t).where(t.c.task_id == task_id, t.c.deliverable == deliverable, t.c.number == number)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _version(row) if row is not None else None

    def all_versions(self, task_id: str) -> list[DocumentVersion]:
        t = versions_table
        query = select(t).where(t.c.task_id == task_id).order_by(t.c.deliverable, t.c.number)
        with self.engine.connect() as conn:
            return [_version(row) for row in conn.execute(query)]

    def close(self) -> None:
        self.engine.dispose()


def _version(row: Any, with_content: bool = True) -> DocumentVersion:
    return DocumentVersion(
        task_id=row.task_id,
        deliverable=row.deliverable,
        agent=row.agent,
        reason=row.reason,
        created_at=row.created_at,
        gaps=json.loads(row.gaps),
        size=row.size,
        number=row.number,
        content=row.content if with_content else "",
    )


def _add_missing_columns(engine: Engine) -> None:
    """Additive schema changes for databases made by earlier versions (nullable columns only)."""
    present = {c["name"] for c in inspect(engine).get_columns("tasks")}
    with engine.begin() as conn:
        for column in tasks_table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=engine.dialect)
                conn.exec_driver_sql(f"ALTER TABLE tasks ADD COLUMN {column.name} {kind}")


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # WAL lets readers (status, replay) proceed while the archiver writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
