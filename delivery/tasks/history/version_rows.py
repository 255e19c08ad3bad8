"""Every version of every deliverable."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, insert, select

from delivery.tasks.history.database import Database, until_reachable
from delivery.tasks.history.schema import versions_table
from delivery.tasks.records import DocumentVersion


class VersionRows(Database):
    """The `versions` table."""

    @until_reachable
    def add_version(self, version: DocumentVersion) -> int:
        """Keep one version of a deliverable; its number (1, 2, ... per task and deliverable) is
        assigned here and returned. Safe to repeat: a version already kept as the latest (same
        agent, time and text: a retry after a commit whose answer was lost) is not kept twice."""
        t = versions_table
        mine = and_(t.c.task_id == version.task_id, t.c.deliverable == version.deliverable)
        latest = select(t.c.number, t.c.agent, t.c.created_at, t.c.content).where(mine).order_by(t.c.number.desc())
        with self._write_lock, self.engine.begin() as conn:
            last = conn.execute(latest.limit(1)).first()
            if last is not None and (last.agent, last.created_at, last.content) == (
                version.agent,
                version.created_at,
                version.content,
            ):
                return int(last.number)
            number = (last.number if last is not None else 0) + 1
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

    @until_reachable
    def versions(self, task_id: str, deliverable: str) -> list[DocumentVersion]:
        """Every version of a deliverable, oldest first, without their content."""
        t = versions_table
        columns = [t.c.task_id, t.c.deliverable, t.c.number, t.c.agent, t.c.reason, t.c.created_at, t.c.gaps, t.c.size]
        query = select(*columns).where(t.c.task_id == task_id, t.c.deliverable == deliverable).order_by(t.c.number)
        with self.engine.connect() as conn:
            return [_version(row, with_content=False) for row in conn.execute(query)]

    @until_reachable
    def version(self, task_id: str, deliverable: str, number: int) -> DocumentVersion | None:
        """One version, with its content."""
        t = versions_table
        query = select(t).where(t.c.task_id == task_id, t.c.deliverable == deliverable, t.c.number == number)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _version(row) if row is not None else None

    @until_reachable
    def all_versions(self, task_id: str) -> list[DocumentVersion]:
        """Every version of every deliverable of a task, with content (the zip)."""
        t = versions_table
        query = select(t).where(t.c.task_id == task_id).order_by(t.c.deliverable, t.c.number)
        with self.engine.connect() as conn:
            return [_version(row) for row in conn.execute(query)]


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
