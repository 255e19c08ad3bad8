"""Task records: saves, the conditional saves of the race rules (delivery/tasks/runs.py), leases."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from delivery.errors import TaskNotFoundError
from delivery.events import TERMINAL_EVENT_TYPES
from delivery.tasks.history.database import Database, until_reachable
from delivery.tasks.history.schema import (
    TASK_ID_CHARS,
    events_table,
    push_configs_table,
    tasks_table,
    versions_table,
    webhooks_table,
)
from delivery.tasks.records import FINISHED_STATUSES, Phase, TaskPriority, TaskRecord, TaskStatus

# The heartbeat of a phase its process handed back as it stopped (SIGTERM): a lease already run
# out, so the next process resumes it at once (Watchdog), and the hand-back is told from a loss.
HANDED_BACK_AT = 0.0


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


class TaskRows(Database):
    """The `tasks` table."""

    @until_reachable
    def save(self, record: TaskRecord) -> None:
        """Insert or update the record."""
        row = _to_row(record)
        with self._write_lock, self.engine.begin() as conn:
            updated = conn.execute(
                update(tasks_table).where(tasks_table.c.task_id == record.task_id).values(**row)
            ).rowcount
            if not updated:
                conn.execute(insert(tasks_table).values(**row))

    def _conditional_save(self, record: TaskRecord, condition: Any) -> bool:
        """Safe to repeat: when the condition no longer holds because this very row was written
        (a retry after an attempt that committed but whose answer the connection lost), the
        save reports the success it had. Another writer's row is never equal to this one: it
        differs at least in owner, heartbeat or times."""
        row = _to_row(record)
        query = update(tasks_table).where(tasks_table.c.task_id == record.task_id, condition).values(**row)
        with self._write_lock, self.engine.begin() as conn:
            if conn.execute(query).rowcount == 1:
                return True
            stored = conn.execute(select(tasks_table).where(tasks_table.c.task_id == record.task_id)).first()
        return stored is not None and dict(stored._mapping) == row

    @until_reachable
    def transition(self, record: TaskRecord, expected: TaskStatus, *, fenced: bool = False) -> bool:
        """Save the record only if the stored status is still `expected` (and, `fenced`, the
        task still at the record's attempt: a phase pausing for confirmation)."""
        condition = tasks_table.c.status == expected.value
        return self._conditional_save(record, and_(condition, _unfinished_at(record.attempts)) if fenced else condition)

    @until_reachable
    def save_unless_finished(self, record: TaskRecord) -> bool:
        """Save the record only if the stored task has not finished (someone else ended it) and
        is still at the record's attempt: a process whose phase was taken over and resumed
        elsewhere (attempt + 1) can no longer write, so the attempt number fences it off."""
        return self._conditional_save(record, _unfinished_at(record.attempts))

    @until_reachable
    def claim_phase(self, record: TaskRecord) -> bool:
        """Save the record as its phase starts only if the task is unfinished, still at the
        record's attempt and owned by nobody or by the record's owner already: of two workers
        handed the same Celery message (a redelivery), exactly one runs it."""
        t = tasks_table
        free = or_(t.c.owner.is_(None), t.c.owner == record.owner)
        startable = t.c.status.in_([TaskStatus.queued.value, TaskStatus.running.value])  # not paused
        return self._conditional_save(record, and_(_unfinished_at(record.attempts), free, startable))

    @until_reachable
    def take_over(self, record: TaskRecord, owner: str | None, heartbeat_at: float | None) -> bool:
        """Save the record (the next attempt) only if the task is unfinished and still has this
        owner, heartbeat, progress and previous attempt: of several watchdogs recovering one lost
        task, exactly one wins, and none writes back over a late save of the lost owner."""
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

    @until_reachable
    def revert_confirmation(self, record: TaskRecord, phase: Phase, owner: str | None) -> bool:
        """Save `record` (the task as it awaited confirmation) only if the `phase` its answer
        started was never taken up: the stored task still runs that phase's first attempt with
        this `owner` (None: not yet claimed from the broker). A confirm whose phase could not be
        dispatched is undone so; one a worker took up after all stands."""
        t = tasks_table
        untouched = and_(
            t.c.status == TaskStatus.running.value,
            t.c.phase == phase.value,
            func.coalesce(t.c.attempts, 1) == 1,
            t.c.owner.is_(None) if owner is None else t.c.owner == owner,
        )
        return self._conditional_save(record, untouched)

    @until_reachable
    def expired_confirmations(self, now: float) -> list[TaskRecord]:
        query = select(tasks_table).where(
            tasks_table.c.status == TaskStatus.awaiting_confirmation.value, tasks_table.c.confirm_deadline < now
        )
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    @until_reachable
    def get(self, task_id: str) -> TaskRecord:
        """Raise TaskNotFoundError for unknown ids."""
        if len(task_id) > TASK_ID_CHARS or "\x00" in task_id:  # cannot be in the table; PostgreSQL
            raise TaskNotFoundError(task_id)  # would refuse the query, not answer it
        with self.engine.connect() as conn:
            row = conn.execute(select(tasks_table).where(tasks_table.c.task_id == task_id)).first()
        if row is None:
            raise TaskNotFoundError(task_id)
        return _from_row(row)

    @until_reachable
    def list_tasks(self, status: TaskStatus | None, limit: int, before: float | None) -> list[TaskRecord]:
        """Newest first; only tasks created strictly before `before` when given."""
        query = select(tasks_table).order_by(tasks_table.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(tasks_table.c.status == status.value)
        if before is not None:  # half a microsecond absorbs float rounding of the ISO round trip
            query = query.where(tasks_table.c.created_at < before - 5e-7)
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    @until_reachable
    def count(self, status: TaskStatus) -> int:
        query = select(func.count()).select_from(tasks_table).where(tasks_table.c.status == status.value)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar() or 0

    @until_reachable
    def unfinished(self) -> list[TaskRecord]:
        query = select(tasks_table).where(tasks_table.c.status.not_in(_FINISHED))
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    @until_reachable
    def heartbeat(self, owner: str, held: dict[str, int], ts: float) -> list[str]:
        """Renew the lease of the tasks `owner` holds ({task_id: attempt}) and still owns; return
        those another process took over (their attempt moved on, or another owner has them)."""
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

    @until_reachable
    def hand_back(self, owner: str) -> list[str]:
        """Mark the queued or running phases `owner` still owns as handed back (their heartbeat
        HANDED_BACK_AT): any process may resume them at once. Returns the ids marked."""
        t = tasks_table
        mine = and_(t.c.owner == owner, t.c.status.in_([TaskStatus.queued.value, TaskStatus.running.value]))
        with self._write_lock, self.engine.begin() as conn:
            ids = [row.task_id for row in conn.execute(select(t.c.task_id).where(mine))]
            if ids:
                conn.execute(update(t).where(mine, t.c.task_id.in_(ids)).values(heartbeat_at=HANDED_BACK_AT))
        return ids

    @until_reachable
    def finished_without_ending(self, since: float, until: float) -> list[TaskRecord]:
        """Tasks that finished between `since` and `until` but whose stored log has no terminal
        event: the process that ended them died before its event was stored."""
        t, e = tasks_table, events_table
        ending = select(e.c.task_id).where(e.c.task_id == t.c.task_id, e.c.event_type.in_(_TERMINAL_TYPES))
        query = select(t).where(t.c.finished_at >= since, t.c.finished_at < until, ~ending.exists())
        with self.engine.connect() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    @until_reachable
    def purge_finished_before(self, ts: float) -> int:
        """Delete finished tasks (and their events, versions, webhooks and A2A push configs)
        that finished before ts; return how many."""
        old = select(tasks_table.c.task_id).where(tasks_table.c.finished_at < ts)
        with self._write_lock, self.engine.begin() as conn:
            ids = [r.task_id for r in conn.execute(old)]
            if ids:
                conn.execute(delete(events_table).where(events_table.c.task_id.in_(ids)))
                conn.execute(delete(versions_table).where(versions_table.c.task_id.in_(ids)))
                conn.execute(delete(webhooks_table).where(webhooks_table.c.task_id.in_(ids)))
                conn.execute(delete(push_configs_table).where(push_configs_table.c.task_id.in_(ids)))
                conn.execute(delete(tasks_table).where(tasks_table.c.task_id.in_(ids)))
        return len(ids)
