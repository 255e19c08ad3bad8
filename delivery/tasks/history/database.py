"""The engine and write lock the store's parts share, and the one retry policy: `until_reachable`,
which only calls that are safe to repeat carry."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Table, create_engine, event, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from delivery.tasks.history.schema import create_schema

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

# How long a store call waits for an unreachable database (restarting, failing over) before it
# gives up: long enough for a restart, short enough that nothing hangs.
UNREACHABLE_WAIT_S = 30.0
PING_TIMEOUT_S = 2.0


def until_reachable(method: Callable[P, R]) -> Callable[P, R]:
    """Retry `method` while the database cannot be reached (OperationalError, InterfaceError: a
    restart, a dropped connection, SQLite busy), with backoff, for up to UNREACHABLE_WAIT_S.

    Only for calls safe to repeat: a write may have committed before the connection broke, so
    the retry must find its own work done and answer as the first attempt would have (an upsert,
    an insert that skips what is there, a conditional save that recognises its own row)."""

    @functools.wraps(method)
    def patient(*args: P.args, **kwargs: P.kwargs) -> R:
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


class Database:
    """The engine and write lock every part of the store shares."""

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
        create_schema(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """One round trip to the database, at most `PING_TIMEOUT_S`, never retried (readiness)."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # LOCAL: the pooled connection keeps no limit
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(PING_TIMEOUT_S * 1000)}")
            conn.exec_driver_sql("SELECT 1")

    def _insert_if_absent(self, table: Table, row: dict[str, Any]) -> Any:
        dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(self.engine.dialect.name)
        if dialect is None:  # elsewhere a concurrent claim surfaces as an IntegrityError
            return insert(table).values(**row)
        return dialect.insert(table).values(**row).on_conflict_do_nothing()


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    # WAL lets readers (status, replay) proceed while the archiver writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
