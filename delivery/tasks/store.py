"""Durable task history: records, complete event logs and deliverables.

SQLAlchemy Core over SQLite (the embedded default, in DATA_DIR) or any URL in DATABASE_URL.
The event log is written in batches by `delivery.streaming.archive.EventArchiver`, never on the
event path.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
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
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from delivery.errors import TaskNotFoundError
from delivery.events import TERMINAL_EVENT_TYPES, Event
from delivery.tasks.records import FINISHED_STATUSES, DocumentVersion, Phase, TaskPriority, TaskRecord, TaskStatus


class TaskStore(ABC):
    @abstractmethod
    def save(self, record: TaskRecord) -> None:
        """Insert or update the record."""

    @abstractmethod
    def transition(self, record: TaskRecord, expected: TaskStatus, *, fenced: bool = False) -> bool:
        """Save the record only if the stored status is still `expected` (and, `fenced`, the
        task still at the record's attempt: a phase pausing for confirmation)."""

    @abstractmethod
    def save_unless_finished(self, record: TaskRecord) -> bool:
        """Save the record only if the stored task has not finished (someone else ended it) and
        is still at the record's attempt: a process whose phase was taken over and resumed
        elsewhere (attempt + 1) can no longer write, so the attempt number fences it off."""

    @abstractmethod
    def claim_phase(self, record: TaskRecord) -> bool:
        """Save the record as its phase starts only if the task is unfinished, still at the
        record's attempt and owned by nobody or by the record's owner already: of two workers
        handed the same Celery message (a redelivery), exactly one runs it."""

    @abstractmethod
    def take_over(self, record: TaskRecord, owner: str | None, heartbeat_at: float | None) -> bool:
        """Save the record (the next attempt) only if the task is unfinished and still has this
        owner, heartbeat, progress and previous attempt: of several watchdogs recovering one lost
        task, exactly one wins, and none writes back over a late save of the lost owner."""

    @abstractmethod
    def revert_confirmation(self, record: TaskRecord, phase: Phase, owner: str | None) -> bool:
        """Save `record` (the task as it awaited confirmation) only if the `phase` its answer
        started was never taken up: the stored task still runs that phase's first attempt with
        this `owner` (None: not yet claimed from the broker). A confirm whose phase could not be
        dispatched is undone so; one a worker took up after all stands."""

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
    def append_events(self, events: list[Event]) -> None:
        """Store events; one whose (task, sequence) is stored already is skipped."""

    @abstractmethod
    def load_events(self, task_id: str) -> list[Event]: ...

    @abstractmethod
    def last_sequence(self, task_id: str) -> int: ...

    @abstractmethod
    def unfinished(self) -> list[TaskRecord]: ...

    @abstractmethod
    def heartbeat(self, owner: str, held: dict[str, int], ts: float) -> list[str]:
        """Renew the lease of the tasks `owner` holds ({task_id: attempt}) and still owns; return
        those another process took over (their attempt moved on, or another owner has them)."""

    @abstractmethod
    def hand_back(self, owner: str) -> list[str]:
        """Mark the queued or running phases `owner` still owns as handed back (their heartbeat
        HANDED_BACK_AT): any process may resume them at once. Returns the ids marked."""

    @abstractmethod
    def ping(self) -> None:
        """One round trip to the database, at most `PING_TIMEOUT_S`, never retried (readiness)."""

    @abstractmethod
    def finished_without_ending(self, since: float, until: float) -> list[TaskRecord]:
        """Tasks that finished between `since` and `until` but whose stored log has no terminal
        event: the process that ended them died before its event was stored."""

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

    @abstractmethod
    def claim_request(
        self, scope: str, fingerprint: str, now: float, abandoned_before: float, expired_before: float
    ) -> RememberedRequest | None:
        """Claim an idempotency scope for a new request (None), or return what is remembered
        for it. Claims unanswered since `abandoned_before`, and any made before
        `expired_before`, are forgotten first."""

    @abstractmethod
    def answer_request(self, scope: str, status_code: int, answer: str) -> None: ...

    @abstractmethod
    def release_request(self, scope: str) -> None:
        """Forget a claim whose request failed, so that a retry with the same key runs it."""

    @abstractmethod
    def purge_requests_before(self, ts: float) -> int: ...

    @abstractmethod
    def add_webhooks(self, deliveries: list[WebhookDelivery]) -> None: ...

    @abstractmethod
    def claim_due_webhooks(
        self,
        now: float,
        until: float,
        limit: int,
        per_url: int | None = None,
        in_flight: Mapping[str, int] | None = None,
    ) -> list[WebhookDelivery]:
        """Pending deliveries due at `now`, at most `limit`, each claimed until `until` (no other
        sender takes it); with `per_url`, at most that many per URL, counting the caller's
        attempts under way (`in_flight`, by URL)."""

    @abstractmethod
    def save_webhook(self, delivery: WebhookDelivery) -> None:
        """Store an attempt's outcome: state, attempts, next_attempt_at, delivered_at."""

    @abstractmethod
    def webhooks(self, task_id: str) -> list[WebhookDelivery]: ...

    def close(self) -> None:
        pass


@dataclass
class WebhookDelivery:
    webhook_id: str  # the webhook-id header: the same on every attempt, receivers dedupe by it
    task_id: str
    url: str
    event_type: str
    payload: str
    created_at: float
    state: str = "pending"  # pending, delivered, failed (gave up)
    next_attempt_at: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    delivered_at: float | None = None


@dataclass(frozen=True)
class RememberedRequest:
    fingerprint: str
    created_at: float
    status_code: int | None  # None: the first request with this key is still being worked on
    answer: str | None


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
)

_JSON_COLUMNS = ("deliverables", "feedback", "traceability", "usage", "budget")
_FINISHED = [s.value for s in FINISHED_STATUSES]
_TERMINAL_TYPES = sorted(TERMINAL_EVENT_TYPES)


def _unfinished_at(attempts: int) -> Any:
    """The task has not finished and is still at this attempt (a NULL from an older schema is 1)."""
    t = tasks_table
    return and_(t.c.status.not_in(_FINISHED), func.coalesce(t.c.attempts, 1) == attempts)


def _to_row(record: TaskRecord) -> dict[str, Any]:
    row = asdict(record)
    row["status"] = record.status.value
    row["phase"] = record.phase.value if record.phase else None
    row["priority"] = record.priority.value
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
    data["webhook_steps"] = bool(data["webhook_steps"])
    data["phase"] = Phase(data["phase"]) if data["phase"] else None
    data["attempts"] = data["attempts"] or 1
    data["priority"] = TaskPriority(data["priority"] or TaskPriority.normal)
    return TaskRecord(**data)


log = logging.getLogger(__name__)

# How long a store call waits for an unreachable database (restarting, failing over) before it
# gives up: long enough for a restart, short enough that nothing hangs.
UNREACHABLE_WAIT_S = 30.0
PING_TIMEOUT_S = 2.0
# The heartbeat of a phase its process handed back as it stopped (SIGTERM): a lease already run
# out, so the next process resumes it at once (Watchdog), and the hand-back is told from a loss.
HANDED_BACK_AT = 0.0
EVENTS_PER_INSERT = 500  # 3,500 parameters: within every driver's limit (SQLite's is 32,766)


def _until_reachable(method: Callable[..., Any]) -> Callable[..., Any]:
    """Retry `method` while the database cannot be reached (OperationalError, InterfaceError: a
    restart, a dropped connection, SQLite busy), with backoff, for up to UNREACHABLE_WAIT_S."""

    @functools.wraps(method)
    def patient(*args: Any, **kwargs: Any) -> Any:
        deadline, delay = time.monotonic() + UNREACHABLE_WAIT_S, 0.1
        while True:
            try:
                return method(*args, **kwargs)
            except (OperationalError, InterfaceError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("the task store is unreachable (%s); retrying in %.1f s", str(exc).splitlines()[0], delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    return patient


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
            # A database host that does not answer fails a connection in seconds, not minutes.
            connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
            self.engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        _create_schema(self.engine)
        # sqlite3 uses ?, psycopg %s: the drivers we support for the raw event insert.
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[self.engine.dialect.paramstyle]
        self._event_values = f"({', '.join([mark] * 7)})"
        self._archive_lock = threading.Lock()
        self._archive_conn: Connection | None = None

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

    def transition(self, record: TaskRecord, expected: TaskStatus, *, fenced: bool = False) -> bool:
        condition = tasks_table.c.status == expected.value
        return self._conditional_save(record, and_(condition, _unfinished_at(record.attempts)) if fenced else condition)

    def save_unless_finished(self, record: TaskRecord) -> bool:
        return self._conditional_save(record, _unfinished_at(record.attempts))

    def claim_phase(self, record: TaskRecord) -> bool:
        t = tasks_table
        free = or_(t.c.owner.is_(None), t.c.owner == record.owner)
        startable = t.c.status.in_([TaskStatus.queued.value, TaskStatus.running.value])  # not paused
        return self._conditional_save(record, and_(_unfinished_at(record.attempts), free, startable))

    def take_over(self, record: TaskRecord, owner: str | None, heartbeat_at: float | None) -> bool:
        t = tasks_table
        same_heartbeat = t.c.heartbeat_at.is_(None) if heartbeat_at is None else t.c.heartbeat_at == heartbeat_at
        same_owner = t.c.owner.is_(None) if owner is None else t.c.owner == owner
        # Nor has it moved on since it was read: a late progress save of the lost owner (same
        # heartbeat) must not be written back over by the stale copy (the attempt is the next one).
        same_progress = and_(
            t.c.completed_steps == record.completed_steps, func.coalesce(t.c.attempts, 1) == record.attempts - 1
        )
        return self._conditional_save(
            record, and_(t.c.status.not_in(_FINISHED), same_owner, same_heartbeat, same_progress)
        )

    def revert_confirmation(self, record: TaskRecord, phase: Phase, owner: str | None) -> bool:
        t = tasks_table
        untouched = and_(
            t.c.status == TaskStatus.running.value,
            t.c.phase == phase.value,
            func.coalesce(t.c.attempts, 1) == 1,
            t.c.owner.is_(None) if owner is None else t.c.owner == owner,
        )
        return self._conditional_save(record, untouched)

    def expired_confirmations(self, now: float) -> list[TaskRecord]:
        query = select(tasks_table).where(
            tasks_table.c.status == TaskStatus.awaiting_confirmation.value, tasks_table.c.confirm_deadline < now
        )
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def get(self, task_id: str) -> TaskRecord:
        if len(task_id) > TASK_ID_CHARS or "\x00" in task_id:  # cannot be in the table; PostgreSQL
            raise TaskNotFoundError(task_id)  # would refuse the query, not answer it
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
        # The archiver's path, on which viewers wait (durable before visible), so: one multi-row
        # INSERT per chunk through the driver, on a connection of its own in autocommit, where
        # each statement is its own transaction. The driver releases the GIL around each
        # statement and each BEGIN, COMMIT or pool ping; under CPU-bound threads every retake of
        # the GIL can wait a switch interval (5 ms), so the fewer statements the better.
        # SQLAlchemy's per-row parameter processing (pure Python) is skipped for the same reason.
        with self._write_lock, self._archive_lock:
            try:
                conn = self._archive_conn
                if conn is None:
                    conn = self._archive_conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                for start in range(0, len(events), EVENTS_PER_INSERT):
                    chunk = events[start : start + EVENTS_PER_INSERT]
                    params: list[Any] = []
                    for e in chunk:
                        metadata = None if e.metadata is None else json.dumps(e.metadata, ensure_ascii=False)
                        params += (e.task_id, e.sequence, e.agent_name, e.event_type, e.content, e.ts, metadata)
                    values = ", ".join([self._event_values] * len(chunk))
                    # An event already stored is the same event (one sequence, one event): with
                    # Redis, a process completing a lost producer's archive may copy what it had
                    # written.
                    conn.exec_driver_sql(
                        "INSERT INTO events (task_id, sequence, agent_name, event_type, content, ts, metadata) "
                        f"VALUES {values} ON CONFLICT (task_id, sequence) DO NOTHING",
                        tuple(params),
                    )
                conn.commit()  # no statement in autocommit mode: SQLAlchemy's own bookkeeping
            except Exception:
                self._close_archive_connection()  # the next try gets a fresh one (a restart broke it)
                raise

    def _close_archive_connection(self) -> None:
        conn, self._archive_conn = self._archive_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

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

    def heartbeat(self, owner: str, held: dict[str, int], ts: float) -> list[str]:
        if not held:
            return []
        t = tasks_table
        renew = update(t).where(t.c.task_id.in_(held), t.c.owner == owner).values(heartbeat_at=ts)
        now_stored = select(t.c.task_id, t.c.owner, func.coalesce(t.c.attempts, 1).label("attempts")).where(
            t.c.task_id.in_(held)
        )
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(renew)
            return [
                row.task_id
                for row in conn.execute(now_stored)
                if row.attempts != held[row.task_id] or row.owner not in (None, owner)
            ]

    def hand_back(self, owner: str) -> list[str]:
        t = tasks_table
        mine = and_(t.c.owner == owner, t.c.status.in_([TaskStatus.queued.value, TaskStatus.running.value]))
        with self._write_lock, self.engine.begin() as conn:
            ids = [row.task_id for row in conn.execute(select(t.c.task_id).where(mine))]
            if ids:
                conn.execute(update(t).where(mine, t.c.task_id.in_(ids)).values(heartbeat_at=HANDED_BACK_AT))
        return ids

    def ping(self) -> None:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # LOCAL: the pooled connection keeps no limit
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(PING_TIMEOUT_S * 1000)}")
            conn.exec_driver_sql("SELECT 1")

    def finished_without_ending(self, since: float, until: float) -> list[TaskRecord]:
        t, e = tasks_table, events_table
        ending = select(e.c.task_id).where(e.c.task_id == t.c.task_id, e.c.event_type.in_(_TERMINAL_TYPES))
        query = select(t).where(t.c.finished_at >= since, t.c.finished_at < until, ~ending.exists())
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def purge_finished_before(self, ts: float) -> int:
        old = select(tasks_table.c.task_id).where(tasks_table.c.finished_at < ts)
        with self._write_lock, self.engine.begin() as conn:
            ids = [r.task_id for r in conn.execute(old)]
            if ids:
                conn.execute(delete(events_table).where(events_table.c.task_id.in_(ids)))
                conn.execute(delete(versions_table).where(versions_table.c.task_id.in_(ids)))
                conn.execute(delete(webhooks_table).where(webhooks_table.c.task_id.in_(ids)))
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

    def claim_request(
        self, scope: str, fingerprint: str, now: float, abandoned_before: float, expired_before: float
    ) -> RememberedRequest | None:
        t = request_keys_table
        row = {"scope": scope, "fingerprint": fingerprint, "created_at": now, "status_code": None, "answer": None}
        with self._write_lock, self.engine.begin() as conn:
            # Abandoned claims (the process died mid-request) are taken over, answered ones kept.
            abandoned = and_(t.c.status_code.is_(None), t.c.created_at < abandoned_before)
            conn.execute(delete(t).where(t.c.scope == scope, or_(abandoned, t.c.created_at < expired_before)))
            # Insert-if-absent in one statement: another replica may be claiming the same key.
            # (RETURNING says whether it did: drivers report no rowcount for ON CONFLICT.)
            if conn.execute(self._insert_if_absent(t, row).returning(t.c.scope)).first() is not None:
                return None
            found = conn.execute(select(t).where(t.c.scope == scope)).one()
        return RememberedRequest(found.fingerprint, found.created_at, found.status_code, found.answer)

    def _insert_if_absent(self, table: Table, row: dict[str, Any]) -> Any:
        dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(self.engine.dialect.name)
        if dialect is None:  # elsewhere a concurrent claim surfaces as an IntegrityError
            return insert(table).values(**row)
        return dialect.insert(table).values(**row).on_conflict_do_nothing()

    def answer_request(self, scope: str, status_code: int, answer: str) -> None:
        t = request_keys_table
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.scope == scope).values(status_code=status_code, answer=answer))

    def release_request(self, scope: str) -> None:
        t = request_keys_table
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(delete(t).where(t.c.scope == scope, t.c.status_code.is_(None)))

    def purge_requests_before(self, ts: float) -> int:
        t = request_keys_table
        with self._write_lock, self.engine.begin() as conn:
            return conn.execute(delete(t).where(t.c.created_at < ts)).rowcount

    def add_webhooks(self, deliveries: list[WebhookDelivery]) -> None:
        if not deliveries:
            return
        rows = [{**asdict(d), "attempts": json.dumps(d.attempts)} for d in deliveries]
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(insert(webhooks_table), rows)

    def claim_due_webhooks(
        self,
        now: float,
        until: float,
        limit: int,
        per_url: int | None = None,
        in_flight: Mapping[str, int] | None = None,
    ) -> list[WebhookDelivery]:
        t = webhooks_table
        cap = per_url or limit
        busy = dict(in_flight or {})
        due = select(t).where(t.c.state == "pending", t.c.next_attempt_at <= now).order_by(t.c.next_attempt_at)
        full = [url for url, count in busy.items() if count >= cap]
        if full:  # their backlog must not fill the rows looked at, hiding other URLs' due rows
            due = due.where(t.c.url.not_in(full))
        claimed: list[WebhookDelivery] = []
        with self._write_lock, self.engine.begin() as conn:
            # Looking a little further than `limit`: rows of a URL that reaches its share here are skipped.
            for row in conn.execute(due.limit(limit * 4)).all():
                if len(claimed) == limit:
                    break
                if busy.get(row.url, 0) >= cap:
                    continue
                # Claimed only if no other process moved it meanwhile.
                taken = update(t).where(t.c.webhook_id == row.webhook_id, t.c.next_attempt_at == row.next_attempt_at)
                if conn.execute(taken.values(next_attempt_at=until)).rowcount == 1:
                    claimed.append(_webhook(row))
                    busy[row.url] = busy.get(row.url, 0) + 1
        return claimed

    def save_webhook(self, delivery: WebhookDelivery) -> None:
        t = webhooks_table
        values = {
            "state": delivery.state,
            "next_attempt_at": delivery.next_attempt_at,
            "attempts": json.dumps(delivery.attempts),
            "delivered_at": delivery.delivered_at,
        }
        with self._write_lock, self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.webhook_id == delivery.webhook_id).values(**values))

    def webhooks(self, task_id: str) -> list[WebhookDelivery]:
        t = webhooks_table
        query = select(t).where(t.c.task_id == task_id).order_by(t.c.created_at, t.c.url)
        with self.engine.connect() as conn:
            return [_webhook(row) for row in conn.execute(query)]

    def close(self) -> None:
        with self._archive_lock:
            self._close_archive_connection()
        self.engine.dispose()


def _webhook(row: Any) -> WebhookDelivery:
    data = dict(row._mapping)
    data["attempts"] = json.loads(data["attempts"])
    return WebhookDelivery(**data)


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


# Any constant: the PostgreSQL advisory lock that processes creating the schema take in turn.
SCHEMA_LOCK = 0x6D61645F736368  # "mad_sch"


def _create_schema(engine: Engine) -> None:
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
    present = {c["name"] for c in inspect(conn).get_columns("tasks")}
    for column in tasks_table.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE tasks ADD COLUMN {column.name} {kind}")


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # WAL lets readers (status, replay) proceed while the archiver writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


# Every call of the store waits out a database restart (the pool's pre-ping replaces the
# connections it broke); writes are single transactions, so a retry repeats all or nothing.
for _name, _method in list(vars(SqlTaskStore).items()):
    if callable(_method) and not _name.startswith("_") and _name not in ("close", "ping"):
        setattr(SqlTaskStore, _name, _until_reachable(_method))
