"""The archived event log: written in batches by `delivery.streaming.archive.EventArchiver`, never
on the event path."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from delivery.events import Event
from delivery.tasks.history.database import Database, until_reachable
from delivery.tasks.history.schema import events_table

EVENTS_PER_INSERT = 500  # 3,500 parameters: within every driver's limit (SQLite's is 32,766)


class EventRows(Database):
    """The `events` table."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # sqlite3 uses ?, psycopg %s: the drivers we support for the raw event insert.
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}[self.engine.dialect.paramstyle]
        self._event_values = f"({', '.join([mark] * 7)})"
        self._archive_lock = threading.Lock()
        self._archive_conn: Connection | None = None

    @until_reachable
    def append_events(self, events: list[Event]) -> None:
        """Store events; one whose (task, sequence) is stored already is skipped."""
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

    @until_reachable
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

    @until_reachable
    def last_sequence(self, task_id: str) -> int:
        query = select(func.max(events_table.c.sequence)).where(events_table.c.task_id == task_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar() or 0

    def close(self) -> None:
        with self._archive_lock:
            self._close_archive_connection()
        super().close()
